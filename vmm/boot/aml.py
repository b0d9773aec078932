"""A small AML builder (ACPI spec, chapter 20: ACPI Machine Language).

Each helper returns the encoded bytes of one term, so a table body reads
like the ASL it stands for:

    scope("\\_SB", device("PCI0", name("_HID", eisa_id("PNP0A03"))))
"""

from __future__ import annotations

import struct
from collections.abc import Iterable

ZERO_OP = 0x00
ONE_OP = 0x01
ONES_OP = 0xFF
BYTE_PREFIX = 0x0A
WORD_PREFIX = 0x0B
DWORD_PREFIX = 0x0C
STRING_PREFIX = 0x0D
QWORD_PREFIX = 0x0E
NAME_OP = 0x08
SCOPE_OP = 0x10
BUFFER_OP = 0x11
PACKAGE_OP = 0x12
METHOD_OP = 0x14
RETURN_OP = 0xA4
EXT_OP = 0x5B
DEVICE_OP = 0x82
DUAL_NAME_PREFIX = 0x2E
MULTI_NAME_PREFIX = 0x2F
ROOT_PREFIX = 0x5C
PARENT_PREFIX = 0x5E


def pkg_length(body_len: int) -> bytes:
    """PkgLength: counts itself plus the body; 1 to 4 bytes."""
    for extra in range(4):
        total = body_len + 1 + extra
        if extra == 0 and total < 0x40:
            return bytes([total])
        if extra and total < 1 << (4 + 8 * extra):
            out = [(extra << 6) | (total & 0x0F)]
            rest = total >> 4
            for _ in range(extra):
                out.append(rest & 0xFF)
                rest >>= 8
            return bytes(out)
    raise ValueError("AML package too large")


def _name_seg(seg: str) -> bytes:
    if not 1 <= len(seg) <= 4 or not (seg[0].isupper() or seg[0] == "_") or \
            not all(c.isupper() or c.isdigit() or c == "_" for c in seg):
        raise ValueError(f"invalid AML name segment {seg!r}")
    return seg.ljust(4, "_").encode()


def name_string(path: str) -> bytes:
    prefix = b""
    while path.startswith("\\") or path.startswith("^"):
        prefix += bytes([ROOT_PREFIX if path[0] == "\\" else PARENT_PREFIX])
        path = path[1:]
    segs = [s for s in path.split(".") if s]
    if not segs:
        return prefix + b"\x00"
    encoded = b"".join(_name_seg(s) for s in segs)
    if len(segs) == 1:
        return prefix + encoded
    if len(segs) == 2:
        return prefix + bytes([DUAL_NAME_PREFIX]) + encoded
    return prefix + bytes([MULTI_NAME_PREFIX, len(segs)]) + encoded


def integer(value: int) -> bytes:
    if value == 0:
        return bytes([ZERO_OP])
    if value == 1:
        return bytes([ONE_OP])
    if value < 0x100:
        return bytes([BYTE_PREFIX, value])
    if value < 0x10000:
        return bytes([WORD_PREFIX]) + struct.pack("<H", value)
    if value < 0x100000000:
        return bytes([DWORD_PREFIX]) + struct.pack("<I", value)
    return bytes([QWORD_PREFIX]) + struct.pack("<Q", value)


def string(text: str) -> bytes:
    return bytes([STRING_PREFIX]) + text.encode("ascii") + b"\x00"


def eisa_id(text: str) -> bytes:
    """EisaId("PNP0A03"): three letters in 5 bits each, then four hex digits."""
    if len(text) != 7:
        raise ValueError("EISA ids look like PNP0A03")
    c1, c2, c3 = (ord(c) - 0x40 for c in text[:3])
    digits = int(text[3:], 16)
    raw = bytes([(c1 << 2) | (c2 >> 3), ((c2 & 7) << 5) | c3, digits >> 8, digits & 0xFF])
    return bytes([DWORD_PREFIX]) + raw


def name(path: str, value: bytes) -> bytes:
    return bytes([NAME_OP]) + name_string(path) + value


def _with_pkg(op: bytes, body: bytes) -> bytes:
    return op + pkg_length(len(body)) + body


def scope(path: str, *terms: bytes) -> bytes:
    return _with_pkg(bytes([SCOPE_OP]), name_string(path) + b"".join(terms))


def device(path: str, *terms: bytes) -> bytes:
    return _with_pkg(bytes([EXT_OP, DEVICE_OP]), name_string(path) + b"".join(terms))


def method(path: str, nargs: int, *terms: bytes, serialized: bool = False) -> bytes:
    flags = (nargs & 7) | (0x08 if serialized else 0)
    return _with_pkg(bytes([METHOD_OP]), name_string(path) + bytes([flags]) + b"".join(terms))


def return_(value: bytes) -> bytes:
    return bytes([RETURN_OP]) + value


