"""isa-debug-exit: a write of V ends the VMM with exit status (V << 1) | 1, as QEMU's."""

from __future__ import annotations

from collections.abc import Callable

from vmm.qdev import DeviceType, Prop, declare
from vmm.savestate import NoState


class IsaDebugExit(NoState):
    def __init__(self, request_exit: Callable[[int], None]) -> None:
        self.request_exit = request_exit

    def bus_read(self, offset: int, size: int) -> int:
        return (1 << (8 * size)) - 1

    def bus_write(self, offset: int, size: int, value: int) -> None:
        self.request_exit(((value << 1) | 1) & 0xFF)


def _realize(board, device):
    exit_port = IsaDebugExit(board.request_exit)
    board.pio.map(device.props["iobase"], device.props["iosize"], exit_port)
    return exit_port


declare(DeviceType("isa-debug-exit", "isa-device", realize=_realize, props=(
    Prop("iobase", "uint32", 0x501), Prop("iosize", "uint32", 2))))
