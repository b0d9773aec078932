"""isa-debugcon: Bochs's debug console port, as QEMU's. Each byte the guest writes
to the port (0xe9) goes to its chardev; a read returns ``readback`` (0xe9), by
which a guest tells that the console is there."""

from __future__ import annotations

from vmm.qdev import CHARDEV_DESCRIPTION, DeviceType, Prop, declare
from vmm.savestate import NoState


class DebugConsole(NoState):
    mtree_name = "isa-debugcon"

    def __init__(self, output, readback: int) -> None:
        self.output = output             # a chardev's write, or None
        self.readback = readback

    def bus_read(self, offset: int, size: int) -> int:
        return self.readback & ((1 << (8 * size)) - 1)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if self.output is not None:
            self.output(bytes([value & 0xFF]))


def _realize(board, device):
    props = device.props
    chardev = board.chardevs.get(props["chardev"]) if props["chardev"] else None
    console = DebugConsole(chardev.write if chardev else None, props["readback"])
    board.pio.map(props["iobase"], 1, console)
    return console


declare(DeviceType("isa-debugcon", "isa-device", realize=_realize, props=(
    Prop("iobase", "uint32", 0xE9),
    Prop("chardev", "str", None, CHARDEV_DESCRIPTION, kind="chardev"),
    Prop("readback", "uint32", 0xE9))))
