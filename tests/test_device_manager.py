"""The device manager on a stand-in board: creation with QEMU's checks, QOM paths,
removal, and saved state refused whole when a section does not match."""

from __future__ import annotations

import threading

import pytest

from vmm.bus import BusConflict
from vmm.device_manager import DeviceManager
from vmm.errors import UserError
from vmm.qdev import DeviceError


class FakeBus:
    def __init__(self) -> None:
        self.maps: dict[int, object] = {}

    def map(self, start: int, length: int, device: object) -> None:
        if start in self.maps:
            raise BusConflict(f"port {start:#x} is taken")      # as vmm.bus.Bus does
        self.maps[start] = device


class FakeBoard:
    def __init__(self) -> None:
        self.pio, self.mmio = FakeBus(), FakeBus()
        self.chardevs: dict = {}
        self.lock = threading.RLock()
        self.exits: list[int] = []
        self.devices = DeviceManager(self)
        self.devices.add_builtin("PIIX3")          # the ISA bridge: it provides isa.0

    def request_exit(self, status: int) -> None:
        self.exits.append(status)


def test_creation_checks_and_paths():
    board = FakeBoard()
    manager = board.devices
    first = manager.create("isa-debug-exit", {})
    named = manager.create("isa-debug-exit", {"id": "dbg", "iobase": "0x600"})
    assert manager.path(first) == "/machine/peripheral-anon/device[0]"
    assert manager.path(named) == "/machine/peripheral/dbg"
    assert first.parent is manager.find_type("PIIX3")
    board.pio.maps[0x501].bus_write(0, 1, 3)
    assert board.exits == [7]
    with pytest.raises(DeviceError, match="Duplicate device ID 'dbg'"):
        manager.create("isa-debug-exit", {"id": "dbg", "iobase": "0x700"})
    with pytest.raises(DeviceError, match="Parameter 'id' expects an identifier"):
        manager.create("isa-debug-exit", {"id": "9lives"})
    with pytest.raises(DeviceError, match="Bus 'nosuch' not found"):
        manager.create("isa-debug-exit", {"bus": "nosuch"})
    with pytest.raises(BusConflict, match="port 0x501 is taken"):
        manager.create("isa-debug-exit", {})            # a failed realize leaves nothing
    assert [d.driver for d in manager.user_devices()] == ["isa-debug-exit"] * 2
    manager.remove(first)
    again = manager.create("isa-debug-exit", {"iobase": "0x800"})
    assert manager.path(again) == "/machine/peripheral-anon/device[2]"   # never reused


class Counter:
    def __init__(self) -> None:
        self.value = 0

    def save_state(self) -> dict:
        return {"value": self.value}

    def load_state(self, state: dict) -> None:
        self.value = state["value"]


def test_saved_state_is_loaded_whole_or_not_at_all():
    board = FakeBoard()
    manager = board.devices
    manager.devices.clear()
    manager.add_builtin("PIIX3", object())             # a model with no saved state
    with pytest.raises(UserError, match="State of device 'PIIX3' cannot be saved"):
        manager.save_state()
    manager.devices.clear()
    a, b = manager.add_builtin("i8042", Counter()), manager.add_builtin("kvm-pit", Counter())
    a.obj.value, b.obj.value = 1, 2
    sections = manager.save_state()
    a.obj.value = b.obj.value = 0
    bad = {**sections, "kvm-pit[1]": {**sections["kvm-pit[1]"], "version": 9}}
    with pytest.raises(UserError, match="section version 9"):
        manager.load_state(bad)
    assert (a.obj.value, b.obj.value) == (0, 0)         # nothing half-loaded
    with pytest.raises(UserError, match="Unknown section 'e1000'"):
        manager.load_state({**sections, "e1000": {}})
    with pytest.raises(UserError, match=r"Missing section for device 'kvm-pit\[1\]'"):
        manager.load_state({"i8042[0]": sections["i8042[0]"]})
    assert (a.obj.value, b.obj.value) == (0, 0)
    manager.load_state(sections)
    assert (a.obj.value, b.obj.value) == (1, 2)
