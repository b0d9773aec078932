"""The virtio-pci transport, modern interface (virtio 1.x, section 4.1).

BAR4 (64-bit, prefetchable, 16 KiB) holds four regions, each named by a
vendor capability as QEMU lays them out: common configuration at 0x0000, ISR
at 0x1000, device configuration at 0x2000 and notifications at 0x3000 (one
4-byte slot per queue). Interrupts are INTx: the ISR register says why
(bit 0 queue, bit 1 configuration) and reading it lowers the line.
A guest that breaks the rules gets DEVICE_NEEDS_RESET, never an exception.
"""

from __future__ import annotations

import logging
import struct

from vmm.memory import GuestMemory
from vmm.pci import PciDevice
from vmm.virtio.device import VirtioDevice, read_le
from vmm.virtio.queue import SplitQueue, VirtqueueError

log = logging.getLogger(__name__)

VIRTIO_VENDOR = 0x1AF4
COMMON, ISR, DEVICE_CFG, NOTIFY = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000
NOTIFY_MULTIPLIER = 4
NO_VECTOR = 0xFFFF
F_VERSION_1 = 1 << 32

S_ACKNOWLEDGE, S_DRIVER, S_DRIVER_OK, S_FEATURES_OK = 1, 2, 4, 8
S_NEEDS_RESET, S_FAILED = 0x40, 0x80
ISR_QUEUE, ISR_CONFIG = 1, 2

CAP_VENDOR = 0x09
CFG_COMMON, CFG_NOTIFY, CFG_ISR, CFG_DEVICE = 1, 2, 3, 4


class _QueueState:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = max_size
        self.enabled = False
        self.desc = self.driver = self.device = 0
        self.queue: SplitQueue | None = None


