"""A raw image file as a BlockBackend: pread/pwrite, fsync, and fallocate for
discard (PUNCH_HOLE, when the drive says discard=unmap) and write-zeroes
(PUNCH_HOLE where unmapping is allowed, else ZERO_RANGE, else written zeroes).

With ``direct`` (cache=none, directsync) the file is opened O_DIRECT and data
goes through a page-aligned bounce buffer, since guest buffers need not be
aligned; with ``no_flush`` (cache=unsafe) flushes do nothing."""

from __future__ import annotations

import ctypes
import mmap
import os

from vmm.block import locking

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
ZERO_CHUNK = 1 << 20
BOUNCE_SIZE = 1 << 20            # O_DIRECT transfers go through this much at a time
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    return _libc.fallocate(fd, mode | FALLOC_FL_KEEP_SIZE, offset, length) == 0


class RawImage:
    def __init__(self, path: str, read_only: bool = False, unmap: bool = False,
                 direct: bool = False, no_flush: bool = False) -> None:
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        self.fd = os.open(path, flags | (os.O_DIRECT if direct else 0))
        self.read_only = read_only
        self.unmap = unmap                   # -drive discard=unmap
        self.no_flush = no_flush
        self.size = os.fstat(self.fd).st_size
        self.bounce = mmap.mmap(-1, BOUNCE_SIZE) if direct else None
        # as a virtio-blk with share-rw=off takes it: writers exclude other writers,
        # and a reader excludes writers too
        perm = locking.CONSISTENT_READ | (0 if read_only else locking.WRITE | locking.RESIZE)
        try:
            locking.lock(self.fd, path, perm, locking.ALL & ~locking.WRITE)
        except BaseException:
            self.close()
            raise

    def read_into(self, offset: int, buffers: list[memoryview]) -> None:
        if self.bounce is not None:
            self._read_direct(offset, buffers)
            return
        for view in buffers:
            done = os.preadv(self.fd, [view], offset)
            if done < len(view):             # past the end of a sparse tail: zeroes
                view[done:] = bytes(len(view) - done)
            offset += len(view)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        if self.bounce is not None:
            self._write_direct(offset, view)
            return
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def flush(self) -> None:
        if not self.no_flush:
            os.fsync(self.fd)

    # -- O_DIRECT: whole sectors, through the aligned buffer -----------------------
    def _read_direct(self, offset: int, buffers: list[memoryview]) -> None:
        data = bytearray()
        total = sum(len(view) for view in buffers)
        bounce = memoryview(self.bounce)
        while len(data) < total:
            chunk = min(BOUNCE_SIZE, total - len(data))
            done = os.preadv(self.fd, [bounce[:chunk]], offset + len(data))
            data += bounce[:done]
            if done < chunk:                 # the end of the image
                data += bytes(total - len(data))
        at = 0
        for view in buffers:
            view[:] = data[at:at + len(view)]
            at += len(view)

    def _write_direct(self, offset: int, view: memoryview) -> None:
        bounce = memoryview(self.bounce)
        while view:
            chunk = min(BOUNCE_SIZE, len(view))
            bounce[:chunk] = view[:chunk]
            done = os.pwritev(self.fd, [bounce[:chunk]], offset)
            view, offset = view[done:], offset + done

    def discard(self, offset: int, length: int) -> None:
        if self.unmap:
            _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE, offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if may_unmap and self.unmap and _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE, offset,
                                                   length):
            return
        if _fallocate(self.fd, FALLOC_FL_ZERO_RANGE, offset, length):
            return
        for start in range(offset, offset + length, ZERO_CHUNK):   # no ZERO_RANGE here
            self.write(start, bytes(min(ZERO_CHUNK, offset + length - start)))

    def truncate(self, size: int) -> None:
        os.ftruncate(self.fd, size)
        self.size = size

    def close(self) -> None:
        os.close(self.fd)
        if self.bounce is not None:
            self.bounce.close()
