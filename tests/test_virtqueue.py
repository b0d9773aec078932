"""The split virtqueue against well-behaved and hostile drivers, in fake guest RAM."""

from __future__ import annotations

import struct
import tempfile

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from vmm.memory import GuestMemory
from vmm.virtio.queue import (
    DESC_F_INDIRECT,
    DESC_F_NEXT,
    DESC_F_WRITE,
    SplitQueue,
    VirtqueueError,
    need_event,
)

RAM = 1 << 20
SIZE = 8
DESC, AVAIL, USED = 0x1000, 0x2000, 0x3000


@pytest.fixture
def mem():
    m = GuestMemory(RAM)
    yield m
    m.close()


def put_desc(mem, index, addr, length, flags=0, nxt=0, table=DESC):
    mem.write(table + 16 * index, struct.pack("<QIHH", addr, length, flags, nxt))


def offer(mem, *heads, start=0):
    for i, head in enumerate(heads):
        mem.write_u16(AVAIL + 4 + 2 * ((start + i) % SIZE), head)
    mem.write_u16(AVAIL + 2, (start + len(heads)) & 0xFFFF)


def queue(mem, event_idx=False):
    return SplitQueue(mem, SIZE, DESC, AVAIL, USED, event_idx=event_idx)


def test_a_chain_with_readable_then_writable_buffers(mem):
    mem.write(0x10000, b"request!")
    put_desc(mem, 0, 0x10000, 8, DESC_F_NEXT, 3)
    put_desc(mem, 3, 0x20000, 16, DESC_F_WRITE)
    offer(mem, 0)
    q = queue(mem)
    chain = q.pop()
    assert chain.head == 0 and chain.read_all() == b"request!"
    assert chain.writable_len == 16
    assert chain.write(b"reply") == 5
    assert mem.read(0x20000, 5) == b"reply"
    assert q.pop() is None
    q.push(chain.head, 5)
    assert mem.read_u16(USED + 2) == 1
    assert struct.unpack("<II", mem.read(USED + 4, 8)) == (0, 5)
    assert q.should_notify() and not q.should_notify()


def test_indirect_table(mem):
    put_desc(mem, 0, 0x40000, 32, DESC_F_INDIRECT)
    put_desc(mem, 0, 0x10000, 4, DESC_F_NEXT, 1, table=0x40000)
    put_desc(mem, 1, 0x11000, 8, DESC_F_WRITE, table=0x40000)
    offer(mem, 0)
    chain = queue(mem).pop()
    assert chain.readable_len == 4 and chain.writable_len == 8


@pytest.mark.parametrize("build,message", [
    (lambda m: (put_desc(m, 0, 0x10000, 4, DESC_F_NEXT, 1),
                put_desc(m, 1, 0x10000, 4, DESC_F_NEXT, 0)), "loops"),
    (lambda m: put_desc(m, 0, 0x10000, 4, DESC_F_NEXT, SIZE), "beyond the table"),
    (lambda m: put_desc(m, 0, RAM - 2, 4), "outside guest RAM"),
    (lambda m: put_desc(m, 0, (1 << 64) - 4, 8), "outside guest RAM"),
    (lambda m: put_desc(m, 0, 0x10000, 0xFFFFFFFF), "outside guest RAM"),
    (lambda m: (put_desc(m, 0, 0x10000, 4, DESC_F_WRITE | DESC_F_NEXT, 1),
                put_desc(m, 1, 0x11000, 4)), "readable buffer after a writable"),
    (lambda m: (put_desc(m, 0, 0x40000, 16, DESC_F_INDIRECT),
                put_desc(m, 0, 0x40000, 16, DESC_F_INDIRECT, table=0x40000)), "nested"),
    (lambda m: put_desc(m, 0, 0x40000, 20, DESC_F_INDIRECT), "indirect table"),
    (lambda m: put_desc(m, 0, 0x40000, 0, DESC_F_INDIRECT), "indirect table"),
    (lambda m: put_desc(m, 0, 0x40000, 16, DESC_F_INDIRECT | DESC_F_NEXT, 1), "NEXT set"),
    (lambda m: put_desc(m, 0, RAM - 8, 64, DESC_F_INDIRECT), "outside guest RAM"),
    (lambda m: put_desc(m, 0, 0x40000, 1 << 20, DESC_F_INDIRECT), "indirect table"),
    (lambda m: (put_desc(m, 0, 0x40000, 32, DESC_F_INDIRECT),
                put_desc(m, 0, 0x10000, 4, DESC_F_NEXT, 1, table=0x40000),
                put_desc(m, 1, 0x10000, 4, DESC_F_NEXT, 0, table=0x40000)), "loops"),
])
@pytest.mark.parametrize("take", ["python", "c"])
def test_hostile_chains_are_guest_errors(mem, build, message, take):
    build(mem)
    offer(mem, 0)
    with pytest.raises(VirtqueueError, match=message):
        queue(mem).pop() if take == "python" else drain(queue(mem))


