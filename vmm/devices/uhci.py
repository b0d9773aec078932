"""piix3-usb-uhci: the PIIX3's USB 1.1 host controller (8086:7020), with two root
ports and nothing plugged into them (kvmkit has no USB devices yet).

It is here because libvirt gives every pc guest one (its default <controller
type='usb'>). The registers (UHCI design guide, section 2) behave as on real
hardware: the controller runs and halts, counts frames (one per millisecond
while running), resets, and reports both ports empty, so a guest's uhci-hcd
binds to it and finds no devices. Its frame list is never walked: with no
device on a port, no transfer could complete anyway.
"""

from __future__ import annotations

import struct
import time

from vmm import savestate
from vmm.pci import PciDevice
from vmm.qdev import DeviceType, Prop, declare

VENDOR_INTEL, DEVICE_PIIX3_UHCI = 0x8086, 0x7020
CLASS_USB_UHCI = 0x0C0300
INTERRUPT_PIN_D = 4
IO_SIZE = 32
SBRN = 0x60                     # serial bus release number: USB 1.0
USBLEGSUP = 0xC0                # legacy keyboard/mouse support, 0x2000 at reset

USBCMD, USBSTS, USBINTR, FRNUM, FRBASEADD, SOFMOD, PORTSC1, PORTSC2 = (
    0x00, 0x02, 0x04, 0x06, 0x08, 0x0C, 0x10, 0x12)
CMD_RS, CMD_HCRESET, CMD_GRESET, CMD_MAXP = 1 << 0, 1 << 1, 1 << 2, 1 << 7
STS_HCHALTED = 1 << 5
STS_W1C = 0x1F                  # USBINT, ERROR, RD, HSE, HCPE: write 1 to clear
PORT_RESERVED_ONE = 1 << 7      # reads as 1: how drivers count the root ports
PORT_W1C = (1 << 1) | (1 << 3)  # connect and enable status change
PORT_WRITABLE = (1 << 2) | (1 << 6) | (1 << 9) | (1 << 12)   # PED, RD, PR, SUSP
FRAME_MASK = 0x7FF


class PiixUhci(PciDevice):
    def __init__(self) -> None:
        super().__init__(VENDOR_INTEL, DEVICE_PIIX3_UHCI, CLASS_USB_UHCI,
                         interrupt_pin=INTERRUPT_PIN_D)
        self.config[SBRN] = 0x10
        self._set_wmask(USBLEGSUP, 2, 0xFFFF)
        self.add_bar(4, IO_SIZE, "io", self)
        self._reset_registers()

    def _reset_registers(self) -> None:
        struct.pack_into("<H", self.config, USBLEGSUP, 0x2000)
        self.cmd = 0
        self.usbsts = STS_HCHALTED
        self.intr = 0
        self.frame_base = 0
        self.sof_modify = 0x40
        self.ports = [0, 0]
        self._frame_at_start = 0
        self._started = 0.0

    STATE = ("cmd", "usbsts", "intr", "frame_base", "sof_modify", "ports")

    def save_state(self) -> dict:
        return {**super().save_state(), "frame": self._frame()}

    def load_state(self, state: dict) -> None:
        frame = savestate.int_in(state.get("frame"), 0, FRAME_MASK, "uhci.frame") \
            if isinstance(state, dict) else None
        super().load_state(state)
        self._frame_at_start, self._started = frame, time.monotonic()

    def _frame(self) -> int:
        if not self.cmd & CMD_RS:
            return self._frame_at_start
        elapsed_ms = int((time.monotonic() - self._started) * 1000)
        return (self._frame_at_start + elapsed_ms) & FRAME_MASK

    def bus_read(self, offset: int, size: int) -> int:
        if size == 4:
            return self._read16(offset) | self._read16(offset + 2) << 16
        word = self._read16(offset & ~1)
        return (word >> (8 * (offset & 1))) & 0xFF if size == 1 else word

    def _read16(self, offset: int) -> int:
        if offset == USBCMD:
            return self.cmd
        if offset == USBSTS:
            return self.usbsts
        if offset == USBINTR:
            return self.intr
        if offset == FRNUM:
            return self._frame()
        if offset == FRBASEADD:
            return self.frame_base & 0xFFFF
        if offset == FRBASEADD + 2:
            return self.frame_base >> 16
        if offset == SOFMOD:
            return self.sof_modify
        if offset in (PORTSC1, PORTSC2):
            return self.ports[(offset - PORTSC1) // 2] | PORT_RESERVED_ONE
        return 0             # reserved: bit 7 clear, so drivers count two ports

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if size == 4:
            self._write16(offset, value & 0xFFFF)
            self._write16(offset + 2, value >> 16)
        elif offset == SOFMOD and size == 1:
            self.sof_modify = value & 0x7F
        else:
            self._write16(offset, value & 0xFFFF)

    def _write16(self, offset: int, value: int) -> None:
        if offset == USBCMD:
            self._command(value)
        elif offset == USBSTS:
            self.usbsts &= ~(value & STS_W1C)
        elif offset == USBINTR:
            self.intr = value & 0xF
        elif offset == FRNUM:
            if not self.cmd & CMD_RS:          # writable only while halted
                self._frame_at_start = value & FRAME_MASK
        elif offset == FRBASEADD:
            self.frame_base = (self.frame_base & 0xFFFF0000) | (value & 0xF000)
        elif offset == FRBASEADD + 2:
            self.frame_base = (self.frame_base & 0xFFFF) | (value << 16)
        elif offset == SOFMOD:
            self.sof_modify = value & 0x7F
        elif offset in (PORTSC1, PORTSC2):
            index = (offset - PORTSC1) // 2
            port = self.ports[index] & ~(value & PORT_W1C)
            # nothing is connected, so the port never stays enabled
            self.ports[index] = (port & ~PORT_WRITABLE) | (value & PORT_WRITABLE & ~(1 << 2))

    def _command(self, value: int) -> None:
        if value & (CMD_HCRESET | CMD_GRESET):
            self._reset_registers()
            if value & CMD_GRESET:              # global reset stays asserted until cleared
                self.cmd = CMD_GRESET
            return
        was_running = bool(self.cmd & CMD_RS)
        if was_running and not value & CMD_RS:
            self._frame_at_start = self._frame()
        elif value & CMD_RS and not was_running:
            self._started = time.monotonic()
        self.cmd = value & 0xFF
        self.usbsts = (self.usbsts & ~STS_HCHALTED) | (0 if value & CMD_RS else STS_HCHALTED)

    def reset(self) -> None:
        self._reset_registers()
        super().reset()


def _realize(board, device):
    uhci = PiixUhci()
    uhci.qdev_id = device.id or ""
    board.plug_pci(uhci, device)
    return uhci


declare(DeviceType("pci-uhci-usb", "pci-device", abstract=True))
declare(DeviceType("piix3-usb-uhci", "pci-uhci-usb", category="USB", realize=_realize,
                   buses=(("usb-bus.0", "usb-bus"),), props=(
                       Prop("bandwidth", "uint32", 1280, honoured=False),
                       Prop("maxframes", "uint32", 128, honoured=False))))
