"""Boot structures byte by byte: zero page, e820, hvm_start_info, loaders, payloads."""

from __future__ import annotations

import struct

import pytest
from tinyguests import bzimage, compress, elf64, pvh_note

from vmm.boot import layout, linux, pvh
from vmm.boot.loader import BootError, BootFiles, load_kernel
from vmm.memory import GuestMemory

MiB = 1 << 20
GiB = 1 << 30
FORMATS = ["gzip", "bzip2", "lzma", "xz", "lz4", "zstd", "none"]


def small_elf() -> bytes:
    code = b"\x90" * 100 + b"\xf4"
    return elf64([(0x1000000, code, 0x2000)], 0x1000000)


def files(kernel: bytes, initrd: bytes | None = None) -> BootFiles:
    return BootFiles("kernel.elf", kernel, initrd, [])


@pytest.fixture
def mem():
    m = GuestMemory(256 * MiB)
    yield m
    m.close()


def test_e820_low_memory_only():
    entries = layout.e820_map(256 * MiB, 0)
    assert [(e.addr, e.size, e.type) for e in entries] == [
        (0, 0x9FC00, 1), (0x9FC00, 0x400, 2), (0xE0000, 0x20000, 2),
        (0x100000, 256 * MiB - 0x120000, 1),
        (256 * MiB - 0x20000, 0x20000, 2)]            # SeaBIOS's high tables, reserved


def test_e820_splits_around_the_pci_hole():
    mem = GuestMemory(4 * GiB)
    try:
        assert (mem.below_4g, mem.above_4g) == (3 * GiB, 1 * GiB)
        entries = layout.e820_map(mem.below_4g, mem.above_4g)
    finally:
        mem.close()
    assert entries[-1].addr == 4 * GiB and entries[-1].size == GiB
    addrs = [e.addr for e in entries]
    assert addrs == sorted(addrs)
    for a, b in zip(entries, entries[1:]):
        assert a.addr + a.size <= b.addr


def test_zero_page_fields_at_their_offsets(mem):
    header = bzimage(b"x" * 64)[0x1F1:0x202 + 0x6A]
    addr = linux.write_boot_params(mem, header, 0x20000, 11, (0x8000000, 0x1234), 0xE0000)
    page = mem.read(addr, 4096)
    assert page[0x202:0x206] == b"HdrS"
    assert page[0x210] == 0xFF                                  # type_of_loader
    assert page[0x211] & 0x81 == 0x81                           # LOADED_HIGH | CAN_USE_HEAP
    assert struct.unpack_from("<I", page, 0x228)[0] == 0x20000  # cmd_line_ptr
    assert struct.unpack_from("<II", page, 0x218) == (0x8000000, 0x1234)  # ramdisk
    assert struct.unpack_from("<Q", page, 0x070)[0] == 0xE0000  # acpi_rsdp_addr
    assert struct.unpack_from("<H", page, 0x224)[0] == 0xFE00   # heap_end_ptr
    assert page[0x1E8] == 5                                     # e820_entries
    first = struct.unpack_from("<QQI", page, 0x2D0)
    high = struct.unpack_from("<QQI", page, 0x2D0 + 3 * 20)
    last = struct.unpack_from("<QQI", page, 0x2D0 + 4 * 20)
    assert first == (0, 0x9FC00, 1)
    assert high == (0x100000, 256 * MiB - 0x120000, 1)
    assert last == (256 * MiB - 0x20000, 0x20000, 2)          # the firmware's high tables


def test_initrd_above_4g_uses_the_ext_fields(mem):
    linux.write_boot_params(mem, None, 0x20000, 1, (0x1_2000_0000, 0x1_0000_0010), 0)
    page = mem.read(layout.ZERO_PAGE, 4096)
    assert struct.unpack_from("<II", page, 0x218) == (0x2000_0000, 0x10)
    assert struct.unpack_from("<II", page, 0x0C0) == (1, 1)


def test_identity_page_tables_map_the_first_4_gib(mem):
    linux.write_identity_page_tables(mem)
    assert mem.read_u64(layout.PML4) == layout.PDPT | 3
    for i in range(4):
        pd = mem.read_u64(layout.PDPT + 8 * i) & ~0xFFF
        assert pd == layout.PD + i * 0x1000
        assert mem.read_u64(pd + 8 * 511) == ((i * 512 + 511) << 21) | 0x83