class VirtioPciDevice(PciDevice):
    """Wraps a VirtioDevice; modern-only (QEMU's disable-legacy=on layout)."""

    def __init__(self, backend: VirtioDevice, memory: GuestMemory, class_code: int) -> None:
        super().__init__(VIRTIO_VENDOR, 0x1040 + backend.device_type, class_code, revision=1,
                         subsystem_vendor_id=VIRTIO_VENDOR, subsystem_id=0x1100,
                         interrupt_pin=1)
        self.backend = backend
        self.memory = memory
        backend.transport = self
        self.add_bar(4, 4 * REGION_SIZE, "mem64", _Bar4(self), prefetchable=True)
        for cfg_type, offset, length in ((CFG_COMMON, COMMON, REGION_SIZE),
                                         (CFG_ISR, ISR, REGION_SIZE),
                                         (CFG_DEVICE, DEVICE_CFG, REGION_SIZE)):
            self.add_capability(CAP_VENDOR, struct.pack("<BBBBHII", 16, cfg_type, 4, 0, 0,
                                                        offset, length))
        self.add_capability(CAP_VENDOR, struct.pack("<BBBBHIII", 20, CFG_NOTIFY, 4, 0, 0,
                                                    NOTIFY, REGION_SIZE, NOTIFY_MULTIPLIER))
        self.reset_transport()

    def reset_transport(self) -> None:
        self.device_status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.queue_select = 0
        self.config_generation = 0
        self.isr = 0
        self.queues = [_QueueState(size) for size in self.backend.queue_sizes]
        self.set_intx(0)
        self.backend.reset()

    def reset(self) -> None:
        super().reset()
        self.reset_transport()

    # -- what the device side calls -------------------------------------------
    def queue(self, index: int) -> SplitQueue | None:
        state = self.queues[index] if index < len(self.queues) else None
        return state.queue if state is not None and state.enabled else None

    def interrupt_queue(self, index: int) -> None:
        queue = self.queue(index)
        if queue is not None and queue.should_notify():
            self._raise(ISR_QUEUE)

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFF
        if self.device_status & S_DRIVER_OK:
            self._raise(ISR_CONFIG)

    def guest_error(self, message: str) -> None:
        log.warning("%s: guest error: %s", type(self.backend).__name__, message)
        self.device_status |= S_NEEDS_RESET
        self.config_changed()

    def _raise(self, bit: int) -> None:
        self.isr |= bit
        self.set_intx(1)

    # -- BAR4 regions ----------------------------------------------------------
    def _common_bytes(self) -> bytes:
        """struct virtio_pci_common_cfg as the driver sees it now."""
        offered = self.backend.features | F_VERSION_1
        q = self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

        def half(value: int, select: int) -> int:
            return (value >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0

        return struct.pack(
            "<IIIIHHBBHHHHHQQQ",
            self.device_feature_select, half(offered, self.device_feature_select),
            self.driver_feature_select, half(self.driver_features, self.driver_feature_select),
            NO_VECTOR, len(self.queues), self.device_status, self.config_generation,
            self.queue_select, q.size if q else 0, NO_VECTOR, 1 if q and q.enabled else 0,
            self.queue_select if q else 0, q.desc if q else 0, q.driver if q else 0,
            q.device if q else 0)

    def common_read(self, offset: int, size: int) -> int:
        return read_le(self._common_bytes(), offset, size)

    def common_write(self, offset: int, size: int, value: int) -> None:
        q = self.queues[self.queue_select] if self.queue_select < len(self.queues) else None
        if offset == 0x00:
            self.device_feature_select = value
        elif offset == 0x08:
            self.driver_feature_select = value
        elif offset == 0x0C and self.driver_feature_select < 2 and \
                not self.device_status & S_FEATURES_OK:
            shift = 32 * self.driver_feature_select
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | \
                ((value & 0xFFFFFFFF) << shift)
        elif offset == 0x14:
            self._write_status(value & 0xFF)
        elif offset == 0x16:
            self.queue_select = value & 0xFFFF
        elif q is None or q.enabled and offset != 0x1C:
            return
        elif offset == 0x18:
            if value and not value & (value - 1) and value <= q.max_size:
                q.size = value
        elif offset == 0x1C:
            if value & 1 and not q.enabled:
                self._enable_queue(q)
        elif 0x20 <= offset < 0x38:
            field = ("desc", "driver", "device")[(offset - 0x20) // 8]
            old = getattr(q, field)
            shift = 8 * ((offset - 0x20) % 8)
            mask = ((1 << (8 * size)) - 1) << shift
            setattr(q, field, (old & ~mask) | ((value << shift) & mask))

    def _write_status(self, value: int) -> None:
        if value == 0:
            self.reset_transport()
            return
        if value & S_FEATURES_OK and not self.device_status & S_FEATURES_OK:
            offered = self.backend.features | F_VERSION_1
            if self.driver_features & ~offered or not self.driver_features & F_VERSION_1:
                value &= ~S_FEATURES_OK          # the driver asked for what we lack
            else:
                self.backend.features_negotiated(self.driver_features)
        self.device_status = value | (self.device_status & S_NEEDS_RESET)

    def _enable_queue(self, q: _QueueState) -> None:
        try:
            q.queue = SplitQueue(self.memory, q.size, q.desc, q.driver, q.device,
                                 event_idx=bool(self.driver_features & (1 << 29)))
        except VirtqueueError as e:
            self.guest_error(str(e))
            return
        q.enabled = True

    def notify(self, index: int) -> None:
        if not self.device_status & S_DRIVER_OK or self.queue(index) is None:
            return
        try:
            self.backend.queue_notify(index)
        except VirtqueueError as e:
            self.guest_error(str(e))

    def isr_read(self) -> int:
        value, self.isr = self.isr, 0
        self.set_intx(0)
        return value


class _Bar4:
    def __init__(self, dev: VirtioPciDevice) -> None:
        self.dev = dev

    def bus_read(self, offset: int, size: int) -> int:
        dev = self.dev
        if offset < ISR:
            return dev.common_read(offset, size)
        if offset < DEVICE_CFG:
            return dev.isr_read() if offset == ISR else 0
        if offset < NOTIFY:
            return dev.backend.config_read(offset - DEVICE_CFG, size)
        return 0

    def bus_write(self, offset: int, size: int, value: int) -> None:
        dev = self.dev
        if offset < ISR:
            if size == 8 and 0x20 <= offset < 0x38:
                dev.common_write(offset, 4, value & 0xFFFFFFFF)
                dev.common_write(offset + 4, 4, value >> 32)
            else:
                dev.common_write(offset, size, value)
        elif DEVICE_CFG <= offset < NOTIFY:
            dev.backend.config_write(offset - DEVICE_CFG, size, value)
        elif offset >= NOTIFY:
            dev.notify((offset - NOTIFY) // NOTIFY_MULTIPLIER)
