"""16550A UART (isa-serial): COM1-COM4 with FIFOs and interrupts.

Register behaviour follows the National Semiconductor PC16550D datasheet, the
way QEMU's serial device presents it: no OUT2 gating of the interrupt line,
modem lines idle with CTS/DSR/DCD asserted.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from vmm import savestate
from vmm.qdev import CHARDEV_DESCRIPTION, DeviceError, DeviceType, Prop, declare

# ISA defaults per index: (iobase, irq)
COM_PORTS = [(0x3F8, 4), (0x2F8, 3), (0x3E8, 4), (0x2E8, 3)]

IER_RDI = 0x01      # received data available
IER_THRI = 0x02     # transmitter holding register empty
IER_RLSI = 0x04     # receiver line status
IER_MSI = 0x08      # modem status

IIR_NO_INT = 0x01
IIR_RLSI = 0x06
IIR_RDI = 0x04
IIR_CTI = 0x0C      # character timeout
IIR_THRI = 0x02
IIR_MSI = 0x00
IIR_FIFO_ENABLED = 0xC0

LSR_DR = 0x01
LSR_OE = 0x02
LSR_BI = 0x10
LSR_THRE = 0x20
LSR_TEMT = 0x40

LCR_DLAB = 0x80
MCR_LOOP = 0x10
MSR_DEFAULT = 0xB0  # DCD | DSR | CTS

FCR_ENABLE = 0x01
FCR_CLEAR_RX = 0x02
FCR_CLEAR_TX = 0x04
FIFO_TRIGGER = (1, 4, 8, 14)
RX_BUFFER_LIMIT = 64 * 1024   # host input beyond this is dropped (overrun)


class Serial16550:
    """One UART. ``output(data)`` sends to the back end; ``set_irq(level)`` drives the line."""

    def __init__(self, output: Callable[[bytes], None], set_irq: Callable[[int], None]) -> None:
        self.output = output
        self.set_irq = set_irq
        self.reset()

    def reset(self) -> None:
        self.ier = 0
        self.lcr = 0
        self.mcr = 0
        self.lsr = LSR_THRE | LSR_TEMT
        self.msr = MSR_DEFAULT
        self.scr = 0
        self.fcr = 0
        self.divisor = 12       # 9600 baud
        self.rx: deque[int] = deque()
        self.thr_interrupt = False  # THRE pending until IIR read or THR write
        self._irq_level = -1
        self._update_irq()

    # -- host side ---------------------------------------------------------
    def receive(self, data: bytes) -> None:
        """Bytes from the back end, on their way to the guest."""
        room = RX_BUFFER_LIMIT - len(self.rx)
        if len(data) > room:
            self.lsr |= LSR_OE
            data = data[:room]
        self.rx.extend(data)
        if self.rx:
            self.lsr |= LSR_DR
        self._update_irq()

    def receive_break(self) -> None:
        """A break on the line: a zero byte with the break flag, as QEMU's 16550."""
        self.rx.append(0)
        self.lsr |= LSR_BI | LSR_DR
        self._update_irq()

    # -- guest side --------------------------------------------------------
    def bus_read(self, offset: int, size: int) -> int:
        if offset == 0:
            if self.lcr & LCR_DLAB:
                return self.divisor & 0xFF
            value = self.rx.popleft() if self.rx else 0
            if not self.rx:
                self.lsr &= ~LSR_DR
            self._update_irq()
            return value
        if offset == 1:
            return (self.divisor >> 8) if self.lcr & LCR_DLAB else self.ier
        if offset == 2:
            iir = self._pending_iir()
            if iir == IIR_THRI:
                self.thr_interrupt = False
                self._update_irq()
            return iir | (IIR_FIFO_ENABLED if self.fcr & FCR_ENABLE else 0)
        if offset == 3:
            return self.lcr
        if offset == 4:
            return self.mcr
        if offset == 5:
            lsr = self.lsr
            self.lsr &= ~(LSR_OE | LSR_BI)
            self._update_irq()
            return lsr
        if offset == 6:
            if self.mcr & MCR_LOOP:  # DTR->DSR, RTS->CTS, OUT1->RI, OUT2->DCD
                m = self.mcr
                return (((m & 0x02) << 3) | ((m & 0x01) << 5) | ((m & 0x04) << 4)
                        | ((m & 0x08) << 4))
            return self.msr
        return self.scr

    def bus_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0xFF00) | value
                return
            if self.mcr & MCR_LOOP:
                self.receive(bytes([value]))
            else:
                self.output(bytes([value]))
            # The byte leaves at once: THR is empty again and THRE re-arms.
            self.lsr |= LSR_THRE | LSR_TEMT
            self.thr_interrupt = True
            self._update_irq()
        elif offset == 1:
            if self.lcr & LCR_DLAB:
                self.divisor = (self.divisor & 0x00FF) | (value << 8)
                return
            was = self.ier
            self.ier = value & 0x0F
            if self.ier & IER_THRI and not was & IER_THRI and self.lsr & LSR_THRE:
                self.thr_interrupt = True
            self._update_irq()
        elif offset == 2:
            if value & FCR_CLEAR_RX:
                self.rx.clear()
                self.lsr &= ~LSR_DR
            self.fcr = value & 0xC9
            self._update_irq()
        elif offset == 3:
            self.lcr = value
        elif offset == 4:
            self.mcr = value & 0x1F
        elif offset == 7:
            self.scr = value

    # -- migration -----------------------------------------------------------
    STATE = ("ier", "lcr", "mcr", "lsr", "msr", "scr", "fcr", "divisor", "thr_interrupt")

    def save_state(self) -> dict:
        return {**savestate.save_fields(self, self.STATE), "rx": bytes(self.rx)}

    def load_state(self, state: dict) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("rx"), bytes):
            raise savestate.StateError("isa-serial.rx: saved value does not fit this device")
        savestate.load_fields(self, self.STATE, state, "isa-serial")
        self.rx = deque(state["rx"][:RX_BUFFER_LIMIT])
        self._irq_level = -1
        self._update_irq()

    def _pending_iir(self) -> int:
        if self.ier & IER_RLSI and self.lsr & (LSR_OE | LSR_BI):
            return IIR_RLSI
        if self.ier & IER_RDI and self.rx:
            if self.fcr & FCR_ENABLE and len(self.rx) < FIFO_TRIGGER[self.fcr >> 6]:
                return IIR_CTI
            return IIR_RDI
        if self.ier & IER_THRI and self.thr_interrupt:
            return IIR_THRI
        return IIR_NO_INT

    def _update_irq(self) -> None:
        level = 0 if self._pending_iir() == IIR_NO_INT else 1
        if level != self._irq_level:
            self._irq_level = level
            self.set_irq(level)


