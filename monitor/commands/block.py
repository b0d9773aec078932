"""query-block: the -drive images and the devices they are attached to."""

from __future__ import annotations

from monitor.registry import command
from monitor.types import ANY, ListOf


@command("query-block", returns=ListOf(ANY))
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
                    "cache": {"no-flush": False, "direct": False,
                              "writeback": drive.writeback},
                    "file": drive.path},
                "io-status": "ok", "type": "unknown"}
        if drive.attached_to:
            info["qdev"] = drive.attached_to
        out.append(info)
    return out
