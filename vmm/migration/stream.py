"""kvmkit's migration stream: guest RAM pages, then the machine's state.

    header   "KVMKITMG", u32 version
    records  u8 kind, then
             PAGES  u64 gpa, u32 count, count * 4096 bytes of RAM
             ZERO   u64 gpa, u32 count           (those pages are all zeroes)
             STATE  u32 length, the machine's state as JSON (bytes as {"$b": base64})
             END

Numbers are little-endian, as the host. The same stream goes to
another kvmkit, to a file through ``exec:cat > FILE``, and into a qcow2 image's
VM-state area for savevm. A reader checks every record against the destination
before it writes anything: a page outside RAM, an unknown record or version, a
short stream or a state too large refuses the stream.
"""

from __future__ import annotations

import base64
import json
import struct
from typing import Any, BinaryIO

from vmm.errors import UserError
from vmm.memory import PAGE_SIZE, GuestMemory, GuestMemoryError

MAGIC = b"KVMKITMG"
VERSION = 1
PAGES, ZERO, STATE, END = 1, 2, 3, 4
MAX_STATE = 64 << 20                 # far above any machine's; refuses a runaway length
_HEADER = struct.Struct("<8sI")
_RUN = struct.Struct("<BQI")


class StreamError(UserError):
    """The stream is not one this machine can load."""


def encode_state(state: Any) -> bytes:
    def default(value: Any) -> Any:
        if isinstance(value, (bytes, bytearray, memoryview)):
            return {"$b": base64.b64encode(bytes(value)).decode()}
        raise TypeError(f"cannot save a {type(value).__name__}")
    return json.dumps(state, default=default, separators=(",", ":")).encode()


def decode_state(data: bytes) -> Any:
    def hook(obj: dict) -> Any:
        if len(obj) == 1 and "$b" in obj and isinstance(obj["$b"], str):
            return base64.b64decode(obj["$b"], validate=True)
        return obj
    try:
        return json.loads(data, object_hook=hook)
    except (ValueError, UnicodeDecodeError) as e:
        raise StreamError(f"the machine state is corrupt ({e})") from None


class Writer:
    """Writes records to a binary file; counts the bytes (query-migrate's)."""

    def __init__(self, out: BinaryIO) -> None:
        self.out = out
        self.sent = 0

    def _write(self, data) -> None:
        self.out.write(data)
        self.sent += len(data)

    def header(self) -> None:
        self._write(_HEADER.pack(MAGIC, VERSION))

    def pages(self, gpa: int, data: memoryview) -> None:
        self._write(_RUN.pack(PAGES, gpa, len(data) // PAGE_SIZE))
        self._write(data)

    def zero(self, gpa: int, count: int) -> None:
        self._write(_RUN.pack(ZERO, gpa, count))

    def state(self, state: Any) -> None:
        data = encode_state(state)
        self._write(struct.pack("<BI", STATE, len(data)))
        self._write(data)

    def end(self) -> None:
        self._write(bytes([END]))
        self.out.flush()


def _read_exact(source: BinaryIO, target) -> None:
    view = memoryview(target).cast("B")
    while view:
        got = source.readinto(view)
        if not got:
            raise StreamError("the migration stream ended early")
        view = view[got:]


def _read(source: BinaryIO, size: int) -> bytes:
    buffer = bytearray(size)
    _read_exact(source, buffer)
    return bytes(buffer)


class Reader:
    """Reads a stream into guest memory; ``load`` returns the machine state."""

    def __init__(self, source: BinaryIO) -> None:
        self.source = source

    def load(self, memory: GuestMemory) -> Any:
        magic, version = _HEADER.unpack(_read(self.source, _HEADER.size))
        if magic != MAGIC:
            raise StreamError("not a kvmkit migration stream")
        if version != VERSION:
            raise StreamError(f"migration stream version {version} is not {VERSION}")
        state = None
        while True:
            kind = _read(self.source, 1)[0]
            if kind in (PAGES, ZERO):
                _, gpa, count = _RUN.unpack(bytes([kind]) + _read(self.source, _RUN.size - 1))
                try:
                    if gpa % PAGE_SIZE or not count:
                        raise GuestMemoryError("unaligned or empty run")
                    memory.region_of(gpa, count * PAGE_SIZE)
                except GuestMemoryError:
                    raise StreamError(f"RAM pages at 0x{gpa:x} (+{count}) are not this "
                                      f"machine's RAM") from None
                if kind == PAGES:
                    _read_exact(self.source, memory.view(gpa, count * PAGE_SIZE))
                else:
                    memory.discard(gpa, count * PAGE_SIZE)
            elif kind == STATE:
                (length,) = struct.unpack("<I", _read(self.source, 4))
                if length > MAX_STATE or state is not None:
                    raise StreamError("the machine state is corrupt")
                state = decode_state(_read(self.source, length))
            elif kind == END:
                if state is None:
                    raise StreamError("the migration stream has no machine state")
                return state
            else:
                raise StreamError(f"unknown record {kind} in the migration stream")
