"""What a disk device (virtio-blk) sees of its image: a BlockBackend.

Every call may block on the host's disk, so devices make them through an
IoEngine (vmm/block/engine.py), never on a vCPU thread or under the machine
lock. Errors are OSError, which the device reports to the guest as an I/O error.
"""

from __future__ import annotations

from typing import Protocol


class BlockBackend(Protocol):
    size: int                   # bytes the guest sees
    read_only: bool

    def read_into(self, offset: int, buffers: list[memoryview]) -> None:
        """Fills the buffers in turn from ``offset``."""

    def write(self, offset: int, data: bytes | memoryview) -> None: ...

    def flush(self) -> None:
        """What was written reaches stable storage."""

    def discard(self, offset: int, length: int) -> None:
        """The guest no longer needs the range (honoured only where the drive says
        discard=unmap; the data read back is then unspecified)."""

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        """The range reads back as zeroes; ``may_unmap`` lets it be deallocated."""

    def truncate(self, size: int) -> None:
        """The image now holds ``size`` bytes (block_resize)."""

    def close(self) -> None: ...
