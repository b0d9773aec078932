"""Background jobs (QEMU's job layer): query-jobs, job-dismiss, JOB_STATUS_CHANGE.

kvmkit's jobs are the snapshot ones (snapshot-save, -load, -delete): each goes
created, running, then waiting, pending, concluded when it succeeds, or
aborting, concluded with its error when it fails, and stays concluded until
job-dismiss, as QEMU's (auto-finalize on, auto-dismiss off).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from monitor.errors import DEVICE_NOT_ACTIVE, QmpError
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, INT, STR, Enum, ListOf, Member, Struct
from vmm.errors import UserError

JOB_STATUS = Enum("JobStatus", ("undefined", "created", "running", "paused", "ready",
                                "standby", "waiting", "pending", "aborting", "concluded",
                                "null"))
JOB_TYPE = Enum("JobType", ("commit", "stream", "mirror", "backup", "create", "amend",
                            "snapshot-load", "snapshot-save", "snapshot-delete"))
REGISTRY.event("JOB_STATUS_CHANGE", [Member("id", STR), Member("status", JOB_STATUS)])


@dataclass
class Job:
    id: str
    type: str
    status: str = "created"
    error: str | None = None
    done: int = 0
    user_paused: bool = False
    task: object = None              # the asyncio task running it

    def info(self) -> dict:
        info = {"current-progress": self.done, "status": self.status, "total-progress": 1,
                "type": self.type, "id": self.id}
        if self.error is not None:
            info["error"] = self.error
        return info


def _jobs(machine) -> list[Job]:
    if not hasattr(machine, "jobs"):
        machine.jobs = []
    return machine.jobs


def start_job(ctx, job_id: str, job_type: str, work: Callable[[], Awaitable[None]]) -> None:
    """Registers a job and runs ``work`` on the loop; its UserError is the job's."""
    jobs = _jobs(ctx.machine)
    if any(j.id == job_id for j in jobs):
        raise QmpError(f"Job ID '{job_id}' already in use")
    if not job_id or not (job_id[0].isalpha()) or \
            not all(c.isalnum() or c in "-._" for c in job_id):
        raise QmpError(f"Invalid job ID '{job_id}'")
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


@command("query-jobs", returns=ListOf(Struct("JobInfo", (
    Member("id", STR), Member("type", JOB_TYPE), Member("status", JOB_STATUS),
    Member("current-progress", INT), Member("total-progress", INT),
    Member("error", STR, True)))))
def query_jobs(ctx):
    return [job.info() for job in _jobs(ctx.machine)]


# QEMU's table of which verbs a job accepts in which state
VERBS = {"cancel": ("created", "running", "paused", "ready", "standby", "waiting", "pending",
                    "aborting"),
         "pause": ("created", "running", "paused", "ready", "standby", "waiting", "pending",
                   "aborting"),
         "resume": ("created", "running", "paused", "ready", "standby", "waiting", "pending",
                    "aborting"),
         "complete": ("ready",), "finalize": ("pending",), "dismiss": ("concluded",)}


def _job(ctx, job_id: str, verb: str) -> Job:
    job = next((j for j in _jobs(ctx.machine) if j.id == job_id), None)
    if job is None:
        raise QmpError("Job not found")
    if job.status not in VERBS[verb]:
        raise QmpError(f"Job '{job_id}' in state '{job.status}' cannot accept command verb "
                       f"'{verb}'")
    return job


@command("job-cancel", args=[Member("id", STR)])
def job_cancel(ctx, id):
    job = _job(ctx, id, "cancel")
    if job.task is not None:
        job.task.cancel()


@command("job-pause", args=[Member("id", STR)])
def job_pause(ctx, id):
    """Counted, as QEMU's: a snapshot job has no point to pause at, so it runs on."""
    job = _job(ctx, id, "pause")
    if job.user_paused:
        raise QmpError("Job is already paused")
    job.user_paused = True


@command("job-resume", args=[Member("id", STR)])
def job_resume(ctx, id):
    job = _job(ctx, id, "resume")
    if not job.user_paused:
        raise QmpError("Can't resume a job that was not paused")
    job.user_paused = False


@command("job-complete", args=[Member("id", STR)])
def job_complete(ctx, id):
    _job(ctx, id, "complete")        # only a ready job (a mirror) completes: kvmkit has none


@command("job-finalize", args=[Member("id", STR)])
def job_finalize(ctx, id):
    _job(ctx, id, "finalize")        # kvmkit's jobs finalize themselves


@command("job-dismiss", args=[Member("id", STR)])
def job_dismiss(ctx, id):
    jobs = _jobs(ctx.machine)
    job = _job(ctx, id, "dismiss")
    jobs.remove(job)
    job.status = "null"
    ctx.machine.emit("JOB_STATUS_CHANGE", {"status": "null", "id": id})


# -- block jobs: kvmkit's jobs are none of them (no stream, commit, mirror or backup) --
def _no_block_job(job_id: str):
    raise QmpError(f"Block job '{job_id}' not found", DEVICE_NOT_ACTIVE)


@command("query-block-jobs", returns=ListOf(Struct("BlockJobInfo", (
    Member("type", STR), Member("device", STR), Member("len", INT), Member("offset", INT),
    Member("busy", BOOL), Member("paused", BOOL), Member("speed", INT),
    Member("io-status", Enum("BlockDeviceIoStatus", ("ok", "failed", "nospace"))),
    Member("ready", BOOL), Member("status", JOB_STATUS), Member("auto-finalize", BOOL),
    Member("auto-dismiss", BOOL), Member("error", STR, True)))))
def query_block_jobs(ctx):
    return []


@command("block-job-cancel", args=[Member("device", STR), Member("force", BOOL, True)])
def block_job_cancel(ctx, device, force=False):
    _no_block_job(device)


@command("block-job-complete", args=[Member("device", STR)])
def block_job_complete(ctx, device):
    _no_block_job(device)


@command("block-job-pause", args=[Member("device", STR)])
def block_job_pause(ctx, device):
    _no_block_job(device)


@command("block-job-resume", args=[Member("device", STR)])
def block_job_resume(ctx, device):
    _no_block_job(device)


@command("block-job-set-speed", args=[Member("device", STR), Member("speed", INT)])
def block_job_set_speed(ctx, device, speed):
    _no_block_job(device)


@command("block-job-dismiss", args=[Member("id", STR)])
def block_job_dismiss(ctx, id):
    _no_block_job(id)


@command("block-job-finalize", args=[Member("id", STR)])
def block_job_finalize(ctx, id):
    _no_block_job(id)
