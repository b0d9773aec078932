"""calc-dirty-rate: how fast the guest writes its memory, measured as QEMU does.

page-sampling hashes a sample of pages (so many per GiB of RAM), waits, and
hashes them again: the share that changed, times the RAM size, over the time,
is the rate. dirty-bitmap asks KVM's dirty log for every page written in the
period. The measurement runs on a thread of its own; query-dirty-rate reads it.
"""

from __future__ import annotations

import random
import threading
import time
import zlib

from vmm.memory import PAGE_SIZE

MIB = 1 << 20
GIB = 1 << 30
MIN_SAMPLES = 128


class DirtyRate:
    def __init__(self) -> None:
        self.status = "unstarted"
        self.start_time = 0
        self.calc_time = 0
        self.sample_pages = 0
        self.mode = "page-sampling"
        self.rate: int | None = None

    def result(self) -> dict:
        out = {"status": self.status, "start-time": self.start_time,
               "calc-time": self.calc_time, "sample-pages": self.sample_pages,
               "mode": self.mode}
        if self.status == "measured" and self.rate is not None:
            out["dirty-rate"] = self.rate
        return out

    def start(self, machine, calc_time: int, sample_pages: int, mode: str) -> None:
        # QEMU_CLOCK_REALTIME is the host's monotonic clock; QEMU reports whole seconds
        self.status, self.start_time, self.calc_time = "measuring", int(time.monotonic()), \
            calc_time
        self.mode, self.rate = mode, None
        self.sample_pages = sample_pages if mode == "page-sampling" else 0
        measure = self._sampled if mode == "page-sampling" else self._logged
        threading.Thread(target=self._run, args=(measure, machine), name="dirtyrate",
                         daemon=True).start()

    def _run(self, measure, machine) -> None:
        try:
            self.rate = measure(machine)
        except OSError:
            self.rate = None
        self.status = "measured"

    def _sampled(self, machine) -> int:
        memory = machine.memory
        chooser = random.Random()
        samples = []
        for region in memory.regions:
            pages = region.size // PAGE_SIZE
            count = min(pages, max(MIN_SAMPLES, region.size * self.sample_pages // GIB))
            samples += [(region, page * PAGE_SIZE) for page in chooser.sample(range(pages),
                                                                                count)]

        def hashes() -> list[int]:
            return [zlib.crc32(region.view[offset:offset + PAGE_SIZE])
                    for region, offset in samples]
        before = hashes()
        time.sleep(self.calc_time)
        changed = sum(a != b for a, b in zip(before, hashes()))
        total_mib = sum(region.size for region in memory.regions) // MIB
        return changed * total_mib // max(len(samples), 1) // self.calc_time

    def _logged(self, machine) -> int:
        """KVM's dirty log over the period: every slot logs, then stops again."""
        from vmm._kvm import lib
        memory, vm = machine.memory, machine.vm
        bitmaps = [bytearray((r.size // PAGE_SIZE + 63) // 64 * 8) for r in memory.regions]

        memory.set_slots(vm, lib.KVM_MEM_LOG_DIRTY_PAGES)
        try:
            time.sleep(self.calc_time)
            for index, bitmap in enumerate(bitmaps):
                memory.get_dirty_log(vm, index, bitmap)
        finally:
            memory.set_slots(vm, 0)
        pages = sum(bin(byte).count("1") for bitmap in bitmaps for byte in bitmap)
        return pages * PAGE_SIZE // MIB // self.calc_time
