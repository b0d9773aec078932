"""virtio-balloon (virtio spec 5.5): the host asks for memory back, the guest gives pages.

The monitor sets a target size; the device asks the guest for
``num_pages = (RAM - target) / 4 KiB`` pages. Pages the guest puts on the
inflate queue are discarded with MADV_DONTNEED, so the host's RSS really
falls; pages on the deflate queue simply become the guest's again (they read
back as zero). Contiguous page runs are discarded with one madvise each.

The stats queue works as QEMU's: the driver keeps one buffer of statistics
with the device; every ``guest-stats-polling-interval`` seconds the device
hands it back, and the driver refills and returns it. With
``free-page-reporting=on`` the driver reports free page ranges (device-writable
buffers), which are discarded like inflated pages.
"""

from __future__ import annotations

import logging
import struct
import time
from collections.abc import Callable

from vmm.errors import UserError
from vmm.memory import GuestMemory, GuestMemoryError
from vmm.qdev import DeviceError, DeviceType, Prop, declare, flag, implements, on_off
from vmm.virtio import spec
from vmm.virtio.device import VirtioDevice
from vmm.virtio.proxy import declare_proxies, realize_proxy
from vmm.virtio.spec import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, feature

log = logging.getLogger(__name__)

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
INFLATE_Q, DEFLATE_Q, STATS_Q, REPORTING_Q = 0, 1, 2, 3

F_STATS_VQ = feature(spec.VIRTIO_BALLOON_F_STATS_VQ)
F_DEFLATE_ON_OOM = feature(spec.VIRTIO_BALLOON_F_DEFLATE_ON_OOM)
F_PAGE_POISON = feature(spec.VIRTIO_BALLOON_F_PAGE_POISON)
F_REPORTING = feature(spec.VIRTIO_BALLOON_F_REPORTING)

# Tags of struct virtio_balloon_stat, in order, with QEMU's QOM names.
STAT_NAMES = ("stat-swap-in", "stat-swap-out", "stat-major-faults", "stat-minor-faults",
              "stat-free-memory", "stat-total-memory", "stat-available-memory",
              "stat-disk-caches", "stat-htlb-pgalloc", "stat-htlb-pgfail")
STAT_UNSET = (1 << 64) - 1      # QEMU's -1 in a uint64: "the guest did not report it"
STAT_ENTRY = struct.Struct("<HQ")
MAX_POLL_INTERVAL = 0xFFFFFFFF


