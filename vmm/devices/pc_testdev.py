"""pc-testdev: QEMU's ISA test device, as kvm-unit-tests drives it.

* 0xe0 (4 ports): a 32-bit scratch register, readable and writable at any width;
  0xe8 (4 ports) is the same register taken a byte at a time;
* 0xe4: a 32-bit write of a guest-physical address takes that page's host
  mapping away and back, so KVM must fault it in again;
* 0x2000 + N (24 ports): a byte written sets ISA IRQ line N to the byte's truth (a
  wider write, one line per byte);
* 0xff000000 (64 KiB of MMIO): plain scratch memory.
"""

from __future__ import annotations

from collections.abc import Callable

from vmm import savestate
from vmm.qdev import DeviceType, declare

SCRATCH_PORT = 0xE0
FLUSH_PORT = 0xE4
SCRATCH_BYTE_PORT = 0xE8
IRQ_PORT = 0x2000
IRQ_LINES = 24
IOMEM_ADDR = 0xFF000000
IOMEM_LEN = 0x10000


class ScratchRegister:
    """0xe0 and 0xe8: one 32-bit value; an access at offset o of width w is bytes o..o+w."""

    def __init__(self) -> None:
        self.value = 0

    def bus_read(self, offset: int, size: int) -> int:
        value = 0
        for i in range(size):
            byte = (offset + i) & 3
            value |= ((self.value >> (8 * byte)) & 0xFF) << (8 * i)
        return value

    def bus_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            byte = (offset + i) & 3
            self.value = (self.value & ~(0xFF << (8 * byte))) | (((value >> (8 * i)) & 0xFF)
                                                                  << (8 * byte))


class FlushPage:
    def __init__(self, flush: Callable[[int], None]) -> None:
        self.flush = flush

    def bus_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            self.flush(value & ~0xFFF)


class IrqLines:
    def __init__(self, set_irq: Callable[[int, int], None]) -> None:
        self.set_irq = set_irq

    def bus_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def bus_write(self, offset: int, size: int, value: int) -> None:
        # QEMU takes these ports a byte at a time: a wider write sets one line per byte
        for i in range(size):
            if offset + i < IRQ_LINES:
                self.set_irq(offset + i, 1 if (value >> (8 * i)) & 0xFF else 0)


class IoMem:
    def __init__(self) -> None:
        self.data = bytearray(IOMEM_LEN)

    def bus_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.data[offset:offset + size].ljust(size, b"\0"), "little")

    def bus_write(self, offset: int, size: int, value: int) -> None:
        end = min(offset + size, IOMEM_LEN)
        self.data[offset:end] = value.to_bytes(size, "little")[:end - offset]


class PcTestdev:
    def __init__(self, set_irq: Callable[[int, int], None],
                 flush_page: Callable[[int], None]) -> None:
        self.scratch = ScratchRegister()
        self.regions = [(SCRATCH_PORT, 4, self.scratch), (FLUSH_PORT, 4, FlushPage(flush_page)),
                        (SCRATCH_BYTE_PORT, 4, self.scratch),
                        (IRQ_PORT, IRQ_LINES, IrqLines(set_irq))]
        self.iomem = IoMem()

    def save_state(self) -> dict:
        return {"scratch": self.scratch.value, "iomem": bytes(self.iomem.data)}

    def load_state(self, state: dict) -> None:
        savestate.check_fields(self, (), state, "pc-testdev")
        scratch = savestate.int_in(state.get("scratch"), 0, 0xFFFFFFFF, "pc-testdev.scratch")
        savestate.check_fields(self.iomem, ("data",), {"data": state.get("iomem")},
                               "pc-testdev.iomem")
        self.scratch.value = scratch
        self.iomem.data[:] = state["iomem"]

    def map(self, pio, mmio) -> None:
        for port, length, device in self.regions:
            pio.map(port, length, device)
        mmio.map(IOMEM_ADDR, IOMEM_LEN, self.iomem)


def _realize(board, device):
    testdev = PcTestdev(board.set_irq, board.memory.flush_page)
    testdev.map(board.pio, board.mmio)
    return testdev


declare(DeviceType("pc-testdev", "isa-device", realize=_realize))
