"""-drive images (raw files) as the machine keeps them for devices and query-block."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass

from vmm.block.backend import BlockBackend
from vmm.block.raw import RawImage

# -drive discard= values, as QEMU spells and means them
DISCARD_MODES = {"ignore": "ignore", "off": "ignore", "unmap": "unmap", "on": "unmap"}


@dataclass
class Drive:
    drive_id: str
    path: str
    read_only: bool
    node_name: str                   # QEMU's generated "#block" node name
    attached_to: str = ""            # QOM path of the device using it
    discard: str = "ignore"          # -drive discard=: "unmap" passes the guest's discards
    writeback: bool = True           # the write cache (the guest may turn it off)

    @property
    def size(self) -> int:
        return os.stat(self.path).st_size

    def allocated(self) -> int:
        return os.stat(self.path).st_blocks * 512

    def open(self) -> BlockBackend:
        """Its image, as a device reads and writes it."""
        return RawImage(self.path, self.read_only, unmap=self.discard == "unmap")


def drives_from_config(drives: dict[str, dict[str, str]]) -> dict[str, Drive]:
    out = {}
    for counter, (drive_id, opts) in enumerate(drives.items()):
        out[drive_id] = Drive(drive_id, opts["file"],
                              opts.get("readonly") in ("on", "true", "yes"),
                              f"#block{counter}{random.randrange(100):02d}",
                              discard=DISCARD_MODES[opts.get("discard", "ignore")])
    return out
