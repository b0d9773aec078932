"""-drive images (raw files) as the machine keeps them for devices and query-block."""

from __future__ import annotations

import os
import random
from collections.abc import Callable
from dataclasses import dataclass

from vmm.block.backend import BlockBackend
from vmm.block.raw import RawImage
from vmm.errors import UserError

# -drive discard= values, as QEMU spells and means them
DISCARD_MODES = {"ignore": "ignore", "off": "ignore", "unmap": "unmap", "on": "unmap"}
# -drive cache= modes: (write cache on, O_DIRECT, flushes ignored), as QEMU's
CACHE_MODES = {"writeback": (True, False, False), "writethrough": (False, False, False),
               "none": (True, True, False), "directsync": (False, True, False),
               "unsafe": (True, False, True)}


@dataclass
class Drive:
    drive_id: str
    path: str
    read_only: bool
    node_name: str                   # QEMU's generated "#block" node name
    attached_to: str = ""            # QOM path of the device using it
    discard: str = "ignore"          # -drive discard=: "unmap" passes the guest's discards
    cache: str = "writeback"         # -drive cache=
    writeback: bool = True           # the write cache now (the guest may switch it)
    image: BlockBackend | None = None    # open while a device uses it
    on_resize: Callable[[], None] | None = None   # the device's, to tell its guest

    def __post_init__(self) -> None:
        self.writeback = self.cache_writeback

    @property
    def cache_writeback(self) -> bool:
        """The write cache as -drive cache= sets it (a device reset goes back to it)."""
        return CACHE_MODES[self.cache][0]

    @property
    def direct(self) -> bool:
        return CACHE_MODES[self.cache][1]

    @property
    def no_flush(self) -> bool:
        return CACHE_MODES[self.cache][2]

    @property
    def size(self) -> int:
        return os.stat(self.path).st_size

    def allocated(self) -> int:
        return os.stat(self.path).st_blocks * 512

    def open(self) -> BlockBackend:
        """Its image, as a device reads and writes it."""
        self.image = RawImage(self.path, self.read_only, unmap=self.discard == "unmap",
                              direct=self.direct, no_flush=self.no_flush)
        return self.image

    def resize(self, size: int) -> None:
        """block_resize: the image grows or shrinks; its device tells the guest."""
        if self.read_only:
            raise UserError("Image is read-only")
        if self.image is not None:
            self.image.truncate(size)
        else:
            os.truncate(self.path, size)
        if self.on_resize is not None:
            self.on_resize()


def drives_from_config(drives: dict[str, dict[str, str]]) -> dict[str, Drive]:
    out = {}
    for counter, (drive_id, opts) in enumerate(drives.items()):
        out[drive_id] = Drive(drive_id, opts["file"],
                              opts.get("readonly") in ("on", "true", "yes"),
                              f"#block{counter}{random.randrange(100):02d}",
                              discard=DISCARD_MODES[opts.get("discard", "ignore")],
                              cache=opts.get("cache", "writeback"))
    return out
