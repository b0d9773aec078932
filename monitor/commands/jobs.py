"""Background jobs (QEMU's job layer): query-jobs, job-*, query-block-jobs,
block-job-*, and their events.

Two kinds run here:
- the snapshot jobs (snapshot-save, -load, -delete): created, running, then
  waiting, pending, concluded when they succeed, or aborting, concluded with
  their error, and concluded until job-dismiss (auto-dismiss off);
- block jobs (stream, commit, mirror, backup; their data work is in
  vmm/block/jobs.py): the same states, plus ready and standby for the mirror
  kind, pause and resume between steps, a speed limit, QEMU's BLOCK_JOB_*
  events, auto-finalize and auto-dismiss as the client asks.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from monitor.errors import DEVICE_NOT_ACTIVE, QmpError
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, INT, STR, Enum, ListOf, Member, Struct
from vmm.block.engine import quiesced
from vmm.errors import UserError

JOB_STATUS = Enum("JobStatus", ("undefined", "created", "running", "paused", "ready",
                                "standby", "waiting", "pending", "aborting", "concluded",
                                "null"))
JOB_TYPE = Enum("JobType", ("commit", "stream", "mirror", "backup", "create", "amend",
                            "snapshot-load", "snapshot-save", "snapshot-delete"))
log = logging.getLogger(__name__)
REGISTRY.event("JOB_STATUS_CHANGE", [Member("id", STR), Member("status", JOB_STATUS)])
_PROGRESS = (Member("type", JOB_TYPE), Member("device", STR), Member("len", INT),
             Member("offset", INT), Member("speed", INT))
REGISTRY.event("BLOCK_JOB_COMPLETED", _PROGRESS + (Member("error", STR, True),))
REGISTRY.event("BLOCK_JOB_CANCELLED", _PROGRESS)
REGISTRY.event("BLOCK_JOB_READY", _PROGRESS)
REGISTRY.event("BLOCK_JOB_PENDING", (Member("type", JOB_TYPE), Member("id", STR)))
REGISTRY.event("BLOCK_JOB_ERROR", (
    Member("device", STR), Member("operation", Enum("IoOperationType", ("read", "write"))),
    Member("action", Enum("BlockErrorAction", ("ignore", "report", "stop")))))


@dataclass(eq=False)
class Job:
    id: str
    type: str
    status: str = "created"
    error: str | None = None
    done: int = 0
    total: int = 1
    user_paused: bool = False
    task: object = None              # the asyncio task running it
    # block jobs only
    work: object = None              # its vmm.block.jobs work
    auto_finalize: bool = True
    auto_dismiss: bool = False
    speed: int = 0
    cancel_requested: bool = False
    force_cancel: bool = False
    complete_requested: bool = False
    finalize_requested: bool = False
    wake: asyncio.Event = field(default_factory=asyncio.Event)
    concluded: asyncio.Event = field(default_factory=asyncio.Event)

    def info(self) -> dict:
        if self.work is not None:
            self.done, self.total = self.work.progress, self.work.total
        info = {"current-progress": self.done, "status": self.status,
                "total-progress": self.total, "type": self.type, "id": self.id}
        if self.error is not None:
            info["error"] = self.error
        return info

    def block_info(self) -> dict:
        work = self.work
        info = {"auto-finalize": self.auto_finalize, "io-status": "ok", "device": self.id,
                "auto-dismiss": self.auto_dismiss, "busy": self.status == "running",
                "len": work.total, "offset": work.progress, "status": self.status,
                "paused": self.user_paused or self.status == "pending", "speed": self.speed,
                "ready": self.status in ("ready", "standby"), "type": self.type}
        if self.error is not None:
            info["error"] = self.error
        return info

    def progress(self) -> dict:
        return {"device": self.id, "len": self.work.total, "offset": self.work.progress,
                "speed": self.speed, "type": self.type}


def machine_jobs(machine) -> list[Job]:
    if not hasattr(machine, "jobs"):
        machine.jobs = []
    return machine.jobs


def check_job_id(machine, job_id: str) -> None:
    if any(j.id == job_id for j in machine_jobs(machine)):
        raise QmpError(f"Job ID '{job_id}' already in use")
    if not job_id or not (job_id[0].isalpha()) or \
            not all(c.isalnum() or c in "-._" for c in job_id):
        raise QmpError(f"Invalid job ID '{job_id}'")


def start_job(ctx, job_id: str, job_type: str, work: Callable[[], Awaitable[None]]) -> None:
    """Registers a job and runs ``work`` on the loop; its UserError is the job's."""
    jobs = machine_jobs(ctx.machine)
    check_job_id(ctx.machine, job_id)
    job = Job(job_id, job_type)
    jobs.insert(0, job)
    machine = ctx.machine

    def status(value: str) -> None:
        job.status = value
        machine.emit("JOB_STATUS_CHANGE", {"status": value, "id": job.id})

    async def run() -> None:
        status("running")
        try:
            await work()
        except UserError as e:
            job.error = str(e)
            status("aborting")
        except asyncio.CancelledError:            # job-cancel
            job.error = "Operation canceled"
            status("aborting")
        else:
            status("waiting")
            status("pending")
        job.done = 1
        status("concluded")

    status("created")
    job.task = asyncio.get_running_loop().create_task(run())


