"""HMP's block job and image commands, over their QMP counterparts: block_stream,
drive_mirror, drive_backup, snapshot_blkdev, commit (QEMU's old synchronous
commit of a drive's top image into its backing file) and qemu-io."""

from __future__ import annotations

import asyncio
import errno
import os

from monitor.hmp.table import HmpContext, hmp
from vmm.block.engine import quiesced
from vmm.block.jobs import CommitWork
from vmm.errors import UserError

_MIRROR_HELP = ("initiates live storage\n\t\t\tmigration for a device. The device's contents "
                "are\n\t\t\tcopied to the new image file, including data that\n\t\t\tis "
                "written after the command is started.\n\t\t\tThe -n flag requests QEMU to "
                "reuse the image found\n\t\t\tin new-image-file, instead of recreating it from "
                "scratch.\n\t\t\tThe -f flag requests QEMU to copy the whole disk,\n\t\t\tso "
                "that the result does not need a backing file.\n\t\t\t")
_BACKUP_HELP = ("initiates a point-in-time\n\t\t\tcopy for a device. The device's contents are"
                "\n\t\t\tcopied to the new image file, excluding data that\n\t\t\tis written "
                "after the command is started.\n\t\t\tThe -n flag requests QEMU to reuse the "
                "image found\n\t\t\tin new-image-file, instead of recreating it from scratch."
                "\n\t\t\tThe -f flag requests QEMU to copy the whole disk,\n\t\t\tso that the "
                "result does not need a backing file.\n\t\t\tThe -c flag requests QEMU to "
                "compress backup data\n\t\t\t(if the target format supports it).\n\t\t\t")


@hmp("block_stream", "device:B,speed:o?,base:s?", "device [speed [base]]",
     "copy data from a backing file into a block device")
async def block_stream_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {k: args[k] for k in ("speed", "base") if args.get(k) is not None}
    await ctx.call("block-stream", device=args["device"], **extra)
    return ""


def _copy_args(args: dict) -> dict:
    out = {"device": args["device"], "target": args["target"],
           "sync": "full" if args["full"] else "top",
           "mode": "existing" if args["reuse"] else "absolute-paths"}
    if args.get("format"):
        out["format"] = args["format"]
    return out


@hmp("drive_mirror", "reuse:-n,full:-f,device:B,target:s,format:s?",
     "[-n] [-f] device target [format]", _MIRROR_HELP)
async def drive_mirror_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("drive-mirror", **_copy_args(args))
    return ""


@hmp("drive_backup", "reuse:-n,full:-f,compress:-c,device:B,target:s,format:s?",
     "[-n] [-f] [-c] device target [format]", _BACKUP_HELP)
async def drive_backup_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("drive-backup", compress=args["compress"], **_copy_args(args))
    return ""


@hmp("snapshot_blkdev", "reuse:-n,device:B,snapshot-file:s?,format:s?",
     "[-n] device [new-image-file] [format]",
     "initiates a live snapshot\n\t\t\tof device. If a new image file is specified, the"
     "\n\t\t\tnew image file will become the new root image.\n\t\t\tIf format is specified, "
     "the snapshot file will\n\t\t\tbe created in that format.\n\t\t\tThe default format is "
     "qcow2.  The -n flag requests QEMU\n\t\t\tto reuse the image found in new-image-file, "
     "instead of\n\t\t\trecreating it from scratch.")
async def snapshot_blkdev_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {"format": args["format"]} if args.get("format") else {}
    if args.get("snapshot-file"):
        extra["snapshot-file"] = args["snapshot-file"]
    await ctx.call("blockdev-snapshot-sync", device=args["device"],
                   mode="existing" if args["reuse"] else "absolute-paths", **extra)
    return ""


def _commit_into_backing(top) -> None:
    """What the top image holds goes into its backing image, then the top is made
    empty (the chain reads the same, from lower down)."""
    base = top.backing
    if base.write_refused_by(f"node '{top.name}'"):      # another image reads it
        raise OSError(errno.EACCES, os.strerror(errno.EACCES))
    was_read_only = base.read_only
    try:
        base.set_read_only(False)
    except UserError:                   # another process's (or node's) lock refuses it
        raise OSError(errno.EACCES, os.strerror(errno.EACCES)) from None
    try:
        work = CommitWork(top, base)      # block-commit's copy, run here to the end
        while work.step():
            pass
        base.image.flush()
        if hasattr(top.image, "make_empty"):
            top.image.make_empty()
    finally:
        if was_read_only:
            base.set_read_only(True)


@hmp("commit", "device:B", "device|all",
     "commit changes to the disk images (if -snapshot is used) or backing files")
async def commit_cmd(ctx: HmpContext, args: dict) -> str:
    machine, name = ctx.machine, args["device"]
    with machine.lock:
        block = machine.block
        if name == "all":
            tops = [d.root for d in block.drives if d.root is not None and
                    d.root.backing is not None and not d.root.read_only]
        else:
            drive = block.find_drive(name)
            if drive is None:
                return f"Device '{name}' not found\n"
            if drive.root is None:
                return f"Device '{name}' has no medium\n"
            if drive.root.backing is None:
                return f"'commit' error for '{name}': Operation not supported\n"
            tops = [drive.root]
    def commit_all() -> None:
        with machine.lock, quiesced():          # the guest's disk requests wait
            for top in tops:
                _commit_into_backing(top)

    try:
        await asyncio.to_thread(commit_all)
    except OSError as e:
        return f"'commit' error for '{name}': {e.strerror}\n"
    return ""
