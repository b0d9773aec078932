"""SMBIOS 2.8 tables (DMI), which tell a guest's dmidecode, cloud-init and the like
who made the machine: -smbios type=N,field=value overrides, as QEMU's.

QEMU hands its tables to SeaBIOS, which places them; kvmkit boots without firmware
and writes them itself, with the 32-bit entry point in the BIOS area where guests
scan for "_SM_" (Linux's dmi_scan reads 0xF0000-0xFFFFF). The structures, their
handles and defaults are those a QEMU 7.2 guest reads; type 0 (BIOS) names kvmkit
rather than SeaBIOS, unless -smbios type=0 says otherwise.
"""

from __future__ import annotations

import re
import struct
import uuid as uuidlib
from dataclasses import dataclass, field

ENTRY_POINT = 0xF0000        # 16-byte aligned, inside the range guests scan
TABLE_START = ENTRY_POINT + 0x20
TABLE_END = 0x100000
MAX_DIMM_SIZE = 16 << 30     # QEMU describes RAM as DIMMs of at most 16 GiB

# type -> the fields -smbios takes for it (QEMU 7.2's)
FIELDS = {
    0: ("vendor", "version", "date", "release", "uefi"),
    1: ("manufacturer", "product", "version", "serial", "uuid", "sku", "family"),
    2: ("manufacturer", "product", "version", "serial", "asset", "location"),
    3: ("manufacturer", "version", "serial", "asset", "sku"),
    4: ("sock_pfx", "manufacturer", "version", "serial", "asset", "part", "max-speed",
        "current-speed"),
    11: ("value", "path"),
    17: ("loc_pfx", "bank", "manufacturer", "serial", "asset", "part", "speed"),
}


class SmbiosError(ValueError):
    """A bad -smbios option; the message is QEMU's."""


@dataclass
class SmbiosConfig:
    fields: dict[int, dict[str, str]] = field(default_factory=dict)   # type -> field -> value
    oem_strings: list[str] = field(default_factory=list)              # type 11
    files: list[bytes] = field(default_factory=list)                  # file=: whole structures

    def add(self, opts: dict[str, str]) -> None:
        """One -smbios option, already split into its fields."""
        if "file" in opts:
            path = opts.pop("file")
            if opts:
                raise SmbiosError(f"Invalid parameter '{next(iter(opts))}'")
            try:
                with open(path, "rb") as f:
                    data = f.read()
            except OSError:
                raise SmbiosError(f"Cannot read SMBIOS file {path}") from None
            if len(data) < 4 or data[1] < 4 or len(data) < data[1] + 2:
                raise SmbiosError(f"Cannot read SMBIOS file {path}")
            self.files.append(data)
            return
        text = opts.pop("type", None)
        if text is None:
            raise SmbiosError("Parameter 'type' is missing")
        try:
            kind = int(text, 0)
        except ValueError:
            raise SmbiosError("Parameter 'type' expects a number") from None
        if kind not in FIELDS:
            raise SmbiosError(f"Don't know how to build fields for SMBIOS type {kind}")
        for key, value in opts.items():
            if key not in FIELDS[kind]:
                raise SmbiosError(f"Invalid parameter '{key}'")
            _check(kind, key, value)
        if kind == 11:
            self.oem_strings += _oem_strings(opts)
            return
        self.fields.setdefault(kind, {}).update(opts)


def _check(kind: int, key: str, value: str) -> None:
    if key == "uuid":
        try:
            uuidlib.UUID(value)
        except ValueError:
            raise SmbiosError("Invalid UUID") from None
    elif key == "release" and not re.fullmatch(r"\d+\.\d+", value):
        raise SmbiosError("Invalid release")
    elif key in ("max-speed", "current-speed", "speed"):
        try:
            speed = int(value, 0)
        except ValueError:
            raise SmbiosError(f"Parameter '{key}' expects a number") from None
        if speed > 0xFFFF:
            raise SmbiosError("SMBIOS CPU speed is too large (> 65535)")


def _oem_strings(opts: dict[str, str]) -> list[str]:
    strings = [opts["value"]] if "value" in opts else []
    if "path" in opts:
        try:
            with open(opts["path"], "rb") as f:
                strings.append(f.read().decode(errors="replace"))
        except OSError as e:
            raise SmbiosError(f"Could not open '{opts['path']}': {e.strerror}") from None
    return strings


