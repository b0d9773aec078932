"""The devices on a board: creation from -device and device_add, QOM paths,
removal, reset, and their saved state.

Every device, the board's own chipset included, is a ``qdev.Device`` made from
its declared type. The manager knows nothing of particular models: their files
declare them (vmm/devices/) and their realize builds them on the board.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from typing import Any

from vmm import qdev
from vmm.errors import UserError
from vmm.pci import NoFreeSlot
from vmm.qdev import Board, Device, DeviceError, DeviceType

BUS_UNIT_LIMITS = {"IDE": 2}          # devices a bus of that type takes (others: no limit)

log = logging.getLogger(__name__)


class DeviceManager:
    def __init__(self, board: Board) -> None:
        self.board = board
        self.devices: list[Device] = []
        self._paths: dict[int, str] = {}
        self._anonymous = 0              # QEMU numbers peripheral-anon devices for good

    def __iter__(self) -> Iterator[Device]:
        return iter(list(self.devices))

    # -- creation ----------------------------------------------------------
    def create(self, driver: str, options: dict[str, Any], strict: bool = False,
               hotplug: bool = False, defaults: dict[str, dict] | None = None) -> Device:
        """A device from -device or device_add options (text, or JSON values when
        ``strict``), realized on the board; DeviceError with QEMU's message if not."""
        device_type = qdev.lookup(driver) if isinstance(driver, str) else None
        if device_type is None or device_type.abstract:
            raise DeviceError(f"'{driver}' is not a valid device model name")
        if device_type.name in qdev.BOARD_PARTS:
            raise DeviceError("Parameter 'driver' expects a pluggable device type")
        if self.first_bus(device_type.bus) is None:
            raise DeviceError(f"No '{device_type.bus or 'System'}' bus found for device "
                              f"'{device_type.name}'")
        if device_type.realize is None or not device_type.user_creatable:
            raise DeviceError(f"kvmkit cannot create a '{device_type.name}' device")
        options = dict(options)
        qdev_id = options.pop("id", None)
        if qdev_id is not None:
            # QEMU 7.2 checks an id given as option text only, not in JSON
            qdev_id = str(qdev_id) if strict else qdev.check_id(qdev_id)
            if self.find(qdev_id) is not None:
                raise DeviceError(f"Duplicate device ID '{qdev_id}'")
        parent, bus = self._bus_owner(device_type, options.pop("bus", None))
        chardevs = set(self.board.chardevs)
        props = self._globals(device_type, defaults or {}, chardevs)
        props.update(qdev.parse_props(device_type, options, strict, chardevs,
                                      only_given=True))
        device = Device(device_type, qdev_id, props, hotplugged=hotplug, parent=parent,
                        bus=bus)
        self._paths[id(device)] = self._new_path(qdev_id)
        self.devices.append(device)
        return self._realize(device)

    @staticmethod
    def _globals(device_type: DeviceType, defaults: dict[str, dict], chardevs) -> dict:
        """Every property's default, with -global's for the type and its parents (the
        most derived type's last), in QEMU's words when one does not apply."""
        props = qdev.parse_props(device_type, {})
        for t in reversed(qdev.ancestry(device_type)):
            for key, value in defaults.get(t.name, {}).items():
                try:
                    props.update(qdev.parse_props(device_type, {key: value}, False, chardevs,
                                                  only_given=True))
                except DeviceError as e:
                    raise DeviceError(f"can't apply global {t.name}.{key}={value}: {e}") \
                        from None
        return props

    def add_builtin(self, type_name: str, obj: Any = None, parent: Device | None = None,
                    bus: str = "", qom_path: str = "", **values: Any) -> Device:
        """A device the board itself builds (the chipset, the RTC, -serial ports, the
        disks of -drive if=ide)."""
        device_type = qdev.lookup(type_name)
        props = {**qdev.parse_props(device_type, {}), **values}
        device = Device(device_type, None, props, obj=obj, parent=parent, builtin=True,
                        bus=bus)
        if qom_path:
            self._paths[id(device)] = qom_path
        self.devices.append(device)
        return device

    def realize_builtin(self, type_name: str, parent: Device | None = None,
                        **values: Any) -> Device:
        """A board device built by its own type's realize (a -serial port, an IDE disk)."""
        return self._realize(self.add_builtin(type_name, parent=parent, **values))

    def _realize(self, device: Device) -> Device:
        """Builds a device already on the list with its type's realize; one that fails
        leaves nothing behind."""
        try:
            device.obj = device.type.realize(self.board, device)
        except BaseException:
            self.devices.remove(device)
            raise
        return device

    def check_pci_room(self, device: Device) -> None:
        """For a realize whose checks QEMU makes after taking the PCI slot (a link
        property's, such as netdev=, come before): a full bus is reported first."""
        pci = getattr(self.board, "pci", None)
        if device.type.bus != "PCI" or pci is None or device.props.get("addr", -1) != -1:
            return
        try:
            pci.free_slot()
        except NoFreeSlot:
            raise DeviceError(f"PCI: no slot/function available for {device.driver}, all in "
                              "use or reserved") from None

    def buses(self) -> list[tuple[str, str, Device]]:
        """Every bus on the board: (name, bus type, the device that provides it)."""
        found = []
        for device in self.devices:
            types = [device.type] + ([qdev.TYPES[device.type.virtio]] if device.type.virtio
                                     else [])
            for device_type in types:
                for template, bus_type in device_type.buses:
                    found.append((bus_name(template, device), bus_type, device))
        return found

    def first_bus(self, bus_type: str | None) -> str | None:
        """The name of the board's first bus of a type (isa.0, pci.0), if it has one."""
        return next((name for name, kind, _ in self.buses() if kind == bus_type), None)

    def _bus_owner(self, device_type: DeviceType, name: str | None) -> tuple[Device, str]:
        """The device whose bus a new device goes on, and the bus: the named one, else
        the first of its type with room (create has made sure there is one)."""
        candidates = self.buses()
        limit = BUS_UNIT_LIMITS.get(device_type.bus or "")
        if limit is not None:       # ide.1 before ide.0: QEMU lists a device's buses newest first
            candidates.sort(key=lambda found: found[0], reverse=True)
        if name is None:
            free = [(owner, bus) for bus, bus_type, owner in candidates
                    if bus_type == device_type.bus and (
                        limit is None or sum(1 for d in self.devices if d.parent is owner
                                             and d.bus == bus) < limit)]
            if free:
                return free[0]
        for bus, bus_type, owner in candidates:
            if name is None and bus_type == device_type.bus:
                return owner, bus
            if name == bus:
                if bus_type != device_type.bus:
                    raise DeviceError(f"Device '{device_type.name}' can't go on {bus_type} "
                                      f"bus")
                return owner, bus
        if name is not None and "/" in name and not name.startswith("/"):
            name = name.split("/")[0]       # QEMU names the path's first element, unfound
        raise DeviceError(f"Bus '{name}' not found")

    def check_bus(self, device_type: DeviceType, name: str) -> None:
        """That the named bus exists and takes this type (QEMU's messages)."""
        self._bus_owner(device_type, name)

    def bus_for(self, device_type: DeviceType) -> str | None:
        """The bus a new device of this type goes on when none is named."""
        try:
            return self._bus_owner(device_type, None)[1]
        except DeviceError:
            return None

    # -- lookup ------------------------------------------------------------
    def find(self, qdev_id: str) -> Device | None:
        return next((d for d in self.devices if d.id == qdev_id), None)

    def find_type(self, type_name: str) -> Device | None:
        """The first device of a type."""
        return next((d for d in self.devices if d.driver == type_name), None)

    def user_devices(self) -> list[Device]:
        """Devices from -device and device_add, in creation order."""
        return [d for d in self.devices if not d.builtin]

    def of_object(self, obj: Any) -> Device | None:
        return next((d for d in self.devices if d.obj is obj), None)

    def children(self, parent: Device, bus_type: str, bus: str = "") -> list[Device]:
        """The devices on ``parent``'s bus of that type (of that name, where it has
        several), in creation order."""
        return [d for d in self.devices if d.parent is parent and d.type.bus == bus_type
                and (not bus or not d.bus or d.bus == bus)]

    def path(self, device: Device) -> str:
        """Its QOM path: /machine/peripheral/ID, or /machine/peripheral-anon/device[N]."""
        return self._paths.get(id(device), "")

    def _new_path(self, qdev_id: str | None) -> str:
        if qdev_id:
            return f"/machine/peripheral/{qdev_id}"
        path = f"/machine/peripheral-anon/device[{self._anonymous}]"
        self._anonymous += 1
        return path

    # -- lifecycle -----------------------------------------------------------
    def remove(self, device: Device) -> None:
        """Unrealizes a device (its type's unrealize, nearest first) and forgets it."""
        for device_type in qdev.ancestry(device.type):
            if device_type.unrealize is not None:
                device_type.unrealize(self.board, device)
                break
        self.devices.remove(device)
        self._paths.pop(id(device), None)    # (its id may be a new device's next)

    def close(self) -> None:
        """Unrealizes every device, newest first, as the VMM ends."""
        for device in reversed(self.devices):
            try:
                self.remove(device)
            except Exception:                # one device's failure must not stop the rest
                log.exception("unrealizing %s failed", device.driver)

    def reset(self) -> None:
        """Every device on the ISA, PCI and system buses to its power-on state, in
        creation order (a device on another device's bus is reset by it)."""
        for device in self.devices:
            reset = getattr(device.obj, "reset", None)
            if reset is not None and device.type.bus in ("ISA", "PCI", "System"):
                reset()

    def _section_key(self, device: Device) -> str:
        """A device's state section: its QOM path, or (the board's own) type[position]."""
        return self.path(device) or f"{device.driver}[{self.devices.index(device)}]"

    def _stateful(self) -> list[Device]:
        """The devices with a state section of their own: not those the board keeps
        in the kernel (the irqchip, the PIT: the machine saves those), nor one whose
        state its parent's device carries (virtconsole on virtio-serial, a disk on
        an IDE channel)."""
        return [d for d in self.devices if d.obj is not None and not (
            d.parent is not None and (getattr(d.parent.obj, "backend", None) is d.obj
                                      or getattr(d.parent.obj, "saves_children", False)))]

    def save_state(self) -> dict[str, dict]:
        """Each device's state section, keyed by QOM path (for migration and snapshots)."""
        sections = {}
        for device in self._stateful():
            save = getattr(device.obj, "save_state", None)
            if save is None:
                raise UserError(f"State of device '{device.driver}' cannot be saved")
            sections[self._section_key(device)] = {
                "type": device.driver, "version": device.type.state_version, "state": save()}
        return sections

    def check_state(self, sections: object) -> list[tuple[Device, object]]:
        """Each device with its section, or UserError naming the first that has none,
        or one of another type or version; sections for no device are refused too."""
        if not isinstance(sections, dict):
            raise UserError("device state is not a set of sections")
        plan = []
        for device in self._stateful():
            key = self._section_key(device)
            section = sections.get(key)
            if not isinstance(section, dict) or section.get("type") != device.driver:
                raise UserError(f"Missing section for device '{key}'")
            if section.get("version") != device.type.state_version:
                raise UserError(f"Device '{key}' section version {section.get('version')} "
                                f"is not {device.type.state_version}")
            plan.append((device, section.get("state")))
        unknown = set(sections) - {self._section_key(d) for d, _ in plan}
        if unknown:
            raise UserError(f"Unknown section '{sorted(unknown)[0]}'")
        return plan

    def load_state(self, sections: dict[str, dict]) -> None:
        """Loads sections saved by save_state; an unknown device or version is refused
        before anything is loaded."""
        for device, state in self.check_state(sections):
            try:
                device.obj.load_state(state)
            except UserError as e:
                raise UserError(f"device '{self._section_key(device)}': {e}") from None


def bus_name(template: str, device: Device) -> str:
    """A bus's name; "{id}.0|other.0" is named after its device's id if it has one."""
    named, _, anonymous = template.partition("|")
    if not anonymous:
        return named
    return named.format(id=device.id) if device.id else anonymous