def test_hvm_start_info(mem):
    info = pvh.write_start_info(mem, 0x20000, 0xE0000, (0x8000000, 0x4000))
    magic, version, flags, nr_modules, modlist, cmdline, rsdp, memmap, entries, _ = \
        struct.unpack_from(pvh.START_INFO_FORMAT, mem.read(info, 56))
    assert (magic, version, flags, nr_modules) == (0x336EC578, 1, 0, 1)
    assert (cmdline, rsdp, entries) == (0x20000, 0xE0000, 5)
    assert struct.unpack_from("<QQQQ", mem.read(modlist, 32)) == (0x8000000, 0x4000, 0, 0)
    table = [struct.unpack_from("<QQII", mem.read(memmap + 24 * i, 24)) for i in range(5)]
    assert table[0] == (0, 0x9FC00, 1, 0)
    assert table[3] == (0x100000, 256 * MiB - 0x120000, 1, 0)
    assert table[4] == (256 * MiB - 0x20000, 0x20000, 2, 0)


def test_pvh_elf_is_loaded_with_its_32_bit_entry(mem):
    code = b"\xf4" * 16
    image = elf64([(0x200000, code, 0x3000)], 0x200000, pvh_note(0x200008))
    mem.write(0x200000 + 0x2000, b"\xAA" * 16)   # bss must be cleared by the loader
    plan = load_kernel(mem, files(image, b"RD" * 100), "console=x", 0xE0000)
    assert (plan.protocol, plan.entry, plan.info_addr) == ("pvh", 0x200008, layout.START_INFO)
    assert mem.read(0x200000, 16) == code
    assert mem.read(0x202000, 16) == b"\0" * 16
    assert mem.read(layout.CMDLINE, 10) == b"console=x\0"
    modlist = struct.unpack_from("<Q", mem.read(layout.START_INFO + 16, 8))[0]
    rd_addr, rd_size = struct.unpack_from("<QQ", mem.read(modlist, 16))
    assert rd_addr % 4096 == 0 and rd_addr + rd_size <= mem.below_4g
    assert mem.read(rd_addr, 200) == b"RD" * 100


@pytest.mark.parametrize("fmt", FORMATS)
def test_each_payload_format_decompresses(fmt):
    data = small_elf() * 50
    payload = compress(data, fmt)
    assert linux.payload_format(payload) == fmt if fmt != "none" else "none"
    assert linux.decompress(payload)[:len(data)] == data


@pytest.mark.parametrize("fmt", FORMATS)
def test_bzimage_loads_its_vmlinux(mem, fmt):
    plan = load_kernel(mem, files(bzimage(compress(small_elf(), fmt))), "ro", 0)
    assert (plan.protocol, plan.entry, plan.info_addr) == ("linux", 0x1000000, layout.ZERO_PAGE)
    assert mem.read(0x1000000, 101) == b"\x90" * 100 + b"\xf4"
    assert mem.read(layout.ZERO_PAGE + 0x202, 4) == b"HdrS"


def test_bad_kernels_are_user_errors(mem):
    with pytest.raises(BootError, match="neither a Linux bzImage, a multiboot"):
        load_kernel(mem, files(b"garbage" * 100), "", 0)
    with pytest.raises(BootError, match="too old"):
        load_kernel(mem, files(bzimage(compress(small_elf(), "gzip"), version=0x0204)), "", 0)
    with pytest.raises(BootError, match="unknown kernel payload compression"):
        load_kernel(mem, files(bzimage(b"\x01\x02\x03\x04" * 10)), "", 0)
    with pytest.raises(BootError, match="cannot decompress the gzip"):
        load_kernel(mem, files(bzimage(b"\x1f\x8b" + b"\0" * 30)), "", 0)
    with pytest.raises(BootError, match="does not fit in guest RAM"):
        load_kernel(mem, files(elf64([(0x40000000, b"x", 1)], 0x40000000,
                                     pvh_note(0x40000000))), "", 0)
    with pytest.raises(BootError, match="invalid kernel ELF"):
        load_kernel(mem, files(small_elf()[:80]), "", 0)
    with pytest.raises(BootError, match="command line is too long"):
        load_kernel(mem, files(small_elf()), "x" * 70000, 0)


def test_firmware_ivt_points_every_vector_at_a_handler(mem):
    from vmm.boot import firmware

    firmware.write_ivt(mem)
    entries = [struct.unpack_from("<HH", mem.read(4 * v, 4)) for v in range(256)]
    assert {segment for _, segment in entries} == {0xF000}
    code = {v: mem.read(0xF0000 + offset, 9) for v, (offset, _) in enumerate(entries)}
    assert code[0x03][0] == 0xCF                               # iret
    assert code[0x08][:7] == firmware.MASTER_EOI               # IRQ 0: EOI to the master
    assert code[0x73] == firmware.SLAVE_EOI                    # IRQ 11: both PICs