# -- the model, as QEMU declares it ---------------------------------------
UNSET = 0xFFFFFFFF


def _realize(board, device):
    """A 16550 at COMn's port and IRQ (or those given), its chardev attached."""
    props = device.props
    used = {d.props["index"] for d in board.devices
            if d.driver == "isa-serial" and d is not device and d.obj is not None}
    index = props["index"]
    if index == UNSET:
        index = next((i for i in range(len(COM_PORTS)) if i not in used), -1)
        if index < 0:
            raise DeviceError("Max. supported number of ISA serial ports is 4.")
    elif index >= len(COM_PORTS) or index in used:
        raise DeviceError(f"Invalid serial port index {index}")
    default_base, default_irq = COM_PORTS[index]
    iobase = default_base if props["iobase"] == UNSET else props["iobase"]
    irq = default_irq if props["irq"] == UNSET else props["irq"]
    chardev = board.chardevs.get(props["chardev"]) if props["chardev"] else None
    uart = Serial16550(chardev.write if chardev else (lambda data: None),
                       lambda level: board.set_irq(irq, level))
    board.pio.map(iobase, 8, uart)
    if chardev is not None:
        chardev.attach(lambda data: board.host_input(uart.receive, data))
        chardev.on_break = lambda: board.host_input(lambda _data: uart.receive_break(), b"")
    props.update(index=index, iobase=iobase, irq=irq)
    return uart


declare(DeviceType("isa-serial", "isa-device", category="Input", realize=_realize, props=(
    Prop("index", "uint32", UNSET), Prop("iobase", "uint32", UNSET), Prop("irq", "uint32", UNSET),
    Prop("chardev", "str", None, CHARDEV_DESCRIPTION, qdev=False, kind="chardev",
         owner="serial"),
    Prop("baudbase", "uint32", 115200, qdev=False, honoured=False),
    Prop("wakeup", "bool", False, qdev=False, honoured=False),
    Prop("serial", "child<serial>", qdev=False, writable=False))))
