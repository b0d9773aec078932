"""Linux boot protocol (Documentation/arch/x86/boot.rst, zero-page.rst).

A bzImage's protected-mode payload is decompressed here on the host and its
vmlinux ELF loaded directly; the kernel is entered at its 64-bit entry with a
zero page (boot_params), so no firmware and no in-guest decompressor run.
"""

from __future__ import annotations

import bz2
import lzma
import struct
import zlib

from vmm.boot import layout
from vmm.cpu import GDT_ENTRIES, gdt_bytes
from vmm.memory import GuestMemory

SETUP_HEADER_START = 0x1F1
HDRS_MAGIC = b"HdrS"
MIN_PROTOCOL = 0x0208          # payload_offset/payload_length appeared in 2.08
LOADER_TYPE_UNDEFINED = 0xFF
LOADFLAG_LOADED_HIGH = 0x01
LOADFLAG_CAN_USE_HEAP = 0x80

# Offsets in boot_params (the zero page).
BP_ACPI_RSDP = 0x070
BP_EXT_RAMDISK_IMAGE = 0x0C0
BP_EXT_RAMDISK_SIZE = 0x0C4
BP_EXT_CMD_LINE_PTR = 0x0C8
BP_E820_ENTRIES = 0x1E8
BP_TYPE_OF_LOADER = 0x210
BP_LOADFLAGS = 0x211
BP_RAMDISK_IMAGE = 0x218
BP_RAMDISK_SIZE = 0x21C
BP_HEAP_END_PTR = 0x224
BP_CMD_LINE_PTR = 0x228
BP_INITRD_ADDR_MAX = 0x22C
BP_CMDLINE_SIZE = 0x238
BP_PAYLOAD_OFFSET = 0x248
BP_PAYLOAD_LENGTH = 0x24C
BP_E820_TABLE = 0x2D0
E820_MAX_ENTRIES = 128


class PayloadError(ValueError):
    pass


def is_bzimage(data: bytes) -> bool:
    return len(data) > 0x250 and data[0x202:0x206] == HDRS_MAGIC


def protocol_version(data: bytes) -> int:
    return struct.unpack_from("<H", data, 0x206)[0]


def split_bzimage(data: bytes) -> tuple[bytes, bytes]:
    """Returns (setup header bytes from 0x1f1, compressed payload)."""
    version = protocol_version(data)
    if version < MIN_PROTOCOL:
        raise PayloadError(f"Linux boot protocol {version >> 8}.{version & 0xFF:02} "
                           "is too old (2.08 or newer is needed)")
    setup_sects = data[SETUP_HEADER_START] or 4
    header_end = 0x202 + data[0x201]
    header = data[SETUP_HEADER_START:header_end]
    offset, length = struct.unpack_from("<II", data, BP_PAYLOAD_OFFSET)
    start = (setup_sects + 1) * 512 + offset
    if start + length > len(data) or length == 0:
        raise PayloadError("bzImage payload lies outside the file")
    return header, data[start:start + length]


def _gzip(data: bytes) -> bytes:
    return zlib.decompressobj(16 + zlib.MAX_WBITS).decompress(data)


def _bzip2(data: bytes) -> bytes:
    return bz2.BZ2Decompressor().decompress(data)


def _lzma(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_ALONE).decompress(data)


def _xz(data: bytes) -> bytes:
    return lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data)


LZ4_LEGACY_MAGIC = 0x184C2102
LZ4_LEGACY_BLOCK = 8 << 20


def _lz4(data: bytes) -> bytes:
    """LZ4 legacy frames: magic, then (u32 size, block) pairs of up to 8 MiB each."""
    import lz4.block

    out = []
    pos = 4
    while pos + 4 <= len(data):
        size = struct.unpack_from("<I", data, pos)[0]
        pos += 4
        if size == LZ4_LEGACY_MAGIC:
            continue
        if pos + size > len(data):
            break  # the kernel appends the total size after the last block
        out.append(lz4.block.decompress(data[pos:pos + size], uncompressed_size=LZ4_LEGACY_BLOCK))
        pos += size
    return b"".join(out)


def _zstd(data: bytes) -> bytes:
    import zstandard

    return zstandard.ZstdDecompressor().decompressobj().decompress(data)