@dataclass(frozen=True)
class Board:
    """What the tables describe besides the -smbios fields."""
    machine: str             # "pc-i440fx-7.2": the version fields
    description: str         # "Standard PC (i440FX + PIIX, 1996)": the product
    uuid: str | None         # -uuid, else none (all zeros)
    sockets: int
    cores: int               # per socket
    threads: int             # per core
    cpu_signature: int       # CPUID.1:EAX
    cpu_features: int        # CPUID.1:EDX
    ram_below_4g: int
    ram_above_4g: int
    bios_version: str = ""


class _Structure:
    """One structure: the formatted area, then its strings (1-based indexes)."""

    def __init__(self, kind: int, handle: int) -> None:
        self.kind, self.handle = kind, handle
        self.body = bytearray()
        self.strings: list[bytes] = []

    def string(self, text: str | None) -> int:
        if not text:
            return 0
        self.strings.append(text.encode())
        return len(self.strings)

    def pack(self, fmt: str, *values) -> None:
        self.body += struct.pack("<" + fmt, *values)

    def encode(self) -> bytes:
        head = struct.pack("<BBH", self.kind, 4 + len(self.body), self.handle)
        tail = b"".join(s + b"\0" for s in self.strings) + b"\0" if self.strings else b"\0\0"
        return head + bytes(self.body) + tail


