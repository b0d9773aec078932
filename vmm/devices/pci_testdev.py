"""pci-testdev: QEMU's PCI test device (1b36:0005), as kvm-unit-tests' vmexit drives it.

BAR0 (4 KiB MMIO) and BAR1 (256 I/O ports) each run three tests: "no-eventfd",
"wildcard-eventfd" and "datamatch-eventfd". Writing a test number to byte 0 of
a BAR starts that test and exposes its header there: the test number, the
access width (1), the offset and data to write, a counter of the writes the
device saw, and the test's name. For the eventfd tests the device hands the
trigger offset to KVM as an ioeventfd (any value, or only the header's data
byte), so those writes never reach the VMM; the test measures that path.
"""

from __future__ import annotations

import struct

from vmm.pci import UNMAPPED, PciDevice
from vmm.qdev import DeviceType, declare, fixed

VENDOR_REDHAT = 0x1B36
DEVICE_TEST = 0x0005
CLASS_OTHERS = 0xFF0000
MEM_SIZE = 2048                  # per half; the BAR is twice that
IO_SIZE = 128
KINDS = ("mmio", "portio")       # BAR0, BAR1
TESTS = ("no-eventfd", "wildcard-eventfd", "datamatch-eventfd")
DATA_MATCH, DATA_NO_MATCH = 0xFA, 0xCE
HEADER = "<BB2xIB3xI"            # test, width, offset, data, count; the name follows
COUNT_OFFSET = 12


class _Test:
    def __init__(self, number: int) -> None:
        kind, name = KINDS[number // len(TESTS)], TESTS[number % len(TESTS)]
        self.is_io = kind == "portio"
        self.match_data = name != "wildcard-eventfd"
        self.uses_eventfd = name != "no-eventfd"
        self.offset = (IO_SIZE if self.is_io else MEM_SIZE) + number
        self.data = DATA_MATCH if self.match_data else DATA_NO_MATCH
        self.header = bytearray(struct.pack(HEADER, number, 1, self.offset, self.data, 0)
                                + f"{kind}-{name}".encode() + b"\0")
        self.ioevent: int | None = None

    def count_write(self) -> None:
        count = struct.unpack_from("<I", self.header, COUNT_OFFSET)[0]
        struct.pack_into("<I", self.header, COUNT_OFFSET, (count + 1) & 0xFFFFFFFF)


class _Window:
    """One BAR: every access is taken a byte at a time, as QEMU's device implements it."""

    def __init__(self, device: PciTestdev, kind: int) -> None:
        self.device = device
        self.kind = kind

    def bus_read(self, offset: int, size: int) -> int:
        return int.from_bytes(bytes(self.device.read_byte(offset + i, size)
                                    for i in range(size)), "little")

    def bus_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self.device.write_byte(self.kind, offset + i, (value >> (8 * i)) & 0xFF)


class PciTestdev(PciDevice):
    def __init__(self, ioevents=None) -> None:
        super().__init__(VENDOR_REDHAT, DEVICE_TEST, CLASS_OTHERS)
        self.ioevents = ioevents
        self.tests = [_Test(i) for i in range(len(KINDS) * len(TESTS))]
        self.current: _Test | None = None
        self.bar_addresses = {0: None, 1: None}
        self.add_bar(0, 2 * MEM_SIZE, "mem32", _Window(self, 0))
        self.add_bar(1, 2 * IO_SIZE, "io", _Window(self, 1))

    def read_byte(self, offset: int, size: int) -> int:
        test = self.current
        if test is None or offset + size >= len(test.header):
            return 0
        return test.header[offset]

    def write_byte(self, kind: int, offset: int, value: int) -> None:
        if offset == 0:
            self._stop()
            if value < len(TESTS):
                self._start(self.tests[kind * len(TESTS) + value])
            return
        test = self.current
        if test is None or offset != test.offset:
            return
        if test.match_data and value != test.data:
            return
        test.count_write()

    def _start(self, test: _Test) -> None:
        struct.pack_into("<I", test.header, COUNT_OFFSET, 0)
        self.current = test
        self._arm(test)

    def _stop(self) -> None:
        if self.current is not None:
            self._disarm(self.current)
        self.current = None

    def _arm(self, test: _Test) -> None:
        base = self.bar_addresses[1 if test.is_io else 0]
        if test.uses_eventfd and base is not None and self.ioevents is not None:
            test.ioevent = self.ioevents.add(base + test.offset, 1, None,
                                             pio=test.is_io,
                                             datamatch=test.data if test.match_data else None)

    def _disarm(self, test: _Test) -> None:
        if test.ioevent is not None and self.ioevents is not None:
            self.ioevents.remove(test.ioevent)
        test.ioevent = None

    def bar_moved(self, bar, address: int) -> None:
        if bar.index in self.bar_addresses:
            self.bar_addresses[bar.index] = None if address == UNMAPPED else address
            if self.current is not None:         # the armed doorbell follows its BAR
                self._disarm(self.current)
                self._arm(self.current)

    def reset(self) -> None:
        self._stop()
        super().reset()


def _realize(board, device):
    testdev = PciTestdev(board.ioevents)
    testdev.qdev_id = device.id or ""
    board.plug_pci(testdev, device)
    return testdev


declare(DeviceType("pci-testdev", "pci-device", description="PCI Test Device",
                   realize=_realize, props=(fixed("membar", "size", 0),)))
