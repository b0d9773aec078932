"""piix3-usb-uhci: the PIIX3's USB 1.1 host controller (8086:7020), with two root
ports for the USB devices behind it (vmm/devices/usb_hid.py).

The registers follow the UHCI design guide (section 2): the controller runs and
halts, counts frames (one per millisecond while running), resets, and shows on
each port whether a device is connected, with the change, enable and reset bits
a driver's hub code walks through. While it runs, a timer walks the schedule the
guest built: the frame list entry of each frame that passed, its transfer
descriptors and the queue heads' element lists, depth first when a TD asks for
it. A TD addressed to a device is executed on it (SETUP, IN, OUT on the control
pipe, IN on the interrupt pipe; a NAK leaves it active for a later frame), its
status and actual length are written back, and an IOC or short packet raises the
controller's interrupt (INTx D) as USBINTR allows.
"""

from __future__ import annotations

import struct
import time

from vmm import savestate
from vmm.pci import PciDevice
from vmm.qdev import DeviceError, DeviceType, Prop, declare

VENDOR_INTEL, DEVICE_PIIX3_UHCI = 0x8086, 0x7020
CLASS_USB_UHCI = 0x0C0300
INTERRUPT_PIN_D = 4
IO_SIZE = 32
SBRN = 0x60                     # serial bus release number: USB 1.0
USBLEGSUP = 0xC0                # legacy keyboard/mouse support, 0x2000 at reset
ROOT_PORTS = 2

USBCMD, USBSTS, USBINTR, FRNUM, FRBASEADD, SOFMOD, PORTSC1, PORTSC2 = (
    0x00, 0x02, 0x04, 0x06, 0x08, 0x0C, 0x10, 0x12)
CMD_RS, CMD_HCRESET, CMD_GRESET, CMD_MAXP = 1 << 0, 1 << 1, 1 << 2, 1 << 7
STS_USBINT, STS_ERROR, STS_HCHALTED = 1 << 0, 1 << 1, 1 << 5
STS_W1C = 0x1F                  # USBINT, ERROR, RD, HSE, HCPE: write 1 to clear
INTR_TIMEOUT, INTR_RESUME, INTR_IOC, INTR_SHORT = 1, 2, 4, 8
PORT_CONNECTED, PORT_CONNECT_CHANGE = 1 << 0, 1 << 1
PORT_ENABLED, PORT_ENABLE_CHANGE = 1 << 2, 1 << 3
PORT_RESERVED_ONE = 1 << 7      # reads as 1: how drivers count the root ports
PORT_RESET, PORT_SUSPEND = 1 << 9, 1 << 12
PORT_W1C = PORT_CONNECT_CHANGE | PORT_ENABLE_CHANGE
PORT_WRITABLE = PORT_ENABLED | (1 << 6) | PORT_RESET | PORT_SUSPEND
FRAME_MASK = 0x7FF

LINK_TERMINATE, LINK_QH, LINK_DEPTH = 1, 2, 4
TD_ACTIVE, TD_STALLED, TD_NAK, TD_CRC_TIMEOUT = 1 << 23, 1 << 22, 1 << 19, 1 << 18
TD_IOC, TD_SPD = 1 << 24, 1 << 29
PID_SETUP, PID_IN, PID_OUT = 0x2D, 0x69, 0xE1
TICK_S = 0.004                  # the schedule is walked every few frames
MAX_LINKS = 512                 # links followed per frame (a guest's loop ends here)


