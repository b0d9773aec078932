"""The migration stream and the page runs, without KVM: what a reader refuses
(another stream, pages outside RAM, an unknown record, a short stream, a state
that is not JSON) and how runs of pages to send are found."""

from __future__ import annotations

import io
import struct

import pytest

from vmm.memory import GuestMemory
from vmm.migration.ram import runs
from vmm.migration.stream import PAGES, Reader, StreamError, Writer

MiB = 1 << 20


def stream(build) -> io.BytesIO:
    out = io.BytesIO()
    writer = Writer(out)
    build(writer, out)
    out.seek(0)
    return out


def test_pages_zero_runs_and_state_round_trip():
    source, target = GuestMemory(4 * MiB), GuestMemory(4 * MiB)
    source.write(MiB, b"page" * 2048)
    target.fill(2 * MiB, 4096, 0xAA)              # to be zeroed by a ZERO record

    def build(writer, out):
        writer.header()
        writer.pages(MiB, source.view(MiB, 8192))
        writer.zero(2 * MiB, 1)
        writer.state({"blob": b"\x00\xffbytes", "n": [1, 2]})
        writer.end()
    state = Reader(stream(build)).load(target)
    assert state == {"blob": b"\x00\xffbytes", "n": [1, 2]}
    assert target.read(MiB, 8192) == b"page" * 2048
    assert target.read(2 * MiB, 4096) == bytes(4096)


@pytest.mark.parametrize("damage, message", [
    (lambda data: b"NOTKVMKT" + data[8:], "not a kvmkit migration stream"),
    (lambda data: data[:8] + struct.pack("<I", 7) + data[12:], "stream version 7 is not 1"),
    (lambda data: data[:12] + struct.pack("<BQI", PAGES, 64 * MiB, 1) + data[25:],
     "are not this machine's RAM"),
    (lambda data: data[:12] + b"\x09" + data[13:], "unknown record 9"),
    (lambda data: data[:-30], "ended early"),
])
def test_a_damaged_stream_is_refused(damage, message):
    memory = GuestMemory(4 * MiB)

    def build(writer, out):
        writer.header()
        writer.pages(0, memory.view(0, 4096))
        writer.state({"x": 1})
        writer.end()
    data = damage(stream(build).getvalue())
    with pytest.raises(StreamError, match=message):
        Reader(io.BytesIO(data)).load(GuestMemory(4 * MiB))


def test_runs_are_found_whatever_their_place():
    pages = bytearray(64)
    assert list(runs(pages)) == []
    pages[0:3] = b"\x01\x01\x02"
    pages[10] = 2
    pages[62:64] = b"\x01\x01"
    assert list(runs(pages)) == [(0, 2, 1), (2, 3, 2), (10, 11, 2), (62, 64, 1)]
