"""Background jobs (QEMU's job layer): query-jobs, job-dismiss, JOB_STATUS_CHANGE.

kvmkit's jobs are the snapshot ones (snapshot-save, -load, -delete): each goes
created, running, then waiting, pending, concluded when it succeeds, or
aborting, concluded with its error when it fails, and stays concluded until
job-dismiss, as QEMU's (auto-finalize on, auto-dismiss off).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from monitor.errors import QmpError
from monitor.registry import REGISTRY, command
from monitor.types import INT, STR, Enum, ListOf, Member, Struct
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
    import asyncio

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
        else:
            status("waiting")
            status("pending")
        job.done = 1
        status("concluded")

    status("created")
    asyncio.get_running_loop().create_task(run())


@command("query-jobs", returns=ListOf(Struct("JobInfo", (
    Member("id", STR), Member("type", JOB_TYPE), Member("status", JOB_STATUS),
    Member("current-progress", INT), Member("total-progress", INT),
    Member("error", STR, True)))))
def query_jobs(ctx):
    return [job.info() for job in _jobs(ctx.machine)]


@command("job-dismiss", args=[Member("id", STR)])
def job_dismiss(ctx, id):
    jobs = _jobs(ctx.machine)
    job = next((j for j in jobs if j.id == id), None)
    if job is None:
        raise QmpError("Job not found")
    if job.status != "concluded":
        raise QmpError(f"Job '{id}' in state '{job.status}' cannot accept command verb "
                       f"'dismiss'")
    jobs.remove(job)
    job.status = "null"
    ctx.machine.emit("JOB_STATUS_CHANGE", {"status": "null", "id": id})