class PiixUhci(PciDevice):
    def __init__(self, memory=None, timer_factory=None) -> None:
        super().__init__(VENDOR_INTEL, DEVICE_PIIX3_UHCI, CLASS_USB_UHCI,
                         interrupt_pin=INTERRUPT_PIN_D)
        self.memory = memory
        self.config[SBRN] = 0x10
        self._set_wmask(USBLEGSUP, 2, 0xFFFF)
        self.add_bar(4, IO_SIZE, "io", self)
        self.devices: list = [None] * ROOT_PORTS
        self._timer = timer_factory(self._tick) if timer_factory else None
        self._reset_registers()

    def _reset_registers(self) -> None:
        struct.pack_into("<H", self.config, USBLEGSUP, 0x2000)
        self.cmd = 0
        self.usbsts = STS_HCHALTED
        self.intr = 0
        self.frame_base = 0
        self.sof_modify = 0x40
        self.ports = [PORT_CONNECTED | PORT_CONNECT_CHANGE if device else 0
                      for device in self.devices]
        self._frame_at_start = 0
        self._started = 0.0
        self._walked = 0                      # frames walked since the controller started
        for device in self.devices:
            if device is not None:
                device.reset()

    STATE = ("cmd", "usbsts", "intr", "frame_base", "sof_modify", "ports")

    def save_state(self) -> dict:
        return {**super().save_state(), "frame": self._frame(),
                "devices": [d.save_state() if d else None for d in self.devices]}

    def load_state(self, state: dict) -> None:
        frame = savestate.int_in(state.get("frame"), 0, FRAME_MASK, "uhci.frame") \
            if isinstance(state, dict) else None
        super().load_state(state)
        for device, saved in zip(self.devices, state.get("devices") or []):
            if device is not None and saved is not None:
                device.load_state(saved)
        self._frame_at_start, self._started, self._walked = frame, time.monotonic(), 0
        self._arm()

    # -- devices on the root ports ---------------------------------------------
    def attach(self, device, port: str | None) -> None:
        if port is not None:
            if not port.isdigit() or not 1 <= int(port) <= ROOT_PORTS:
                raise DeviceError(f"tried to attach usb device {device.product} to "
                                  f"non-existent port {port}")
            index = int(port) - 1
            if self.devices[index] is not None:
                raise DeviceError(f"usb port {port} (bus usb-bus.0) not found (in use?)")
        else:
            free = [i for i, d in enumerate(self.devices) if d is None]
            if not free:
                raise DeviceError("no free USB ports: kvmkit's root ports are all in use "
                                  "(it has no usb-hub)")
            index = free[0]
        self.devices[index] = device
        device.port = index + 1
        self.ports[index] = PORT_CONNECTED | PORT_CONNECT_CHANGE
        self._resume_detect()

    def detach(self, device) -> None:
        for index, present in enumerate(self.devices):
            if present is device:
                self.devices[index] = None
                self.ports[index] = PORT_CONNECT_CHANGE | (self.ports[index] & PORT_ENABLED
                                                           and PORT_ENABLE_CHANGE)
                self._resume_detect()

    def _resume_detect(self) -> None:
        if self.intr & INTR_RESUME:
            self.usbsts |= 1 << 2
            self._update_irq()

    # -- registers ---------------------------------------------------------------
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
            self._update_irq()
        elif offset == USBINTR:
            self.intr = value & 0xF
            self._update_irq()
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
            self._port_write((offset - PORTSC1) // 2, value)

    def _port_write(self, index: int, value: int) -> None:
        port = self.ports[index] & ~(value & PORT_W1C)
        device = self.devices[index]
        if port & PORT_RESET and not value & PORT_RESET and device is not None:
            device.reset()                         # the end of a port reset
        writable = value & PORT_WRITABLE
        if device is None:
            writable &= ~PORT_ENABLED              # an empty port never stays enabled
        self.ports[index] = (port & ~PORT_WRITABLE) | writable

    def _command(self, value: int) -> None:
        if value & (CMD_HCRESET | CMD_GRESET):
            self._reset_registers()
            if value & CMD_GRESET:              # global reset stays asserted until cleared
                self.cmd = CMD_GRESET
            self._update_irq()
            return
        was_running = bool(self.cmd & CMD_RS)
        if was_running and not value & CMD_RS:
            self._frame_at_start = self._frame()
        elif value & CMD_RS and not was_running:
            self._started = time.monotonic()
            self._walked = 0
        self.cmd = value & 0xFF
        self.usbsts = (self.usbsts & ~STS_HCHALTED) | (0 if value & CMD_RS else STS_HCHALTED)
        self._arm()

    def _update_irq(self) -> None:
        wanted = bool(self.usbsts & (STS_USBINT | STS_ERROR) and
                      self.intr & (INTR_IOC | INTR_SHORT | INTR_TIMEOUT) or
                      self.usbsts & (1 << 2) and self.intr & INTR_RESUME)
        self.set_intx(int(wanted))

    def reset(self) -> None:
        self._reset_registers()
        super().reset()

    # -- the schedule ------------------------------------------------------------
    def _arm(self) -> None:
        if self._timer is None:
            return
        if self.cmd & CMD_RS and any(self.devices):
            self._timer.arm(TICK_S)
        else:
            self._timer.cancel()

    def _tick(self) -> None:
        """Walks the frame list entry of every frame since the last tick."""
        if not self.cmd & CMD_RS or self.memory is None:
            return
        elapsed = int((time.monotonic() - self._started) * 1000)
        frames = min(elapsed - self._walked, 64)
        for step in range(frames):
            frame = (self._frame_at_start + self._walked + step) & FRAME_MASK
            try:
                self._walk_frame(frame)
            except ValueError:               # a pointer outside RAM: host system error
                self.usbsts |= 1 << 3 | STS_HCHALTED
                self.cmd &= ~CMD_RS
                self._update_irq()
                return
        self._walked = elapsed
        self._update_irq()
        self._arm()

    def _read32(self, addr: int) -> int:
        return struct.unpack("<I", self.memory.read(addr, 4))[0]

    def _walk_frame(self, frame: int) -> None:
        link = self._read32(self.frame_base + 4 * (frame & 0x3FF))
        for _ in range(MAX_LINKS):
            if link & LINK_TERMINATE:
                return
            addr = link & ~0xF
            if link & LINK_QH:
                link = self._walk_queue(addr)
            else:
                _done, link = self._run_td(addr)

    def _walk_queue(self, qh: int) -> int:
        """A queue head: runs its element TDs until one is not done; its next QH."""
        head = self._read32(qh)
        for _ in range(MAX_LINKS):
            element = self._read32(qh + 4)
            if element & LINK_TERMINATE:
                break
            if element & LINK_QH:                    # a queue inside a queue
                self._walk_queue(element & ~0xF)
                break
            td = element & ~0xF
            done, next_link = self._run_td(td)
            if not done:
                break
            self.memory.write(qh + 4, struct.pack("<I", next_link))
            if not next_link & LINK_DEPTH:
                break
        return head

    def _run_td(self, td: int) -> tuple[bool, int]:
        """Executes one TD; (whether it completed, its link pointer)."""
        link, status, token, buffer = struct.unpack("<IIII", self.memory.read(td, 16))
        if not status & TD_ACTIVE:
            return True, link
        pid, address, endpoint = token & 0xFF, token >> 8 & 0x7F, token >> 15 & 0xF
        max_length = ((token >> 21) + 1) & 0x7FF
        device = next((d for d, port in zip(self.devices, self.ports)
                       if d is not None and port & PORT_ENABLED and d.address == address),
                      None)
        data = b""
        if device is None:
            result = "timeout"
        elif pid == PID_SETUP and endpoint == 0:
            result = device.setup(self.memory.read(buffer, 8))
            data = bytes(8)
        elif pid == PID_IN:
            result, data = device.control_in(max_length) if endpoint == 0 else \
                device.interrupt_in(max_length) if endpoint == 1 else ("stall", b"")
            if data:
                self.memory.write(buffer, data)
        elif pid == PID_OUT:
            payload = self.memory.read(buffer, max_length) if max_length else b""
            result = device.control_out(payload) if endpoint == 0 else "stall"
            data = payload
        else:
            result = "stall"
        if result == "nak":
            self.memory.write(td + 4, struct.pack("<I", status | TD_NAK))
            return False, link
        status &= ~(TD_ACTIVE | TD_NAK | 0x7FF)
        if result == "stall":
            status |= TD_STALLED
        elif result == "timeout":
            status |= TD_CRC_TIMEOUT
        status |= (len(data) - 1) & 0x7FF
        self.memory.write(td + 4, struct.pack("<I", status))
        if result != "ack":
            self.usbsts |= STS_ERROR
            return False, link
        if status & TD_IOC:
            self.usbsts |= STS_USBINT
        if pid == PID_IN and len(data) < max_length and status & TD_SPD:
            self.usbsts |= STS_USBINT                # a short packet stops the queue
            return False, link
        return True, link

    def release(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        super().release()


def _realize(board, device):
    uhci = PiixUhci(board.memory, board.device_timer)
    uhci.qdev_id = device.id or ""
    board.plug_pci(uhci, device)
    return uhci


declare(DeviceType("pci-uhci-usb", "pci-device", abstract=True))
declare(DeviceType("piix3-usb-uhci", "pci-uhci-usb", category="USB", realize=_realize,
                   buses=(("{id}.0|usb-bus.0", "usb-bus"),), props=(
                       Prop("bandwidth", "uint32", 1280, honoured=False),
                       Prop("maxframes", "uint32", 128, honoured=False))))
