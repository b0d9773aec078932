"""VM snapshots in qcow2 images (savevm, loadvm, delvm, snapshot-save/-load/-delete).

A snapshot is an internal snapshot of every writable disk, all with one tag;
one of them (the first qcow2, or the node ``vmstate`` names) also holds the VM
state: the migration stream (RAM, then the machine's state) written into its
VM-state area (vmm/block/qcow2_snapshots.py). The checks come first, with
QEMU's words, so a refused request changes nothing; the caller stops the VM
around ``save`` and ``load`` (runstates save-vm and restore-vm), and runs them
off the loop: they write and read the whole of RAM.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmm.block import qcow2_snapshots
from vmm.block.qcow2 import Qcow2Image
from vmm.errors import UserError
from vmm.migration.ram import RamTracker
from vmm.migration.stream import Reader, StreamError, Writer


@dataclass
class Disk:
    name: str                 # the drive's id (QEMU's device name), else its node name
    node_name: str
    image: Qcow2Image


def _disks(machine, devices: list[str] | None, strict: bool = True) -> list[Disk]:
    """The images a snapshot covers: every writable disk (or the nodes named), each
    able to hold snapshots; UserError with QEMU's words if one cannot (unless not
    ``strict``: then such disks are left out, as `info snapshots` does)."""
    found = []
    if devices is not None:
        if not devices:
            raise UserError("At least one device is required for snapshot")
        for name in devices:
            node = machine.block.graph.find(name)
            if node is None:
                raise UserError(f"No block device node '{name}'")
            if not isinstance(node.image, Qcow2Image):
                raise UserError(f"Device '{name}' is writable but does not support snapshots")
            found.append(Disk(name, name, node.image))
        return found
    for drive in machine.block.drives:
        node = drive.root
        if node is None or node.read_only:
            continue
        name = drive.name or node.name
        if not isinstance(node.image, Qcow2Image):
            if not strict:
                continue
            raise UserError(f"Device '{name}' is writable but does not support snapshots")
        found.append(Disk(name, node.name, node.image))
    return found


def _vmstate_disk(disks: list[Disk], vmstate: str | None) -> Disk:
    for disk in disks:
        if vmstate is None or disk.node_name == vmstate:
            return disk
    if vmstate is not None:
        raise UserError(f"vmstate block device '{vmstate}' does not exist")
    raise UserError("no block device can store vmstate for snapshot")


@dataclass
class Plan:
    name: str
    disks: list[Disk]
    vmstate: Disk


def plan_save(machine, name: str, devices: list[str] | None = None,
              vmstate: str | None = None, overwrite: bool = True) -> Plan:
    """savevm's checks (overwrite: an old snapshot of that tag goes, as HMP's does;
    snapshot-save refuses instead)."""
    disks = _disks(machine, devices)
    disk = _vmstate_disk(disks, vmstate)
    if not overwrite and any(qcow2_snapshots.find(d.image, name) for d in disks):
        raise UserError(f"Snapshot '{name}' already exists in one or more devices")
    return Plan(name, disks, disk)


def save(machine, plan: Plan, state: dict) -> None:
    """With the VM stopped (off the loop): RAM and ``state`` (the machine's, taken
    on the loop) into the vmstate disk, then a snapshot of every disk (an old one
    of the same tag replaced)."""
    machine.drain_io()
    for disk in plan.disks:
        old = qcow2_snapshots.find(disk.image, plan.name)
        if old is not None and old.name == plan.name:
            qcow2_snapshots.delete(disk.image, old)
    out = qcow2_snapshots.VmStateWriter(plan.vmstate.image)
    writer = Writer(out)
    writer.header()
    tracker = RamTracker(machine.vm, machine.memory, machine.lock)
    tracker.collect()                     # every page, none logged
    tracker.send(writer, lambda sent: None)
    writer.state(state)
    writer.end()
    vm_clock = struct.unpack_from("<Q", machine.vm.get_clock())[0]
    for disk in plan.disks:
        size = out.offset if disk is plan.vmstate else 0
        qcow2_snapshots.create(disk.image, plan.name, size, vm_clock)


def plan_load(machine, name: str, devices: list[str] | None = None,
              vmstate: str | None = None) -> Plan:
    disks = _disks(machine, devices)
    disk = _vmstate_disk(disks, vmstate)
    if not all(qcow2_snapshots.find(d.image, name) for d in disks):
        raise UserError(f"Snapshot '{name}' does not exist in one or more devices")
    if not qcow2_snapshots.find(disk.image, name).vm_state_size:
        raise UserError("This is a disk-only snapshot. Revert to it  offline using qemu-img")
    return Plan(name, disks, disk)


def load_ram(machine, plan: Plan):
    """With the VM stopped (off the loop): every disk back to the snapshot, RAM from
    the vmstate disk; returns the machine's state, for machine.load_state on the
    loop."""
    machine.drain_io()
    for disk in plan.disks:
        qcow2_snapshots.goto(disk.image, qcow2_snapshots.find(disk.image, plan.name))
    snapshot = qcow2_snapshots.find(plan.vmstate.image, plan.name)
    source = qcow2_snapshots.VmStateReader(plan.vmstate.image, snapshot.vm_state_size)
    try:
        return Reader(source).load(machine.memory)
    except StreamError as e:
        raise UserError(f"Error while loading VM state: {e}") from None


def delete(machine, name: str, devices: list[str] | None = None) -> None:
    """delvm: the tag goes from every disk that has it (none having it is no error)."""
    for disk in _disks(machine, devices):
        found = qcow2_snapshots.find(disk.image, name)
        if found is not None:
            qcow2_snapshots.delete(disk.image, found)


def listing(machine) -> tuple[list, dict[str, list]]:
    """info snapshots: (the vmstate disk's snapshots that every disk has, and per
    disk the ones only it has)."""
    disks = _disks(machine, None, strict=False)
    first = _vmstate_disk(disks, None)
    # a writable disk that cannot hold snapshots has none of them: none is on all disks
    every_disk_can = len(disks) == sum(1 for d in machine.block.drives
                                       if d.root is not None and not d.root.read_only)
    common = [s for s in first.image.snapshots if every_disk_can and
              all(qcow2_snapshots.find(d.image, s.name) for d in disks)]
    names = {s.name for s in common}
    partial = {d.name: [s for s in d.image.snapshots if s.name not in names] for d in disks}
    return common, partial
