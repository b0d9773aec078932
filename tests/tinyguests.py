"""Tiny guests the tests build themselves: raw-byte PVH ELFs and fake Linux kernels."""

from __future__ import annotations

import bz2
import gzip
import lzma
import struct
import subprocess
from pathlib import Path

LOAD_ADDR = 0x100000


def elf64(segments: list[tuple[int, bytes, int]], entry: int, notes: bytes = b"") -> bytes:
    """A minimal ELF64 executable: (paddr, data, memsz) PT_LOADs and one PT_NOTE."""
    phnum = len(segments) + (1 if notes else 0)
    header_size = 64 + 56 * phnum
    offset = (header_size + 15) & ~15
    body = b""
    phdrs = b""
    if notes:
        phdrs += struct.pack("<IIQQQQQQ", 4, 4, offset, 0, 0, len(notes), len(notes), 4)
        body += notes
    for paddr, data, memsz in segments:
        pos = offset + len(body)
        phdrs += struct.pack("<IIQQQQQQ", 1, 7, pos, paddr, paddr, len(data), memsz, 16)
        body += data + b"\0" * (-len(data) % 16)
    ehdr = b"\x7fELF" + bytes([2, 1, 1, 0]) + b"\0" * 8
    ehdr += struct.pack("<HHIQQQIHHHHHH", 2, 0x3E, 1, entry, 64, 0, 0, 64, 56, phnum, 64, 0, 0)
    image = ehdr + phdrs
    return image + b"\0" * (offset - len(image)) + body


def pvh_note(entry: int) -> bytes:
    return struct.pack("<III", 4, 4, 18) + b"Xen\0" + struct.pack("<I", entry)


def out_byte(port: int, value: int) -> bytes:
    """32-bit code: mov dx, port; mov al, value; out dx, al."""
    return b"\x66\xba" + struct.pack("<H", port) + bytes([0xB0, value, 0xEE])


def pvh_serial_guest(message: bytes, exit_value: int | None, tail: bytes = b"") -> bytes:
    """A PVH ELF whose 32-bit code prints message on COM1, runs tail, then exits."""
    code = b"".join(out_byte(0x3F8, c) for c in message) + tail
    if exit_value is not None:
        code += out_byte(0x501, exit_value)
    code += b"\xf4\xeb\xfd"  # hlt; jmp back to hlt
    return elf64([(LOAD_ADDR, code, len(code))], LOAD_ADDR, pvh_note(LOAD_ADDR))


LINUX_ENTRY_ASM = r"""
    .code64
    .globl _start
_start:
    /* Linux 64-bit boot protocol: rsi = boot_params, paging identity-maps low RAM */
    mov $0x3f8, %dx
    mov $'L', %al
    out %al, %dx
    movzbl 0x1e8(%rsi), %eax        /* e820_entries */
    add $'0', %al
    out %al, %dx
    movl 0x228(%rsi), %ebx          /* cmd_line_ptr */
1:  movb (%rbx), %al
    test %al, %al
    jz 2f
    out %al, %dx
    inc %rbx
    jmp 1b
2:  movb 0x210(%rsi), %al           /* type_of_loader must be 0xff */
    cmp $0xff, %al
    jne 3f
    mov $'\n', %al
    out %al, %dx
    mov $0x501, %dx
    mov $0x21, %al
    out %al, %dx
3:  hlt
    jmp 3b
"""


def build_vmlinux(workdir: Path, load_addr: int = 0x1000000) -> bytes:
    """A 'vmlinux': a static ELF whose entry uses boot_params like Linux's startup_64."""
    src = workdir / "entry.S"
    src.write_text(LINUX_ENTRY_ASM)
    out = workdir / "vmlinux"
    subprocess.run(["gcc", "-nostdlib", "-static", "-no-pie", f"-Wl,-Ttext={load_addr:#x}",
                    "-Wl,--build-id=none", "-o", str(out), str(src)], check=True)
    return out.read_bytes()


def lz4_legacy(data: bytes) -> bytes:
    import lz4.block

    out = struct.pack("<I", 0x184C2102)
    for pos in range(0, len(data), 8 << 20):
        block = lz4.block.compress(data[pos:pos + (8 << 20)], store_size=False)
        out += struct.pack("<I", len(block)) + block
    return out + struct.pack("<I", len(data))


def compress(data: bytes, fmt: str) -> bytes:
    size = struct.pack("<I", len(data))  # the kernel's build appends the size
    if fmt == "gzip":
        return gzip.compress(data)
    if fmt == "bzip2":
        return bz2.compress(data) + size
    if fmt == "lzma":
        return lzma.compress(data, format=lzma.FORMAT_ALONE) + size
    if fmt == "xz":
        return lzma.compress(data, format=lzma.FORMAT_XZ, check=lzma.CHECK_CRC32) + size
    if fmt == "lz4":
        return lz4_legacy(data)
    if fmt == "zstd":
        import zstandard

        return zstandard.ZstdCompressor(level=19).compress(data) + size
    if fmt == "none":
        return data
    raise ValueError(fmt)


