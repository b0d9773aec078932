"""Raw images: the file protocol node (RawImage, QEMU's "file" driver) and the raw
format over it (RawFormat, QEMU's "raw": the file's bytes, from an offset).

RawImage is a BlockBackend: pread/pwrite, fsync, and fallocate for
discard (PUNCH_HOLE, when the drive says discard=unmap) and write-zeroes
(PUNCH_HOLE where unmapping is allowed, else ZERO_RANGE, else written zeroes).

With ``direct`` (cache=none, directsync) the file is opened O_DIRECT: buffers
aligned to the file's block size (a guest's pages) go to the disk as they are;
others go through a page-aligned bounce buffer (one per I/O thread). A transfer
not on the block size (qcow2's metadata updates) is widened to it, and such a
write is read-modify-written while no other write runs, so two never interleave
on a block; with ``no_flush`` (cache=unsafe) flushes do nothing."""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import mmap
import os
import threading

from vmm import fdsets
from vmm.block import locking as image_locks
from vmm.errors import UserError

FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
ZERO_CHUNK = 1 << 20
BOUNCE_SIZE = 1 << 20            # O_DIRECT transfers go through this much at a time
IOV_MAX = 1024                   # Linux's limit on one preadv's buffers
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    return _libc.fallocate(fd, mode | FALLOC_FL_KEEP_SIZE, offset, length) == 0


