"""virtio-blk (virtio spec 5.2) over a raw image file.

Each request is a chain: a readable header (type, reserved, sector), data
buffers (readable for writes, writable for reads) and one writable status
byte. Reads and writes go to the file with pread/pwrite, FLUSH is fsync,
GET_ID returns the drive's serial. A request past the end of the disk, or of
an unknown type, gets IOERR/UNSUPP rather than touching anything.
"""

from __future__ import annotations

import logging
import os
import struct

from vmm.virtio.device import VirtioDevice

log = logging.getLogger(__name__)

SECTOR = 512
T_IN, T_OUT, T_FLUSH, T_GET_ID = 0, 1, 4, 8
S_OK, S_IOERR, S_UNSUPP = 0, 1, 2
F_SEG_MAX, F_RO, F_BLK_SIZE, F_FLUSH = 1 << 2, 1 << 5, 1 << 6, 1 << 9
F_RING_INDIRECT_DESC, F_RING_EVENT_IDX = 1 << 28, 1 << 29
SEG_MAX = 126                       # QEMU's: queue size minus the header and status
ID_BYTES = 20


class VirtioBlk(VirtioDevice):
    name = "virtio-blk"
    device_type = 2
    config_size = 60                # struct virtio_blk_config up to write_zeroes (QEMU's size)
    queue_sizes = (128,)

    def __init__(self, path: str, read_only: bool = False, serial: str = "") -> None:
        super().__init__()
        self.fd = os.open(path, (os.O_RDONLY if read_only else os.O_RDWR) | os.O_CLOEXEC)
        self.size = os.fstat(self.fd).st_size
        self.read_only = read_only
        self.serial = serial.encode()[:ID_BYTES]
        self.features = (F_SEG_MAX | F_BLK_SIZE | F_FLUSH | F_RING_INDIRECT_DESC
                         | F_RING_EVENT_IDX | (F_RO if read_only else 0))

    def config_bytes(self) -> bytes:
        base = struct.pack("<QIIHBBI", self.size // SECTOR, 0, SEG_MAX, 0, 0, 0, SECTOR)
        topology_and_queues = struct.pack("<BBHIBBH", 0, 0, 0, 0, 0, 0, 1)
        return (base + topology_and_queues).ljust(self.config_size, b"\0")

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

    def close(self) -> None:
        os.close(self.fd)
