"""query-block: the -drive images and the devices they are attached to."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import BOOL, INT, STR, Enum, ListOf, Member, Struct

# QEMU's qapi/block-core.json, for the members kvmkit reports
IMAGE_INFO = Struct("ImageInfo", (
    Member("filename", STR), Member("format", STR), Member("dirty-flag", BOOL, True),
    Member("actual-size", INT, True), Member("virtual-size", INT)))
BLOCK_DEVICE_INFO = Struct("BlockDeviceInfo", (
    Member("file", STR), Member("node-name", STR, True), Member("ro", BOOL),
    Member("drv", STR), Member("backing_file_depth", INT), Member("encrypted", BOOL),
    Member("detect_zeroes", Enum("BlockdevDetectZeroesOptions", ("off", "on", "unmap"))),
    Member("bps", INT), Member("bps_rd", INT), Member("bps_wr", INT), Member("iops", INT),
    Member("iops_rd", INT), Member("iops_wr", INT), Member("image", IMAGE_INFO),
    Member("cache", Struct("BlockdevCacheInfo", (Member("writeback", BOOL),
                                                 Member("direct", BOOL),
                                                 Member("no-flush", BOOL)))),
    Member("write_threshold", INT)))
BLOCK_INFO = Struct("BlockInfo", (
    Member("device", STR), Member("qdev", STR, True), Member("type", STR),
    Member("removable", BOOL), Member("locked", BOOL),
    Member("inserted", BLOCK_DEVICE_INFO, True), Member("tray_open", BOOL, True),
    Member("io-status", Enum("BlockDeviceIoStatus", ("ok", "failed", "nospace")), True)))


@command("query-block", returns=ListOf(BLOCK_INFO))
def query_block(ctx):
    out = []
    for drive_id, drive in ctx.machine.drives.items():
        info = {"device": drive_id, "locked": False, "removable": False,
                "inserted": {
                    "iops_rd": 0, "detect_zeroes": "off",
                    "image": {"virtual-size": drive.size, "filename": drive.path,
                              "format": "raw", "actual-size": drive.allocated(),
                              "dirty-flag": False},
                    "iops_wr": 0, "ro": drive.read_only, "node-name": drive.node_name,
                    "backing_file_depth": 0, "drv": "raw", "iops": 0, "bps_wr": 0,
                    "write_threshold": 0, "encrypted": False, "bps": 0, "bps_rd": 0,
                    "cache": {"no-flush": drive.no_flush, "direct": drive.direct,
                              "writeback": drive.writeback},
                    "file": drive.path},
                "io-status": "ok", "type": "unknown"}
        if drive.attached_to:
            info["qdev"] = drive.attached_to
        out.append(info)
    return out


@command("block_resize", args=[Member("device", STR, True), Member("node-name", STR, True),
                               Member("size", INT)])
def block_resize(ctx, size, device=None, node_name=None):
    """A drive, by its id or its node name, to ``size`` bytes; its guest is told."""
    drives = ctx.machine.drives.values()
    drive = next((d for d in drives if d.drive_id == device), None) if device is not None \
        else next((d for d in drives if d.node_name == node_name), None)
    if drive is None:
        raise QmpError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")
    if size < 0:
        raise QmpError("Parameter 'size' expects a >0 size")
    drive.resize(size)
