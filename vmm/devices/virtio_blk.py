"""virtio-blk (virtio spec 5.2) over a raw image file, with QEMU 7.2's features
and configuration.

Each request is a chain: a readable header (type, reserved, sector), data
buffers (readable for writes, writable for reads) and one writable status
byte. Reads and writes go to the file with pread/pwrite, FLUSH is fsync,
GET_ID returns the drive's serial. DISCARD and WRITE_ZEROES take one segment
(sector, count, flags): a discard punches a hole in the image when the drive
says ``discard=unmap`` (QEMU's default, ``ignore``, does nothing); write-zeroes
punches one too when both the guest and the drive allow unmapping, else
zeroes the range. The write cache is on unless the guest turns it off
(CONFIG_WCE, or no FLUSH); with it off every write is followed by fdatasync.
A request past the end of the disk, or of an unknown type, gets IOERR/UNSUPP
rather than touching anything. The geometry is QEMU's guess (see guess_geometry).
"""

from __future__ import annotations

import ctypes
import logging
import os
import struct

from vmm.drives import Drive
from vmm.virtio.device import VirtioDevice
from vmm.virtio.queue import VirtqueueError

log = logging.getLogger(__name__)

SECTOR = 512
T_IN, T_OUT, T_FLUSH, T_GET_ID, T_DISCARD, T_WRITE_ZEROES = 0, 1, 4, 8, 11, 13
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
F_SEG_MAX, F_GEOMETRY, F_RO, F_BLK_SIZE, F_FLUSH = 1 << 2, 1 << 4, 1 << 5, 1 << 6, 1 << 9
F_TOPOLOGY, F_CONFIG_WCE, F_MQ, F_DISCARD, F_WRITE_ZEROES = \
    1 << 10, 1 << 11, 1 << 12, 1 << 13, 1 << 14
F_RING_INDIRECT_DESC, F_RING_EVENT_IDX = 1 << 28, 1 << 29
QUEUE_SIZE = 256                    # QEMU's queue-size
SEG_MAX = QUEUE_SIZE - 2            # QEMU's: the queue less the header and status
MAX_DISCARD_SECTORS = MAX_WRITE_ZEROES_SECTORS = 0x3FFFFF
WRITEBACK_AT = 32                   # the config's writeback byte
WRITE_ZEROES_UNMAP = 1
ID_BYTES = 20
FALLOC_FL_KEEP_SIZE, FALLOC_FL_PUNCH_HOLE, FALLOC_FL_ZERO_RANGE = 0x01, 0x02, 0x10
_libc = ctypes.CDLL(None, use_errno=True)
_libc.fallocate.argtypes = [ctypes.c_int, ctypes.c_int, ctypes.c_int64, ctypes.c_int64]


def _fallocate(fd: int, mode: int, offset: int, length: int) -> bool:
    return _libc.fallocate(fd, mode, offset, length) == 0