# -- block jobs ---------------------------------------------------------------------
STEP_BYTES = 1 << 20        # a worker-thread round trip per MiB, not per chunk


def _some_steps(work, speed: int) -> bool:
    """Steps until about STEP_BYTES are done (one, under a speed limit, so that
    the pacing stays fine); False once the work's first pass is over."""
    start = work.progress
    while work.step():
        if speed or work.progress - start >= STEP_BYTES:
            return True
    return False


class BlockJobRunner:
    """Runs one block job's work on the loop: its steps on a worker thread, paced
    by the speed limit, stopping for pause and cancel between steps; ``finish``
    (under the machine lock, I/O drained) makes its change to the graph, and
    ``clean`` always runs at the end."""

    def __init__(self, ctx, job: Job, finish: Callable[[bool], None],
                 clean: Callable[[], None]) -> None:
        self.machine, self.job = ctx.machine, job
        self.finish, self.clean = finish, clean

    def status(self, value: str) -> None:
        self.job.status = value
        self.machine.emit("JOB_STATUS_CHANGE", {"status": value, "id": self.job.id})

    async def _pause_point(self) -> None:
        job = self.job
        if not job.user_paused or job.cancel_requested:
            return
        resting = "standby" if job.status == "ready" else "paused"
        back = job.status
        self.status(resting)
        while job.user_paused and not job.cancel_requested:
            job.wake.clear()
            await job.wake.wait()
        self.status(back)

    async def _steps(self) -> None:
        job, work = self.job, self.job.work
        while not job.cancel_requested:
            await self._pause_point()
            if job.cancel_requested:
                break
            started = time.monotonic()
            before = work.progress
            more = await asyncio.to_thread(_some_steps, work, job.speed)
            if job.speed and work.progress > before:
                delay = (work.progress - before) / job.speed - (time.monotonic() - started)
                if delay > 0:
                    job.wake.clear()
                    try:
                        await asyncio.wait_for(job.wake.wait(), delay)
                    except TimeoutError:
                        pass
            if not more:
                return

    async def _wait_until(self, done: Callable[[], bool]) -> None:
        job = self.job
        while not done():
            await self._pause_point()
            if done():
                return
            job.wake.clear()
            await job.wake.wait()

    async def run(self) -> None:
        job, work = self.job, self.job.work
        pivot = True
        try:
            work.start()
            await self._steps()
            if not job.cancel_requested and work.needs_complete:
                self.status("ready")
                self.machine.emit("BLOCK_JOB_READY", job.progress())
                await self._wait_until(lambda: job.complete_requested or job.cancel_requested)
                if job.cancel_requested and not job.force_cancel:
                    job.cancel_requested, pivot = False, False   # a ready mirror: no switch
            elif getattr(work, "waits_for_cancel", False):
                await self._wait_until(lambda: job.cancel_requested)
        except OSError as e:
            job.error = e.strerror or str(e)
        except UserError as e:
            job.error = str(e)
        except Exception as e:          # a bug in the job's work: it fails, kvmkit goes on
            log.exception("block job %s failed", job.id)
            job.error = f"internal error: {e}"
        if job.cancel_requested or job.error is not None:
            await self._abort()
            return
        self.status("waiting")
        self.status("pending")
        if not job.auto_finalize:
            self.machine.emit("BLOCK_JOB_PENDING", {"type": job.type, "id": job.id})
            await self._wait_until(lambda: job.finalize_requested or job.cancel_requested)
            if job.cancel_requested:
                await self._abort()
                return
        try:
            with self.machine.lock, quiesced():     # no disk request at work meanwhile
                self.finish(pivot)
        except Exception as e:          # its change could not be made: the job fails
            if not isinstance(e, (OSError, UserError)):
                log.exception("block job %s could not finish", job.id)
            job.error = getattr(e, "strerror", None) or str(e)
            await self._abort()
            return
        self._conclude("BLOCK_JOB_COMPLETED")

    async def _abort(self) -> None:
        job = self.job
        self.status("aborting")
        self._conclude("BLOCK_JOB_COMPLETED" if job.error is not None else "BLOCK_JOB_CANCELLED")

    def _conclude(self, event: str) -> None:
        job = self.job
        try:
            with self.machine.lock:
                job.work.stop()             # after finish: a write in flight still copied
                self.clean()
        finally:
            data = job.progress()
            if event == "BLOCK_JOB_COMPLETED" and job.error is not None:
                data["error"] = job.error
            self.machine.emit(event, data)
            self.status("concluded")
            job.concluded.set()
            if job.auto_dismiss:
                dismiss(self.machine, job)


