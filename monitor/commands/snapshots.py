"""VM snapshots: snapshot-save, snapshot-load, snapshot-delete (jobs), and what HMP's
savevm, loadvm and delvm run. The work is vmm/migration/snapshots.py's; here the
VM stops around it (save-vm, restore-vm) and resumes if it ran, as QEMU does.
A loadvm that fails leaves the VM stopped in restore-vm, as QEMU's does.
"""

from __future__ import annotations

import asyncio

from monitor.commands.jobs import start_job
from monitor.registry import command
from monitor.types import STR, ListOf, Member


async def save_snapshot(machine, name: str, devices: list[str] | None = None,
                        vmstate: str | None = None, overwrite: bool = True) -> None:
    from vmm.migration import snapshots

    plan = snapshots.plan_save(machine, name, devices, vmstate, overwrite)
    was_running = machine.runstate == "running"
    if was_running:
        machine.stop("save-vm")
    try:
        state = machine.save_state()
        await asyncio.to_thread(snapshots.save, machine, plan, state)
    finally:
        if was_running:
            machine.cont()


async def load_snapshot(machine, name: str, devices: list[str] | None = None,
                        vmstate: str | None = None) -> None:
    from vmm.migration import snapshots

    was_running = machine.runstate == "running"
    if was_running:
        machine.stop("restore-vm")
    plan = snapshots.plan_load(machine, name, devices, vmstate)
    state = await asyncio.to_thread(snapshots.load_ram, machine, plan)
    machine.load_state(state)
    if was_running:
        machine.cont()


async def delete_snapshot(machine, name: str, devices: list[str] | None = None) -> None:
    from vmm.migration import snapshots

    await asyncio.to_thread(snapshots.delete, machine, name, devices)


_JOB_ARGS = [Member("job-id", STR), Member("tag", STR)]


@command("snapshot-save", args=_JOB_ARGS + [Member("vmstate", STR),
                                            Member("devices", ListOf(STR))])
def snapshot_save(ctx, job_id, tag, vmstate, devices):
    start_job(ctx, job_id, "snapshot-save", lambda: save_snapshot(
        ctx.machine, tag, devices, vmstate, overwrite=False))


@command("snapshot-load", args=_JOB_ARGS + [Member("vmstate", STR),
                                            Member("devices", ListOf(STR))])
def snapshot_load(ctx, job_id, tag, vmstate, devices):
    start_job(ctx, job_id, "snapshot-load", lambda: load_snapshot(
        ctx.machine, tag, devices, vmstate))


@command("snapshot-delete", args=_JOB_ARGS + [Member("devices", ListOf(STR))])
def snapshot_delete(ctx, job_id, tag, devices):
    start_job(ctx, job_id, "snapshot-delete", lambda: delete_snapshot(
        ctx.machine, tag, devices))