def package(*elements: bytes) -> bytes:
    if len(elements) > 255:
        raise ValueError("use a VarPackage for more than 255 elements")
    return _with_pkg(bytes([PACKAGE_OP]), bytes([len(elements)]) + b"".join(elements))


def buffer(data: bytes) -> bytes:
    return _with_pkg(bytes([BUFFER_OP]), integer(len(data)) + data)


# -- resource templates (ACPI 6.4 section 6.4) ---------------------------------
END_TAG = 0x79


def resource_template(*descriptors: bytes) -> bytes:
    return buffer(b"".join(descriptors) + bytes([END_TAG, 0]))


def io_port(base: int, length: int, alignment: int = 1) -> bytes:
    """IO (Decode16, base, base, alignment, length)."""
    return struct.pack("<BBHHBB", 0x47, 0x01, base, base, alignment, length)


def irq_no_flags(*irqs: int) -> bytes:
    mask = 0
    for irq in irqs:
        mask |= 1 << irq
    return struct.pack("<BH", 0x22, mask)


PRODUCER_FIXED = 0x0C   # ResourceProducer, MinFixed, MaxFixed, PosDecode


def word_bus_number(first: int, last: int) -> bytes:
    return struct.pack("<BHBBBHHHHH", 0x88, 0x0D, 2, PRODUCER_FIXED, 0, 0, first, last, 0,
                       last - first + 1)


def word_io(first: int, last: int) -> bytes:
    return struct.pack("<BHBBBHHHHH", 0x88, 0x0D, 1, PRODUCER_FIXED, 0x03, 0, first, last, 0,
                       last - first + 1)


def dword_memory(first: int, last: int, cacheable: bool = True) -> bytes:
    specific = 0x03 if cacheable else 0x01   # ReadWrite, (non-)cacheable
    return struct.pack("<BHBBBIIIII", 0x87, 0x17, 0, PRODUCER_FIXED, specific, 0, first, last,
                       0, last - first + 1)


def qword_memory(first: int, last: int, cacheable: bool = True) -> bytes:
    specific = 0x03 if cacheable else 0x01
    return struct.pack("<BHBBBQQQQQ", 0x8A, 0x2B, 0, PRODUCER_FIXED, specific, 0, first, last,
                       0, last - first + 1)


def terms(items: Iterable[bytes]) -> bytes:
    return b"".join(items)


# -- code: operation regions, fields and the few operators hotplug needs ---------
SYSTEM_IO = 0x01
DWORD_ACC_WRITE_ZEROS = 0x43     # DWordAcc, NoLock, WriteAsZeros


def operation_region(path: str, space: int, offset: int, length: int) -> bytes:
    return bytes([EXT_OP, 0x80]) + name_string(path) + bytes([space]) + integer(offset) + \
        integer(length)


def field(region: str, flags: int, *units: tuple[str, int]) -> bytes:
    """Field(region, flags) { NAME, bits, ... }; a name of '' is a reserved gap."""
    body = name_string(region) + bytes([flags])
    for unit, bits in units:
        body += (b"\x00" if not unit else _name_seg(unit)) + _field_length(bits)
    return _with_pkg(bytes([EXT_OP, 0x81]), body)


def _field_length(bits: int) -> bytes:
    """A FieldElement's bit count is a PkgLength-style value (without counting itself)."""
    if bits < 0x40:
        return bytes([bits])
    return bytes([0x40 | (bits & 0x0F), bits >> 4])


def mutex(path: str, sync_level: int = 0) -> bytes:
    return bytes([EXT_OP, 0x01]) + name_string(path) + bytes([sync_level])


def acquire(path: str, timeout: int = 0xFFFF) -> bytes:
    return bytes([EXT_OP, 0x23]) + name_string(path) + struct.pack("<H", timeout)


def release(path: str) -> bytes:
    return bytes([EXT_OP, 0x27]) + name_string(path)


def arg(n: int) -> bytes:
    return bytes([0x68 + n])


def local(n: int) -> bytes:
    return bytes([0x60 + n])


def ref(path: str) -> bytes:
    """A named object used as a value."""
    return name_string(path)


def store(value: bytes, target: bytes) -> bytes:
    return bytes([0x70]) + value + target


def shift_left(value: bytes, count: bytes) -> bytes:
    return bytes([0x79]) + value + count + b"\x00"          # no target


def and_(a: bytes, b: bytes) -> bytes:
    return bytes([0x7B]) + a + b + b"\x00"


def if_(predicate: bytes, *body: bytes) -> bytes:
    return _with_pkg(bytes([0xA0]), predicate + b"".join(body))


def notify(path: str, value: bytes) -> bytes:
    return bytes([0x86]) + name_string(path) + value


def call(path: str, *args: bytes) -> bytes:
    """A method invocation: its name, then its arguments."""
    return name_string(path) + b"".join(args)
