"""VM snapshots: snapshot-save, snapshot-load, snapshot-delete (jobs), and what HMP's
savevm, loadvm and delvm run. The work is vmm/migration/snapshots.py's; here the
VM stops around it (save-vm, restore-vm) and resumes if it ran, as QEMU does.
A loadvm that fails leaves the VM stopped in restore-vm, as QEMU's does.
"""

from __future__ import annotations

import asyncio

from monitor.commands.block import SNAPSHOT_INFO
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


# -- one device's internal snapshots (qcow2), no VM state ---------------------------------
def _qcow2_of(ctx, device: str, writing: bool):
    from monitor.commands.block import lookup_node
    from monitor.errors import QmpError
    from vmm.block.qcow2 import Qcow2Image

    node = lookup_node(ctx.machine.block, device, device)
    if not isinstance(node.image, Qcow2Image):
        if writing:
            raise QmpError(f"Block format '{node.driver}' used by device '{device}' does "
                           "not support internal snapshots")
        raise QmpError("Failed to get a snapshot list: Operation not supported")
    if writing and node.read_only:
        raise QmpError(f"Device '{device}' is read only")
    return node.image


def prepare_internal_snapshot(ctx, device: str, name: str):
    """Checks blockdev-snapshot-internal-sync; returns (do, undo) for after the
    drain (QEMU takes it in a drained section)."""
    from monitor.errors import QmpError
    from vmm.block import qcow2_snapshots

    machine = ctx.machine
    image = _qcow2_of(ctx, device, writing=True)
    if any(s.name == name for s in image.snapshots):
        raise QmpError(f"Snapshot with name '{name}' already exists on device '{device}'")

    def do() -> None:
        clock = machine.vm.get_clock() if machine._has_run else bytes(8)   # QEMU's: 0
        qcow2_snapshots.create(image, name, 0, int.from_bytes(clock[:8], "little"))

    return do, lambda: None


@command("blockdev-snapshot-internal-sync", args=[Member("device", STR), Member("name", STR)])
def blockdev_snapshot_internal_sync(ctx, device, name):
    """A snapshot of one qcow2 device (its disk only), taken once the I/O in flight
    is done."""
    from monitor.commands.external_snapshots import drained

    drained(ctx, lambda: prepare_internal_snapshot(ctx, device, name))


@command("blockdev-snapshot-delete-internal-sync",
         args=[Member("device", STR), Member("id", STR, True), Member("name", STR, True)],
         returns=SNAPSHOT_INFO, lock=False)
async def blockdev_snapshot_delete_internal_sync(ctx, device, id=None, name=None):
    from monitor.commands.block import snapshot_info
    from monitor.errors import QmpError
    from vmm.block import qcow2_snapshots

    machine = ctx.machine
    with machine.lock:
        image = _qcow2_of(ctx, device, writing=False)
        if id is None and name is None:
            raise QmpError("Name or id must be provided")
        found = next((s for s in image.snapshots if (id is None or s.id == id) and
                      (name is None or s.name == name)), None)
        if found is None:
            raise QmpError(f"Snapshot with id '{id or 'null'}' and name '{name or 'null'}' "
                           f"does not exist on device '{device}'")
    await asyncio.to_thread(machine.drain_io)
    with machine.lock:
        qcow2_snapshots.delete(image, found)
    return snapshot_info(found)