def guess_geometry(fd: int, sectors: int) -> tuple[int, int, int]:
    """QEMU's guess at a disk's cylinders, heads and sectors: those an MBR partition
    ending on a cylinder boundary implies, if it has at most 16 heads; otherwise
    16 heads of 63 sectors and as many cylinders as fit (2 to 16383)."""
    mbr = os.pread(fd, SECTOR, 0)
    if len(mbr) == SECTOR and mbr[510:512] == b"\x55\xaa":
        for entry in range(0x1BE, 0x1FE, 16):
            end_head, end_sector = mbr[entry + 5], mbr[entry + 6] & 63
            if not int.from_bytes(mbr[entry + 12:entry + 16], "little") or not end_head \
                    or not end_sector:
                continue
            cylinders = sectors // ((end_head + 1) * end_sector)
            if not 1 <= cylinders <= 16383:
                continue
            if end_head + 1 <= 16:
                return cylinders, end_head + 1, end_sector
            break                   # a BIOS translation: the standard geometry
    return min(max(sectors // (16 * 63), 2), 16383), 16, 63


class VirtioBlk(VirtioDevice):
    name = "virtio-blk"
    device_type = 2
    config_size = 57                # struct virtio_blk_config to write_zeroes_may_unmap

    def __init__(self, drive: Drive, serial: str = "", queues: int = 1) -> None:
        super().__init__()
        self.queue_sizes = (QUEUE_SIZE,) * queues      # request queues, all alike
        self.drive = drive
        self.read_only = drive.read_only
        self.fd = os.open(drive.path, (os.O_RDONLY if self.read_only else os.O_RDWR)
                          | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self.geometry = guess_geometry(self.fd, self.size // SECTOR)
        self.serial = serial.encode()[:ID_BYTES]
        self.features = (F_SEG_MAX | F_GEOMETRY | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY
                         | F_CONFIG_WCE | F_DISCARD | F_WRITE_ZEROES | F_RING_INDIRECT_DESC
                         | F_RING_EVENT_IDX | (F_RO if self.read_only else 0)
                         | (F_MQ if queues > 1 else 0))

    def reset(self) -> None:
        super().reset()
        self.drive.writeback = True

    def features_negotiated(self, features: int) -> None:
        super().features_negotiated(features)
        if not features & F_CONFIG_WCE:      # a driver that cannot flush: write through
            self.drive.writeback = bool(features & F_FLUSH)

    def config_bytes(self) -> bytes:
        cylinders, heads, sectors = self.geometry
        return (struct.pack("<QIIHBBI", self.size // SECTOR, 0, SEG_MAX, cylinders, heads,
                            sectors, SECTOR)
                + struct.pack("<BBHI", 0, 0, 0, 0)                        # topology
                + struct.pack("<BBH", int(self.drive.writeback), 0, len(self.queue_sizes))
                + struct.pack("<III", MAX_DISCARD_SECTORS, 1, 1)
                + struct.pack("<IIB", MAX_WRITE_ZEROES_SECTORS, 1, 1))

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset <= WRITEBACK_AT < offset + size:          # CONFIG_WCE
            self.drive.writeback = bool((value >> (8 * (WRITEBACK_AT - offset))) & 1)

    def queue_notify(self, index: int) -> None:
        queue = self.transport.queue(index)
        while (chain := queue.pop()) is not None:
            written = self._request(chain)
            queue.push(chain.head, written)
        self.transport.interrupt_queue(index)

    def _request(self, chain) -> int:
        """Carries out one request; returns the bytes written to the guest."""
        readable = chain.read_all()
        if len(readable) < 16 or not chain.writable or len(chain.writable[-1]) < 1:
            log.warning("virtio-blk: malformed request dropped")
            return 0
        kind, _reserved, sector = struct.unpack_from("<IIQ", readable)
        data_out = readable[16:]
        buffers = chain.writable[:-1] if len(chain.writable[-1]) == 1 else chain.writable
        status_view = chain.writable[-1]
        offset = sector * SECTOR
        status, written = S_OK, 0
        try:
            if kind == T_IN:
                for view in buffers:
                    if offset + len(view) > self.size:
                        status = S_IOERR
                        break
                    data = os.pread(self.fd, len(view), offset)
                    view[:len(data)] = data
                    offset += len(view)
                    written += len(view)
            elif kind == T_OUT:
                if self.read_only:
                    status = S_IOERR
                elif offset + len(data_out) > self.size:
                    status = S_IOERR
                else:
                    os.pwrite(self.fd, data_out, offset)
                    if not self.drive.writeback:
                        os.fdatasync(self.fd)
            elif kind in (T_DISCARD, T_WRITE_ZEROES):
                status = self._discard_or_zero(kind == T_WRITE_ZEROES, data_out)
            elif kind == T_FLUSH:
                if not self.read_only:
                    os.fsync(self.fd)
            elif kind == T_GET_ID:
                ident = self.serial.ljust(ID_BYTES, b"\0")
                for view in buffers:
                    n = min(len(view), len(ident) - written)
                    view[:n] = ident[written:written + n]
                    written += n
            else:
                status = S_UNSUPP
        except OSError as e:
            log.warning("virtio-blk: I/O error: %s", e)
            status = S_IOERR
        status_view[len(status_view) - 1] = status
        return written + 1

    def _discard_or_zero(self, zeroes: bool, segments: bytes) -> int:
        """One segment, as QEMU takes them (max_discard_seg and max_write_zeroes_seg 1)."""
        if len(segments) > 16:
            return S_UNSUPP
        if len(segments) < 16:
            raise VirtqueueError("virtio-blk discard/write_zeroes header too short")
        sector, count, flags = struct.unpack("<QII", segments)
        if count > (MAX_WRITE_ZEROES_SECTORS if zeroes else MAX_DISCARD_SECTORS) or \
                (sector + count) * SECTOR > self.size:
            return S_IOERR
        if flags & ~WRITE_ZEROES_UNMAP or (not zeroes and flags):
            return S_UNSUPP
        if self.read_only:
            return S_IOERR
        offset, length = sector * SECTOR, count * SECTOR
        unmap = self.drive.discard == "unmap"
        if not zeroes:
            if unmap:
                _fallocate(self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length)
            return S_OK
        if unmap and flags & WRITE_ZEROES_UNMAP and _fallocate(
                self.fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, offset, length):
            return S_OK
        if not _fallocate(self.fd, FALLOC_FL_ZERO_RANGE | FALLOC_FL_KEEP_SIZE, offset, length):
            for start in range(offset, offset + length, 1 << 20):     # no ZERO_RANGE here
                os.pwrite(self.fd, bytes(min(1 << 20, offset + length - start)), start)
        return S_OK

    def close(self) -> None:
        os.close(self.fd)
