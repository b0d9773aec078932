"""i8042 keyboard controller with its PS/2 keyboard and PS/2 mouse (the AUX port).

The controller: status and configuration byte, the commands OSes use (self tests,
enabling and disabling either port, the output port with its reset line, writes
to the mouse through 0xD4, and pulse-reset 0xFE, which is how many guests
reboot). Bytes reach the guest one at a time through the output buffer, raising
IRQ 1 (keyboard) or IRQ 12 (mouse) while they wait, as the configuration allows.

The keyboard answers the PS/2 commands (reset, identify, LEDs, scancode set,
typematic, enable/disable) and sends keys in scancode set 1, what a guest reads
with the controller's translation on (the default everywhere). The mouse speaks
the PS/2 protocol with IntelliMouse wheel detection (sample rates 200, 100, 80),
stream and remote modes, and reports movement in 3- or 4-byte packets.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from vmm import savestate
from vmm.input import SET1, InputEvent, set2_bytes
from vmm.qdev import DeviceType, declare, fixed

DATA_PORT = 0x60
COMMAND_PORT = 0x64
KBD_IRQ, AUX_IRQ = 1, 12

STATUS_OBF = 0x01
STATUS_SYS = 0x04
STATUS_CMD = 0x08
STATUS_KEYLOCK = 0x10
STATUS_AUX_OBF = 0x20

CONFIG_KBD_INT, CONFIG_AUX_INT, CONFIG_SYS = 0x01, 0x02, 0x04
CONFIG_KBD_DISABLED, CONFIG_AUX_DISABLED, CONFIG_TRANSLATE = 0x10, 0x20, 0x40

CMD_READ_CONFIG = 0x20
CMD_WRITE_CONFIG = 0x60
CMD_DISABLE_AUX, CMD_ENABLE_AUX, CMD_TEST_AUX = 0xA7, 0xA8, 0xA9
CMD_SELF_TEST = 0xAA
CMD_INTERFACE_TEST = 0xAB
CMD_DISABLE_KBD, CMD_ENABLE_KBD = 0xAD, 0xAE
CMD_READ_INPUT = 0xC0
CMD_READ_OUTPUT = 0xD0
CMD_WRITE_OUTPUT = 0xD1
CMD_WRITE_KBD_OUTPUT, CMD_WRITE_AUX_OUTPUT, CMD_WRITE_AUX = 0xD2, 0xD3, 0xD4
CMD_PULSE_RESET = 0xFE

ACK, RESEND = 0xFA, 0xFE
OUTPUT_PORT = 0xCF                # reset line and A20 high, clock and data lines idle
TRANSLATED_SET = {1: 0x43, 2: 0x41, 3: 0x3F}      # a scancode set's number, translated
QUEUE_LIMIT = 16                  # event bytes a device holds unread (QEMU's PS/2 queue)
REPLY_HEADROOM = 8                # more room for command replies, as QEMU keeps


class _PS2Device:
    """What the keyboard and the mouse share: the bytes queued for the controller."""
    held = 0                       # 1 while the controller holds one of our bytes unread

    def __init__(self) -> None:
        self.queue: deque[int] = deque()
        self.reset()

    def reset(self) -> None:
        self.queue = deque()

    def reply(self, *data: int) -> None:
        """Command replies: they may use the headroom."""
        if len(self.queue) + len(data) <= QUEUE_LIMIT + REPLY_HEADROOM:
            self.queue.extend(data)


class PS2Keyboard(_PS2Device):
    def reset(self) -> None:
        super().reset()
        self.scanning = True
        self.scancode_set = 2
        self.leds = 0
        self.pending: int | None = None          # a command waiting for its argument

    def _event(self, *data: int) -> None:
        """Key bytes: each dropped once the queue is full, as QEMU drops them."""
        for byte in data:
            if len(self.queue) + self.held < QUEUE_LIMIT:
                self.queue.append(byte)

    def command(self, value: int, translated: bool = True) -> None:
        pending, self.pending = self.pending, None
        if pending == 0xED:
            self.leds = value & 7
            self.reply(ACK)
        elif pending == 0xF0:
            if value == 0:
                self.reply(ACK, TRANSLATED_SET[self.scancode_set] if translated
                          else self.scancode_set)
            else:
                if value in (1, 2, 3):
                    self.scancode_set = value
                self.reply(ACK)
        elif pending == 0xF3:
            self.reply(ACK)
        elif value in (0xED, 0xF0, 0xF3):
            self.pending = value
            self.reply(ACK)
        elif value == 0xEE:
            self.reply(0xEE)
        elif value == 0xF2:
            self.reply(ACK, 0xAB, 0x41 if translated else 0x83)   # the ID, as translated
        elif value == 0xF4:
            self.scanning = True
            self.reply(ACK)
        elif value in (0xF5, 0xF6):
            self.scanning = value == 0xF6
            self.reply(ACK)
        elif value == 0xFF:
            self.reset()
            self.reply(ACK, 0xAA)
        else:
            self.reply(RESEND)

    def keys(self, events: list[InputEvent], translated: bool = True) -> None:
        """Keys in set 1 (what the controller's translation makes of the keyboard's
        set 2, or set 1 asked for), else in set 2."""
        if not self.scanning:
            return
        for event in events:
            if not translated and self.scancode_set != 1:
                self._event(*set2_bytes(event.key, bool(event.value)))
                continue
            code = SET1.get(event.key)
            if code is None:
                continue
            release = 0 if event.value else 0x80
            if code == 0xE046:                                 # pause: make only
                if event.value:
                    self._event(0xE1, 0x1D, 0x45, 0xE1, 0x9D, 0xC5)
            elif code == 0xE037:                               # print screen: two codes
                self._event(*((0xE0, 0x2A, 0xE0, 0x37) if event.value else
                            (0xE0, 0xB7, 0xE0, 0xAA)))
            elif code > 0xFF:
                self._event(0xE0, (code & 0xFF) | release)
            else:
                self._event(code | release)

    def save_state(self) -> dict:
        return {"queue": bytes(self.queue), "scanning": self.scanning,
                "set": self.scancode_set, "leds": self.leds, "pending": self.pending}

    def load_state(self, state: dict) -> None:
        self.queue = deque(state["queue"])
        self.scanning, self.scancode_set = state["scanning"], state["set"]
        self.leds, self.pending = state["leds"], state["pending"]


class PS2Mouse(_PS2Device):
    def reset(self) -> None:
        super().reset()
        self.enabled = False
        self.remote = False
        self.wrap = False
        self.sample_rate, self.resolution, self.scaling = 0, 0, 1   # QEMU's after a reset
        self.device_id = 0
        self.rates: list[int] = []                # the last sample rates set (wheel knock)
        self.buttons = 0
        self.dx = self.dy = self.dz = 0
        self.pending: int | None = None

    def command(self, value: int) -> None:
        pending, self.pending = self.pending, None
        if pending == 0xF3:
            self.sample_rate = value
            self.rates = (self.rates + [value])[-3:]
            if self.rates == [200, 100, 80]:
                self.device_id = 3                   # IntelliMouse: a wheel byte follows
            self.reply(ACK)
            return
        if pending == 0xE8:
            self.resolution = value & 3
            self.reply(ACK)
            return
        if self.wrap and value not in (0xEC, 0xFF):
            self.reply(value)
            return
        if value in (0xF3, 0xE8):
            self.pending = value
            self.reply(ACK)
        elif value in (0xE6, 0xE7):
            self.scaling = 1 if value == 0xE6 else 2
            self.reply(ACK)
        elif value == 0xE9:
            status = (0x40 if self.remote else 0) | (0x20 if self.enabled else 0) | \
                (0x10 if self.scaling == 2 else 0) | (self.buttons & 7)
            self.reply(ACK, status, self.resolution, self.sample_rate)
        elif value in (0xEA, 0xF0):
            self.remote = value == 0xF0
            self.reply(ACK)
        elif value == 0xEB:
            self.reply(ACK)
            self._packet()
        elif value in (0xEC, 0xEE):
            self.wrap = value == 0xEE
            self.reply(ACK)
        elif value == 0xF2:
            self.reply(ACK, self.device_id)
        elif value in (0xF4, 0xF5):
            self.enabled = value == 0xF4
            self.reply(ACK)
        elif value == 0xF6:
            self.sample_rate, self.resolution, self.scaling = 100, 2, 1
            self.reply(ACK)
        elif value == 0xFF:
            self.reset()
            self.sample_rate, self.resolution = 100, 2
            self.reply(ACK, 0xAA, 0x00)
        else:
            self.reply(RESEND)

    def pointer(self, events: list[InputEvent]) -> None:
        bits = {"left": 1, "right": 2, "middle": 4}
        for event in events:
            if event.kind == "rel":
                if event.axis == "x":
                    self.dx += event.value
                else:
                    self.dy -= event.value                   # PS/2's y grows upwards
            elif event.kind == "btn" and event.button in bits:
                bit = bits[event.button]
                self.buttons = self.buttons | bit if event.value else self.buttons & ~bit
            elif event.kind == "btn" and event.button in ("wheel-up", "wheel-down") \
                    and event.value:
                self.dz += -1 if event.button == "wheel-up" else 1
        if self.enabled and not self.remote and self._packet():
            while (self.dx or self.dy or self.dz) and self._packet():
                pass

    def _packet(self) -> bool:
        """One movement packet, if the queue has room for it (QEMU wants 4 bytes free;
        the movement not sent waits for the next)."""
        if QUEUE_LIMIT - len(self.queue) - self.held < 4:
            return False
        dx, dy = max(-127, min(127, self.dx)), max(-127, min(127, self.dy))
        dz = max(-7, min(7, self.dz))
        self.dx, self.dy, self.dz = self.dx - dx, self.dy - dy, self.dz - dz
        head = 0x08 | (self.buttons & 7) | (0x10 if dx < 0 else 0) | (0x20 if dy < 0 else 0)
        packet = [head, dx & 0xFF, dy & 0xFF] + ([dz & 0xFF] if self.device_id == 3 else [])
        self.queue.extend(packet)
        return True

    def save_state(self) -> dict:
        return {"queue": bytes(self.queue), "flags": [self.enabled, self.remote, self.wrap],
                "settings": [self.sample_rate, self.resolution, self.scaling, self.device_id],
                "buttons": self.buttons, "pending": self.pending}

    def load_state(self, state: dict) -> None:
        self.queue = deque(state["queue"])
        self.enabled, self.remote, self.wrap = state["flags"]
        self.sample_rate, self.resolution, self.scaling, self.device_id = state["settings"]
        self.buttons, self.pending = state["buttons"], state["pending"]


class I8042:
    """Mapped as two one-port ranges: 0x60 (data) and 0x64 (status/command)."""

    def __init__(self, request_reset: Callable[[], None],
                 set_irq: Callable[[int, int], None] = lambda gsi, level: None) -> None:
        self.request_reset = request_reset
        self.set_irq = set_irq
        self.keyboard = PS2Keyboard()
        self.mouse = PS2Mouse()
        self.reset()

    def reset(self) -> None:
        # as a BIOS leaves it (SeaBIOS under QEMU): translation on, the mouse port off
        self.config = CONFIG_TRANSLATE | CONFIG_AUX_DISABLED | CONFIG_KBD_INT
        self.status = STATUS_SYS | STATUS_CMD | STATUS_KEYLOCK
        self.replies: deque[int] = deque()          # the controller's own answers
        self.out: tuple[int, str] | None = None     # (byte, "kbd" or "aux") to be read
        self.pending_command: int | None = None
        self.keyboard.reset()
        self.mouse.reset()
        self._irqs = (0, 0)
        self._update()

    def save_state(self) -> dict:
        return {"config": self.config, "status": self.status, "output": bytes(self.replies),
                "pending_command": self.pending_command, "out": list(self.out or ()),
                "keyboard": self.keyboard.save_state(), "mouse": self.mouse.save_state()}

    def load_state(self, state: dict) -> None:
        savestate.check_fields(self, ("config", "status"), state, "i8042")
        output, pending = state.get("output"), state.get("pending_command")
        if not isinstance(output, bytes):
            raise savestate.StateError("i8042: saved value does not fit this device")
        if pending is not None:
            savestate.int_in(pending, 0, 255, "i8042.pending_command")
        self.config, self.status = state["config"] & 0xFF, state["status"] & 0xFF
        self.replies = deque(output)
        self.pending_command = pending
        out = state.get("out") or []
        self.out = (out[0], out[1]) if out else None
        if "keyboard" in state:
            self.keyboard.load_state(state["keyboard"])
            self.mouse.load_state(state["mouse"])
        self._update()

    # -- what the guest sees ---------------------------------------------------
    def _update(self) -> None:
        """Moves the next byte into the output buffer and sets the IRQ lines."""
        if self.out is None:
            if self.replies:
                self.out = (self.replies.popleft(), "kbd")
            elif self.keyboard.queue and not self.config & CONFIG_KBD_DISABLED:
                self.out = (self.keyboard.queue.popleft(), "kbd")
            elif self.mouse.queue and not self.config & CONFIG_AUX_DISABLED:
                self.out = (self.mouse.queue.popleft(), "aux")
        source = self.out[1] if self.out else None
        self.keyboard.held, self.mouse.held = int(source == "kbd"), int(source == "aux")
        irqs = (int(source == "kbd" and bool(self.config & CONFIG_KBD_INT)),
                int(source == "aux" and bool(self.config & CONFIG_AUX_INT)))
        for gsi, old, new in ((KBD_IRQ, self._irqs[0], irqs[0]),
                              (AUX_IRQ, self._irqs[1], irqs[1])):
            if old != new:
                self.set_irq(gsi, new)
        self._irqs = irqs

    def port(self, base: int) -> _Port:
        return _Port(self, base)

    def read(self, port: int) -> int:
        if port == DATA_PORT:
            if self.out is None:
                return 0
            value, self.out = self.out[0], None
            self._update()
            return value
        status = self.status
        if self.out is not None:
            status |= STATUS_OBF | (STATUS_AUX_OBF if self.out[1] == "aux" else 0)
        return status

    def write(self, port: int, value: int) -> None:
        if port == COMMAND_PORT:
            self._command(value)
        else:
            self._data(value)
        self._update()

    def _command(self, value: int) -> None:
        self.status |= STATUS_CMD
        self.pending_command = None
        if value == CMD_READ_CONFIG:
            self.replies.append(self.config)
        elif value in (CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT, CMD_WRITE_KBD_OUTPUT,
                       CMD_WRITE_AUX_OUTPUT, CMD_WRITE_AUX):
            self.pending_command = value
        elif value in (CMD_DISABLE_AUX, CMD_ENABLE_AUX):
            self.config = (self.config | CONFIG_AUX_DISABLED) if value == CMD_DISABLE_AUX \
                else self.config & ~CONFIG_AUX_DISABLED
        elif value in (CMD_DISABLE_KBD, CMD_ENABLE_KBD):
            self.config = (self.config | CONFIG_KBD_DISABLED) if value == CMD_DISABLE_KBD \
                else self.config & ~CONFIG_KBD_DISABLED
        elif value == CMD_SELF_TEST:
            self.replies.append(0x55)
        elif value in (CMD_INTERFACE_TEST, CMD_TEST_AUX):
            self.replies.append(0x00)
        elif value == CMD_READ_INPUT:
            self.replies.append(0x80)                  # keyboard not inhibited
        elif value == CMD_READ_OUTPUT:
            self.replies.append(OUTPUT_PORT | (0x10 if self.out and self.out[1] == "kbd" else 0)
                                | (0x20 if self.out and self.out[1] == "aux" else 0))
        elif value == CMD_PULSE_RESET:
            self.request_reset()

    def _data(self, value: int) -> None:
        self.status &= ~STATUS_CMD
        command, self.pending_command = self.pending_command, None
        if command == CMD_WRITE_CONFIG:
            self.config = value
        elif command == CMD_WRITE_OUTPUT:
            if not value & 0x01:
                self.request_reset()  # bit 0 of the output port is the CPU reset line
        elif command == CMD_WRITE_KBD_OUTPUT:
            self.keyboard.reply(value)
        elif command == CMD_WRITE_AUX_OUTPUT:
            self.mouse.reply(value)
        elif command == CMD_WRITE_AUX:
            self.config &= ~CONFIG_AUX_DISABLED       # a byte for the mouse enables its port
            self.mouse.command(value)
        else:
            self.config &= ~CONFIG_KBD_DISABLED       # a byte for the keyboard enables it
            self.keyboard.command(value, bool(self.config & CONFIG_TRANSLATE))

    # -- input from the host -----------------------------------------------------
    def keys(self, events: list[InputEvent]) -> None:
        self.keyboard.keys(events, bool(self.config & CONFIG_TRANSLATE))
        self._update()

    def pointer(self, events: list[InputEvent]) -> None:
        self.mouse.pointer(events)
        self._update()


class _Port:
    def __init__(self, controller: I8042, base: int) -> None:
        self.controller = controller
        self.base = base

    def bus_read(self, offset: int, size: int) -> int:
        return self.controller.read(self.base + offset)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        self.controller.write(self.base + offset, value & 0xFF)


declare(DeviceType("i8042", "isa-device", user_creatable=False, props=(
    fixed("kbd-irq", "uint32", 1), fixed("mouse-irq", "uint32", 12))))
