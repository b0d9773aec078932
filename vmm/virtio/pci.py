"""The virtio-pci transport (virtio 1.x section 4.1), modern and legacy interfaces.

Modern: BAR4 (64-bit, prefetchable, 16 KiB) holds four regions, each named by
a vendor capability as QEMU lays them out: common configuration at 0x0000,
ISR at 0x1000, device configuration at 0x2000 and notifications at 0x3000
(one 4-byte slot per queue); a fifth capability (VIRTIO_PCI_CAP_PCI_CFG) is a
window onto those regions through config space.

Legacy (virtio 0.9.5, "transitional" devices): BAR0 is an I/O region with the
old register block followed by the device configuration; queues are given as
one page frame number with the legacy ring layout.

QEMU's conventional-PCI default is transitional (both interfaces, PCI device
id 0x1000 + n); ``disable-legacy=on`` gives the modern-only id 0x1040 + type,
``disable-modern=on`` the legacy-only device. Interrupts are MSI-X vectors
(BAR1) when the device has them and the driver enabled them, else INTx: the
ISR register says why (bit 0 queue, bit 1 configuration) and reading it
lowers the line. A guest that breaks the rules gets DEVICE_NEEDS_RESET, never
an exception.
"""

from __future__ import annotations

import logging
import struct
from functools import partial

from vmm import savestate, trace
from vmm.memory import GuestMemory
from vmm.msix import MsiRoutes, Msix
from vmm.pci import UNMAPPED, Bar, PciDevice
from vmm.virtio import spec
from vmm.virtio.device import VirtioDevice, read_le
from vmm.virtio.queue import SplitQueue, VirtqueueError
from vmm.virtio.spec import F_RING_EVENT_IDX, F_VERSION_1, feature

log = logging.getLogger(__name__)

VIRTIO_VENDOR = 0x1AF4
COMMON, ISR, DEVICE_CFG, NOTIFY = 0x0000, 0x1000, 0x2000, 0x3000
REGION_SIZE = 0x1000
NOTIFY_MULTIPLIER = 4
NO_VECTOR = spec.VIRTIO_MSI_NO_VECTOR
F_RING_RESET = feature(spec.VIRTIO_F_RING_RESET)  # per-queue reset through queue_reset (1.2)

S_ACKNOWLEDGE, S_DRIVER = spec.VIRTIO_CONFIG_S_ACKNOWLEDGE, spec.VIRTIO_CONFIG_S_DRIVER
S_DRIVER_OK, S_FEATURES_OK = spec.VIRTIO_CONFIG_S_DRIVER_OK, spec.VIRTIO_CONFIG_S_FEATURES_OK
S_NEEDS_RESET, S_FAILED = spec.VIRTIO_CONFIG_S_NEEDS_RESET, spec.VIRTIO_CONFIG_S_FAILED
ISR_QUEUE, ISR_CONFIG = 1, spec.VIRTIO_PCI_ISR_CONFIG    # the header names only the config bit

CAP_VENDOR = 0x09                # PCI's vendor-specific capability id
CFG_COMMON, CFG_NOTIFY = spec.VIRTIO_PCI_CAP_COMMON_CFG, spec.VIRTIO_PCI_CAP_NOTIFY_CFG
CFG_ISR, CFG_DEVICE = spec.VIRTIO_PCI_CAP_ISR_CFG, spec.VIRTIO_PCI_CAP_DEVICE_CFG
CFG_PCI = spec.VIRTIO_PCI_CAP_PCI_CFG

# Transitional PCI device ids by virtio device type (virtio 1.x, 4.1.2.1).
TRANSITIONAL_IDS = {spec.VIRTIO_ID_NET: spec.VIRTIO_TRANS_ID_NET,
                    spec.VIRTIO_ID_BLOCK: spec.VIRTIO_TRANS_ID_BLOCK,
                    spec.VIRTIO_ID_BALLOON: spec.VIRTIO_TRANS_ID_BALLOON,
                    spec.VIRTIO_ID_CONSOLE: spec.VIRTIO_TRANS_ID_CONSOLE,
                    spec.VIRTIO_ID_SCSI: spec.VIRTIO_TRANS_ID_SCSI,
                    spec.VIRTIO_ID_RNG: spec.VIRTIO_TRANS_ID_RNG,
                    spec.VIRTIO_ID_9P: spec.VIRTIO_TRANS_ID_9P}