def bzimage(payload: bytes, version: int = 0x020F, setup_sects: int = 4) -> bytes:
    """A bzImage: setup sectors with a setup header, then the compressed payload."""
    setup = bytearray((setup_sects + 1) * 512)
    setup[0x1F1] = setup_sects
    setup[0x1FE:0x200] = b"\x55\xaa"
    setup[0x200] = 0xEB
    setup[0x201] = 0x6A                     # jump over the header: it ends at 0x26C
    setup[0x202:0x206] = b"HdrS"
    struct.pack_into("<H", setup, 0x206, version)
    setup[0x211] = 0x01                     # LOADED_HIGH
    struct.pack_into("<I", setup, 0x214, 0x100000)
    struct.pack_into("<I", setup, 0x22C, 0x7FFFFFFF)   # initrd_addr_max
    struct.pack_into("<I", setup, 0x238, 2048)         # cmdline_size
    struct.pack_into("<II", setup, 0x248, 0, len(payload))
    return bytes(setup) + payload


# A 32-bit multiboot kernel (ELF32, no PVH note): checks the magic in eax, prints
# "MB", the command line, the module count, then each module's command line and
# first 4 bytes, and exits with 0x21 through isa-debug-exit.
MULTIBOOT_ASM = r"""
    .code32
    .section .text
    .align 4
    .long 0x1BADB002, 0, -0x1BADB002     /* multiboot header: no flags */
    .globl _start
_start:
    mov $stack_top, %esp
    cmp $0x2BADB002, %eax
    jne fail
    mov %ebx, %ebp                  /* multiboot info */
    mov $'M', %al
    call putc
    mov $'B', %al
    call putc
    mov 16(%ebp), %esi              /* cmdline */
    call puts
    mov $'\n', %al
    call putc
    mov 20(%ebp), %ecx              /* mods_count */
    mov %ecx, %eax
    add $'0', %al
    call putc
    mov $'\n', %al
    call putc
    mov 24(%ebp), %edi              /* mods_addr */
1:  test %ecx, %ecx
    jz 2f
    mov 8(%edi), %esi               /* the module's command line */
    call puts
    mov $':', %al
    call putc
    mov (%edi), %esi                /* its first 4 bytes */
    mov $4, %edx
3:  lodsb
    call putc
    dec %edx
    jnz 3b
    mov $'\n', %al
    call putc
    add $16, %edi
    dec %ecx
    jmp 1b
2:  mov $0x21, %al
    mov $0x501, %dx
    out %al, %dx
fail:
    hlt
    jmp fail
putc:
    push %edx
    mov $0x3f8, %dx
    out %al, %dx
    pop %edx
    ret
puts:
    lodsb
    test %al, %al
    jz 4f
    call putc
    jmp puts
4:  ret
    .bss
    .space 4096
stack_top:
"""

# A PVH kernel that calls a function before it has set up a stack of its own, then
# prints its code and stack selectors: it runs where the entry leaves a usable stack.
STACKLESS_PVH_ASM = r"""
    .code32
    .globl _start
_start:
    call hello
    mov %cs, %eax
    call hex_byte
    mov %ss, %eax
    call hex_byte
    mov $'\n', %al
    mov $0x3f8, %dx
    out %al, %dx
    mov $0x21, %al
    mov $0x501, %dx
    out %al, %dx
1:  hlt
    jmp 1b
hello:
    push %eax
    mov $0x3f8, %dx
    mov $'o', %al
    out %al, %dx
    mov $'k', %al
    out %al, %dx
    mov $' ', %al
    out %al, %dx
    pop %eax
    ret
hex_byte:                           /* two hex digits of al, then a space */
    mov %eax, %ecx
    mov $0x3f8, %dx
    shr $4, %eax
    call digit
    mov %ecx, %eax
    call digit
    mov $' ', %al
    out %al, %dx
    ret
digit:
    and $0xf, %eax
    add $'0', %al
    cmp $'9', %al
    jbe 2f
    add $7, %al
2:  out %al, %dx
    ret
"""


def build_elf32(workdir: Path, name: str, source: str, load_addr: int = 0x100000) -> bytes:
    src = workdir / f"{name}.S"
    src.write_text(source)
    out = workdir / name
    subprocess.run(["gcc", "-m32", "-nostdlib", "-static", "-no-pie",
                    f"-Wl,-Ttext={load_addr:#x}", "-Wl,--build-id=none", "-o", str(out),
                    str(src)], check=True)
    return out.read_bytes()


def stackless_pvh_guest(workdir: Path) -> bytes:
    """The stackless code as the sole segment of an ELF64 with a PVH note."""
    elf = build_elf32(workdir, "stackless", STACKLESS_PVH_ASM)
    subprocess.run(["objcopy", "-O", "binary", "-j", ".text", str(workdir / "stackless"),
                    str(workdir / "stackless.bin")], check=True)
    code = (workdir / "stackless.bin").read_bytes()
    del elf
    return elf64([(LOAD_ADDR, code, len(code))], LOAD_ADDR, pvh_note(LOAD_ADDR))
