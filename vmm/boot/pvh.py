"""PVH boot: an ELF with XEN_ELFNOTE_PHYS32_ENTRY, entered in 32-bit
protected mode with ebx pointing at an ``hvm_start_info`` (Xen's
arch-x86/hvm/start_info.h, version 1: memory map, command line, modules)."""

from __future__ import annotations

import struct

from vmm.boot import layout
from vmm.boot.elf import ElfImage
from vmm.memory import GuestMemory

XEN_ELFNOTE_PHYS32_ENTRY = 18
HVM_START_MAGIC = 0x336EC578

START_INFO_FORMAT = "<IIIIQQQQII"     # 56 bytes
MODLIST_FORMAT = "<QQQQ"              # 32 bytes per module
MEMMAP_FORMAT = "<QQII"               # 24 bytes per entry


def pvh_entry(image: ElfImage) -> int | None:
    """The 32-bit entry from the Xen PHYS32_ENTRY note, or None."""
    for note in image.notes:
        if note.name == b"Xen" and note.type == XEN_ELFNOTE_PHYS32_ENTRY:
            if len(note.desc) >= 8:
                return struct.unpack_from("<Q", note.desc)[0]
            if len(note.desc) >= 4:
                return struct.unpack_from("<I", note.desc)[0]
    return None


def write_start_info(mem: GuestMemory, cmdline: int, rsdp: int,
                     initrd: tuple[int, int] | None) -> int:
    """Writes hvm_start_info, its memmap and module list; returns its address."""
    e820 = layout.e820_map(mem.below_4g, mem.above_4g)
    info_size = struct.calcsize(START_INFO_FORMAT)
    memmap_addr = layout.START_INFO + info_size
    modlist_addr = memmap_addr + len(e820) * struct.calcsize(MEMMAP_FORMAT)
    for i, entry in enumerate(e820):
        mem.write(memmap_addr + i * 24, struct.pack(MEMMAP_FORMAT, entry.addr, entry.size,
                                                    entry.type, 0))
    nr_modules = 0
    if initrd is not None:
        mem.write(modlist_addr, struct.pack(MODLIST_FORMAT, initrd[0], initrd[1], 0, 0))
        nr_modules = 1
    mem.write(layout.START_INFO, struct.pack(
        START_INFO_FORMAT, HVM_START_MAGIC, 1, 0, nr_modules,
        modlist_addr if nr_modules else 0, cmdline, rsdp, memmap_addr, len(e820), 0))
    return layout.START_INFO
