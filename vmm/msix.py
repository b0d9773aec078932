"""MSI-X (PCI 3.0, 6.8.2): the capability, the vector table and the pending bits.

The table and the PBA sit in one BAR of the device (QEMU puts the table at 0
and the PBA at 0x800 of a 4 KiB BAR1 for virtio). A vector fires only while
MSI-X is enabled, the function is not masked and its entry is not masked;
otherwise its pending bit is set and it fires when unmasked.

Delivery goes through an `MsiRoutes`: each vector owns a GSI routed to its
(address, data) and an irqfd, so firing is one eventfd write.
"""

from __future__ import annotations

import logging
import os
import struct

log = logging.getLogger(__name__)

CAP_MSIX = 0x11
CONTROL_ENABLE = 0x8000
CONTROL_FUNCTION_MASK = 0x4000
ENTRY_SIZE = 16
ENTRY_MASKED = 1
FIRST_MSI_GSI = 24                 # GSIs 0-23 stay the irqchip's


class MsiRoutes:
    """The VM's GSI routing table: the irqchip's default routes plus one MSI
    route per allocated vector, each with an irqfd."""

    def __init__(self, vm) -> None:
        self.vm = vm
        self.routes: dict[int, tuple[int, int]] = {}
        self.fds: dict[int, int] = {}
        self._next = FIRST_MSI_GSI
        self._released: list[int] = []    # GSIs given back (hot-unplug), used again first

    def allocate(self) -> int:
        if self._released:
            gsi = self._released.pop()
        else:
            gsi = self._next
            self._next += 1
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        self.routes[gsi] = (0xFEE00000, 0)
        self._commit()
        self.vm.irqfd(fd, gsi)
        self.fds[gsi] = fd
        return gsi

    def release(self, gsis: list[int]) -> None:
        """A device's vectors go back: their irqfds, eventfds and routes."""
        for gsi in gsis:
            fd = self.fds.pop(gsi, None)
            if fd is None:
                continue
            try:
                self.vm.irqfd(fd, gsi, deassign=True)
            except OSError as e:
                log.warning("MSI-X: releasing GSI %d: %s", gsi, e)
            os.close(fd)
            self.routes.pop(gsi, None)
            self._released.append(gsi)
        self._commit()

    def set_route(self, gsi: int, address: int, data: int) -> None:
        if self.routes.get(gsi) != (address, data):
            self.routes[gsi] = (address, data)
            self._commit()

    def fire(self, gsi: int) -> None:
        os.eventfd_write(self.fds[gsi], 1)

    def _commit(self) -> None:
        # KVM's default table: GSIs 0-15 to both PICs and the IOAPIC, 16-23 to the IOAPIC.
        table: list[tuple] = []
        for gsi in range(24):
            if gsi < 16:
                table.append(("irqchip", gsi, 0 if gsi < 8 else 1, gsi % 8))
            table.append(("irqchip", gsi, 2, gsi))
        table += [("msi", gsi, address, data) for gsi, (address, data) in self.routes.items()]
        self.vm.set_gsi_routing(table)


class Msix:
    """A device's MSI-X: call `add_to(device)` while declaring it, then `notify(n)`."""

    pci_bar = True

    def __init__(self, vectors: int, routes: MsiRoutes | None,
                 table_offset: int = 0, pba_offset: int = 0x800, owner: str = "pci") -> None:
        self.vectors = vectors
        self.mtree_name = f"{owner}-msix"
        self.routes = routes           # None: nothing is delivered (unit tests count instead)
        self.table_offset, self.pba_offset = table_offset, pba_offset
        self.table = bytearray(ENTRY_SIZE * vectors)
        self.pending = bytearray((vectors + 63) // 64 * 8)
        self.gsis = [routes.allocate() for _ in range(vectors)] if routes else []
        self.fired: list[int] = []     # vectors delivered, for tests and `info irq`
        self.device = None
        self.cap = 0
        self.reset()

    def release(self) -> None:
        """The device is gone: its vectors' routes and eventfds go back."""
        if self.routes is not None:
            self.routes.release(self.gsis)
            self.gsis = []

    def add_to(self, device, bar: int) -> None:
        self.device = device
        body = struct.pack("<HII", self.vectors - 1, self.table_offset | bar,
                           self.pba_offset | bar)
        self.cap = device.add_capability(CAP_MSIX, body, wmask=b"\x00\xC0")

    def reset(self) -> None:
        for n in range(self.vectors):
            struct.pack_into("<IIII", self.table, ENTRY_SIZE * n, 0, 0, 0, ENTRY_MASKED)
        self.pending[:] = bytes(len(self.pending))

    # -- state ----------------------------------------------------------------
    @property
    def control(self) -> int:
        return struct.unpack_from("<H", self.device.config, self.cap + 2)[0] if self.device \
            else 0

    @property
    def enabled(self) -> bool:
        return bool(self.control & CONTROL_ENABLE)

    def _masked(self, n: int) -> bool:
        return bool(self.control & CONTROL_FUNCTION_MASK) or \
            bool(self.table[ENTRY_SIZE * n + 12] & ENTRY_MASKED)

    # -- firing ---------------------------------------------------------------
    def notify(self, n: int) -> None:
        if not 0 <= n < self.vectors or not self.enabled:
            return
        if self._masked(n):
            self.pending[n // 8] |= 1 << (n % 8)
            return
        self._deliver(n)

    def _deliver(self, n: int) -> None:
        address_lo, address_hi, data, _ = struct.unpack_from("<IIII", self.table, ENTRY_SIZE * n)
        self.fired.append(n)
        if self.routes is not None:
            self.routes.set_route(self.gsis[n], (address_hi << 32) | address_lo, data)
            self.routes.fire(self.gsis[n])

    def _unmasked(self) -> None:
        """A mask was lifted: what is pending and now unmasked fires."""
        if not self.enabled:
            return
        for n in range(self.vectors):
            if self.pending[n // 8] & (1 << (n % 8)) and not self._masked(n):
                self.pending[n // 8] &= ~(1 << (n % 8)) & 0xFF
                self._deliver(n)

    def config_written(self) -> None:
        """The device's config space changed (enable or function mask bits)."""
        self._unmasked()

    def mtree_children(self) -> list[tuple[int, int, str]]:
        return [(self.table_offset, len(self.table), "msix-table"),
                (self.pba_offset, len(self.pending), "msix-pba")]

    # -- the BAR region -------------------------------------------------------
    def bus_read(self, offset: int, size: int) -> int:
        if self.table_offset <= offset < self.table_offset + len(self.table):
            start = offset - self.table_offset
            return int.from_bytes(self.table[start:start + size].ljust(size, b"\0"), "little")
        if self.pba_offset <= offset < self.pba_offset + len(self.pending):
            start = offset - self.pba_offset
            return int.from_bytes(self.pending[start:start + size].ljust(size, b"\0"), "little")
        return 0

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if not self.table_offset <= offset < self.table_offset + len(self.table):
            return                      # the PBA is read-only
        start = offset - self.table_offset
        end = min(start + size, len(self.table))
        self.table[start:end] = value.to_bytes(size, "little")[:end - start]
        self._unmasked()
