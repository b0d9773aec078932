"""Dirty bitmaps (block-dirty-bitmap-*): which chunks of a node's guest-visible
data were written since the bitmap was made or cleared, one bit per
``granularity`` bytes. Incremental backups copy what a bitmap marks.

Bitmaps live in memory; persistent ones are read from their qcow2 image when it
opens and written back when it closes (vmm/block/qcow2_bitmaps.py).
"""

from __future__ import annotations

import hashlib
import threading


class DirtyBitmap:
    def __init__(self, name: str, size: int, granularity: int, recording: bool = True,
                 persistent: bool = False, inconsistent: bool = False) -> None:
        self.name = name
        self.size = size
        self.granularity = granularity
        self.recording = recording
        self.persistent = persistent        # kept in its qcow2 image (qcow2_bitmaps.py)
        self.inconsistent = inconsistent    # found in_use in the image: not to be trusted
        self.busy = False                   # a backup job is using it
        self.bits = bytearray(-(-self.chunks // 8))
        self._lock = threading.Lock()       # marked from the I/O threads

    @property
    def chunks(self) -> int:
        return -(-self.size // self.granularity)

    # -- what writes do ------------------------------------------------------------
    def after_write(self, offset: int, length: int) -> None:
        if self.recording and length:
            self.mark(offset, length)

    def before_write(self, offset: int, length: int) -> None:
        """Bitmaps only note what was written (the observer's other half)."""

    def mark(self, offset: int, length: int) -> None:
        first = offset // self.granularity
        last = min((offset + length - 1) // self.granularity, self.chunks - 1)
        with self._lock:
            for chunk in range(first, last + 1):
                self.bits[chunk >> 3] |= 1 << (chunk & 7)

    # -- what the monitor does ---------------------------------------------------------
    def is_dirty(self, chunk: int) -> bool:
        return bool(self.bits[chunk >> 3] >> (chunk & 7) & 1)

    def dirty_chunks(self) -> list[int]:
        return [chunk for chunk in range(self.chunks) if self.is_dirty(chunk)]

    def count(self) -> int:
        """Dirty bytes, as query-block counts them: whole chunks."""
        return len(self.dirty_chunks()) * self.granularity

    def clear(self) -> None:
        with self._lock:
            self.bits[:] = bytes(len(self.bits))

    def merge_from(self, other: DirtyBitmap) -> None:
        """Marks what ``other`` marks (their granularities may differ)."""
        for chunk in other.dirty_chunks():
            start = chunk * other.granularity
            self.mark(start, min(other.granularity, other.size - start))

    def resize(self, size: int) -> None:
        """block_resize: the bitmap follows the disk (new chunks clean)."""
        with self._lock:
            self.size = size
            length = -(-self.chunks // 8)
            self.bits = self.bits[:length].ljust(length, b"\0")
            spare = self.chunks % 8
            if spare and len(self.bits) * 8 > self.chunks:     # no bits past the end
                self.bits[-1] &= (1 << spare) - 1

    def copy(self) -> DirtyBitmap:
        twin = DirtyBitmap(self.name, self.size, self.granularity, self.recording)
        twin.bits[:] = self.bits
        return twin

    def sha256(self) -> str:
        """x-debug-block-dirty-bitmap-sha256: QEMU hashes its bitmap's lowest level,
        64-bit little-endian words with bit N for chunk N."""
        words = -(-self.chunks // 64)
        return hashlib.sha256(bytes(self.bits).ljust(words * 8, b"\0")).hexdigest()

    def info(self) -> dict:
        out = {"name": self.name, "recording": self.recording, "persistent": self.persistent,
               "busy": self.busy, "granularity": self.granularity, "count": self.count()}
        if self.inconsistent:
            out["inconsistent"] = True
        return out


def default_granularity(cluster_size: int | None) -> int:
    """QEMU's: the image's cluster size, within 4 KiB..64 KiB (64 KiB without one)."""
    if not cluster_size:
        return 65536
    return min(max(cluster_size, 4096), 65536)
