"""The split virtqueue (virtio 1.x, section 2.7), safe against a hostile guest.

Everything the guest wrote is checked before use: ring and buffer addresses
must lie in RAM (GuestMemory.view refuses anything else, wrap-around
included), chains may not loop or outgrow the queue, indirect tables must be
whole descriptors and may not nest, device-readable buffers may not follow
writable ones, and the available index may not run more than a queue ahead.
Any violation raises VirtqueueError: the device then logs it and enters
NEEDS_RESET. Buffers come back as zero-copy memoryviews of guest RAM.

drain_to_fd and fill_from_fd move whole batches of frames between a queue and
a file descriptor in C (vmm/virtio/_ring_build.py), under the same rules;
property tests hold the two paths to the same results on any ring.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vmm.memory import GuestMemory, GuestMemoryError
from vmm.virtio import spec

try:                              # the C fast path (vmm/virtio/_ring_build.py)
    from vmm.virtio._ring import ffi as _ffi
    from vmm.virtio._ring import lib as _lib
except ImportError:               # a source tree that was not built: Python does it all
    _ffi = _lib = None

DESC_F_NEXT = spec.VRING_DESC_F_NEXT
DESC_F_WRITE = spec.VRING_DESC_F_WRITE
DESC_F_INDIRECT = spec.VRING_DESC_F_INDIRECT
AVAIL_F_NO_INTERRUPT = spec.VRING_AVAIL_F_NO_INTERRUPT
USED_F_NO_NOTIFY = spec.VRING_USED_F_NO_NOTIFY
DESC_SIZE = 16
MAX_QUEUE_SIZE = 32768

_desc = struct.Struct("<QIHH")
_used_elem = struct.Struct("<II")


class VirtqueueError(Exception):
    """The guest broke the virtqueue rules; the device must need a reset."""


def _address(view: memoryview):
    """A uint8_t * to the start of view; the buffer export ends at once."""
    return _ffi.cast("uint8_t *", int(_ffi.cast("uintptr_t", _ffi.from_buffer(view))))


def new_rx_filter():
    """A C struct rx_filter for fill_from_fd (None if C is not built)."""
    return None if _ffi is None else _ffi.new("struct rx_filter *")


FILL_EMPTY, FILL_NO_BUFFERS, FILL_BUDGET = (0, 1, 2) if _lib is None else \
    (_lib.FILL_EMPTY, _lib.FILL_NO_BUFFERS, _lib.FILL_BUDGET)

# What the C path's error codes mean (the same rules _walk and pending() enforce).
_RING_ERRORS = {} if _lib is None else {
    _lib.RING_ERR_HEAD: "chain head beyond the table",
    _lib.RING_ERR_LOOP: "descriptor chain loops or is longer than its table",
    _lib.RING_ERR_NESTED: "nested indirect descriptor table",
    _lib.RING_ERR_INDIRECT_NEXT: "indirect descriptor with NEXT set",
    _lib.RING_ERR_INDIRECT_SIZE: "indirect table of a bad size",
    _lib.RING_ERR_OUTSIDE: "buffer outside guest RAM",
    _lib.RING_ERR_ORDER: "device-readable buffer after a writable one",
    _lib.RING_ERR_NEXT: "next descriptor beyond the table",
    _lib.RING_ERR_AHEAD: "available index ran more than a queue ahead"}


@dataclass
class Chain:
    head: int
    readable: list[memoryview] = field(default_factory=list)
    writable: list[memoryview] = field(default_factory=list)
    writable_at: list[tuple[int, int]] = field(default_factory=list)  # (gpa, length) of each

    @property
    def readable_len(self) -> int:
        return sum(len(v) for v in self.readable)

    @property
    def writable_len(self) -> int:
        return sum(len(v) for v in self.writable)

    def read_all(self) -> bytes:
        return b"".join(bytes(v) for v in self.readable)

    def write(self, data: bytes | memoryview) -> int:
        """Scatters data over the writable buffers; returns how much fitted."""
        done = 0
        for view in self.writable:
            if done >= len(data):
                break
            n = min(len(view), len(data) - done)
            view[:n] = data[done:done + n]
            done += n
        return done


def need_event(event_idx: int, new_idx: int, old_idx: int) -> bool:
    """vring_need_event: did new_idx move past event_idx since old_idx (mod 2**16)?"""
    return ((new_idx - event_idx - 1) & 0xFFFF) < ((new_idx - old_idx) & 0xFFFF)


class SplitQueue:
    def __init__(self, mem: GuestMemory, size: int, desc: int, avail: int, used: int,
                 event_idx: bool = False) -> None:
        if not 0 < size <= MAX_QUEUE_SIZE or size & (size - 1):
            raise VirtqueueError(f"queue size {size} is not a power of two up to 32768")
        self.mem = mem
        self.size = size
        self.event_idx = event_idx
        try:
            self.desc = mem.view(desc, DESC_SIZE * size)
            self.avail = mem.view(avail, 6 + 2 * size)
            self.used = mem.view(used, 6 + 8 * size)
            # The rings' 16-bit fields as 16-bit items: each access is one load or store,
            # as the driver's are (struct.pack_into zeroes its target first, and a
            # byte-wise read can tear, so a spinning driver could see a used index of 0
            # and the device an available index 256 ahead). x86 is little-endian.
            self.avail16 = self.avail.cast("H")
            self.used16 = self.used.cast("H")
        except GuestMemoryError as e:
            raise VirtqueueError(f"ring outside guest RAM: {e}") from None
        self.last_avail = 0
        self.used_idx = 0
        self.signalled_used = 0     # used index at the last interrupt we sent
        self._c_ring = None         # the C path's view of this queue, made on first use
        self._writes: dict[int, list[tuple[int, int]]] = {}   # head: its writable buffers

    # -- the driver's side, read -----------------------------------------------
    def avail_idx(self) -> int:
        return self.avail16[1]

    def pending(self) -> int:
        pending = (self.avail_idx() - self.last_avail) & 0xFFFF
        if pending > self.size:
            raise VirtqueueError(f"available index ran {pending} entries ahead "
                                 f"of a {self.size}-entry queue")
        return pending

    def pop(self) -> Chain | None:
        """The next available chain, or None when the driver has nothing queued."""
        if not self.pending():
            return None
        slot = self.last_avail % self.size
        head = self.avail16[2 + slot]
        self.last_avail = (self.last_avail + 1) & 0xFFFF
        if self.event_idx:   # tell the driver where we are (avail_event, in the used ring)
            self.used16[2 + 4 * self.size] = self.last_avail
        chain = self._walk(head)
        if chain.writable_at:       # for migration's log, once the device has written them
            self._writes[head] = chain.writable_at
        return chain

    def _walk(self, head: int) -> Chain:
        if head >= self.size:
            raise VirtqueueError(f"chain head {head} beyond a {self.size}-entry table")
        chain = Chain(head)
        table, table_size, index = self.desc, self.size, head
        seen = 0
        indirect = False
        while True:
            seen += 1
            if seen > table_size:
                raise VirtqueueError("descriptor chain loops or is longer than its table")
            addr, length, flags, nxt = _desc.unpack_from(table, DESC_SIZE * index)
            if flags & DESC_F_INDIRECT:
                if indirect:
                    raise VirtqueueError("nested indirect descriptor table")
                if flags & DESC_F_NEXT:
                    raise VirtqueueError("indirect descriptor with NEXT set")
                if length == 0 or length % DESC_SIZE or length // DESC_SIZE > MAX_QUEUE_SIZE:
                    raise VirtqueueError(f"indirect table of {length} bytes")
                table = self._view(addr, length)
                table_size, index, seen, indirect = length // DESC_SIZE, 0, 0, True
                continue
            view = self._view(addr, length)
            if flags & DESC_F_WRITE:
                chain.writable.append(view)
                chain.writable_at.append((addr, length))
            elif chain.writable:
                raise VirtqueueError("device-readable buffer after a writable one")
            else:
                chain.readable.append(view)
            if not flags & DESC_F_NEXT:
                return chain
            if nxt >= table_size:
                raise VirtqueueError(f"next descriptor {nxt} beyond the table")
            index = nxt

    def _view(self, addr: int, length: int) -> memoryview:
        try:
            return self.mem.view(addr, length)
        except GuestMemoryError as e:
            raise VirtqueueError(f"buffer outside guest RAM: {e}") from None

    # -- the C fast path -----------------------------------------------------------
    def drain_to_fd(self, fd: int, min_len: int) -> int | None:
        """Takes every available chain: writes each whose readable part is longer than
        min_len to fd (none when fd < 0) and returns it used with length 0, in C and
        with _walk's checks. Returns the frames written; None if C is not built."""
        if _lib is None:
            return None
        ring = self._c_ring or self._make_c_ring()
        ring.last_avail, ring.used_idx = self.last_avail, self.used_idx
        sent = _ffi.new("uint64_t *")
        batch = 4 * self.size
        while True:
            taken = _lib.ring_drain_to_fd(ring, fd, min_len, batch, sent)
            self.last_avail, self.used_idx = ring.last_avail, ring.used_idx
            if taken < 0:
                raise VirtqueueError(_RING_ERRORS[taken])
            if taken < batch:
                return sent[0]

    def fill_from_fd(self, fd: int, hdr_len: int, merge: bool, rx_filter, budget: int
                     ) -> tuple[int, int, int, str | None] | None:
        """Reads up to `budget` frames (with hdr_len-byte vnet headers) from fd into
        this receive queue through rx_filter (new_rx_filter's), as virtio-net's Python
        path does. Returns (delivered, dropped for want of room, why it stopped: one
        of FILL_EMPTY, FILL_NO_BUFFERS, FILL_BUDGET, and the guest error that stopped
        it or None); None if C is not built."""
        if _lib is None:
            return None
        ring = self._c_ring or self._make_c_ring()
        ring.last_avail, ring.used_idx = self.last_avail, self.used_idx
        log = self._point_at_dirty_log(ring)
        stop, dropped, delivered = _ffi.new("int *"), _ffi.new("uint64_t *"), \
            _ffi.new("uint64_t *")
        got = _lib.ring_fill_from_fd(ring, fd, hdr_len, int(merge), rx_filter, budget, stop,
                                     dropped, delivered)
        self.last_avail, self.used_idx = ring.last_avail, ring.used_idx
        del log
        return delivered[0], dropped[0], stop[0], _RING_ERRORS[got] if got < 0 else None

    def _point_at_dirty_log(self, ring):
        """While a migration logs device writes, the C path marks the pages it fills;
        returns the buffer that must live as long as the call."""
        log = self.mem.dirty_log
        if log is None:
            ring.dirty, ring.dirty_pages = _ffi.NULL, 0
            return None
        buffer = _ffi.from_buffer(log)
        ring.dirty, ring.dirty_pages = buffer, len(log)
        return buffer

    def _make_c_ring(self):
        """The C struct for this queue. It holds plain addresses, not buffers: the
        ring views this queue keeps pin the mapping (GuestMemory.close cannot unmap
        RAM while they exist), and cffi buffer objects kept in a cycle with
        memoryviews would break the garbage collector's clearing of them."""
        regions = _ffi.new("struct ram_region[]", len(self.mem.regions))
        for region, c_region in zip(self.mem.regions, regions):
            c_region.gpa, c_region.size = region.gpa, region.size
            c_region.host = _address(region.view)
        ring = _ffi.new("struct split_ring *")
        ring.desc, ring.avail, ring.used = (_address(v) for v in (self.desc, self.avail,
                                                                  self.used))
        ring.size, ring.event_idx = self.size, int(self.event_idx)
        ring.ram, ring.nram = regions, len(self.mem.regions)
        self._c_ring, self._c_regions = ring, regions
        return ring

    # -- the device's side, written ----------------------------------------------
    def push(self, head: int, written: int) -> None:
        """Returns a chain to the driver with `written` bytes filled in."""
        ranges = self._writes.pop(head, None)
        if ranges and self.mem.dirty_log is not None:
            for gpa, length in ranges:
                self.mem.mark_dirty(gpa, length)
        slot = self.used_idx % self.size
        _used_elem.pack_into(self.used, 4 + 8 * slot, head, written)
        self.used_idx = (self.used_idx + 1) & 0xFFFF
        self.used16[1] = self.used_idx

    def should_notify(self) -> bool:
        """Whether the driver wants an interrupt for what was pushed since the last one."""
        old, new = self.signalled_used, self.used_idx
        if old == new:
            return False
        if self.event_idx:
            used_event = self.avail16[2 + self.size]
            notify = need_event(used_event, new, old)
        else:
            notify = not self.avail16[0] & AVAIL_F_NO_INTERRUPT
        self.signalled_used = new
        return notify

    def set_notifications(self, enabled: bool) -> None:
        """Tells the driver whether we want kicks (VIRTQ_USED_F_NO_NOTIFY)."""
        if not self.event_idx:
            self.used16[0] = 0 if enabled else USED_F_NO_NOTIFY