def build(cfg: SmbiosConfig, board: Board) -> list[bytes]:
    """The structures, in QEMU's order, ending with type 127."""
    own = {data[0] for data in cfg.files}
    fields = cfg.fields
    out: list[bytes] = list(cfg.files)         # QEMU puts file= structures first

    def want(kind: int) -> bool:
        return kind not in own

    if want(0):
        f = fields.get(0, {})
        s = _Structure(0, 0x000)
        release = f.get("release")
        major, minor = (int(x) for x in release.split(".")) if release else (0, 0)
        uefi = f.get("uefi") in ("on", "yes", "true")
        s.pack("BBHBB", s.string(f.get("vendor", "kvmkit")),
               s.string(f.get("version", board.bios_version)), 0xE800,
               s.string(f.get("date", "01/01/2011")), 0)
        # characteristics: "not supported" (bit 3); extension 2: VM (bit 4),
        # targeted content distribution (bit 2), UEFI (bit 3)
        s.pack("QBBBBBB", 1 << 3, 0, 0x14 | (0x08 if uefi else 0), major, minor, 0xFF, 0xFF)
        out.append(s.encode())
    if want(1):
        f = fields.get(1, {})
        s = _Structure(1, 0x100)
        s.pack("BBBB", s.string(f.get("manufacturer", "QEMU")),
               s.string(f.get("product", board.description)),
               s.string(f.get("version", board.machine)), s.string(f.get("serial")))
        guid = f.get("uuid", board.uuid)
        s.body += uuidlib.UUID(guid).bytes_le if guid else bytes(16)
        s.pack("BBB", 6, s.string(f.get("sku")), s.string(f.get("family")))   # power switch
        out.append(s.encode())
    if 2 in fields and want(2):
        f = fields[2]
        s = _Structure(2, 0x200)
        s.pack("BBBBBBBHBB", s.string(f.get("manufacturer", "QEMU")),
               s.string(f.get("product", board.description)),
               s.string(f.get("version", board.machine)), s.string(f.get("serial")),
               s.string(f.get("asset")), 0x01, s.string(f.get("location")), 0x300, 0x0A, 0)
        out.append(s.encode())
    if want(3):
        f = fields.get(3, {})
        s = _Structure(3, 0x300)
        s.pack("BBBBB", s.string(f.get("manufacturer", "QEMU")), 0x01,
               s.string(f.get("version", board.machine)), s.string(f.get("serial")),
               s.string(f.get("asset")))
        s.pack("BBBBIBBBBB", 3, 3, 3, 2, 0, 0, 0, 0, 0, 0)   # safe states, unknown security
        s.body[-1] = s.string(f.get("sku"))
        out.append(s.encode())
    if want(4):
        f = fields.get(4, {})
        max_speed = int(f.get("max-speed", "2000"), 0)
        current = int(f.get("current-speed", "2000"), 0)
        per_socket = board.cores * board.threads
        for socket in range(board.sockets):
            s = _Structure(4, 0x400 + socket)
            s.pack("BBBB", s.string(f"{f.get('sock_pfx', 'CPU')} {socket}"), 3, 1,
                   s.string(f.get("manufacturer", "QEMU")))
            s.pack("II", board.cpu_signature, board.cpu_features)
            s.pack("BBHHHBBHHHBBBBBBHH", s.string(f.get("version", board.machine)), 0, 0,
                   max_speed, current, 0x41, 0x01, 0xFFFF, 0xFFFF, 0xFFFF,
                   s.string(f.get("serial")), s.string(f.get("asset")),
                   s.string(f.get("part")), min(board.cores, 0xFF), min(board.cores, 0xFF),
                   min(per_socket, 0xFF), 0x0002, 0x0001)
            out.append(s.encode())
    if cfg.oem_strings and want(11):
        s = _Structure(11, 0xE00)
        s.pack("B", len(cfg.oem_strings))
        for text in cfg.oem_strings:
            s.string(text)
        out.append(s.encode())
    ram = board.ram_below_4g + board.ram_above_4g
    kib = ram >> 10
    dimms = max(1, -(-ram // MAX_DIMM_SIZE))
    if want(16):
        s = _Structure(16, 0x1000)
        s.pack("BBBIHHQ", 1, 3, 6, kib if kib < 1 << 31 else 0x80000000, 0xFFFE, dimms,
               kib << 10 if kib >= 1 << 31 else 0)
        out.append(s.encode())
    if want(17):
        f = fields.get(17, {})
        for dimm in range(dimms):
            size = min(MAX_DIMM_SIZE, ram - dimm * MAX_DIMM_SIZE) >> 20
            s = _Structure(17, 0x1100 + dimm)
            s.pack("HHHHHBB", 0x1000, 0xFFFE, 0xFFFF, 0xFFFF,
                   size if size < 0x7FFF else 0x7FFF, 0x09, 0)
            s.pack("BBBHH", s.string(f"{f.get('loc_pfx', 'DIMM')} {dimm}"),
                   s.string(f.get("bank")), 0x07, 0x0002, int(f.get("speed", "0"), 0))
            s.pack("BBBBBIHHHH", s.string(f.get("manufacturer", "QEMU")),
                   s.string(f.get("serial")), s.string(f.get("asset")),
                   s.string(f.get("part")), 0, size if size >= 0x7FFF else 0,
                   int(f.get("speed", "0"), 0), 0, 0, 0)
            out.append(s.encode())
    if want(19):
        ranges = [(0, board.ram_below_4g)]
        if board.ram_above_4g:
            ranges.append((1 << 32, board.ram_above_4g))
        for index, (start, size) in enumerate(ranges):
            s = _Structure(19, 0x1300 + index)
            end = start + size - 1024
            if end >> 10 < 0xFFFFFFFF:
                s.pack("IIHBQQ", start >> 10, end >> 10, 0x1000, 1, 0, 0)
            else:
                s.pack("IIHBQQ", 0xFFFFFFFF, 0xFFFFFFFF, 0x1000, 1, start, start + size - 1)
            out.append(s.encode())
    if want(32):
        s = _Structure(32, 0x2000)
        s.body += bytes(7)                                   # no errors at boot
        out.append(s.encode())
    out.append(_Structure(127, 0x7F00).encode())
    return out


def _checksum(data: bytes) -> int:
    return -sum(data) & 0xFF


def entry_point(structures: list[bytes], table_addr: int) -> bytes:
    """The 2.8 "_SM_" entry point for the table at ``table_addr``."""
    table_len = sum(len(s) for s in structures)
    largest = max(len(s) for s in structures)
    dmi = bytearray(b"_DMI_" + bytes(1) + struct.pack("<HIHB", table_len, table_addr,
                                                        len(structures), 0x28))
    dmi[5] = _checksum(dmi)
    head = bytearray(b"_SM_" + bytes(1) + struct.pack("<BBBHB5s", 0x1F, 2, 8, largest, 0,
                                                       bytes(5)))
    eps = head + dmi
    eps[4] = _checksum(eps)
    return bytes(eps)


def tables(cfg: SmbiosConfig, board: Board) -> list[tuple[int, bytes]]:
    """(address, bytes) to write: the entry point and the structure table."""
    structures = build(cfg, board)
    table = b"".join(structures)
    if TABLE_START + len(table) > TABLE_END:
        raise SmbiosError("SMBIOS tables do not fit below 1 MiB")
    return [(ENTRY_POINT, entry_point(structures, TABLE_START)), (TABLE_START, table)]