class RawImage:
    driver = "file"

    def __init__(self, path: str, read_only: bool = False, unmap: bool = False,
                 direct: bool = False, no_flush: bool = False, locking: bool = True) -> None:
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        self.fd = fdsets.open_path(path, flags | (os.O_DIRECT if direct else 0))
        if direct and path.startswith(fdsets.PREFIX):     # a set's fd keeps its own flags
            fcntl.fcntl(self.fd, fcntl.F_SETFL, fcntl.fcntl(self.fd, fcntl.F_GETFL) | os.O_DIRECT)
        self.read_only = read_only
        self.unmap = unmap                   # -drive discard=unmap
        self.no_flush = no_flush
        self.discards_ok = self.discards_failed = self.discarded_bytes = 0
        self.wr_highest_offset = 0           # query-blockstats' for the node
        self.size = os.fstat(self.fd).st_size
        self.direct = direct
        self._bounces = threading.local()
        self._writes = _SharedLock()          # read-modify-writes exclude other writes
        self.align = self._probe_alignment() if direct else 1
        self.path, self.locking = path, locking
        try:
            self.set_permissions(in_use=False)
        except BaseException:
            self.close()
            raise

    def set_permissions(self, in_use: bool) -> None:
        """QEMU's locks for how the image is used. While a device uses it (as a
        virtio-blk with share-rw=off takes it), a writer excludes other writers, and
        a reader excludes writers too; until then it only reads, and lets others
        write, as QEMU does for a -drive no device has taken yet."""
        self.in_use = in_use
        if not self.locking:
            return
        if not in_use:
            image_locks.lock(self.fd, self.path, image_locks.CONSISTENT_READ, image_locks.ALL)
            return
        perm = image_locks.CONSISTENT_READ | (0 if self.read_only else
                                              image_locks.WRITE | image_locks.RESIZE)
        image_locks.lock(self.fd, self.path, perm, image_locks.ALL & ~image_locks.WRITE)

    def set_read_only(self, read_only: bool) -> None:
        """Reopens the file for reading only or for writing too, keeping its fd
        number (the new file description takes the old one's place and locks)."""
        if read_only == self.read_only:
            return
        flags = (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC
        try:
            new = fdsets.open_path(self.path, flags | (os.O_DIRECT if self.direct else 0))
        except OSError as e:
            raise UserError(f"Could not reopen file: {e.strerror}") from None
        if read_only:
            self.flush()
        os.dup2(new, self.fd, inheritable=False)
        os.close(new)
        self.read_only = read_only
        try:
            self.set_permissions(self.in_use)
        except UserError:                # another user's locks refuse it: as it was
            self.set_read_only(not read_only)
            raise

    def _bounce(self) -> memoryview:
        bounce = getattr(self._bounces, "buffer", None)
        if bounce is None:
            bounce = self._bounces.buffer = memoryview(mmap.mmap(-1, BOUNCE_SIZE))
        return bounce

    def _probe_alignment(self) -> int:
        """The smallest O_DIRECT transfer the file takes: 512 bytes, else 4 KiB."""
        try:
            os.preadv(self.fd, [self._bounce()[:512]], 0)
            return 512
        except OSError:
            return 4096

    def read_into(self, offset: int, buffers: list[memoryview]) -> None:
        if self.direct:
            self._read_direct(offset, buffers)
            return
        total = sum(len(view) for view in buffers)
        done = os.preadv(self.fd, buffers, offset) if len(buffers) <= IOV_MAX else 0
        if done == total:                    # one call for the whole scatter list
            return
        position = 0
        for view in buffers:                 # a short read: the rest view by view
            start = min(max(done - position, 0), len(view))
            if start < len(view):
                got = os.preadv(self.fd, [view[start:]], offset + position + start)
                if start + got < len(view):  # past the end of a sparse tail: zeroes
                    view[start + got:] = bytes(len(view) - start - got)
            position += len(view)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        view = memoryview(data)
        self.wr_highest_offset = max(self.wr_highest_offset, offset + len(view))
        if self.direct:
            self._write_direct(offset, view)
            return
        while view:
            done = os.pwrite(self.fd, view, offset)
            view, offset = view[done:], offset + done

    def flush(self) -> None:
        if not self.no_flush:
            os.fsync(self.fd)

    # -- O_DIRECT: whole blocks, through the aligned buffer -------------------------
    def _read_aligned(self, offset: int, length: int) -> bytearray:
        """``length`` bytes from ``offset``, read in whole blocks (zeroes past the end)."""
        align, bounce = self.align, self._bounce()
        start = offset - offset % align
        end = -(-(offset + length) // align) * align
        data = bytearray()
        while start + len(data) < end:
            chunk = min(BOUNCE_SIZE, end - start - len(data))
            done = os.preadv(self.fd, [bounce[:chunk]], start + len(data))
            data += bounce[:done]
            if done < chunk:                 # the end of the file
                data += bytes(end - start - len(data))
        skip = offset - start
        return data[skip:skip + length]

    def _aligned(self, offset: int, views: list[memoryview]) -> bool:
        """Whether O_DIRECT can take these buffers as they are."""
        if offset % self.align:
            return False
        for view in views:
            if len(view) % self.align or view.readonly:
                return False
            anchor = ctypes.c_char.from_buffer(view)
            address = ctypes.addressof(anchor)
            del anchor
            if address % self.align:
                return False
        return True

    def _read_direct(self, offset: int, buffers: list[memoryview]) -> None:
        if self._aligned(offset, buffers):
            total = sum(len(view) for view in buffers)
            done = os.preadv(self.fd, buffers, offset)
            if done < total:                 # the end of the file, or a short read
                self._scatter(self._read_aligned(offset + done, total - done), buffers, done)
            return
        self._scatter(self._read_aligned(offset, sum(len(v) for v in buffers)), buffers, 0)

    @staticmethod
    def _scatter(data: bytes | bytearray, buffers: list[memoryview], skip: int) -> None:
        """``data`` into the buffers, from byte ``skip`` of them on."""
        at = -skip
        for view in buffers:
            start = max(-at, 0)
            if start < len(view):
                view[start:] = data[at + start:at + len(view)]
            at += len(view)

    def _write_direct(self, offset: int, view: memoryview) -> None:
        align = self.align
        if self._aligned(offset, [view]):
            with self._writes.shared():
                while view:
                    done = os.pwritev(self.fd, [view], offset)
                    view, offset = view[done:], offset + done
            return
        bounce = self._bounce()
        with self._writes.exclusive():
            if offset % align or len(view) % align:
                start = offset - offset % align
                whole = self._read_aligned(start, -(-(offset + len(view) - start) // align)
                                           * align)
                whole[offset - start:offset - start + len(view)] = view
                view, offset = memoryview(whole), start
            while view:
                chunk = min(BOUNCE_SIZE, len(view))
                bounce[:chunk] = view[:chunk]
                done = os.pwritev(self.fd, [bounce[:chunk]], offset)
                view, offset = view[done:], offset + done

    def discard(self, offset: int, length: int) -> None:
        if self.unmap:
            if _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE, offset, length):
                self.discards_ok += 1
                self.discarded_bytes += length
            else:
                self.discards_failed += 1

    def discard_counts(self) -> dict[str, int]:
        """query-blockstats' driver-specific counts for the file driver."""
        return {"discard-nb-ok": self.discards_ok, "discard-nb-failed": self.discards_failed,
                "discard-bytes-ok": self.discarded_bytes}

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.wr_highest_offset = max(self.wr_highest_offset, offset + length)
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


class RawFormat:
    """The raw format: the guest sees the file's bytes from ``offset`` on (``size``
    of them, or all the rest)."""

    driver = "raw"

    def __init__(self, file, offset: int = 0, size: int | None = None) -> None:
        self.file = file
        self.read_only = file.read_only
        self.offset = offset
        self.fixed_size = size
        self.wr_highest_offset = 0

    @property
    def size(self) -> int:
        if self.fixed_size is not None:
            return self.fixed_size
        return max(self.file.size - self.offset, 0)

    def read_into(self, offset: int, buffers: list[memoryview]) -> None:
        self.file.read_into(self.offset + offset, buffers)

    def write(self, offset: int, data: bytes | memoryview) -> None:
        self.wr_highest_offset = max(self.wr_highest_offset, offset + len(data))
        self.file.write(self.offset + offset, data)

    def flush(self) -> None:
        self.file.flush()

    def discard(self, offset: int, length: int) -> None:
        self.file.discard(self.offset + offset, length)

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.wr_highest_offset = max(self.wr_highest_offset, offset + length)
        self.file.write_zeroes(self.offset + offset, length, may_unmap)

    def truncate(self, size: int) -> None:
        if self.offset or self.fixed_size is not None:
            raise UserError("Cannot resize fixed-size raw disks")
        self.file.truncate(size)

    def set_read_only(self, read_only: bool) -> None:
        self.read_only = read_only         # the file node under it is reopened first

    def close(self) -> None:
        """Its file node is the graph's to close."""


class _SharedLock:
    """Many holders in shared mode, or one in exclusive mode."""

    def __init__(self) -> None:
        self._condition = threading.Condition()
        self._shared = 0
        self._exclusive = False

    @contextlib.contextmanager
    def shared(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive)
            self._shared += 1
        try:
            yield
        finally:
            with self._condition:
                self._shared -= 1
                self._condition.notify_all()

    @contextlib.contextmanager
    def exclusive(self):
        with self._condition:
            self._condition.wait_for(lambda: not self._exclusive and not self._shared)
            self._exclusive = True
        try:
            yield
        finally:
            with self._condition:
                self._exclusive = False
                self._condition.notify_all()