def drain(q, min_len: int = 0, written: list | None = None) -> None:
    """The C path into a file; what it wrote goes to `written`, even on an error."""
    with tempfile.TemporaryFile() as f:
        try:
            assert q.drain_to_fd(f.fileno(), min_len) is not None, "the C path is not built"
        finally:
            f.seek(0)
            if written is not None:
                written.append(f.read())


def test_bad_heads_and_index_jumps(mem):
    offer(mem, SIZE + 3)
    with pytest.raises(VirtqueueError, match="beyond"):
        queue(mem).pop()
    mem.write_u16(AVAIL + 2, SIZE + 1)
    with pytest.raises(VirtqueueError, match="ran 9 entries ahead"):
        queue(mem).pop()
    with pytest.raises(VirtqueueError, match="ring outside guest RAM"):
        SplitQueue(mem, SIZE, RAM - 16, AVAIL, USED)
    with pytest.raises(VirtqueueError, match="power of two"):
        SplitQueue(mem, 6, DESC, AVAIL, USED)


def test_event_idx_suppresses_and_requests_interrupts(mem):
    q = queue(mem, event_idx=True)
    for i in range(3):
        put_desc(mem, i, 0x10000 + 0x100 * i, 4, DESC_F_WRITE)
    offer(mem, 0, 1, 2)
    mem.write_u16(AVAIL + 4 + 2 * SIZE, 1)          # used_event: interrupt after entry 1
    q.push(q.pop().head, 0)
    assert not q.should_notify()                     # used idx 1 has not passed event 1
    q.push(q.pop().head, 0)
    assert q.should_notify()                         # idx 2 passed it
    assert mem.read_u16(USED + 4 + 8 * SIZE) == 2    # avail_event follows our position
    assert need_event(0xFFFF, 0, 0xFFFE)             # wrap-around


def random_ring(mem, descs, heads, avail_idx, indirect) -> SplitQueue:
    """A queue over what hypothesis drew: descriptors, an indirect table, heads."""
    for i, (addr, length, flags, nxt) in enumerate(descs):
        put_desc(mem, i, addr, length & 0xFFFFFFFF, flags, nxt)
    for i, (addr, length, flags, nxt) in enumerate(indirect):
        put_desc(mem, i, addr, length & 0xFFFFFFFF, flags, nxt, table=0x40000)
    for i, head in enumerate(heads):
        mem.write_u16(AVAIL + 4 + 2 * i, head)
    mem.write_u16(AVAIL + 2, avail_idx)
    return queue(mem, event_idx=bool(avail_idx & 1))


descriptor = st.tuples(st.integers(0, RAM + 4096), st.integers(0, 1 << 33),
                       st.integers(0, 7), st.integers(0, 20))


@settings(max_examples=500, deadline=None)
@given(descs=st.lists(descriptor, min_size=SIZE, max_size=SIZE),
       heads=st.lists(st.integers(0, 20), min_size=SIZE, max_size=SIZE),
       avail_idx=st.integers(0, 0xFFFF), indirect=st.lists(descriptor, max_size=12))
def test_random_rings_never_escape_the_rules(descs, heads, avail_idx, indirect):
    mem = GuestMemory(RAM)
    try:
        q = random_ring(mem, descs, heads, avail_idx, indirect)
        for _ in range(2 * SIZE):
            try:
                chain = q.pop()
            except VirtqueueError:
                break
            if chain is None:
                break
            for view in chain.readable + chain.writable:
                assert isinstance(view, memoryview)   # only views of guest RAM come out
            q.push(chain.head, chain.writable_len)
        q.should_notify()
    finally:
        mem.close()


@settings(max_examples=400, deadline=None)
@given(descs=st.lists(descriptor, min_size=SIZE, max_size=SIZE),
       heads=st.lists(st.integers(0, 20), min_size=SIZE, max_size=SIZE),
       avail_idx=st.integers(0, 2 * SIZE), indirect=st.lists(descriptor, max_size=12),
       min_len=st.integers(0, 64))
def test_the_c_path_takes_what_python_takes(descs, heads, avail_idx, indirect, min_len):
    """On any ring, drain_to_fd (C) and pop/push (Python) agree: the same guest
    error or none, the same indices and used entries, the same bytes sent."""
    outcomes = []
    for path in ("python", "c"):
        mem = GuestMemory(RAM)
        try:
            mem.write(0x10000, bytes(range(256)) * 64)
            q = random_ring(mem, descs, heads, avail_idx, indirect)
            sent, error, written = b"", None, []
            try:
                if path == "c":
                    drain(q, min_len, written)
                else:
                    while (chain := q.pop()) is not None:
                        if chain.readable_len > min_len:
                            sent += chain.read_all()
                        q.push(chain.head, 0)
            except VirtqueueError:
                error = True
            sent = written[0] if path == "c" else sent
            outcomes.append((error, sent, q.last_avail, q.used_idx,
                             bytes(mem.read(USED, 6 + 8 * SIZE))))
        finally:
            mem.close()
    assert outcomes[0] == outcomes[1]
