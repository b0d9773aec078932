"""Guest RAM: mappings split around the PCI hole, anonymous and private unless a
memory backend object (vmm/objects.py: a file, a memfd, shared) provides them.

RAM below 4 GiB stops at the PCI hole (0xC000_0000); the rest is mapped from
4 GiB up. Devices get zero-copy memoryviews; every address and length that
comes from the guest goes through ``view``, which refuses anything that is not
wholly inside one RAM region.
"""

from __future__ import annotations

import ctypes
import functools
import mmap
import os
from dataclasses import dataclass

PCI_HOLE_START = 0xC000_0000
HIGH_RAM_START = 0x1_0000_0000
PAGE_SIZE = 4096
# Anonymous RAM is mapped between two PROT_NONE pages, so that a device or ring
# bug that ran past a region's end (or before its start) faults at once instead
# of touching other host memory.
GUARD = PAGE_SIZE
PROT_NONE = 0                   # (the mmap module names only PROT_READ, _WRITE, _EXEC)


class GuestMemoryError(ValueError):
    """A guest-physical range that is not RAM."""


@dataclass
class RamRegion:
    gpa: int
    size: int
    mapping: mmap.mmap
    view: memoryview
    guard: int = 0                  # bytes of the mapping before the RAM (a guard page)

    @property
    def end(self) -> int:
        return self.gpa + self.size


@dataclass
class RamBacking:
    """How RAM is mapped: from ``fd`` (a file or memfd; None: anonymous), shared
    with other processes or private, its pages reserved and touched up front or not."""
    fd: int | None = None
    shared: bool = False
    reserve: bool = False
    prealloc: bool = False
    merge: bool = True
    dump: bool = True


