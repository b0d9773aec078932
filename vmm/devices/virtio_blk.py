"""virtio-blk (virtio spec 5.2) over a drive (vmm/block/drive.py), with QEMU 7.2's
features and configuration.

Each request is a chain: a readable header (type, reserved, sector), data
buffers (readable for writes, writable for reads) and one writable status
byte. The device sees its drive only as a BlockBackend (vmm/block/backend.py):
reads, writes, FLUSH, DISCARD and WRITE_ZEROES (one segment each: sector,
count, flags) run on the device's I/O engine, off the vCPU thread and the
machine lock, and complete under the lock with an interrupt. GET_ID returns
the drive's serial. The write cache is on unless the guest turns it off
(CONFIG_WCE, or no FLUSH); with it off every write is followed by a flush.
A request past the end of the disk, or of an unknown type, gets IOERR/UNSUPP
rather than touching anything. The geometry is QEMU's guess (see guess_geometry).
"""

from __future__ import annotations

import errno
import logging
import struct
from collections.abc import Callable

from vmm.block.backend import BlockBackend
from vmm.block.drive import Drive
from vmm.block.engine import IoEngine
from vmm.block.geometry import guess_geometry
from vmm.errors import UserError
from vmm.qdev import (
    IOEVENTFD,
    DeviceError,
    DeviceType,
    Prop,
    attach_drive,
    block_props,
    bootindex,
    declare,
    drive_named,
    fixed,
    flag,
    on_off,
    vectors,
)
from vmm.virtio import spec
from vmm.virtio.device import VirtioDevice
from vmm.virtio.proxy import declare_proxies, realize_proxy
from vmm.virtio.queue import VirtqueueError
from vmm.virtio.spec import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, feature

log = logging.getLogger(__name__)

SECTOR = 512
T_IN = spec.VIRTIO_BLK_T_IN
T_OUT = spec.VIRTIO_BLK_T_OUT
T_FLUSH = spec.VIRTIO_BLK_T_FLUSH
T_GET_ID = spec.VIRTIO_BLK_T_GET_ID
T_DISCARD = spec.VIRTIO_BLK_T_DISCARD
T_WRITE_ZEROES = spec.VIRTIO_BLK_T_WRITE_ZEROES
S_OK = spec.VIRTIO_BLK_S_OK
S_IOERR = spec.VIRTIO_BLK_S_IOERR
S_UNSUPP = spec.VIRTIO_BLK_S_UNSUPP
F_SEG_MAX = feature(spec.VIRTIO_BLK_F_SEG_MAX)
F_GEOMETRY = feature(spec.VIRTIO_BLK_F_GEOMETRY)
F_RO = feature(spec.VIRTIO_BLK_F_RO)
F_BLK_SIZE = feature(spec.VIRTIO_BLK_F_BLK_SIZE)
F_FLUSH = feature(spec.VIRTIO_BLK_F_FLUSH)
F_TOPOLOGY = feature(spec.VIRTIO_BLK_F_TOPOLOGY)
F_CONFIG_WCE = feature(spec.VIRTIO_BLK_F_CONFIG_WCE)
F_MQ = feature(spec.VIRTIO_BLK_F_MQ)
F_DISCARD = feature(spec.VIRTIO_BLK_F_DISCARD)
F_WRITE_ZEROES = feature(spec.VIRTIO_BLK_F_WRITE_ZEROES)
QUEUE_SIZE = 256                    # QEMU's queue-size
SEG_MAX = QUEUE_SIZE - 2            # QEMU's: the queue less the header and status
MAX_DISCARD_SECTORS = MAX_WRITE_ZEROES_SECTORS = 0x3FFFFF
WRITEBACK_AT = 32                   # the config's writeback byte
WRITE_ZEROES_UNMAP = 1
ID_BYTES = 20
def _split_header(readable: list[memoryview]) -> tuple[bytes | None, bytes | memoryview]:
    """A request's 16-byte header, and the data after it: the guest's own memory
    when it is one buffer (a write's data is not copied), else joined."""
    header = b""
    rest: list[memoryview] = []
    for view in readable:
        if len(header) < 16:
            take = 16 - len(header)
            header += bytes(view[:take])
            view = view[take:]
        if len(view):
            rest.append(view)
    if len(header) < 16:
        return None, b""
    if len(rest) == 1:
        return header, rest[0]
    return header, b"".join(rest)


class _Stopped:
    """A request an I/O error stopped (werror/rerror=stop): it is retried on `cont`."""

    def __init__(self, nospace: bool) -> None:
        self.nospace = nospace


