"""Port-I/O and MMIO buses: address ranges mapped to devices.

A device on a bus implements ``bus_read(offset, size) -> int`` and
``bus_write(offset, size, value)``, with ``offset`` relative to the start of
the range it was mapped at. Reads of unassigned addresses return all-ones and
writes to them are dropped, as on a PC.
"""

from __future__ import annotations

import bisect
import logging
from typing import Protocol

from vmm.errors import UserError

log = logging.getLogger(__name__)


class BusDevice(Protocol):
    def bus_read(self, offset: int, size: int) -> int: ...

    def bus_write(self, offset: int, size: int, value: int) -> None: ...


class BusConflict(UserError):
    """A device asked for ports or addresses another already has (the user's
    -device options, so a user error with its text)."""


HIT_CACHE_SIZE = 4096


class Bus:
    def __init__(self, name: str) -> None:
        self.name = name
        self._starts: list[int] = []
        self._ranges: list[tuple[int, int, BusDevice]] = []  # (start, end, device)
        # address -> find()'s answer: a guest polls a few addresses over and over, and
        # a dict lookup is the cheapest part of a VM exit. Emptied whenever ranges change.
        self._hits: dict[int, tuple[int, BusDevice] | None] = {}

    def map(self, start: int, length: int, device: BusDevice) -> None:
        end = start + length
        i = bisect.bisect_right(self._starts, start)
        if i > 0 and self._ranges[i - 1][1] > start:
            raise BusConflict(f"{self.name}: 0x{start:x} overlaps an existing range")
        if i < len(self._ranges) and self._ranges[i][0] < end:
            raise BusConflict(f"{self.name}: 0x{start:x}+0x{length:x} overlaps an existing range")
        self._starts.insert(i, start)
        self._ranges.insert(i, (start, end, device))
        self._hits.clear()

    def unmap(self, start: int) -> None:
        i = bisect.bisect_left(self._starts, start)
        if i < len(self._starts) and self._starts[i] == start:
            del self._starts[i]
            del self._ranges[i]
            self._hits.clear()

    def find(self, addr: int) -> tuple[int, BusDevice] | None:
        try:
            return self._hits[addr]
        except KeyError:
            pass
        if len(self._hits) >= HIT_CACHE_SIZE:
            self._hits.clear()
        hit = self._hits[addr] = self._lookup(addr)
        return hit

    def _lookup(self, addr: int) -> tuple[int, BusDevice] | None:
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            start, end, device = self._ranges[i]
            if addr < end:
                return start, device
        return None

    def ranges(self) -> list[tuple[int, int, BusDevice]]:
        return list(self._ranges)

    def read(self, addr: int, size: int) -> int:
        hit = self.find(addr)
        if hit is None:
            return (1 << (8 * size)) - 1
        start, device = hit
        try:
            return device.bus_read(addr - start, size) & ((1 << (8 * size)) - 1)
        except Exception:  # a device bug must not take down a vCPU thread
            log.exception("%s read at 0x%x failed", self.name, addr)
            return (1 << (8 * size)) - 1

    def write(self, addr: int, size: int, value: int) -> None:
        hit = self.find(addr)
        if hit is None:
            return
        start, device = hit
        try:
            device.bus_write(addr - start, size, value)
        except Exception:
            log.exception("%s write at 0x%x failed", self.name, addr)
