"""x, xp and gpa2hva: guest memory as QEMU's monitor shows it."""

from __future__ import annotations

import struct

from monitor.errors import QmpError
from monitor.hmp.table import HmpContext, hmp


def _char(value: int) -> str:
    ch = chr(value)
    escapes = {"'": "\\'", "\\": "\\\\", "\n": "\\n", "\r": "\\r"}
    if ch in escapes:
        return f"'{escapes[ch]}'"
    return f"'{ch}'" if 32 <= value <= 126 else f"'\\x{value:02x}'"


def _format(value: int, fmt: str, size: int, digits: int) -> str:
    if fmt == "x":
        return f"0x{value:0{digits}x}"
    if fmt == "o":
        return f"{'0' + format(value, 'o') if value else '0':>{digits}}"
    if fmt == "u":
        return f"{value:>{digits}}"
    if fmt == "d":
        bits = size * 8
        signed = value - (1 << bits) if value & (1 << (bits - 1)) else value
        return f"{signed:>{digits}}"
    return _char(value)


def dump(read, addr: int, count: int, fmt: str, size: int) -> str:
    """QEMU's memory_dump: 16 bytes a line (8 for bytes), address then values."""
    if fmt == "i":
        raise QmpError("the 'i' format (disassembly) is not available in kvmkit")
    length = size * count
    if fmt == "c":
        size = 1
    line_size = 8 if size == 1 else 16
    digits = {"o": (size * 8 + 2) // 3, "u": (size * 80 + 32) // 33,
              "d": (size * 80 + 32) // 33}.get(fmt, size * 2)
    out = []
    unpack = {1: "<B", 2: "<H", 4: "<I", 8: "<Q"}[size]
    while length > 0:
        chunk = min(length, line_size)
        try:
            data = read(addr, chunk)
        except QmpError:
            out.append(f"{addr:016x}: Cannot access memory\n")   # QEMU's words, inline
            break
        values = [struct.unpack_from(unpack, data, i)[0] for i in range(0, chunk, size)]
        out.append(f"{addr:016x}:" + "".join(" " + _format(v, fmt, size, digits)
                                              for v in values) + "\n")
        addr += chunk
        length -= chunk
    return "".join(out)


def _physical_reader(machine):
    def read(addr: int, length: int) -> bytes:
        try:
            return machine.memory.read(addr, length)
        except ValueError:
            raise QmpError(f"Cannot access memory at address 0x{addr:x}") from None
    return read


def translate(machine, cpu: int, vaddr: int) -> int:
    """Guest-virtual to guest-physical through CPU `cpu`'s page tables."""
    from vmm.paging import translate as walk

    gpa = walk(machine.memory.read, machine.cpu_state(cpu)["sregs"], vaddr)
    if gpa is None:
        raise QmpError(f"Cannot access memory at address 0x{vaddr:x}")
    return gpa


@hmp("x", "fmt:/,addr:l", "/fmt addr", "virtual memory dump starting at 'addr'")
async def x_cmd(ctx: HmpContext, args: dict) -> str:
    count, fmt, size = args["fmt"]
    machine, cpu = ctx.machine, ctx.cpu
    if not machine.vcpus:
        return "Can not dump without CPU\n"
    physical = _physical_reader(machine)

    def read(addr: int, length: int) -> bytes:
        data = b""
        while len(data) < length:       # page by page: the mapping may change between pages
            here = addr + len(data)
            step = min(length - len(data), 0x1000 - (here & 0xFFF))
            data += physical(translate(machine, cpu, here), step)
        return data

    return dump(read, args["addr"], count, fmt, size)


@hmp("xp", "fmt:/,addr:l", "/fmt addr", "physical memory dump starting at 'addr'")
async def xp_cmd(ctx: HmpContext, args: dict) -> str:
    count, fmt, size = args["fmt"]
    return dump(_physical_reader(ctx.machine), args["addr"], count, fmt, size)


@hmp("gpa2hva", "addr:l", "addr",
     "print the host virtual address corresponding to a guest physical address")
async def gpa2hva_cmd(ctx: HmpContext, args: dict) -> str:
    memory = ctx.machine.memory
    addr = args["addr"]
    try:
        region = memory.region_of(addr, 1)
    except ValueError:
        return f"No memory is mapped at address 0x{addr:x}\n"
    hva = memory.host_address(region) + addr - region.gpa
    return f"Host virtual address for 0x{addr:x} (pc.ram) is 0x{hva:x}\n"
