"""virtio-balloon (virtio spec 5.5): the host asks for memory back, the guest gives pages.

The monitor sets a target size; the device asks the guest for
``num_pages = (RAM - target) / 4 KiB`` pages. Pages the guest puts on the
inflate queue are discarded with MADV_DONTNEED, so the host's RSS really
falls; pages on the deflate queue simply become the guest's again (they read
back as zero). Contiguous page runs are discarded with one madvise each.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from vmm.memory import GuestMemory, GuestMemoryError
from vmm.virtio.device import VirtioDevice

log = logging.getLogger(__name__)

PAGE_SHIFT = 12
PAGE = 1 << PAGE_SHIFT
INFLATE_Q, DEFLATE_Q = 0, 1
F_RING_INDIRECT_DESC = 1 << 28
F_RING_EVENT_IDX = 1 << 29


class VirtioBalloon(VirtioDevice):
    device_type = 5
    queue_sizes = (128, 128)
    features = F_RING_INDIRECT_DESC | F_RING_EVENT_IDX

    def __init__(self, memory: GuestMemory, ram_size: int,
                 on_actual_change: Callable[[int], None]) -> None:
        super().__init__()
        self.memory = memory
        self.ram_size = ram_size
        self.on_actual_change = on_actual_change   # BALLOON_CHANGE, with the VM's new size
        self.num_pages = 0
        self.actual = 0
        self.discarded_pages = 0

    def reset(self) -> None:
        super().reset()
        self.actual = 0

    # -- the monitor's side ------------------------------------------------------
    def set_target(self, target_bytes: int) -> None:
        target = min(target_bytes, self.ram_size)
        self.num_pages = (self.ram_size - target) >> PAGE_SHIFT
        if self.transport is not None:
            self.transport.config_changed()

    def actual_bytes(self) -> int:
        return self.ram_size - (self.actual << PAGE_SHIFT)

    # -- the guest's side ----------------------------------------------------------
    def config_bytes(self) -> bytes:
        return struct.pack("<II", self.num_pages, self.actual)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset == 4 and size == 4:
            if value != self.actual:
                self.actual = value
                self.on_actual_change(self.actual_bytes())

    def queue_notify(self, index: int) -> None:
        if index not in (INFLATE_Q, DEFLATE_Q):
            return
        queue = self.transport.queue(index)
        while (chain := queue.pop()) is not None:
            data = chain.read_all()
            count = len(data) // 4
            pfns = struct.unpack_from(f"<{count}I", data)
            if index == INFLATE_Q:
                self._discard(pfns)
            queue.push(chain.head, 0)
        self.transport.interrupt_queue(index)

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
