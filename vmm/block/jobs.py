"""The data work of QEMU's block jobs: stream, commit, mirror and backup.

Each job walks the disk in CHUNK-sized steps (``step`` runs one, on a worker
thread; the monitor's job runner in monitor/commands/jobs.py paces, pauses and
cancels between steps) and then changes the graph (``finish``, under the
machine lock, with the guest's I/O drained).

Guest writes during a job reach it through the source node's observers
(Drive calls ``before_write`` and ``after_write`` around every write):
- mirror (and active commit) copies each written range to the target once it
  is written, under the job's lock, so the target keeps up with the source
  (QEMU's write-blocking copy mode);
- backup copies a range's old data to the target before the guest's write
  replaces it (copy-before-write), so the target holds the disk as it was
  when the job started.
"""

from __future__ import annotations

import threading
from collections import deque

from vmm.block.dirty_bitmap import DirtyBitmap
from vmm.block.graph import Node

CHUNK = 64 * 1024


def _chunks(size: int):
    for offset in range(0, size, CHUNK):
        yield offset, min(CHUNK, size - offset)


def allocated_above(top: Node, base: Node | None, offset: int, length: int) -> bool:
    """Whether a node from ``top`` down to, not including, ``base`` has its own data
    (or zeroes) for the range: a raw image has data everywhere."""
    for node in top.chain():
        if node is base:
            return False
        image = node.image
        if not hasattr(image, "allocated") or image.allocated(offset, length):
            return True
    return False


def _copy(source: Node, target: Node, offset: int, length: int) -> None:
    """The range as the source reads it, written to the target (zeroes skipped where
    the target is known to read zeroes already is the caller's choice)."""
    buf = bytearray(length)
    source.image.read_into(offset, [memoryview(buf)])
    target.image.write(offset, buf)


class BlockJobWork:
    """What every job's work has: a length, progress, and a cursor over the disk."""

    needs_complete = False           # mirror and active commit wait, ready, for complete

    def __init__(self, size: int) -> None:
        self.size = size
        self.total = size                # query-block-jobs' len
        self.progress = 0                # and offset
        self.cursor = 0

    def step(self) -> bool:
        """One chunk (or a few) of the first pass; False once there is no more."""
        if self.cursor >= self.size:
            return False
        offset = self.cursor
        length = min(CHUNK, self.size - offset)
        self.cursor += length
        self.chunk(offset, length)
        return True

    def chunk(self, offset: int, length: int) -> None:
        raise NotImplementedError

    def start(self) -> None:
        """Observers go on, before the first step."""

    def stop(self) -> None:
        """Observers come off, whatever the outcome."""


class StreamWork(BlockJobWork):
    """block-stream: the data of ``top``'s backing images above ``base`` is copied
    into ``top``, which then backs onto ``base`` (or nothing)."""

    def __init__(self, top: Node, base: Node | None) -> None:
        super().__init__(top.image.size)
        self.top, self.base = top, base

    def chunk(self, offset: int, length: int) -> None:
        if self.top.backing is not None and \
                allocated_above(self.top.backing, self.base, offset, length):
            self.top.image.copy_up(offset, length)
        self.progress += length


class CommitWork(BlockJobWork):
    """block-commit of a node below the active one: what ``top`` and the images
    between it and ``base`` hold is written into ``base``."""

    def __init__(self, top: Node, base: Node) -> None:
        super().__init__(top.image.size)
        self.top, self.base = top, base

    def chunk(self, offset: int, length: int) -> None:
        if allocated_above(self.top, self.base, offset, length):
            _copy(self.top, self.base, offset, length)
        self.progress += length


class _WatchesWrites(BlockJobWork):
    """A job that sees the guest's writes to its source while it runs."""

    source: Node

    def start(self) -> None:
        self.source.observers.append(self)

    def stop(self) -> None:
        if self in self.source.observers:
            self.source.observers.remove(self)