def start_block_job(ctx, job_id: str, job_type: str, work, finish: Callable[[bool], None],
                    clean: Callable[[], None], *, auto_finalize: bool = True,
                    auto_dismiss: bool = True, speed: int = 0,
                    drained_start: bool = False) -> Job:
    """A block job, started on the loop. ``finish(pivot)`` makes its change when it
    succeeds (pivot is False for a ready mirror cancelled: it leaves the drive as
    it is); ``clean`` lets go of what it opened, however it ends."""
    check_job_id(ctx.machine, job_id)
    if speed < 0:
        raise QmpError("Parameter 'speed' expects a non-negative value")
    job = Job(job_id, job_type, work=work, auto_finalize=auto_finalize,
              auto_dismiss=auto_dismiss, speed=speed)
    machine_jobs(ctx.machine).insert(0, job)
    runner = BlockJobRunner(ctx, job, finish, clean)
    runner.status("created")
    runner.status("running")
    if drained_start:              # a backup starts in a drained section: QEMU pauses it
        runner.status("paused")
        runner.status("running")
    job.task = asyncio.get_running_loop().create_task(runner.run())
    return job


def dismiss(machine, job: Job) -> None:
    jobs = machine_jobs(machine)
    if job in jobs:
        jobs.remove(job)
    job.status = "null"
    machine.emit("JOB_STATUS_CHANGE", {"status": "null", "id": job.id})


@command("query-jobs", returns=ListOf(Struct("JobInfo", (
    Member("id", STR), Member("type", JOB_TYPE), Member("status", JOB_STATUS),
    Member("current-progress", INT), Member("total-progress", INT),
    Member("error", STR, True)))))
def query_jobs(ctx):
    return [job.info() for job in machine_jobs(ctx.machine)]


# QEMU's table of which verbs a job accepts in which state
VERBS = {"cancel": ("created", "running", "paused", "ready", "standby", "waiting", "pending",
                    "aborting"),
         "pause": ("created", "running", "paused", "ready", "standby", "waiting", "pending",
                   "aborting"),
         "resume": ("created", "running", "paused", "ready", "standby", "waiting", "pending",
                    "aborting"),
         "set-speed": ("created", "running", "paused", "ready", "standby", "waiting",
                       "pending", "aborting"),
         "complete": ("ready",), "finalize": ("pending",), "dismiss": ("concluded",)}


def _job(ctx, job_id: str, verb: str, block: bool = False) -> Job:
    job = next((j for j in machine_jobs(ctx.machine) if j.id == job_id), None)
    if block and (job is None or job.work is None):
        raise QmpError(f"Block job '{job_id}' not found", DEVICE_NOT_ACTIVE)
    if job is None:
        raise QmpError("Job not found")
    if job.status not in VERBS[verb]:
        raise QmpError(f"Job '{job_id}' in state '{job.status}' cannot accept command verb "
                       f"'{verb}'")
    return job