LEGACY_HEADER = spec.VIRTIO_MSI_CONFIG_VECTOR   # the legacy block before the device config
LEGACY_MSIX_HEADER = spec.VIRTIO_MSI_QUEUE_VECTOR + 2   # ... with the MSI-X vector registers
MSIX_BAR = 1
LEGACY_PAGE = 1 << spec.VIRTIO_PCI_QUEUE_ADDR_SHIFT   # legacy queue PFN unit, ring alignment
# What QEMU adds for legacy drivers: NOTIFY_ON_EMPTY, ANY_LAYOUT, and BAD_FEATURE
# (which no correct driver acks).
LEGACY_ONLY_FEATURES = (1 << 24) | (1 << 27) | (1 << 30)


class _QueueState:
    def __init__(self, max_size: int) -> None:
        self.max_size = max_size
        self.size = max_size
        self.vector = NO_VECTOR
        self.enabled = False
        self.reset = False              # reset by the driver, until it enables it again
        self.desc = self.driver = self.device = 0
        self.queue: SplitQueue | None = None


class VirtioPciDevice(PciDevice):
    """Carries one VirtioDevice over PCI, with QEMU's layout and ids."""

    def __init__(self, backend: VirtioDevice, memory: GuestMemory, class_code: int,
                 legacy: bool = True, modern: bool = True, msix_vectors: int = 0,
                 msi_routes: MsiRoutes | None = None) -> None:
        if not (legacy or modern):
            raise ValueError("device cannot work as neither modern nor legacy mode is enabled")
        kind = backend.device_type
        if legacy and kind not in TRANSITIONAL_IDS:
            raise ValueError("device has no transitional id, so no legacy interface")
        if legacy:
            ids = dict(device_id=TRANSITIONAL_IDS[kind], revision=0, subsystem_id=kind)
        else:
            ids = dict(device_id=0x1040 + kind, revision=1, subsystem_id=0x1100)
        super().__init__(VIRTIO_VENDOR, ids["device_id"], class_code, revision=ids["revision"],
                         subsystem_vendor_id=VIRTIO_VENDOR, subsystem_id=ids["subsystem_id"],
                         interrupt_pin=1)
        self.backend = backend
        self.memory = memory
        self.legacy, self.modern = legacy, modern
        backend.transport = self
        self.pci_cfg_cap = 0
        self.ioevents = None            # the machine's IoEvents, for in-kernel doorbells
        self._doorbells: dict[int, list] = {}
        self.msix = Msix(msix_vectors, msi_routes, owner=f"{backend.name}-pci") \
            if msix_vectors else None
        if legacy:
            size = 4
            while size < (LEGACY_MSIX_HEADER if self.msix else LEGACY_HEADER) + \
                    backend.config_size:
                size *= 2
            self.add_bar(0, size, "io", _LegacyBar(self))
        if self.msix:
            self.add_bar(MSIX_BAR, 0x1000, "mem32", self.msix)
        if modern:
            self.add_bar(4, 4 * REGION_SIZE, "mem64", _Bar4(self), prefetchable=True)
            for cfg_type, offset, length in ((CFG_COMMON, COMMON, REGION_SIZE),
                                             (CFG_ISR, ISR, REGION_SIZE),
                                             (CFG_DEVICE, DEVICE_CFG, REGION_SIZE)):
                self.add_capability(CAP_VENDOR, _vendor_cap(16, cfg_type, offset, length))
            self.add_capability(CAP_VENDOR, _vendor_cap(20, CFG_NOTIFY, NOTIFY, REGION_SIZE)
                                + struct.pack("<I", NOTIFY_MULTIPLIER))
            # The config-space window: bar, offset and length say where, data moves.
            body = _vendor_cap(20, CFG_PCI, 0, 0, bar=0) + bytes(4)
            self.pci_cfg_cap = self.add_capability(CAP_VENDOR, body, wmask=bytes(
                [0, 0, 0xFF, 0, 0, 0] + [0xFF] * 12))
        if self.msix:
            self.msix.add_to(self, MSIX_BAR)
        self.reset_transport()

    def reset_transport(self) -> None:
        self.device_status = 0
        self.device_feature_select = 0
        self.driver_feature_select = 0
        self.driver_features = 0
        self.queue_select = 0
        self.config_generation = 0
        self.config_vector = NO_VECTOR
        self.isr = 0
        self.set_intx(0)
        self.backend.reset()
        self.queues = [_QueueState(size) for size in self.backend.queue_sizes]

    def resize_queues(self) -> None:
        """The device now has len(backend.queue_sizes) queues (virtio-net with MQ):
        those it keeps stay as they are."""
        sizes = self.backend.queue_sizes
        del self.queues[len(sizes):]
        self.queues += [_QueueState(size) for size in sizes[len(self.queues):]]

    def release(self) -> None:
        if self.msix:
            self.msix.release()

    def reset(self) -> None:
        super().reset()
        if self.msix:
            self.msix.reset()
            self.config[self.msix.cap + 3] &= 0x3F       # MSI-X enable and mask off
        self.reset_transport()

    @property
    def msix_enabled(self) -> bool:
        return self.msix is not None and self.msix.enabled

    def _vector(self, value: int) -> int:
        """A vector the driver asked for: NO_VECTOR if the device has no such vector."""
        return value if self.msix is not None and value < self.msix.vectors else NO_VECTOR

    @property
    def offered_features(self) -> int:
        """QEMU 7.2 offers RING_RESET on every modern virtio-pci device."""
        return self.backend.features | (F_VERSION_1 | F_RING_RESET if self.modern else 0)

    # -- what the device side calls -------------------------------------------
    def queue(self, index: int) -> SplitQueue | None:
        state = self.queues[index] if index < len(self.queues) else None
        return state.queue if state is not None and state.enabled else None

    def interrupt_queue(self, index: int) -> None:
        queue = self.queue(index)
        if queue is None or not queue.should_notify():
            return
        if self.msix_enabled:
            if self.queues[index].vector != NO_VECTOR:
                self.msix.notify(self.queues[index].vector)
        else:
            self._raise(ISR_QUEUE)

    def config_changed(self) -> None:
        self.config_generation = (self.config_generation + 1) & 0xFF
        if not self.device_status & S_DRIVER_OK:
            return
        if self.msix_enabled:
            if self.config_vector != NO_VECTOR:
                self.msix.notify(self.config_vector)
        else:
            self._raise(ISR_CONFIG)

    def guest_error(self, message: str) -> None:
        log.warning("%s: guest error: %s", type(self.backend).__name__, message)
        self.device_status |= S_NEEDS_RESET
        self.config_changed()

    def _raise(self, bit: int) -> None:
        self.isr |= bit
        self.set_intx(1)

    # -- registers both interfaces share ------------------------------------------
    def _selected(self) -> _QueueState | None:
        return self.queues[self.queue_select] if self.queue_select < len(self.queues) else None

    def _enable_queue(self, q: _QueueState) -> None:
        try:
            q.queue = SplitQueue(self.memory, q.size, q.desc, q.driver, q.device,
                                 event_idx=bool(self.driver_features & F_RING_EVENT_IDX))
        except VirtqueueError as e:
            self.guest_error(str(e))
            return
        q.enabled = True

    def _reset_queue(self, index: int) -> None:
        """queue_reset: the queue goes back to its defaults, disabled, and says so
        until the driver enables it again (virtio 1.2, 4.1.4.3.2)."""
        fresh = _QueueState(self.queues[index].max_size)
        fresh.reset = True
        self.queues[index] = fresh

    def _set_status(self, value: int) -> None:
        if trace.virtio_set_status.enabled:
            trace.virtio_set_status(vdev=type(self.backend).__name__, val=value)
        was_ready = self.device_status & S_DRIVER_OK
        self.device_status = value | (self.device_status & S_NEEDS_RESET)
        if value & S_DRIVER_OK and not was_ready:
            # Drivers may queue buffers (and kick) before DRIVER_OK, as Linux's balloon
            # does with its first stats buffer: they are taken now.
            for index in range(len(self.queues)):
                self.notify(index)

    @property
    def running(self) -> bool:
        """DRIVER_OK and not broken: a device that needs a reset does nothing more
        until the driver resets it (QEMU's vdev->broken)."""
        return self.device_status & (S_DRIVER_OK | S_NEEDS_RESET) == S_DRIVER_OK

    def notify(self, index: int) -> None:
        if trace.virtio_queue_notify.enabled:
            trace.virtio_queue_notify(vdev=type(self.backend).__name__, n=index)
        if not self.running or self.queue(index) is None:
            return
        try:
            self.backend.queue_notify(index)
        except VirtqueueError as e:
            self.guest_error(str(e))

    def isr_read(self) -> int:
        value, self.isr = self.isr, 0
        self.set_intx(0)
        return value

    # -- modern common configuration --------------------------------------------
    def _common_bytes(self) -> bytes:
        """struct virtio_pci_common_cfg as the driver sees it now."""
        q = self._selected()

        def half(value: int, select: int) -> int:
            return (value >> (32 * select)) & 0xFFFFFFFF if select < 2 else 0

        return struct.pack(
            "<IIIIHHBBHHHHHQQQHH",
            self.device_feature_select, half(self.offered_features, self.device_feature_select),
            self.driver_feature_select, half(self.driver_features, self.driver_feature_select),
            self.config_vector, len(self.queues), self.device_status, self.config_generation,
            self.queue_select, q.size if q else 0, q.vector if q else NO_VECTOR,
            1 if q and q.enabled else 0,
            self.queue_select if q else 0, q.desc if q else 0, q.driver if q else 0,
            q.device if q else 0, 0, 1 if q and q.reset else 0)   # notify_data, queue_reset

    def common_read(self, offset: int, size: int) -> int:
        return read_le(self._common_bytes(), offset, size)

    def common_write(self, offset: int, size: int, value: int) -> None:
        q = self._selected()
        if offset == spec.VIRTIO_PCI_COMMON_DFSELECT:
            self.device_feature_select = value
        elif offset == spec.VIRTIO_PCI_COMMON_GFSELECT:
            self.driver_feature_select = value
        elif offset == spec.VIRTIO_PCI_COMMON_GF and self.driver_feature_select < 2 and \
                not self.device_status & S_FEATURES_OK:
            shift = 32 * self.driver_feature_select
            self.driver_features = (self.driver_features & ~(0xFFFFFFFF << shift)) | \
                ((value & 0xFFFFFFFF) << shift)
        elif offset == spec.VIRTIO_PCI_COMMON_MSIX:
            self.config_vector = self._vector(value & 0xFFFF)
        elif offset == spec.VIRTIO_PCI_COMMON_STATUS:
            self._write_modern_status(value & 0xFF)
        elif offset == spec.VIRTIO_PCI_COMMON_Q_SELECT:
            self.queue_select = value & 0xFFFF
        elif offset == spec.VIRTIO_PCI_COMMON_Q_MSIX and q is not None:
            q.vector = self._vector(value & 0xFFFF)
        elif offset == spec.VIRTIO_PCI_COMMON_Q_RESET and q is not None:
            if value & 1 and self.driver_features & F_RING_RESET:
                self._reset_queue(self.queue_select)
        elif q is None or q.enabled and offset != spec.VIRTIO_PCI_COMMON_Q_ENABLE:
            return
        elif offset == spec.VIRTIO_PCI_COMMON_Q_SIZE:
            if value and not value & (value - 1) and value <= q.max_size:
                q.size = value
        elif offset == spec.VIRTIO_PCI_COMMON_Q_ENABLE:
            if value & 1 and not q.enabled:
                q.reset = False
                self._enable_queue(q)
        elif spec.VIRTIO_PCI_COMMON_Q_DESCLO <= offset < spec.VIRTIO_PCI_COMMON_Q_NDATA:
            field = ("desc", "driver", "device")[(offset - spec.VIRTIO_PCI_COMMON_Q_DESCLO) // 8]
            old = getattr(q, field)
            shift = 8 * ((offset - spec.VIRTIO_PCI_COMMON_Q_DESCLO) % 8)
            mask = ((1 << (8 * size)) - 1) << shift
            setattr(q, field, (old & ~mask) | ((value << shift) & mask))

    def _write_modern_status(self, value: int) -> None:
        if value == 0:
            self.reset_transport()
            return
        if value & S_FEATURES_OK and not self.device_status & S_FEATURES_OK:
            offered = self.offered_features
            if self.driver_features & ~offered or not self.driver_features & F_VERSION_1:
                value &= ~S_FEATURES_OK          # the driver asked for what we lack
            else:
                self.backend.features_negotiated(self.driver_features)
        self._set_status(value)

    # -- legacy register block (BAR0) ----------------------------------------------
    @property
    def _legacy_config_at(self) -> int:
        return LEGACY_MSIX_HEADER if self.msix_enabled else LEGACY_HEADER

    def legacy_read(self, offset: int, size: int) -> int:
        if offset >= self._legacy_config_at:
            return self.backend.config_read(offset - self._legacy_config_at, size)
        q = self._selected()
        if offset >= LEGACY_HEADER:         # the MSI-X vector registers
            vectors = struct.pack("<HH", self.config_vector, q.vector if q else NO_VECTOR)
            return read_le(vectors, offset - LEGACY_HEADER, size)
        header = struct.pack("<IIIHHHBB",
                             (self.backend.features | LEGACY_ONLY_FEATURES) & 0xFFFFFFFF,
                             self.driver_features & 0xFFFFFFFF,
                             q.desc // LEGACY_PAGE if q and q.enabled else 0,
                             q.max_size if q else 0, self.queue_select, 0,
                             self.device_status, 0)
        value = read_le(header, offset, min(size, LEGACY_HEADER - offset))
        if offset <= spec.VIRTIO_PCI_ISR < offset + size:
            value |= self.isr_read() << (8 * (spec.VIRTIO_PCI_ISR - offset))
        return value

    def legacy_write(self, offset: int, size: int, value: int) -> None:
        if offset >= self._legacy_config_at:
            self.backend.config_write(offset - self._legacy_config_at, size, value)
        elif offset == spec.VIRTIO_MSI_CONFIG_VECTOR:
            self.config_vector = self._vector(value & 0xFFFF)
        elif offset == spec.VIRTIO_MSI_QUEUE_VECTOR:
            q = self._selected()
            if q is not None:
                q.vector = self._vector(value & 0xFFFF)
        elif offset == spec.VIRTIO_PCI_GUEST_FEATURES:
            self.driver_features = value & self.backend.features & 0xFFFFFFFF
            self.backend.features_negotiated(self.driver_features)
        elif offset == spec.VIRTIO_PCI_QUEUE_PFN:
            self._legacy_queue_pfn(value & 0xFFFFFFFF)
        elif offset == spec.VIRTIO_PCI_QUEUE_SEL:
            self.queue_select = value & 0xFFFF
        elif offset == spec.VIRTIO_PCI_QUEUE_NOTIFY:
            self.notify(value & 0xFFFF)
        elif offset == spec.VIRTIO_PCI_STATUS:
            if value & 0xFF == 0:
                self.reset_transport()
            else:
                self._set_status(value & 0xFF)

    def _legacy_queue_pfn(self, pfn: int) -> None:
        q = self._selected()
        if q is None:
            return
        if pfn == 0:
            q.enabled, q.queue = False, None
            return
        q.size = q.max_size
        q.desc = pfn * LEGACY_PAGE
        q.driver = q.desc + 16 * q.size
        q.device = (q.driver + 6 + 2 * q.size + LEGACY_PAGE - 1) & ~(LEGACY_PAGE - 1)
        self._enable_queue(q)

    # -- migration ------------------------------------------------------------------
    STATE = ("device_status", "device_feature_select", "driver_feature_select",
             "driver_features", "queue_select", "config_generation", "config_vector", "isr")
    QUEUE_STATE = ("size", "vector", "enabled", "reset", "desc", "driver", "device")

    def save_state(self) -> dict:
        """Config space, the transport's registers, MSI-X, each queue and the device.
        A chain taken but not yet returned is saved as not taken (the queue is rewound
        to its used index): the destination takes it again."""
        queues = []
        for q in self.queues:
            saved = savestate.save_fields(q, self.QUEUE_STATE)
            ring = q.queue if q.enabled else None
            used = ring.used_idx if ring else 0
            saved.update(last_avail=used, used_idx=used,
                         signalled_used=ring.signalled_used if ring else 0)
            queues.append(saved)
        msix = {"table": bytes(self.msix.table), "pending": bytes(self.msix.pending)} \
            if self.msix else None
        return {**super().save_state(), "msix": msix, "queues": queues,
                "device": self.backend.save_state()}

    def load_state(self, state: dict) -> None:
        where = f"{self.backend.name}-pci"
        savestate.check_fields(self, (), state, where)
        if (state.get("msix") is None) != (self.msix is None):
            raise savestate.StateError(f"{where}: MSI-X does not match")
        if self.msix:
            savestate.check_fields(self.msix, ("table", "pending"), state["msix"], where)
        self.backend.load_state(state.get("device"))      # may change the queue count
        queues = state.get("queues")
        if not isinstance(queues, list) or len(queues) != len(self.queues):
            raise savestate.StateError(f"{where}: the queues do not match")
        for saved, q in zip(queues, self.queues):
            savestate.check_fields(q, self.QUEUE_STATE, saved, where)
            savestate.int_in(saved["size"], 1, q.max_size, f"{where}.size")
            for name in ("last_avail", "used_idx", "signalled_used"):
                savestate.int_in(saved.get(name), 0, 0xFFFF, f"{where}.{name}")
        super().load_state(state)
        if self.msix:
            savestate.set_fields(self.msix, ("table", "pending"), state["msix"])
        for index, saved in enumerate(queues):
            q = self.queues[index] = _QueueState(self.queues[index].max_size)
            savestate.set_fields(q, self.QUEUE_STATE, saved)
            if q.enabled:
                q.enabled = False
                self._enable_queue(q)
                if q.queue is not None:
                    q.queue.last_avail, q.queue.used_idx = saved["last_avail"], \
                        saved["used_idx"]
                    q.queue.signalled_used = saved["signalled_used"]
        self.backend.forget_inflight()

    def kick_all(self) -> None:
        """Looks at every queue, as if the driver had kicked each (after a load)."""
        for index in range(len(self.queues)):
            self.notify(index)

    def mark_rings_dirty(self) -> None:
        """Migration: the used rings this device writes, for the VMM's dirty log."""
        for q in self.queues:
            if q.enabled and q.queue is not None:
                self.memory.mark_dirty(q.device, 6 + 8 * q.size)

    # -- doorbells as ioeventfds ----------------------------------------------------
    def bar_moved(self, bar: Bar, address: int) -> None:
        """Queue notifications at the BAR's new place go straight to an eventfd."""
        for key in self._doorbells.pop(bar.index, []):
            self.ioevents.remove(key)
        if self.ioevents is None or address == UNMAPPED:
            return
        queues = range(self.backend.max_queues)
        if bar.index == 4:
            keys = [self.ioevents.add(address + NOTIFY + NOTIFY_MULTIPLIER * i, 2,
                                      partial(self.notify, i)) for i in queues]
        else:     # legacy: one port, the queue index is the value written
            keys = [self.ioevents.add(address + 0x10, 2, partial(self.notify, i), pio=True,
                                      datamatch=i) for i in queues]
        self._doorbells[bar.index] = keys

    # -- the VIRTIO_PCI_CAP_PCI_CFG window -------------------------------------------
    def _cfg_window(self) -> tuple[int, int, int] | None:
        cap = self.pci_cfg_cap
        bar = self.config[cap + 4]
        offset, length = struct.unpack_from("<II", self.config, cap + 8)
        if bar != 4 or length not in (1, 2, 4) or offset % length or \
                offset + length > 4 * REGION_SIZE:
            return None
        return offset, length, cap + 16

    def config_read(self, offset: int, size: int) -> int:
        data_at = self.pci_cfg_cap + 16 if self.modern else -1
        if self.modern and offset < data_at + 4 and offset + size > data_at:
            window = self._cfg_window()
            if window is not None:
                bar_offset, length, data = window
                value = _Bar4(self).bus_read(bar_offset, length)
                self.config[data:data + 4] = value.to_bytes(4, "little")
        return super().config_read(offset, size)

    def config_written(self, offset: int, size: int, value: int) -> None:
        if self.msix:
            self.msix.config_written()
        if self.modern and offset == self.pci_cfg_cap + 16:
            window = self._cfg_window()
            if window is not None:
                bar_offset, length, data = window
                raw = int.from_bytes(self.config[data:data + length], "little")
                _Bar4(self).bus_write(bar_offset, length, raw)


def _vendor_cap(cap_len: int, cfg_type: int, offset: int, length: int, bar: int = 4) -> bytes:
    """struct virtio_pci_cap after its id and next bytes."""
    return struct.pack("<BBBBHII", cap_len, cfg_type, bar, 0, 0, offset, length)


class _Bar4:
    mtree_name = "virtio-pci"
    pci_bar = True

    def __init__(self, dev: VirtioPciDevice) -> None:
        self.dev = dev

    def mtree_children(self) -> list[tuple[int, int, str]]:
        name = self.dev.backend.name
        return [(offset, REGION_SIZE, f"virtio-pci-{part}-{name}")
                for offset, part in ((COMMON, "common"), (ISR, "isr"), (DEVICE_CFG, "device"),
                                     (NOTIFY, "notify"))]

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


class _LegacyBar:
    mtree_name = "virtio-pci"
    pci_bar = True

    def __init__(self, dev: VirtioPciDevice) -> None:
        self.dev = dev

    def bus_read(self, offset: int, size: int) -> int:
        return self.dev.legacy_read(offset, size)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        self.dev.legacy_write(offset, size, value)
