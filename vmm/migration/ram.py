"""Which guest pages to send, pass after pass.

The first pass sends every page. Each later pass sends the pages written since
the one before: KVM's dirty log has the guest's own writes (each memory slot
logs while a migration runs), GuestMemory.dirty_log the ones devices made from
the VMM. One C call per region (vmm/_kvm_build.py) merges both and tells the
zero pages apart, which go as a record of their own, without data.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable

from vmm.kvm import Vm
from vmm.memory import PAGE_SIZE, GuestMemory
from vmm.migration.stream import Writer

CHUNK_PAGES = 256                 # 1 MiB per record: a cancel or a rate limit acts soon
_KINDS = (b"\x00", b"\x01", b"\x02")


def runs(pages: bytearray):
    """(first, end, kind) of each run of pages to send (kind 1 data, 2 zero), found
    with memchr-fast searches: a pass with few dirty pages costs little."""
    size, pos = len(pages), 0
    while pos < size:
        starts = [at for at in (pages.find(b"\x01", pos), pages.find(b"\x02", pos)) if at >= 0]
        if not starts:
            return
        first = min(starts)
        kind = pages[first]
        ends = [at for at in (pages.find(other, first) for other in _KINDS if other[0] != kind)
                if at >= 0]
        pos = min(ends) if ends else size
        yield first, pos, kind


class RamTracker:
    def __init__(self, vm: Vm, memory: GuestMemory, lock: threading.RLock) -> None:
        self.vm = vm
        self.memory = memory
        self.lock = lock
        self.passes = 0
        self.bitmaps = [bytearray((r.size // PAGE_SIZE + 63) // 64 * 8) for r in memory.regions]
        self.pages = [bytearray(r.size // PAGE_SIZE) for r in memory.regions]
        self.counts = [0] * len(memory.regions)      # pages to send per region

    def start(self) -> None:
        """Both logs on; from now each guest or device write is seen."""
        from vmm._kvm import lib
        with self.lock:
            self.memory.start_dirty_log()
        self._set_slots(lib.KVM_MEM_LOG_DIRTY_PAGES)

    def stop(self) -> None:
        self._set_slots(0)
        with self.lock:
            self.memory.stop_dirty_log()

    def _set_slots(self, flags: int) -> None:
        self.memory.set_slots(self.vm, flags)

    def _pagemap(self, region) -> bytes | None:
        """/proc/self/pagemap's entries for a region of private anonymous RAM (a page
        there neither present nor swapped is zero, and need not be read); None for
        RAM in a file or shared, or where pagemap cannot be read."""
        backing = self.memory.backing
        if backing.fd is not None or backing.shared:
            return None
        address = self.memory.host_address(region)
        try:
            with open("/proc/self/pagemap", "rb", buffering=0) as f:
                data = os.pread(f.fileno(), region.size // PAGE_SIZE * 8,
                                address // PAGE_SIZE * 8)
        except OSError:
            return None
        return data if len(data) == region.size // PAGE_SIZE * 8 else None

    def collect(self) -> int:
        """Takes the pages to send in this pass (all of them, the first time); returns
        how many."""
        from vmm._kvm import ffi, lib
        first = self.passes == 0
        self.passes += 1
        total = 0
        log = self.memory.dirty_log
        for slot, region in enumerate(self.memory.regions):
            bitmap = ffi.NULL
            if not first:
                self.memory.get_dirty_log(self.vm, slot, self.bitmaps[slot])
                bitmap = ffi.from_buffer("uint64_t[]", self.bitmaps[slot])
            vmm_log = ffi.NULL if log is None else \
                ffi.from_buffer("uint8_t[]", log)[region.gpa // PAGE_SIZE:region.end // PAGE_SIZE]
            ram = ffi.from_buffer("uint8_t[]", region.view)
            pagemap = self._pagemap(region) if first else None
            self.counts[slot] = lib.kk_classify_pages(
                ram, region.size // PAGE_SIZE, bitmap, vmm_log, int(first),
                ffi.from_buffer("uint64_t[]", pagemap) if pagemap else ffi.NULL,
                ffi.from_buffer("uint8_t[]", self.pages[slot]))
            total += self.counts[slot]
        return total

    def send(self, writer: Writer, keep_going: Callable[[int], None]) -> tuple[int, int]:
        """Writes the pages collect() chose; returns (pages with data, zero pages).
        ``keep_going(bytes)`` runs between records (rate limit, cancel)."""
        normal = zero = 0
        for region, pages, count in zip(self.memory.regions, self.pages, self.counts):
            for start, end, kind in (runs(pages) if count else ()):
                if kind == 2:             # one record, whatever its length: no data
                    writer.zero(region.gpa + start * PAGE_SIZE, end - start)
                    zero += end - start
                    continue
                for first in range(start, end, CHUNK_PAGES):
                    count = min(CHUNK_PAGES, end - first)
                    at = first * PAGE_SIZE
                    writer.pages(region.gpa + at, region.view[at:at + count * PAGE_SIZE])
                    normal += count
                    keep_going(writer.sent)
        return normal, zero
