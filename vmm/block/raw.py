"""A raw image file as a BlockBackend: pread/pwrite, fsync, and fallocate for
discard (PUNCH_HOLE, when the drive says discard=unmap) and write-zeroes
(PUNCH_HOLE where unmapping is allowed, else ZERO_RANGE, else written zeroes)."""

from __future__ import annotations

import ctypes
import os

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
ZERO_CHUNK = 1 << 20
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    return _libc.fallocate(fd, mode | FALLOC_FL_KEEP_SIZE, offset, length) == 0


class RawImage:
    def __init__(self, path: str, read_only: bool = False, unmap: bool = False) -> None:
        self.fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        self.read_only = read_only
        self.unmap = unmap                   # -drive discard=unmap
        self.size = os.fstat(self.fd).st_size

    def read_into(self, offset: int, buffers: list[memoryview]) -> None:
        for view in buffers:
            done = os.preadv(self.fd, [view], offset)
            if done < len(view):             # past the end of a sparse tail: zeroes
                view[done:] = bytes(len(view) - done)
            offset += len(view)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def flush(self) -> None:
        os.fsync(self.fd)

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

    def close(self) -> None:
        os.close(self.fd)