def _cancel(job: Job, force: bool) -> None:
    if job.work is None:
        if job.task is not None:
            job.task.cancel()
        return
    job.cancel_requested, job.force_cancel = True, force or job.status != "ready"
    job.wake.set()


def _pause(job: Job) -> None:
    if job.user_paused:
        raise QmpError("Job is already paused")
    job.user_paused = True
    job.wake.set()


def _resume(job: Job) -> None:
    if not job.user_paused:
        raise QmpError("Can't resume a job that was not paused")
    job.user_paused = False
    job.wake.set()


def _complete(job: Job) -> None:
    job.complete_requested = True
    job.wake.set()


def _finalize(job: Job) -> None:
    job.finalize_requested = True
    job.wake.set()


@command("job-cancel", args=[Member("id", STR)])
def job_cancel(ctx, id):
    _cancel(_job(ctx, id, "cancel"), True)


@command("job-pause", args=[Member("id", STR)])
def job_pause(ctx, id):
    """Counted, as QEMU's: a snapshot job has no point to pause at, so it runs on."""
    _pause(_job(ctx, id, "pause"))


@command("job-resume", args=[Member("id", STR)])
def job_resume(ctx, id):
    _resume(_job(ctx, id, "resume"))


@command("job-complete", args=[Member("id", STR)])
def job_complete(ctx, id):
    _complete(_job(ctx, id, "complete"))


@command("job-finalize", args=[Member("id", STR)], lock=False)
async def job_finalize(ctx, id):
    """Answered once the job has made its change, as QEMU finalizes at once."""
    with ctx.machine.lock:
        job = _job(ctx, id, "finalize")
        _finalize(job)
    if job.work is not None:
        await job.concluded.wait()


@command("job-dismiss", args=[Member("id", STR)])
def job_dismiss(ctx, id):
    dismiss(ctx.machine, _job(ctx, id, "dismiss"))


@command("query-block-jobs", returns=ListOf(Struct("BlockJobInfo", (
    Member("type", STR), Member("device", STR), Member("len", INT), Member("offset", INT),
    Member("busy", BOOL), Member("paused", BOOL), Member("speed", INT),
    Member("io-status", Enum("BlockDeviceIoStatus", ("ok", "failed", "nospace"))),
    Member("ready", BOOL), Member("status", JOB_STATUS), Member("auto-finalize", BOOL),
    Member("auto-dismiss", BOOL), Member("error", STR, True)))))
def query_block_jobs(ctx):
    return [job.block_info() for job in machine_jobs(ctx.machine) if job.work is not None]


@command("block-job-cancel", args=[Member("device", STR), Member("force", BOOL, True)])
def block_job_cancel(ctx, device, force=False):
    job = _job(ctx, device, "cancel", block=True)
    if job.user_paused and not force:     # QEMU's: a paused job is cancelled by force only
        raise QmpError(f"The block job for device '{device}' is currently paused")
    _cancel(job, force)


@command("block-job-complete", args=[Member("device", STR)])
def block_job_complete(ctx, device):
    _complete(_job(ctx, device, "complete", block=True))


@command("block-job-pause", args=[Member("device", STR)])
def block_job_pause(ctx, device):
    _pause(_job(ctx, device, "pause", block=True))


@command("block-job-resume", args=[Member("device", STR)])
def block_job_resume(ctx, device):
    _resume(_job(ctx, device, "resume", block=True))


@command("block-job-set-speed", args=[Member("device", STR), Member("speed", INT)])
def block_job_set_speed(ctx, device, speed):
    job = _job(ctx, device, "set-speed", block=True)
    if speed < 0:
        raise QmpError("Parameter 'speed' expects a non-negative value")
    job.speed = speed
    job.wake.set()


@command("block-job-dismiss", args=[Member("id", STR)])
def block_job_dismiss(ctx, id):
    dismiss(ctx.machine, _job(ctx, id, "dismiss", block=True))


@command("block-job-finalize", args=[Member("id", STR)], lock=False)
async def block_job_finalize(ctx, id):
    with ctx.machine.lock:
        job = _job(ctx, id, "finalize", block=True)
        _finalize(job)
    await job.concluded.wait()
