"""i8042 keyboard controller: enough for the controller commands an OS probes
with, and pulse-reset (command 0xFE), which is how many guests reboot."""

from __future__ import annotations

from collections import deque
from collections.abc import Callable

from vmm import savestate
from vmm.qdev import DeviceType, declare, fixed

DATA_PORT = 0x60
COMMAND_PORT = 0x64

STATUS_OBF = 0x01
STATUS_SYS = 0x04
STATUS_CMD = 0x08
STATUS_KEYLOCK = 0x10

CMD_READ_CONFIG = 0x20
CMD_WRITE_CONFIG = 0x60
CMD_SELF_TEST = 0xAA
CMD_INTERFACE_TEST = 0xAB
CMD_READ_OUTPUT = 0xD0
CMD_WRITE_OUTPUT = 0xD1
CMD_PULSE_RESET = 0xFE


class I8042:
    """Mapped as two one-port ranges: 0x60 (data) and 0x64 (status/command)."""

    def __init__(self, request_reset: Callable[[], None]) -> None:
        self.request_reset = request_reset
        self.reset()

    def reset(self) -> None:
        self.config = 0x45  # translate, system flag, keyboard interrupt
        self.status = STATUS_SYS | STATUS_KEYLOCK
        self.output: deque[int] = deque()
        self.pending_command: int | None = None

    def save_state(self) -> dict:
        return {"config": self.config, "status": self.status, "output": bytes(self.output),
                "pending_command": self.pending_command}

    def load_state(self, state: dict) -> None:
        savestate.check_fields(self, ("config", "status"), state, "i8042")
        output, pending = state.get("output"), state.get("pending_command")
        if not isinstance(output, bytes):
            raise savestate.StateError("i8042: saved value does not fit this device")
        if pending is not None:
            savestate.int_in(pending, 0, 255, "i8042.pending_command")
        self.config, self.status = state["config"] & 0xFF, state["status"] & 0xFF
        self.output = deque(output)
        self.pending_command = pending

    def port(self, base: int) -> _Port:
        return _Port(self, base)

    def read(self, port: int) -> int:
        if port == DATA_PORT:
            return self.output.popleft() if self.output else 0
        return self.status | (STATUS_OBF if self.output else 0)

    def write(self, port: int, value: int) -> None:
        if port == COMMAND_PORT:
            self.pending_command = None
            if value == CMD_READ_CONFIG:
                self.output.append(self.config)
            elif value in (CMD_WRITE_CONFIG, CMD_WRITE_OUTPUT):
                self.pending_command = value
            elif value == CMD_SELF_TEST:
                self.output.append(0x55)
            elif value == CMD_INTERFACE_TEST:
                self.output.append(0x00)
            elif value == CMD_READ_OUTPUT:
                self.output.append(0x01)
            elif value == CMD_PULSE_RESET:
                self.request_reset()
            return
        if self.pending_command == CMD_WRITE_CONFIG:
            self.config = value
        elif self.pending_command == CMD_WRITE_OUTPUT and not value & 0x01:
            self.request_reset()  # bit 0 of the output port is the CPU reset line
        self.pending_command = None


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