class VirtioBlk(VirtioDevice):
    name = "virtio-blk"
    device_type = spec.VIRTIO_ID_BLOCK
    config_size = 57                # struct virtio_blk_config to write_zeroes_may_unmap

    def __init__(self, drive: Drive, engine: IoEngine, serial: str = "",
                 queues: int = 1, report_error: Callable[[dict], None] = lambda data: None,
                 stop_vm: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.report_error = report_error     # BLOCK_IO_ERROR, from an I/O thread
        self.stop_vm = stop_vm               # werror/rerror=stop
        self.held: list[tuple[int, object]] = []    # stopped requests, retried on `cont`
        self.queue_sizes = (QUEUE_SIZE,) * queues      # request queues, all alike
        self.drive = drive                 # its cache mode, which the guest may change
        self.image: BlockBackend = drive
        self.engine = engine
        self.read_only = drive.read_only
        self.size = drive.size
        mbr = memoryview(bytearray(SECTOR))
        if self.size >= SECTOR:              # not a guest request: not in its stats
            drive.root.image.read_into(0, [mbr])
        self.geometry = guess_geometry(bytes(mbr), self.size // SECTOR)[:3]
        self.serial = serial.encode()[:ID_BYTES]
        self.features = (F_SEG_MAX | F_GEOMETRY | F_BLK_SIZE | F_FLUSH | F_TOPOLOGY
                         | F_CONFIG_WCE | F_DISCARD | F_WRITE_ZEROES | F_RING_INDIRECT_DESC
                         | F_RING_EVENT_IDX | (F_RO if self.read_only else 0)
                         | (F_MQ if queues > 1 else 0))

    def resized(self) -> None:
        """block_resize (machine lock held): the new capacity, and a config interrupt."""
        self.size = self.image.size
        if self.transport is not None:
            self.transport.config_changed()

    def reset(self) -> None:
        super().reset()
        self.drive.cancelled.set()           # requests of the driver before the reset,
        self.engine.cancel()                 # throttled ones too
        self.drive.cancelled.clear()
        self.held.clear()
        self.drive.writeback = self.drive.cache_writeback

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
        """Takes the new requests (vCPU thread, machine lock held) and hands each to
        the I/O engine; each completes, in whatever order, with an interrupt."""
        queue = self.transport.queue(index)
        while (chain := queue.pop()) is not None:
            self._submit(index, chain)

    def _submit(self, index: int, chain) -> None:
        self.engine.submit(lambda: self._request(chain),
                           lambda written: self._complete(index, chain, written))

    def save_state(self) -> dict:
        return {**super().save_state(), "writeback": self.drive.writeback}

    def load_state(self, state: dict) -> None:
        writeback = state.get("writeback") if isinstance(state, dict) else None
        if not isinstance(writeback, bool):
            raise UserError("virtio-blk: saved state does not fit this device")
        super().load_state({k: v for k, v in state.items() if k != "writeback"})
        self.drive.writeback = writeback

    def forget_inflight(self) -> None:
        self.held.clear()               # stopped requests are taken again from the queue

    def drain(self) -> None:
        """Migration, after the VM stopped: every request in flight completes, so the
        saved queues hold none half-done."""
        self.engine.drain()

    def retry_held(self) -> None:
        """`cont` after an I/O error stopped the VM: the held requests run again."""
        held, self.held = self.held, []
        self.drive.io_status = "ok"
        for index, chain in held:
            self._submit(index, chain)

    def _complete(self, index: int, chain, written: int | str | None) -> None:
        queue = self.transport.queue(index) if self.transport is not None else None
        if queue is None:
            return
        if isinstance(written, _Stopped):           # kept for `cont`; the VM stops
            self.held.append((index, chain))
            self.drive.io_status = "nospace" if written.nospace else "failed"
            self.stop_vm()
            return
        head = chain.head
        if isinstance(written, str):
            self.transport.guest_error(written)
            return
        queue.push(head, written or 0)
        self.transport.interrupt_queue(index)

    def _request(self, chain) -> int | str:
        """Carries out one request (on the I/O engine's thread); returns the bytes
        written to the guest, or what makes the request one the device rejects."""
        header, data_out = _split_header(chain.readable)
        if header is None or not chain.writable or len(chain.writable[-1]) < 1:
            log.warning("virtio-blk: malformed request dropped")
            return 0
        kind, _reserved, sector = struct.unpack_from("<IIQ", header)
        buffers = chain.writable[:-1] if len(chain.writable[-1]) == 1 else chain.writable
        status_view = chain.writable[-1]
        offset = sector * SECTOR
        status, written = S_OK, 0
        try:
            if kind == T_IN:
                length = sum(len(view) for view in buffers)
                if offset + length > self.size:
                    self.drive.invalid_request("rd")
                    status = S_IOERR
                else:
                    self.image.read_into(offset, buffers)
                    written = length
            elif kind == T_OUT:
                if self.read_only or offset + len(data_out) > self.size:
                    self.drive.invalid_request("wr")
                    status = S_IOERR
                else:
                    self.image.write(offset, data_out)
            elif kind in (T_DISCARD, T_WRITE_ZEROES):
                status = self._discard_or_zero(kind == T_WRITE_ZEROES, data_out)
            elif kind == T_FLUSH:
                if not self.read_only:
                    self.image.flush()
            elif kind == T_GET_ID:
                ident = self.serial.ljust(ID_BYTES, b"\0")
                for view in buffers:
                    n = min(len(view), len(ident) - written)
                    view[:n] = ident[written:written + n]
                    written += n
            else:
                status = S_UNSUPP
        except InterruptedError:          # dropped by a reset while throttled
            return 0
        except OSError as e:
            is_write = kind != T_IN
            action = self.drive.error_action(is_write, e)
            self.report_error(self.drive.error_event(is_write, action, e))
            if action == "stop":
                return _Stopped(e.errno == errno.ENOSPC)
            if action == "report":
                log.warning("virtio-blk: I/O error: %s", e)
                status = S_IOERR
        except VirtqueueError as e:       # a broken request: the device needs a reset
            return str(e)
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
        if zeroes:
            self.image.write_zeroes(offset, length, bool(flags & WRITE_ZEROES_UNMAP))
        else:
            self.image.discard(offset, length)
        return S_OK

    def close(self) -> None:
        self.drive.cancelled.set()
        self.engine.close()


# -- the models, as QEMU declares them -------------------------------------
def _realize(board, device):
    props = device.props
    name = props.get("drive") or ""
    if not name:
        board.devices.check_pci_room(device)
        raise DeviceError("drive property not set")
    drive = drive_named(board, "virtio-blk-pci", name)
    # QEMU's defaults: a request queue per vCPU, and an MSI-X vector for each and for
    # the configuration.
    if props["num-queues"] == 0xFFFF:
        props["num-queues"] = board.cfg.cpus
    queues = props["num-queues"]
    if queues < 1:
        raise DeviceError("num-queues property must be larger than 0")
    if queues > 1024:                    # VIRTIO_QUEUE_MAX
        raise DeviceError("num-queues property must not be larger than 1024")
    if props["vectors"] == 0xFFFFFFFF:
        props["vectors"] = queues + 1
    if props["rerror"] == "enospc":
        raise DeviceError("enospc is not a valid read error action")
    attach_drive(board, drive, props, board.devices.path(device) + "/virtio-backend")
    engine = IoEngine(board.lock, name=f"virtio-blk {name}")
    blk = VirtioBlk(drive, engine, props.get("serial") or "", queues,
                    report_error=lambda data: board.emit_from_vcpu("BLOCK_IO_ERROR", data),
                    stop_vm=board.io_error_stop)
    board.on_resume(blk.retry_held)
    props["cyls"], props["heads"], props["secs"] = blk.geometry
    props["logical_block_size"] = props["physical_block_size"] = SECTOR
    try:
        transport = realize_proxy(board, device, blk, 0x010000, props["vectors"])
    except BaseException:
        engine.close()
        board.block.detach(drive)
        raise
    drive.on_resize = blk.resized
    return transport


def _unrealize(board, device):
    blk = device.obj.backend
    board.on_resume(blk.retry_held, add=False)
    blk.close()
    board.block.detach(blk.drive)


declare(DeviceType("virtio-blk-device", "virtio-device", user_creatable=False,
                   props=block_props(False) + (
    fixed("cyls", "uint32", 0), fixed("heads", "uint32", 0), fixed("secs", "uint32", 0),
    fixed("lcyls", "uint32", 0), fixed("lheads", "uint32", 0), fixed("lsecs", "uint32", 0),
    Prop("serial", "str"), on_off("config-wce", True, honoured=False),
    on_off("scsi", False, honoured=False), on_off("request-merging", True, honoured=False),
    Prop("num-queues", "uint16", 0xFFFF), fixed("queue-size", "uint16", 256),
    flag("seg-max-adjust", True, honoured=False), on_off("discard", True, honoured=False),
    flag("report-discard-granularity", True, honoured=False),
    on_off("write-zeroes", True, honoured=False),
    fixed("max-discard-sectors", "uint32", 4194303),
    fixed("max-write-zeroes-sectors", "uint32", 4194303),
    flag("x-enable-wce-if-config-wce", True, honoured=False),
    Prop("iothread", "link<iothread>", qdev=False), bootindex())))
declare_proxies("virtio-blk-pci", "virtio-blk-device", _realize,
                (fixed("class", "uint32", 0), IOEVENTFD, vectors()), unrealize=_unrealize,
                category="Storage", alias="virtio-blk")