class VirtioBalloon(VirtioDevice):
    name = "virtio-balloon"
    device_type = spec.VIRTIO_ID_BALLOON
    config_size = 16            # num_pages, actual, free_page_hint_cmd_id, poison_val

    def __init__(self, memory: GuestMemory, ram_size: int,
                 on_actual_change: Callable[[int], None],
                 make_timer: Callable[[Callable[[], None]], object],
                 deflate_on_oom: bool = False, free_page_reporting: bool = False,
                 page_poison: bool = True, stats_interval: int = 0) -> None:
        super().__init__()
        self.memory = memory
        self.ram_size = ram_size
        self.on_actual_change = on_actual_change   # BALLOON_CHANGE, with the VM's new size
        self.features = (F_STATS_VQ | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX
                         | (F_DEFLATE_ON_OOM if deflate_on_oom else 0)
                         | (F_PAGE_POISON if page_poison else 0)
                         | (F_REPORTING if free_page_reporting else 0))
        self.queue_sizes = (128, 128, 128) + ((32,) if free_page_reporting else ())
        self.stats_timer = make_timer(self._stats_poll)
        self.stats_interval = stats_interval
        self.num_pages = 0
        self.actual = 0
        self.poison_val = 0
        self.discarded_pages = 0
        self.reported_pages = 0
        self._reset_stats()

    def reset(self) -> None:
        super().reset()
        self.actual = 0
        self.poison_val = 0
        self._reset_stats()

    STATE = ("num_pages", "actual", "poison_val", "stats", "stats_last_update",
             "stats_interval")

    def state_loaded(self) -> None:
        if len(self.stats) != len(STAT_NAMES) or self.num_pages > self.ram_size >> PAGE_SHIFT:
            raise UserError("virtio-balloon: saved state does not fit this device")
        if self.stats_interval > 0:
            self.stats_timer.arm(self.stats_interval)

    def forget_inflight(self) -> None:
        self.stats_held = None          # the driver's buffer comes back with the queue

    def _reset_stats(self) -> None:
        self.stats = [STAT_UNSET] * len(STAT_NAMES)
        self.stats_last_update = 0
        self.stats_held = None          # the driver's stats buffer, until the next poll

    # -- the monitor's side ------------------------------------------------------
    def set_target(self, target_bytes: int) -> None:
        target = min(target_bytes, self.ram_size)
        self.num_pages = (self.ram_size - target) >> PAGE_SHIFT
        if self.transport is not None:
            self.transport.config_changed()

    def actual_bytes(self) -> int:
        return self.ram_size - (self.actual << PAGE_SHIFT)

    def guest_stats(self) -> dict:
        """QOM `guest-stats`, in QEMU's shape."""
        return {"stats": dict(zip(STAT_NAMES, self.stats)),
                "last-update": self.stats_last_update}

    def set_stats_interval(self, seconds: int) -> None:
        """QOM `guest-stats-polling-interval`; raises UserError with QEMU's text."""
        if seconds < 0:
            raise UserError("timer value must be greater than zero")
        if seconds > MAX_POLL_INTERVAL:
            raise UserError("timer value is too big")
        self.stats_interval = seconds
        if seconds == 0:
            self.stats_timer.cancel()
        else:
            self.stats_timer.arm(seconds)

    def live_properties(self) -> list[tuple]:
        """(name, QOM type, getter, setter) for QOM, as QEMU's balloon has them."""
        return [("guest-stats", "guest-stats", self.guest_stats, None),
                ("guest-stats-polling-interval", "int", lambda: self.stats_interval,
                 self.set_stats_interval)]

    # -- the guest's side ----------------------------------------------------------
    def config_bytes(self) -> bytes:
        return struct.pack("<IIII", self.num_pages, self.actual, 0, self.poison_val)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset == 4 and size == 4:
            if value != self.actual:
                self.actual = value
                self.on_actual_change(self.actual_bytes())
        elif offset == 12 and size == 4 and self.negotiated & F_PAGE_POISON:
            self.poison_val = value

    def queue_notify(self, index: int) -> None:
        if index in (INFLATE_Q, DEFLATE_Q):
            self._balloon_pages(index)
        elif index == STATS_Q:
            self._stats_received()
        elif index == REPORTING_Q:
            self._free_pages_reported()

    def _balloon_pages(self, index: int) -> None:
        queue = self.transport.queue(index)
        while (chain := queue.pop()) is not None:
            data = chain.read_all()
            count = len(data) // 4
            pfns = struct.unpack_from(f"<{count}I", data)
            if index == INFLATE_Q:
                self._discard(pfns)
            queue.push(chain.head, 0)
        self.transport.interrupt_queue(index)

    def _stats_received(self) -> None:
        queue = self.transport.queue(STATS_Q)
        while (chain := queue.pop()) is not None:
            if self.stats_held is not None:     # a driver that broke the protocol
                queue.push(self.stats_held.head, 0)
                self.transport.interrupt_queue(STATS_Q)
            data = chain.read_all()
            for i in range(len(data) // STAT_ENTRY.size):
                tag, value = STAT_ENTRY.unpack_from(data, i * STAT_ENTRY.size)
                if tag < len(self.stats):
                    self.stats[tag] = value
            self.stats_last_update = int(time.time())
            self.stats_held = chain
        if self.stats_interval > 0:
            self.stats_timer.arm(self.stats_interval)

    def _stats_poll(self) -> None:
        """The polling period is over: give the buffer back so the driver refills it."""
        queue = self.transport.queue(STATS_Q) if self.transport is not None else None
        if self.stats_held is None or queue is None:
            if self.stats_interval > 0:
                self.stats_timer.arm(self.stats_interval)
            return
        queue.push(self.stats_held.head, 0)
        self.stats_held = None
        self.transport.interrupt_queue(STATS_Q)

    def _free_pages_reported(self) -> None:
        queue = self.transport.queue(REPORTING_Q)
        while (chain := queue.pop()) is not None:
            # Discarded pages read back as zero: not while the guest poisons free pages.
            if not self.poison_val:
                for gpa, length in chain.writable_at:
                    self._discard_range(gpa, length)
            queue.push(chain.head, 0)
        self.transport.interrupt_queue(REPORTING_Q)

    def _discard(self, pfns: tuple[int, ...]) -> None:
        """Gives the pages back to the host, one madvise per contiguous run."""
        run_start = run_len = 0
        for pfn in sorted(pfns):
            if run_len and pfn == run_start + run_len:
                run_len += 1
                continue
            self._discard_run(run_start, run_len)
            run_start, run_len = pfn, 1
        self._discard_run(run_start, run_len)

    def _discard_run(self, pfn: int, count: int) -> None:
        if not count:
            return
        try:
            self.memory.discard(pfn << PAGE_SHIFT, count << PAGE_SHIFT)
            self.discarded_pages += count
        except GuestMemoryError:
            log.warning("balloon: guest offered pages outside RAM at pfn 0x%x", pfn)

    def _discard_range(self, gpa: int, length: int) -> None:
        """A reported free range: whole pages inside it go back to the host."""
        start = (gpa + PAGE - 1) & ~(PAGE - 1)
        end = (gpa + length) & ~(PAGE - 1)
        if end <= start:
            return
        try:
            self.memory.discard(start, end - start)
            self.reported_pages += (end - start) >> PAGE_SHIFT
        except GuestMemoryError:
            log.warning("balloon: guest reported free memory outside RAM at 0x%x", gpa)


# -- the models, as QEMU declares them -------------------------------------
def _realize(board, device):
    props = device.props
    if any(implements(d.type, "virtio-balloon-pci-base") for d in board.devices
           if d is not device):
        raise DeviceError("Only one balloon device is supported")
    balloon = VirtioBalloon(
        board.memory, board.cfg.memory,
        lambda actual: board.emit_from_vcpu("BALLOON_CHANGE", {"actual": actual}),
        board.device_timer, deflate_on_oom=props["deflate-on-oom"],
        free_page_reporting=props["free-page-reporting"], page_poison=props["page-poison"])
    balloon.set_stats_interval(props["guest-stats-polling-interval"] or 0)
    return realize_proxy(board, device, balloon, 0x00FF00)


declare(DeviceType("virtio-balloon-device", "virtio-device", user_creatable=False, props=(
    on_off("deflate-on-oom", False), on_off("free-page-hint", False, honoured=False),
    on_off("page-poison", True), on_off("free-page-reporting", False),
    flag("qemu-4-0-config-size", False, honoured=False),
    Prop("guest-stats-polling-interval", "int", qdev=False),
    Prop("guest-stats", "guest statistics", qdev=False, writable=False),
    Prop("iothread", "link<iothread>", qdev=False))))
declare_proxies("virtio-balloon-pci", "virtio-balloon-device", _realize,
                alias="virtio-balloon")
