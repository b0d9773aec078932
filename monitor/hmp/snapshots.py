"""HMP savevm, loadvm, delvm and `info snapshots`, with QEMU 7.2's text."""

from __future__ import annotations

import math
import time

from monitor.commands.snapshots import delete_snapshot, load_snapshot, save_snapshot
from monitor.hmp.table import HmpContext, hmp


@hmp("savevm", "name:s?", "tag",
     "save a VM snapshot. If no tag is provided, a new snapshot is created")
async def savevm_cmd(ctx: HmpContext, args: dict) -> str:
    name = args.get("name") or time.strftime("vm-%Y%m%d%H%M%S")
    await save_snapshot(ctx.machine, name)
    return ""


@hmp("loadvm", "name:s", "tag", "restore a VM snapshot from its tag")
async def loadvm_cmd(ctx: HmpContext, args: dict) -> str:
    await load_snapshot(ctx.machine, args["name"])
    return ""


@hmp("delvm", "name:s", "tag", "delete a VM snapshot from its tag")
async def delvm_cmd(ctx: HmpContext, args: dict) -> str:
    await delete_snapshot(ctx.machine, args["name"])
    return ""


def _size(size: int) -> str:
    """QEMU's size_to_str (1.22 MiB): the unit changes at 1000 of the one below."""
    exponent = math.frexp(size / (1000.0 / 1024))[1]
    index = int((exponent - 1) / 10)
    prefix = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")[index]
    return f"{size / 2 ** (index * 10):.3g} {prefix}B"


HEADER = f"{'ID':<10}{'TAG':<17}{'VM SIZE':>8}{'DATE':>20}{'VM CLOCK':>13}{'ICOUNT':>11}\n"


def snapshot_line(snapshot, shown_id: str) -> str:
    date = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(snapshot.date_sec))
    ns = snapshot.vm_clock_nsec
    secs = ns // 1_000_000_000
    clock = f"{secs // 3600:02d}:{secs // 60 % 60:02d}:{secs % 60:02d}.{ns // 1_000_000 % 1000:03d}"
    icount = "" if snapshot.icount is None else str(snapshot.icount)
    return (f"{shown_id:<9} {snapshot.name:<16} {_size(snapshot.vm_state_size):>8}"
            f"{date:>20}{clock:>13}{icount:>11}\n")


@hmp("snapshots", "", "", "show the currently saved VM snapshots", info=True)
async def info_snapshots(ctx: HmpContext, args: dict) -> str:
    from vmm.errors import UserError
    from vmm.migration import snapshots

    try:
        common, partial = snapshots.listing(ctx.machine)
    except UserError as e:
        return f"{e}\n"
    if not common and not any(partial.values()):
        return "There is no snapshot available.\n"
    out = "List of snapshots present on all disks:\n"
    if common:
        out += HEADER + "".join(snapshot_line(s, "--") for s in common)
    else:
        out += "None\n"
    for disk, alone in partial.items():
        if alone:
            out += f"\nList of partial (non-loadable) snapshots on '{disk}':\n" + HEADER
            out += "".join(snapshot_line(s, s.id) for s in alone)
    return out


@hmp("snapshot_blkdev_internal", "device:B,name:s", "device name",
     "take an internal snapshot of device.\n\t\t\tThe format of the image used by device "
     "must\n\t\t\tsupport it, such as qcow2.\n\t\t\t")
async def snapshot_blkdev_internal_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("blockdev-snapshot-internal-sync", device=args["device"], name=args["name"])
    return ""


@hmp("snapshot_delete_blkdev_internal", "device:B,name:s,id:s?", "device name [id]",
     "delete an internal snapshot of device.\n\t\t\tIf id is specified, qemu will try "
     "delete\n\t\t\tthe snapshot matching both id and name.\n\t\t\tThe format of the "
     "image used by device must\n\t\t\tsupport it, such as qcow2.\n\t\t\t")
async def snapshot_delete_blkdev_internal_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {"id": args["id"]} if args.get("id") else {}
    await ctx.call("blockdev-snapshot-delete-internal-sync", device=args["device"],
                   name=args["name"], **extra)
    return ""
