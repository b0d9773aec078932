"""dump-guest-memory: the guest's RAM and vCPU registers as an ELF core file, in
the layout QEMU writes (gdb and crash read it).

A PT_NOTE holds an NT_PRSTATUS note per vCPU with the general registers, then a
"QEMU" note per vCPU with QEMU's QEMUCPUState (segments, control registers); then a
PT_LOAD per RAM region, or per part of one inside [begin, begin+length). Without
paging (or with paging=true while the guest has none) each segment's virtual
address is its physical one, as in QEMU's. A 64-bit file with x86-64 notes once
the boot vCPU is in long mode, i386 notes before.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from vmm import paging

ET_CORE, EM_386, EM_X86_64 = 4, 3, 62
PT_LOAD, PT_NOTE = 1, 4
NT_PRSTATUS = 1
EHDR = struct.Struct("<16sHHIQQQIHHHHHH")
PHDR = struct.Struct("<IIQQQQQQ")
CHUNK = 1 << 20


@dataclass
class Block:
    gpa: int
    size: int
    read: Callable[[int, int], bytes]    # (offset in the block, length) -> bytes


def _note(name: bytes, kind: int, desc: bytes) -> bytes:
    name += b"\0"
    pad = lambda b: b + bytes(-len(b) % 4)     # noqa: E731
    return struct.pack("<III", len(name), len(desc), kind) + pad(name) + pad(desc)


def _segment_flags(seg) -> int:
    return ((seg.type | seg.s << 4 | seg.dpl << 5 | seg.present << 7) << 8 | seg.avl << 20
            | seg.l << 21 | seg.db << 22 | seg.g << 23)


def qemu_cpu_state(regs, sregs, kernel_gs_base: int) -> bytes:
    """QEMU's QEMUCPUState (version 1): crash reads the segments and CRs from it."""
    gprs = [regs.rax, regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rsp, regs.rbp,
            regs.r8, regs.r9, regs.r10, regs.r11, regs.r12, regs.r13, regs.r14, regs.r15,
            regs.rip, regs.rflags]
    body = struct.pack("<18Q", *gprs)
    for name in ("cs", "ds", "es", "fs", "gs", "ss", "ldt", "tr"):
        seg = getattr(sregs, name)
        body += struct.pack("<IIIIQ", seg.selector, seg.limit, _segment_flags(seg), 0, seg.base)
    for table in (sregs.gdt, sregs.idt):
        body += struct.pack("<IIIIQ", 0, table.limit, 0, 0, table.base)
    body += struct.pack("<6Q", sregs.cr0, 0, sregs.cr2, sregs.cr3, sregs.cr4, kernel_gs_base)
    return struct.pack("<II", 1, 8 + len(body)) + body


def prstatus64(index: int, regs, sregs) -> bytes:
    """struct elf_prstatus of x86-64 Linux: pid is the vCPU's number from 1."""
    user_regs = [regs.r15, regs.r14, regs.r13, regs.r12, regs.rbp, regs.rbx, regs.r11,
                 regs.r10, regs.r9, regs.r8, regs.rax, regs.rcx, regs.rdx, regs.rsi, regs.rdi,
                 regs.rax, regs.rip, sregs.cs.selector, regs.rflags, regs.rsp,
                 sregs.ss.selector, sregs.fs.base, sregs.gs.base, sregs.ds.selector,
                 sregs.es.selector, sregs.fs.selector, sregs.gs.selector]
    return (bytes(32) + struct.pack("<I", index + 1) + bytes(12 + 64)
            + struct.pack("<27Q", *user_regs) + bytes(8))


def prstatus32(index: int, regs, sregs) -> bytes:
    """struct elf_prstatus of i386 Linux."""
    user_regs = [regs.rbx, regs.rcx, regs.rdx, regs.rsi, regs.rdi, regs.rbp, regs.rax,
                 sregs.ds.selector, sregs.es.selector, sregs.fs.selector, sregs.gs.selector,
                 regs.rax, regs.rip, sregs.cs.selector, regs.rflags, regs.rsp,
                 sregs.ss.selector]
    return (bytes(24) + struct.pack("<I", index + 1) + bytes(12 + 32)
            + struct.pack("<17I", *(v & 0xFFFFFFFF for v in user_regs)) + bytes(4))


def segments(blocks: list[Block], begin: int | None, length: int | None
             ) -> list[tuple[Block, int, int]]:
    """(block, offset in it, size) of each part of RAM to dump."""
    out = []
    for block in blocks:
        start, end = block.gpa, block.gpa + block.size
        if begin is not None:
            start, end = max(start, begin), min(end, begin + length)
        if start < end:
            out.append((block, start - block.gpa, end - start))
    return out


def write_elf(out, cpus: list[dict], parts: list[tuple[Block, int, int]],
              progress: Callable[[int], None]) -> None:
    """cpus: {'regs', 'sregs', 'kernel_gs_base'} per vCPU. progress(n) after each chunk."""
    long_mode = bool(cpus and cpus[0]["sregs"].efer & paging.EFER_LMA)
    status = prstatus64 if long_mode else prstatus32
    notes = b"".join(_note(b"CORE", NT_PRSTATUS, status(i, cpu["regs"], cpu["sregs"]))
                     for i, cpu in enumerate(cpus))           # all of these, then QEMU's
    notes += b"".join(_note(b"QEMU", 0, qemu_cpu_state(cpu["regs"], cpu["sregs"],
                                                        cpu["kernel_gs_base"]))
                      for cpu in cpus)
    phnum = 1 + len(parts)
    offset = EHDR.size + phnum * PHDR.size
    headers = [PHDR.pack(PT_NOTE, 0, offset, 0, 0, len(notes), len(notes), 0)]
    offset += len(notes)
    for block, start, size in parts:
        gpa = block.gpa + start
        headers.append(PHDR.pack(PT_LOAD, 0, offset, gpa, gpa, size, size, 0))
        offset += size
    ident = b"\x7fELF" + bytes([2, 1, 1]) + bytes(9)
    out.write(EHDR.pack(ident, ET_CORE, EM_X86_64 if long_mode else EM_386, 1, 0,
                        EHDR.size, 0, 0, EHDR.size, PHDR.size, phnum, 0, 0, 0))
    out.write(b"".join(headers))
    out.write(notes)
    for block, start, size in parts:
        done = 0
        while done < size:
            step = min(CHUNK, size - done)
            out.write(block.read(start + done, step))
            done += step
            progress(step)
