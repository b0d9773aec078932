"""Multiboot (version 1): the kernel, its modules and the info structure, laid out
as QEMU's loader and its multiboot option ROM leave them.

QEMU copies the kernel image (ELF segments, or the a.out-kludge address range),
then, page-aligned after it, the module list, the command lines and the boot
loader name, then each module page-aligned. The info structure sits at 0x9500
with its e820-style memory map at 0x9000. The kernel's command line is the
kernel's file name, a space, and -append; a module's is its -initrd entry.
The kernel is entered in 32-bit protected mode, paging off, eax = 0x2BADB002,
ebx = the info structure.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmm.boot import layout
from vmm.boot.elf import EM_X86_64, ElfError, parse_elf
from vmm.memory import GuestMemory, GuestMemoryError
from vmm.qemuopts import split_opts

HEADER_MAGIC = 0x1BADB002
BOOTLOADER_MAGIC = 0x2BADB002
HEADER_SEARCH = 8192 - 48        # the header's 12 words lie in the first 8 KiB
FLAG_VIDEO_MODE = 1 << 2
FLAG_ADDRESSES = 1 << 16         # the a.out kludge: load addresses in the header

MMAP_ADDR = 0x9000
INFO_ADDR = MMAP_ADDR + 0x500
INFO_SIZE = 88
MODULE_ENTRY_SIZE = 16
BOOTLOADER_NAME = b"qemu\0"      # QEMU's loader name; guests may print it

INFO_MEMORY, INFO_BOOT_DEVICE, INFO_CMDLINE = 1 << 0, 1 << 1, 1 << 2
INFO_MODULES, INFO_MMAP, INFO_BOOTLOADER = 1 << 3, 1 << 6, 1 << 9
INFO_FLAGS = (INFO_MEMORY | INFO_BOOT_DEVICE | INFO_CMDLINE | INFO_MODULES | INFO_MMAP
              | INFO_BOOTLOADER)
BOOT_DEVICE_NONE = 0x8000FFFF
PAGE = 0x1000


class MultibootError(ValueError):
    """The image claims multiboot but cannot be loaded; the message is for the user."""


@dataclass(frozen=True)
class Module:
    cmdline: str        # the -initrd entry: file name, then any arguments
    data: bytes


def find_header(kernel: bytes) -> tuple[int, int] | None:
    """(offset, flags) of a valid multiboot header, or None."""
    for offset in range(0, min(len(kernel) - 11, HEADER_SEARCH), 4):
        magic, flags, checksum = struct.unpack_from("<III", kernel, offset)
        if magic == HEADER_MAGIC and (magic + flags + checksum) & 0xFFFFFFFF == 0:
            return offset, flags
    return None


def read_modules(spec: str) -> list[Module]:
    modules = []
    # entries split at commas, ',,' being a comma: QEMU's option syntax
    for entry in split_opts(spec):
        path = entry.split(" ", 1)[0]
        try:
            with open(path, "rb") as f:
                modules.append(Module(entry, f.read()))
        except OSError:
            raise MultibootError(f"Failed to open file '{path}'") from None
    return modules


def _kernel_image(kernel: bytes, offset: int, flags: int,
                  ram_end: int) -> tuple[int, bytes, int]:
    """(load address, the image with its bss, entry point). Nothing larger than RAM
    below 4 GiB is built: a header may claim any size."""
    if flags & FLAG_ADDRESSES:
        header_addr, load_addr, load_end, bss_end, entry = struct.unpack_from(
            "<IIIII", kernel, offset + 12)
        if header_addr < load_addr:
            raise MultibootError("invalid mh_load_addr address")
        text_offset = offset - (header_addr - load_addr)
        if text_offset < 0:
            raise MultibootError("invalid mh_header_addr address")
        if load_end:
            if load_end < load_addr:
                raise MultibootError("invalid mh_load_end_addr address")
            load_size = load_end - load_addr
        else:
            load_size = len(kernel) - text_offset
        size = load_size
        if bss_end:
            if bss_end < load_addr + load_size:
                raise MultibootError("invalid mh_bss_end_addr address")
            size = bss_end - load_addr
        _check_fits(load_addr, size, ram_end)
        data = kernel[text_offset:text_offset + load_size]
        return load_addr, data.ljust(size, b"\0"), entry
    try:
        image = parse_elf(kernel)
    except ElfError as e:
        raise MultibootError(f"Error while loading elf kernel: {e}") from None
    if image.machine == EM_X86_64:
        raise MultibootError("Cannot load x86-64 image, give a 32bit one.")
    if not image.segments:
        raise MultibootError("Error while loading elf kernel: no loadable segment")
    low = min(s.paddr for s in image.segments)
    high = max(s.paddr + s.memsz for s in image.segments)
    _check_fits(low, high - low, ram_end)
    buf = bytearray(high - low)
    for seg in image.segments:
        start = seg.paddr - low
        buf[start:start + len(seg.data)] = seg.data
    return low, bytes(buf), image.entry


def load(mem: GuestMemory, kernel: bytes, header: tuple[int, int], kernel_name: str,
         cmdline: str, modules: list[Module]) -> tuple[int, int]:
    """Lays out kernel, modules and info; returns (entry, info address)."""
    offset, flags = header
    load_addr, image, entry = _kernel_image(kernel, offset, flags, mem.below_4g)
    # Page-aligned after the kernel: module entries, command lines, loader name.
    info_start = load_addr + _page_align(len(image))
    module_cmdlines = [m.cmdline.encode() + b"\0" for m in modules]
    kernel_cmdline = f"{kernel_name} {cmdline}".encode() + b"\0"
    strings_start = info_start + MODULE_ENTRY_SIZE * len(modules)
    tables = bytearray(MODULE_ENTRY_SIZE * len(modules))
    strings = bytearray()

    def add_string(raw: bytes) -> int:
        addr = strings_start + len(strings)
        strings.extend(raw)
        return addr

    cmdline_addrs = [add_string(raw) for raw in module_cmdlines]
    cmdline_addr = add_string(kernel_cmdline)
    loader_addr = add_string(BOOTLOADER_NAME)
    module_addr = info_start + _page_align(len(tables) + len(strings))
    for i, module in enumerate(modules):
        struct.pack_into("<III", tables, i * MODULE_ENTRY_SIZE, module_addr,
                         module_addr + len(module.data), cmdline_addrs[i])
        module_addr += _page_align(len(module.data))
    info = bytearray(INFO_SIZE)
    struct.pack_into("<IIIIIII", info, 0, INFO_FLAGS, layout.EBDA_START // 1024,
                     (mem.below_4g - layout.HIGH_MEMORY) // 1024, BOOT_DEVICE_NONE,
                     cmdline_addr, len(modules), info_start)
    mmap = _mmap(mem)
    struct.pack_into("<II", info, 44, len(mmap), MMAP_ADDR)
    struct.pack_into("<I", info, 64, loader_addr)
    try:
        # QEMU's option ROM writes the info and the memory map first and copies the
        # kernel last: a kernel loaded over 0x9000 (kvm-unit-tests' realmode) wins.
        mem.write(INFO_ADDR, info)
        mem.write(MMAP_ADDR, mmap)
        mem.write(load_addr, image)
        mem.write(info_start, bytes(tables) + bytes(strings))
        for i, module in enumerate(modules):
            start = struct.unpack_from("<I", tables, i * MODULE_ENTRY_SIZE)[0]
            mem.write(start, module.data)
    except GuestMemoryError:
        raise MultibootError("multiboot kernel and modules do not fit in guest RAM") from None
    return entry, INFO_ADDR


def _mmap(mem: GuestMemory) -> bytes:
    """The e820 map in multiboot's form (a size word before each entry)."""
    return b"".join(struct.pack("<IQQI", 20, e.addr, e.size, e.type)
                    for e in layout.e820_map(mem.below_4g, mem.above_4g))


def _check_fits(start: int, size: int, ram_end: int) -> None:
    if start + size > ram_end:
        raise MultibootError("multiboot kernel and modules do not fit in guest RAM")


def _page_align(n: int) -> int:
    return (n + PAGE - 1) & ~(PAGE - 1)
