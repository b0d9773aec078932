"""Just enough ELF (32- and 64-bit, little-endian) to load a kernel image."""

from __future__ import annotations

import struct
from dataclasses import dataclass

PT_LOAD = 1
PT_NOTE = 4
EM_X86_64 = 62


class ElfError(ValueError):
    pass


@dataclass(frozen=True)
class Segment:
    paddr: int
    vaddr: int
    data: bytes      # the file bytes; memsz - len(data) more are zero
    memsz: int


@dataclass(frozen=True)
class Note:
    name: bytes
    type: int
    desc: bytes


@dataclass(frozen=True)
class ElfImage:
    is64: bool
    machine: int
    entry: int
    segments: list[Segment]
    notes: list[Note]


def is_elf(data: bytes) -> bool:
    return data[:4] == b"\x7fELF"


def parse_elf(data: bytes) -> ElfImage:
    if not is_elf(data) or len(data) < 52:
        raise ElfError("not an ELF file")
    ei_class, ei_data = data[4], data[5]
    if ei_data != 1:
        raise ElfError("not a little-endian ELF file")
    if ei_class == 2:
        is64 = True
        (_type, machine, _ver, entry, phoff, _shoff, _flags, _ehsize, phentsize,
         phnum) = struct.unpack_from("<HHIQQQIHHH", data, 16)
        ph_format = "<IIQQQQQQ"
    elif ei_class == 1:
        is64 = False
        (_type, machine, _ver, entry, phoff, _shoff, _flags, _ehsize, phentsize,
         phnum) = struct.unpack_from("<HHIIIIIHHH", data, 16)
        ph_format = "<IIIIIIII"
    else:
        raise ElfError("unknown ELF class")
    if phentsize < struct.calcsize(ph_format) or phoff + phnum * phentsize > len(data):
        raise ElfError("truncated program headers")
    segments: list[Segment] = []
    notes: list[Note] = []
    for i in range(phnum):
        fields = struct.unpack_from(ph_format, data, phoff + i * phentsize)
        if is64:
            p_type, _pflags, offset, vaddr, paddr, filesz, memsz, _align = fields
        else:
            p_type, offset, vaddr, paddr, filesz, memsz, _pflags, _align = fields
        if offset + filesz > len(data):
            raise ElfError("segment extends past the end of the file")
        if p_type == PT_LOAD and memsz:
            if filesz > memsz:
                raise ElfError("segment file size exceeds its memory size")
            segments.append(Segment(paddr, vaddr, data[offset:offset + filesz], memsz))
        elif p_type == PT_NOTE:
            notes.extend(_parse_notes(data[offset:offset + filesz]))
    return ElfImage(is64, machine, entry, segments, notes)


def _parse_notes(blob: bytes) -> list[Note]:
    notes = []
    pos = 0
    while pos + 12 <= len(blob):
        namesz, descsz, ntype = struct.unpack_from("<III", blob, pos)
        pos += 12
        name = blob[pos:pos + namesz].rstrip(b"\0")
        pos += (namesz + 3) & ~3
        desc = blob[pos:pos + descsz]
        pos += (descsz + 3) & ~3
        notes.append(Note(name, ntype, desc))
    return notes