class MirrorWork(_WatchesWrites):
    """drive-mirror, blockdev-mirror and active block-commit: the source's data goes
    to the target, and from then on every write the guest makes, until the job
    completes (the drive switches to the target) or is cancelled."""

    needs_complete = True

    def __init__(self, source: Node, target: Node, sync: str,
                 base: Node | None = None) -> None:
        super().__init__(source.image.size)
        self.source, self.target, self.sync, self.base = source, target, sync, base
        self.lock = threading.Lock()
        self.todo = deque((o, n) for o, n in _chunks(self.size) if self._wanted(o, n))
        self.total = sum(n for _, n in self.todo)

    def _wanted(self, offset: int, length: int) -> bool:
        if self.sync == "none":
            return False
        if self.sync == "top":
            return allocated_above(self.source, self.source.backing, offset, length)
        return allocated_above(self.source, self.base, offset, length)

    def step(self) -> bool:
        if not self.todo:
            return False
        offset, length = self.todo.popleft()
        with self.lock:
            _copy(self.source, self.target, offset, length)
            self.progress += length
        return True

    def before_write(self, offset: int, length: int) -> None:
        pass

    def after_write(self, offset: int, length: int) -> None:
        if length:
            with self.lock:
                _copy(self.source, self.target, offset, length)
                self.total += length
                self.progress += length


class BackupWork(_WatchesWrites):
    """drive-backup and blockdev-backup: the target gets the source as it was when
    the job started. ``bitmap`` (sync=incremental or bitmap) limits the copy to
    the chunks it marks; sync=none copies only what the guest overwrites, until
    the job is cancelled."""

    def __init__(self, source: Node, target: Node, sync: str,
                 bitmap: DirtyBitmap | None = None) -> None:
        super().__init__(source.image.size)
        self.source, self.target, self.sync, self.bitmap = source, target, sync, bitmap
        self.lock = threading.Lock()
        self.done: set[int] = set()           # chunk offsets copied (or not wanted)
        self.wanted = deque(o for o, n in _chunks(self.size) if self._wanted(o, n))
        self.in_scope = set(self.wanted)
        self.waits_for_cancel = sync == "none"
        # QEMU's len: what the job has to copy (all of it, or what the bitmap marks)
        self.total = sum(min(CHUNK, self.size - o) for o in self.wanted)

    def _wanted(self, offset: int, length: int) -> bool:
        if self.sync == "top":
            return allocated_above(self.source, self.source.backing, offset, length)
        if self.bitmap is not None:
            first = offset // self.bitmap.granularity
            last = (offset + length - 1) // self.bitmap.granularity
            return any(self.bitmap.is_dirty(c) for c in range(first, last + 1)
                       if c < self.bitmap.chunks)
        return self.sync == "full"

    def _copy_old(self, offset: int) -> None:
        """Under the lock: the chunk's data, before anyone changes it, to the target."""
        if offset in self.done:
            return
        length = min(CHUNK, self.size - offset)
        buf = bytearray(length)
        self.source.image.read_into(offset, [memoryview(buf)])
        if any(buf):
            self.target.image.write(offset, buf)
        self.done.add(offset)

    def step(self) -> bool:
        while self.wanted:
            offset = self.wanted.popleft()
            with self.lock:
                copied = offset not in self.done
                self._copy_old(offset)
            self.progress += min(CHUNK, self.size - offset)
            if copied:
                return True
        if not self.waits_for_cancel:
            self.progress = self.total
        return False

    def before_write(self, offset: int, length: int) -> None:
        if not length:
            return
        wanted_all = self.sync in ("full", "none")
        with self.lock:
            for chunk in range(offset // CHUNK * CHUNK, offset + length, CHUNK):
                if chunk not in self.done and (wanted_all or chunk in self.in_scope):
                    self._copy_old(chunk)

    def after_write(self, offset: int, length: int) -> None:
        pass