class GuestMemory:
    def __init__(self, size: int, backing: RamBacking | None = None) -> None:
        if size < 0 or size % PAGE_SIZE:
            raise ValueError("RAM size must be a multiple of 4 KiB")
        self.size = size
        self.backing = backing or RamBacking()
        # While a migration runs: a byte per guest page, set when the VMM itself (a
        # device) may have written the page, which KVM's dirty log cannot see.
        self.dirty_log: bytearray | None = None
        # Ranges of RAM that KVM does not map, so that guest accesses there reach a
        # device instead (the legacy VGA window at 0xA0000 when a VGA card is present)
        self.holes: list[tuple[int, int]] = []
        low = min(size, PCI_HOLE_START)
        self.regions: list[RamRegion] = [self._map(0, low, 0)] if size else []
        if size > low:
            self.regions.append(self._map(HIGH_RAM_START, size - low, low))

    def _map(self, gpa: int, size: int, offset: int) -> RamRegion:
        b = self.backing
        flags = mmap.MAP_SHARED if b.shared else mmap.MAP_PRIVATE
        if not b.reserve:
            flags |= getattr(mmap, "MAP_NORESERVE", 0x4000)
        if b.prealloc:
            flags |= getattr(mmap, "MAP_POPULATE", 0x8000)
        guard = 0
        if b.fd is None:
            guard = GUARD
            mapping = mmap.mmap(-1, size + 2 * guard, flags | mmap.MAP_ANONYMOUS,
                                mmap.PROT_READ | mmap.PROT_WRITE)
            base = _address_of(mapping)
            for start in (base, base + guard + size):
                if _libc().mprotect(ctypes.c_void_p(start), guard, PROT_NONE):
                    raise OSError(ctypes.get_errno(), "mprotect of a guard page")
        else:
            mapping = mmap.mmap(b.fd, size, flags, mmap.PROT_READ | mmap.PROT_WRITE,
                                offset=offset)
        if b.merge and hasattr(mmap, "MADV_MERGEABLE"):
            mapping.madvise(mmap.MADV_MERGEABLE)
        if not b.dump and hasattr(mmap, "MADV_DONTDUMP"):
            mapping.madvise(mmap.MADV_DONTDUMP)
        return RamRegion(gpa, size, mapping, memoryview(mapping)[guard:guard + size], guard)

    @property
    def below_4g(self) -> int:
        return self.regions[0].size

    @property
    def above_4g(self) -> int:
        return self.regions[1].size if len(self.regions) > 1 else 0

    def host_address(self, region: RamRegion) -> int:
        from vmm._kvm import ffi  # local: keeps this module usable without the extension
        return int(ffi.cast("uintptr_t", ffi.from_buffer(region.mapping))) + region.guard

    def region_of(self, gpa: int, length: int) -> RamRegion:
        if length < 0:
            raise GuestMemoryError(f"negative length {length}")
        for region in self.regions:
            if region.gpa <= gpa and gpa + length <= region.end:
                return region
        raise GuestMemoryError(f"guest range 0x{gpa:x}+0x{length:x} is not RAM")

    def view(self, gpa: int, length: int) -> memoryview:
        """A zero-copy view of [gpa, gpa+length); raises GuestMemoryError if not all
        RAM. Whoever writes through it marks the pages (mark_dirty) afterwards."""
        region = self.region_of(gpa, length)
        start = gpa - region.gpa
        return region.view[start:start + length]

    @property
    def page_frames(self) -> int:
        """Guest page frame numbers run below this (the top of the highest region)."""
        return self.regions[-1].end // PAGE_SIZE if self.regions else 0

    def kvm_slots(self) -> list[tuple[int, int, int, int, int]]:
        """(KVM slot, region index, gpa, size, host address) of each piece of RAM KVM
        maps: a region's first piece has the region's index as its slot, the pieces
        left after a hole take slots past the regions'."""
        slots, spare = [], len(self.regions)
        for index, region in enumerate(self.regions):
            pieces = [(region.gpa, region.end)]
            for start, end in self.holes:
                pieces = [part for lo, hi in pieces
                          for part in ((lo, min(hi, start)), (max(lo, end), hi))
                          if part[0] < part[1]]
            host = self.host_address(region)
            for number, (lo, hi) in enumerate(pieces):
                slot = index if number == 0 else spare
                spare += number > 0
                slots.append((slot, index, lo, hi - lo, host + lo - region.gpa))
        return slots

    def set_slots(self, vm, flags: int = 0) -> None:
        """Maps the RAM into KVM (again), with ``flags`` (dirty logging) on every slot."""
        for slot, _index, gpa, size, host in self.kvm_slots():
            vm.set_user_memory_region(slot, gpa, size, host, flags)

    def add_hole(self, vm, start: int, size: int) -> None:
        """Stops KVM mapping [start, start+size) as RAM: accesses there exit to the
        VMM's MMIO bus. ``start + size`` must be 64-page aligned (for the dirty log)."""
        if (start + size) % (64 * PAGE_SIZE):
            raise ValueError("a RAM hole must end on a 256 KiB boundary")
        for slot, *_rest in self.kvm_slots():
            vm.set_user_memory_region(slot, 0, 0, 0)              # size 0: deleted
        self.holes.append((start, start + size))
        self.set_slots(vm)

    def get_dirty_log(self, vm, index: int, bitmap: bytearray) -> None:
        """KVM's dirty log of region ``index``, one bit per page, over all its slots."""
        pieces = [piece for piece in self.kvm_slots() if piece[1] == index]
        if len(pieces) == 1:
            vm.get_dirty_log(pieces[0][0], bitmap)
            return
        region = self.regions[index]
        for slot, _index, gpa, size, _host in pieces:
            part = bytearray((size // PAGE_SIZE + 63) // 64 * 8)
            vm.get_dirty_log(slot, part)
            at = (gpa - region.gpa) // PAGE_SIZE // 8
            bitmap[at:at + len(part)] = part[:len(bitmap) - at]

    def start_dirty_log(self) -> None:
        self.dirty_log = bytearray(self.page_frames)

    def stop_dirty_log(self) -> None:
        self.dirty_log = None

    def mark_dirty(self, gpa: int, length: int) -> None:
        """After a device wrote [gpa, gpa+length): migration sends those pages again
        (a mark made before the write could be taken before the data lands)."""
        log = self.dirty_log
        if log is not None and length > 0:
            first, last = gpa // PAGE_SIZE, (gpa + length - 1) // PAGE_SIZE
            log[first:last + 1] = b"\1" * (last + 1 - first)

    def is_ram(self, gpa: int, length: int = 1) -> bool:
        try:
            self.region_of(gpa, length)
        except GuestMemoryError:
            return False
        return True

    def read(self, gpa: int, length: int) -> bytes:
        return bytes(self.view(gpa, length))

    def write(self, gpa: int, data: bytes | bytearray | memoryview) -> None:
        self.view(gpa, len(data))[:] = data
        self.mark_dirty(gpa, len(data))

    def fill(self, gpa: int, length: int, byte: int = 0) -> None:
        self.view(gpa, length)[:] = bytes([byte]) * length
        self.mark_dirty(gpa, length)

    # Fixed-size accesses are one load or store each (a view cast to that size), so a
    # vCPU never sees half of a value a device is writing: struct.pack_into would
    # zero the field first, and byte-wise reads can tear. x86 is little-endian.
    def read_u16(self, gpa: int) -> int:
        return self.view(gpa, 2).cast("H")[0]

    def read_u32(self, gpa: int) -> int:
        return self.view(gpa, 4).cast("I")[0]

    def read_u64(self, gpa: int) -> int:
        return self.view(gpa, 8).cast("Q")[0]

    def write_u16(self, gpa: int, value: int) -> None:
        self.view(gpa, 2).cast("H")[0] = value
        self.mark_dirty(gpa, 2)

    def write_u32(self, gpa: int, value: int) -> None:
        self.view(gpa, 4).cast("I")[0] = value
        self.mark_dirty(gpa, 4)

    def write_u64(self, gpa: int, value: int) -> None:
        self.view(gpa, 8).cast("Q")[0] = value
        self.mark_dirty(gpa, 8)

    def discard(self, gpa: int, length: int) -> None:
        """Give the pages back to the host (they read as zero afterwards)."""
        region = self.region_of(gpa, length)
        start = gpa - region.gpa
        if start % PAGE_SIZE or length % PAGE_SIZE:
            raise GuestMemoryError("discard needs page-aligned ranges")
        # a shared mapping's pages live in the file or memfd: punch them out of it
        advice = mmap.MADV_REMOVE if self.backing.shared else mmap.MADV_DONTNEED
        region.mapping.madvise(advice, region.guard + start, length)
        self.mark_dirty(gpa, length)              # now zero: migration must say so

    def close(self) -> None:
        """Unmaps RAM; while a device still holds a view, the mapping is left to the GC."""
        for region in self.regions:
            try:
                region.view.release()
                region.mapping.close()
            except BufferError:
                pass
        self.regions = []

    def flush_page(self, gpa: int) -> None:
        """Takes a page's host mapping away and gives it back (mprotect), so KVM drops
        its translation and the guest's next access faults it in again."""
        page = gpa & ~(PAGE_SIZE - 1)
        if not self.is_ram(page, PAGE_SIZE):
            return
        region = self.region_of(page, PAGE_SIZE)
        address = self.host_address(region) + page - region.gpa
        libc = _libc()
        libc.mprotect(ctypes.c_void_p(address), PAGE_SIZE, PROT_NONE)
        libc.mprotect(ctypes.c_void_p(address), PAGE_SIZE, mmap.PROT_READ | mmap.PROT_WRITE)


def _address_of(mapping: mmap.mmap) -> int:
    pointer = ctypes.c_char.from_buffer(mapping)     # (its export ends with it)
    try:
        return ctypes.addressof(pointer)
    finally:
        del pointer


MCL_CURRENT, MCL_FUTURE = 1, 2


def lock_all_memory() -> None:
    """-overcommit mem-lock=on: every mapping, now and later (guest RAM included),
    stays resident, as QEMU's mlockall."""
    if _libc().mlockall(MCL_CURRENT | MCL_FUTURE):
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))


@functools.cache
def _libc() -> ctypes.CDLL:
    return ctypes.CDLL(None, use_errno=True)
