"""Multiboot (v1) layout byte by byte, as QEMU's loader and option ROM leave it."""

from __future__ import annotations

import struct

import pytest
from tinyguests import elf64

from vmm.boot import layout, multiboot
from vmm.boot.loader import BootError, BootFiles, load_kernel, read_boot_files
from vmm.memory import GuestMemory

MiB = 1 << 20


def header(flags: int = 0, addresses: tuple[int, ...] = ()) -> bytes:
    return struct.pack("<III", multiboot.HEADER_MAGIC, flags,
                       (-(multiboot.HEADER_MAGIC + flags)) & 0xFFFFFFFF) + \
        struct.pack(f"<{len(addresses)}I", *addresses)


def elf32(segments: list[tuple[int, bytes, int]], entry: int, machine: int = 3) -> bytes:
    """A minimal ELF32 executable with PT_LOAD segments (paddr, data, memsz)."""
    phoff = 52
    offset = phoff + 32 * len(segments)
    phdrs, body = b"", b""
    for paddr, data, memsz in segments:
        phdrs += struct.pack("<IIIIIIII", 1, offset + len(body), paddr, paddr, len(data),
                             memsz, 7, 4)
        body += data
    ehdr = b"\x7fELF" + bytes([1, 1, 1, 0]) + b"\0" * 8
    ehdr += struct.pack("<HHIIIIIHHHHHH", 2, machine, 1, entry, phoff, 0, 0, 52, 32,
                        len(segments), 40, 0, 0)
    return ehdr + phdrs + body


@pytest.fixture
def mem():
    m = GuestMemory(128 * MiB)
    yield m
    m.close()


def info(mem: GuestMemory) -> tuple[int, ...]:
    return struct.unpack_from("<IIIIIII", mem.read(multiboot.INFO_ADDR, 28))


def test_elf_kernel_modules_and_info(mem):
    code = header() + b"\x90" * 20
    kernel = elf32([(0x400000, code, 0x3000)], 0x40000C)
    modules = [multiboot.Module("env.txt a=1", b"A=1\nB=2\n"), multiboot.Module("two", b"2")]
    mem.write(0x400000 + 0x2000, b"\xAA" * 16)             # bss is cleared
    plan = load_kernel(mem, BootFiles("x86/t.flat", kernel, None, modules), "-v x", 0)
    assert (plan.protocol, plan.entry, plan.info_addr) == ("multiboot", 0x40000C, 0x9500)
    assert mem.read(0x400000, len(code)) == code
    assert mem.read(0x402000, 16) == b"\0" * 16
    flags, lower, upper, boot_device, cmdline, count, mods = info(mem)
    assert flags == 0x24F and boot_device == 0x8000FFFF
    assert (lower, upper) == (639, 127 * 1024)
    assert mem.read(cmdline, 16) == b"x86/t.flat -v x\0"
    assert count == 2 and mods == 0x403000                 # page-aligned after the kernel
    starts = []
    for i, module in enumerate(modules):
        start, end, mod_cmdline = struct.unpack_from("<III", mem.read(mods + 16 * i, 12))
        assert start % 4096 == 0 and mem.read(start, end - start) == module.data
        assert mem.read(mod_cmdline, len(module.cmdline) + 1) == module.cmdline.encode() + b"\0"
        starts.append(start)
    assert starts[1] == starts[0] + 4096
    name = struct.unpack_from("<I", mem.read(multiboot.INFO_ADDR + 64, 4))[0]
    assert mem.read(name, 5) == b"qemu\0"


def test_memory_map_is_the_e820_in_multiboot_form(mem):
    load_kernel(mem, BootFiles("k", elf32([(0x200000, header(), 12)], 0x200000), None, []),
                "", 0)
    length, addr = struct.unpack_from("<II", mem.read(multiboot.INFO_ADDR + 44, 8))
    entries = [struct.unpack_from("<IQQI", mem.read(addr + off, 24))
               for off in range(0, length, 24)]
    expected = layout.e820_map(mem.below_4g, mem.above_4g)
    assert [(e[1], e[2], e[3]) for e in entries] == [(x.addr, x.size, x.type) for x in expected]
    assert {e[0] for e in entries} == {20}