FORMATS = [
    (b"\x1f\x8b", "gzip", _gzip),
    (b"BZh", "bzip2", _bzip2),
    (b"\x5d\x00\x00", "lzma", _lzma),
    (b"\xfd7zXZ\x00", "xz", _xz),
    (struct.pack("<I", LZ4_LEGACY_MAGIC), "lz4", _lz4),
    (b"\x28\xb5\x2f\xfd", "zstd", _zstd),
]


def payload_format(payload: bytes) -> str | None:
    for magic, name, _ in FORMATS:
        if payload.startswith(magic):
            return name
    if payload[:4] == b"\x7fELF":
        return "none"
    return None


def decompress(payload: bytes) -> bytes:
    for magic, name, func in FORMATS:
        if payload.startswith(magic):
            try:
                return func(payload)
            except Exception as e:  # each library raises its own error type
                raise PayloadError(f"cannot decompress the {name} kernel payload: {e}") from None
    if payload[:4] == b"\x7fELF":
        return payload
    raise PayloadError("unknown kernel payload compression")


def initrd_addr_max(header: bytes | None) -> int:
    if header is None:
        return 0x7FFFFFFF
    pos = BP_INITRD_ADDR_MAX - SETUP_HEADER_START
    if len(header) >= pos + 4:
        return struct.unpack_from("<I", header, pos)[0] or 0x37FFFFFF
    return 0x37FFFFFF


def write_boot_params(mem: GuestMemory, header: bytes | None, cmdline: int, cmdline_len: int,
                      initrd: tuple[int, int] | None, rsdp: int) -> int:
    """Builds the zero page at layout.ZERO_PAGE; returns its address."""
    page = bytearray(4096)
    if header is not None:
        page[SETUP_HEADER_START:SETUP_HEADER_START + len(header)] = header
    else:  # a plain vmlinux: write a minimal header of our own
        page[0x1FE:0x200] = b"\x55\xaa"
        page[0x202:0x206] = HDRS_MAGIC
        struct.pack_into("<H", page, 0x206, 0x020F)
        struct.pack_into("<I", page, BP_INITRD_ADDR_MAX, 0x7FFFFFFF)
    page[BP_TYPE_OF_LOADER] = LOADER_TYPE_UNDEFINED
    page[BP_LOADFLAGS] |= LOADFLAG_LOADED_HIGH | LOADFLAG_CAN_USE_HEAP
    struct.pack_into("<H", page, BP_HEAP_END_PTR, 0xFE00)
    struct.pack_into("<I", page, BP_CMD_LINE_PTR, cmdline)
    struct.pack_into("<I", page, BP_EXT_CMD_LINE_PTR, 0)
    if header is None:
        struct.pack_into("<I", page, BP_CMDLINE_SIZE, cmdline_len)
    if initrd is not None:
        addr, size = initrd
        struct.pack_into("<II", page, BP_RAMDISK_IMAGE, addr & 0xFFFFFFFF, size & 0xFFFFFFFF)
        struct.pack_into("<II", page, BP_EXT_RAMDISK_IMAGE, addr >> 32, size >> 32)
    struct.pack_into("<Q", page, BP_ACPI_RSDP, rsdp)
    e820 = layout.e820_map(mem.below_4g, mem.above_4g)[:E820_MAX_ENTRIES]
    page[BP_E820_ENTRIES] = len(e820)
    for i, entry in enumerate(e820):
        struct.pack_into("<QQI", page, BP_E820_TABLE + 20 * i, entry.addr, entry.size, entry.type)
    mem.write(layout.ZERO_PAGE, page)
    return layout.ZERO_PAGE


def write_identity_page_tables(mem: GuestMemory) -> None:
    """PML4 -> PDPT -> 4 page directories of 2 MiB pages: the first 4 GiB, 1:1."""
    present_rw = 0x3
    mem.write_u64(layout.PML4, layout.PDPT | present_rw)
    for i in range(4):
        pd = layout.PD + i * 0x1000
        mem.write_u64(layout.PDPT + 8 * i, pd | present_rw)
        entries = b"".join(struct.pack("<Q", ((i * 512 + j) << 21) | present_rw | 0x80)
                           for j in range(512))
        mem.write(pd, entries)


def write_boot_gdt(mem: GuestMemory) -> None:
    mem.write(layout.BOOT_GDT, gdt_bytes(GDT_ENTRIES))


BOOT_GDT_LIMIT = len(GDT_ENTRIES) * 8 - 1
