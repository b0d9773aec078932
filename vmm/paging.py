"""Guest-virtual to guest-physical addresses through a vCPU's own page tables, for
the monitor's x, memsave and gva2gpa and for the gdb stub: no paging, 32-bit
two-level, PAE three-level and long-mode four-level tables."""

from __future__ import annotations

import struct
from collections.abc import Callable

PRESENT = 1
LARGE = 0x80                      # PS: a 4 MiB, 2 MiB or 1 GiB page at this level
CR0_PG = 1 << 31
CR4_PAE = 1 << 5
EFER_LMA = 1 << 10
ADDR_52 = 0x000FFFFFFFFFF000
PHYS_MASK = (1 << 52) - 1

ReadPhys = Callable[[int, int], bytes]      # (gpa, length) -> bytes; ValueError if unmapped


def translate(read_phys: ReadPhys, sregs, vaddr: int) -> int | None:
    """The guest-physical address of vaddr, or None when no page maps it."""
    if not sregs.cr0 & CR0_PG:             # as QEMU's debug access: the address itself,
        return vaddr & PHYS_MASK           # within the physical address space
    try:
        if sregs.efer & EFER_LMA:
            return _walk(read_phys, sregs.cr3 & ADDR_52, vaddr, (39, 30, 21, 12), 8, (30, 21))
        if sregs.cr4 & CR4_PAE:
            pdpte = _entry(read_phys, (sregs.cr3 & 0xFFFFFFE0) + ((vaddr >> 30) & 3) * 8, 8)
            if not pdpte & PRESENT:
                return None
            return _walk(read_phys, pdpte & ADDR_52, vaddr & 0x3FFFFFFF, (21, 12), 8, (21,))
        return _walk(read_phys, sregs.cr3 & 0xFFFFF000, vaddr & 0xFFFFFFFF, (22, 12), 4, (22,))
    except ValueError:                     # a table outside guest RAM
        return None


def _entry(read_phys: ReadPhys, gpa: int, size: int) -> int:
    return struct.unpack("<Q" if size == 8 else "<I", read_phys(gpa, size))[0]


def _walk(read_phys: ReadPhys, table: int, vaddr: int, shifts: tuple[int, ...], size: int,
          large_at: tuple[int, ...]) -> int | None:
    index_mask = 0x1FF if size == 8 else 0x3FF
    for shift in shifts:
        entry = _entry(read_phys, table + ((vaddr >> shift) & index_mask) * size, size)
        if not entry & PRESENT:
            return None
        frame = entry & (ADDR_52 if size == 8 else 0xFFFFF000)
        if shift in large_at and entry & LARGE:
            return (frame & ~((1 << shift) - 1)) | (vaddr & ((1 << shift) - 1))
        table = frame
    return table | (vaddr & 0xFFF)


def read_virtual(read_phys: ReadPhys, sregs, vaddr: int, length: int) -> bytes | None:
    """length bytes from vaddr on, page by page; None if any page is unmapped."""
    data = bytearray()
    while len(data) < length:
        here = vaddr + len(data)
        step = min(length - len(data), 0x1000 - (here & 0xFFF))
        gpa = translate(read_phys, sregs, here)
        if gpa is None:
            return None
        try:
            data += read_phys(gpa, step)
        except ValueError:
            return None
    return bytes(data)