def test_aout_kludge_uses_the_header_addresses(mem):
    # header at file offset 0, loaded at 0x300000; 0x20 bytes of file, bss up to 0x300100
    hdr = header(multiboot.FLAG_ADDRESSES, (0x300000, 0x300000, 0x300020, 0x300100, 0x300010))
    kernel = hdr + b"\xCC" * 100
    mem.write(0x300020, b"\xAA" * 0xE0)
    plan = load_kernel(mem, BootFiles("k", kernel, None, []), "", 0)
    assert plan.entry == 0x300010
    assert mem.read(0x300000, 0x20) == kernel[:0x20]
    assert mem.read(0x300020, 0xE0) == b"\0" * 0xE0


def test_header_search_and_bad_images(mem):
    assert multiboot.find_header(b"\0" * 8192) is None
    assert multiboot.find_header(b"\0" * 64 + header(5)) == (64, 5)
    bad_checksum = struct.pack("<III", multiboot.HEADER_MAGIC, 0, 1)
    assert multiboot.find_header(bad_checksum + b"\0" * 64) is None
    beyond = b"\0" * 8192 + header()
    assert multiboot.find_header(beyond) is None
    x86_64 = elf64([(0x200000, header(), 12)], 0x200000)
    with pytest.raises(BootError, match="Cannot load x86-64 image, give a 32bit one."):
        load_kernel(mem, BootFiles("k", x86_64, None, []), "", 0)
    with pytest.raises(BootError, match="invalid mh_load_addr address"):
        hdr = header(multiboot.FLAG_ADDRESSES, (0x100000, 0x200000, 0, 0, 0x200000))
        load_kernel(mem, BootFiles("k", hdr, None, []), "", 0)
    huge_bss = header(multiboot.FLAG_ADDRESSES, (0x100000, 0x100000, 0, 0xFFFFFFF0, 0x100000))
    with pytest.raises(BootError, match="do not fit in guest RAM"):
        load_kernel(mem, BootFiles("k", huge_bss, None, []), "", 0)
    far_apart = elf32([(0x200000, header(), 12), (0xF0000000, b"x", 1)], 0x200000)
    with pytest.raises(BootError, match="do not fit in guest RAM"):
        load_kernel(mem, BootFiles("k", far_apart, None, []), "", 0)
    plain32 = elf32([(0x200000, b"\x90" * 16, 16)], 0x200000)
    with pytest.raises(BootError, match="neither a PVH note nor a multiboot header"):
        load_kernel(mem, BootFiles("k", plain32, None, []), "", 0)


def test_initrd_entries_are_modules_with_arguments(tmp_path):
    (tmp_path / "a").write_bytes(b"AAAA")
    (tmp_path / "b,c").write_bytes(b"BC")
    kernel = tmp_path / "k"
    kernel.write_bytes(elf32([(0x200000, header(), 12)], 0x200000))
    spec = f"{tmp_path}/a x=1 y,{tmp_path}/b,,c"
    files = read_boot_files(str(kernel), spec)
    assert [(m.cmdline, m.data) for m in files.modules] == [
        (f"{tmp_path}/a x=1 y", b"AAAA"), (f"{tmp_path}/b,c", b"BC")]
    with pytest.raises(BootError, match=f"Failed to open file '{tmp_path}/nope'"):
        read_boot_files(str(kernel), f"{tmp_path}/nope arg")
    not_multiboot = tmp_path / "pvh"
    not_multiboot.write_bytes(elf64([(0x200000, b"\xf4", 1)], 0x200000))
    with pytest.raises(BootError, match="could not load initial ram disk"):
        read_boot_files(str(not_multiboot), f"{tmp_path}/a,x")
