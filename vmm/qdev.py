"""Device types and their properties, declared as QEMU declares them.

A device model is declared once, in its own file under vmm/devices/, as a
``DeviceType``: its QOM parent, its properties (name, QAPI type, default,
description), the bus it plugs into, whether it hotplugs, and ``realize``,
which builds it on the board. That one declaration drives -device and
device_add parsing (with QEMU's errors), device-list-properties,
qom-list-properties, qom-list-types, -device help and info qtree.

Properties kvmkit has but does not model beyond QEMU's default are declared
with ``honoured=False``: they are listed as QEMU lists them and accept their
default, and any other value is refused, never silently ignored.

The abstract types every model derives from (device, pci-device, virtio-pci,
...) are declared here too.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_bool, parse_size

NO_DEFAULT = None
# QEMU's id_wellformed: a letter, then letters, digits, '-', '.' and '_'
IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
CHARDEV_DESCRIPTION = "ID of a chardev to use as a backend"
# What QEMU marks not user-creatable: parts of the board that -device and device_add
# refuse before anything else ("expects a pluggable device type"). kvmkit's own
# user_creatable is narrower still: the virtio backends and ports it makes only
# inside their proxies are QEMU's pluggable types, refused later, and otherwise.
BOARD_PARTS = frozenset({"PIIX4_PM", "i440FX-pcihost", "i440FX", "PIIX3", "piix3-ide",
                         "kvm-ioapic", "kvm-pit"})
# Types QEMU's classes mark not hotpluggable (not their bus): device_add refuses the
# type itself, before any bus is looked at
UNPLUGGABLE_TYPES = frozenset({"VGA", "cirrus-vga"})
ID_HINT = "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."

INT_RANGES = {"uint8": (0, 0xFF, "uint8_t"), "uint16": (0, 0xFFFF, "uint16_t"),
              "uint32": (0, 0xFFFFFFFF, "uint32_t"), "uint64": (0, (1 << 64) - 1, "uint64_t"),
              "int32": (-(1 << 31), (1 << 31) - 1, "int32_t"),
              "int64": (-(1 << 63), (1 << 63) - 1, "int64_t"),
              "int": (-(1 << 63), (1 << 63) - 1, "int64_t"), "size": (0, (1 << 64) - 1, "size")}
ENUMS = {"OnOffAuto": ("on", "off", "auto"),
         "BlockdevOnError": ("report", "ignore", "enospc", "stop", "auto"),
         "BiosAtaTranslation": ("auto", "none", "lba", "large", "rechs")}


class DeviceError(UserError):
    """A -device/device_add error, with QEMU's message."""


@dataclass(frozen=True)
class Prop:
    """One property as QEMU's device-list-properties describes it."""

    name: str
    type: str                       # QEMU's type name: uint32, bool, str, OnOffAuto, link<..>
    default: Any = NO_DEFAULT       # None: QEMU reports no default
    description: str = ""
    honoured: bool = True           # False: kvmkit implements only the default
    qdev: bool = True               # a qdev property: info qtree prints it
    writable: bool = True
    kind: str = ""                  # how a value is read when not by its type: devfn, chardev
    owner: str = ""                 # the type QEMU names in this property's errors

    def parse(self, type_name: str, value: Any, strict: bool, chardevs=(),
              honoured: bool | None = None) -> Any:
        """A value from -device text (or a JSON value when strict), as QEMU checks it."""
        owner = self.owner or type_name
        if not self.writable:
            raise DeviceError(f"Property '{owner}.{self.name}' is not writable")
        if self.kind == "object":           # a link to an -object, found at realize
            if strict and not isinstance(value, str):
                raise DeviceError(f"Invalid parameter type for '{self.name}', "
                                  f"expected: string")
            return str(value)
        if self.type.startswith("link<"):
            raise DeviceError(f"Device '{value}' not found")
        if self.kind == "devfn":
            if strict and (isinstance(value, bool) or not isinstance(value, (int, str))):
                raise DeviceError(f"Invalid parameter type for '{self.name}', "
                                  f"expected int or str")
            parsed = _devfn(value)
            if parsed is None:
                raise DeviceError(f"Property '{owner}.{self.name}' doesn't take value '{value}'")
        else:
            parsed = _by_type(self.name, self.type, value, strict)
        if self.kind == "chardev" and parsed not in chardevs:
            raise DeviceError(f"Property '{owner}.{self.name}' can't find value '{parsed}'")
        if honoured is None:
            honoured = self.honoured
        if not honoured and parsed != self.default and \
                not (self.default is None and parsed == ""):
            raise DeviceError(f"Property '{owner}.{self.name}' doesn't take value '{value}' "
                              f"(kvmkit supports only {_default_text(self.default)})")
        return parsed


def _by_type(name: str, type_name: str, value: Any, strict: bool) -> Any:
    if type_name == "bool":
        if strict:
            if not isinstance(value, bool):
                raise DeviceError(f"Invalid parameter type for '{name}', expected: boolean")
            return value
        try:
            return parse_bool(name, str(value))
        except OptsError as e:
            raise DeviceError(str(e)) from None
    if type_name in INT_RANGES:
        low, high, c_name = INT_RANGES[type_name]
        if strict:
            if not isinstance(value, int) or isinstance(value, bool):
                if type_name.startswith("int"):
                    raise DeviceError(f"Invalid parameter type for '{name}', "
                                      f"expected: integer")
                raise DeviceError(f"Parameter '{name}' expects uint64")   # QEMU's visitor
            number = value
        elif type_name == "size":
            try:
                number = parse_size(str(value))
            except OptsError:
                raise DeviceError(f"Parameter '{name}' expects size") from None
        else:
            try:
                number = int(str(value), 0)
            except ValueError:
                raise DeviceError(f"Parameter '{name}' expects integer") from None
        if type_name == "uint64" and -(1 << 63) <= number < 0:
            number += 1 << 64       # QEMU's string visitor reads -N as 2^64-N here
        if not low <= number <= high:
            raise DeviceError(f"Parameter '{name}' expects {c_name}")
        return number
    if strict and not isinstance(value, str):
        raise DeviceError(f"Invalid parameter type for '{name}', expected: string")
    if type_name in ENUMS and value not in ENUMS[type_name]:
        raise DeviceError(f"Parameter '{name}' does not accept value '{value}'")
    return str(value)


def _devfn(value: Any) -> int | None:
    """A PCI address: 'slot[.function]' in hex, or (from JSON) devfn as a number."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value if -1 <= value <= 255 else None
    if not isinstance(value, str):
        return None
    slot_text, _, function_text = value.partition(".")
    try:
        slot = int(slot_text, 16)
        function = int(function_text, 16) if function_text else 0
    except ValueError:
        return None
    if not (0 <= slot < 32 and 0 <= function < 8):
        return None
    return slot << 3 | function


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "on" if value else "off"
    return f"'{value}'" if isinstance(value, str) else str(value)


# -- shorthands for declarations ------------------------------------------
def on_off(name: str, default: bool, honoured: bool = True) -> Prop:
    """A bool qdev property that QEMU describes as on/off."""
    return Prop(name, "bool", default, "on/off", honoured)


def flag(name: str, default: bool, honoured: bool = True) -> Prop:
    """A bool qdev property with no description."""
    return Prop(name, "bool", default, "", honoured)


def fixed(name: str, type_name: str, default: Any, description: str = "") -> Prop:
    """A property kvmkit has only at QEMU's default."""
    return Prop(name, type_name, default, description, honoured=False)


def block_props(sizes_honoured: bool) -> tuple[Prop, ...]:
    """A disk's properties as QEMU's DEFINE_BLOCK_PROPERTIES and
    DEFINE_BLOCK_ERROR_PROPERTIES declare them: its drive, block sizes, write
    cache, sharing, accounting and error policies (``sizes_honoured``: the device
    takes the block size and discard granularity it can use, else only defaults)."""
    policy = "Error handling policy, report/ignore/enospc/stop/auto"
    block_size = "A power of two between 512 B and 2 MiB"
    size_prop = Prop if sizes_honoured else fixed
    return (
        Prop("drive", "str", None, "Node name or ID of a block device to use as a backend"),
        fixed("backend_defaults", "OnOffAuto", "auto", "on/off/auto"),
        size_prop("logical_block_size", "size", 0, block_size),
        size_prop("physical_block_size", "size", 0, block_size),
        fixed("min_io_size", "size", 0), fixed("opt_io_size", "size", 0),
        size_prop("discard_granularity", "size", 0xFFFFFFFF),
        Prop("write-cache", "OnOffAuto", "auto", "on/off/auto"), flag("share-rw", False, False),
        fixed("account-invalid", "OnOffAuto", "auto", "on/off/auto"),
        fixed("account-failed", "OnOffAuto", "auto", "on/off/auto"),
        Prop("rerror", "BlockdevOnError", "auto", policy),
        Prop("werror", "BlockdevOnError", "auto", policy))


def drive_named(board: Board, owner: str, name: str) -> Any:
    """The drive a disk's drive= names (a -drive id, or a node's anonymous drive),
    free for it; QEMU's errors when there is none or another device has it."""
    drive = board.block.backend_for(name)
    if drive is None:
        raise DeviceError(f"Property '{owner}.drive' can't find value '{name}'")
    if drive.attached_to:
        raise DeviceError(f"Property '{owner}.drive' can't take value '{name}', it's in use")
    return drive


def attach_drive(board: Board, drive: Any, props: dict, qom_path: str) -> None:
    """A disk takes its drive: its write-cache property over the drive's cache mode,
    the images claimed (an anonymous drive goes again if they cannot be), then its
    werror/rerror properties."""
    if props["write-cache"] != "auto":
        drive.cache_writeback = drive.writeback = props["write-cache"] == "on"
    try:
        board.block.attach(drive, qom_path)
    except UserError as e:
        if not drive.name:
            board.block.detach(drive)
        raise DeviceError(str(e), hint=e.hint) from None
    for policy in ("werror", "rerror"):
        if props[policy] != "auto":
            setattr(drive, policy, props[policy])


# -- instances and the board they are built on ---------------------------
class Board(Protocol):
    """What a device's realize may use from the machine it is built on."""

    memory: Any
    pio: Any
    mmio: Any
    ioevents: Any
    network: Any
    block: Any
    chardevs: dict
    cfg: Any
    lock: Any
    objects: Any                        # the -object/object-add objects (vmm/objects.py)

    def set_irq(self, gsi: int, level: int) -> None: ...
    def device_timer(self, callback: Callable[[], None]) -> Any: ...
    def plug_pci(self, function: Any, device: Device) -> None: ...
    def add_ram_hole(self, start: int, size: int) -> None: ...
    def request_exit(self, status: int) -> None: ...
    def emit_from_vcpu(self, event: str, data: dict | None) -> None: ...
    def host_input(self, receive: Callable[[bytes], None], data: bytes) -> None: ...
    def io_error_stop(self) -> None: ...
    def on_resume(self, hook: Callable[[], None], add: bool = True) -> None: ...


class Stateful(Protocol):
    """What a device implements so migration and snapshots can carry it: its state
    as a section of plain data, stamped with the device type's ``state_version``."""

    def save_state(self) -> dict: ...
    def load_state(self, state: dict) -> None: ...


@dataclass(eq=False)
class Device:
    """A device on the board: its type, id, every property's value and what
    realize built (a PCI function, ports on the ISA bus, ...). Each is itself:
    two devices never compare equal, whatever their properties."""

    type: DeviceType
    id: str | None
    props: dict[str, Any]
    obj: Any = None
    hotplugged: bool = False
    parent: Device | None = None        # the device whose bus this one sits on, if any
    bus: str = ""                        # that bus's name, where the parent has several
    builtin: bool = False                # part of the board, not from -device

    @property
    def driver(self) -> str:
        return self.type.name


Realize = Callable[[Board, Device], Any]


@dataclass
class DeviceType:
    name: str
    parent: str | None
    props: tuple[Prop, ...] = ()
    abstract: bool = False
    bus: str | None = None             # the bus type it plugs into: PCI, ISA, ... (inherited)
    hotpluggable: bool | None = None   # (inherited; a device's default: no)
    user_creatable: bool = True
    category: str = "Misc"             # QEMU's -device help section
    alias: str = ""
    description: str = ""
    realize: Realize | None = None
    unrealize: Callable[[Board, Device], None] | None = None
    virtio: str = ""                   # a virtio-pci proxy: its virtio device's type
    honours: tuple[str, ...] = ()      # inherited properties this type implements fully
    buses: tuple[tuple[str, str], ...] = ()   # the buses it provides: (name, bus type)
    gpios: tuple[str, ...] = ()        # info qtree's gpio lines
    state_version: int = 1             # the version of its saved-state section
    extra: dict = field(default_factory=dict)


TYPES: dict[str, DeviceType] = {}


def declare(device_type: DeviceType) -> DeviceType:
    if device_type.name in TYPES:
        raise ValueError(f"device type {device_type.name} declared twice")
    parent = TYPES.get(device_type.parent or "")
    if device_type.bus is None and parent is not None:
        device_type.bus = parent.bus
    if device_type.hotpluggable is None:
        device_type.hotpluggable = bool(parent and parent.hotpluggable)
    TYPES[device_type.name] = device_type
    return device_type


def lookup(name: str) -> DeviceType | None:
    """A type by its name or QEMU's alias for it."""
    _load_models()
    if name in TYPES:
        return TYPES[name]
    return next((t for t in TYPES.values() if t.alias and t.alias == name), None)


def all_types() -> list[DeviceType]:
    _load_models()
    return list(TYPES.values())


def ancestry(device_type: DeviceType) -> list[DeviceType]:
    """The type, then its parent, ... up to 'device'."""
    chain = [device_type]
    while chain[-1].parent:
        chain.append(TYPES[chain[-1].parent])
    return chain


def implements(device_type: DeviceType, name: str) -> bool:
    return any(t.name == name for t in ancestry(device_type))


def qdev_props(device_type: DeviceType) -> list[Prop]:
    """The qdev properties in info qtree's order: the type's own first, then its parents'."""
    return [p for t in ancestry(device_type) for p in t.props if p.qdev]


def all_props(device_type: DeviceType) -> list[Prop]:
    """Every property a -device of this type may name (its virtio device's too, which
    QEMU aliases onto the proxy), and the child<> the proxy has."""
    props = [p for t in ancestry(device_type) for p in t.props]
    if device_type.virtio:
        props += all_props(TYPES[device_type.virtio])
        props.append(_backend_child(device_type))
    return props


def _backend_child(device_type: DeviceType) -> Prop:
    """A virtio proxy's child<> property, its virtio device."""
    return Prop("virtio-backend", f"child<{device_type.virtio}>", writable=False, qdev=False)


def find_prop(device_type: DeviceType, name: str) -> tuple[DeviceType, Prop] | None:
    """A property and the type that declares it (the proxy's virtio device's included)."""
    for t in ancestry(device_type):
        for p in t.props:
            if p.name == name:
                return t, p
    if device_type.virtio:
        found = find_prop(TYPES[device_type.virtio], name)
        if found:
            return found
        if name == "virtio-backend":
            return device_type, _backend_child(device_type)
    return None


def parse_props(device_type: DeviceType, options: dict[str, Any], strict: bool = False,
                chardevs=(), only_given: bool = False) -> dict[str, Any]:
    """Every property's value: defaults, then ``options`` checked as QEMU checks them
    (with ``only_given``, just the options)."""
    values = {} if only_given else \
        {p.name: p.default for p in all_props(device_type) if p.writable}
    own = ancestry(device_type)
    types = own + (ancestry(TYPES[device_type.virtio]) if device_type.virtio else [])
    honours = {name for t in types for name in t.honours}
    for key, value in options.items():
        found = find_prop(device_type, key)
        if found is None:
            if key in ("type", "legacy-addr", "parent_bus"):
                raise DeviceError(f"Property '{device_type.name}.{key}' is not writable")
            raise DeviceError(f"Property '{device_type.name}.{key}' not found")
        declaring, prop = found
        owner_name = device_type.name if declaring in own else declaring.name
        values[key] = prop.parse(owner_name, value, strict, chardevs,
                                 honoured=prop.honoured or key in honours)
    return values


def check_id(value: Any) -> str:
    if not isinstance(value, str) or not IDENTIFIER.fullmatch(value):
        raise DeviceError("Parameter 'id' expects an identifier", hint=ID_HINT)
    return value


def help_text(device_type: DeviceType) -> str:
    """-device TYPE,help, as QEMU prints it: properties sorted by name."""
    props = sorted(all_props(device_type), key=lambda p: f"{p.name}=<{p.type}>")
    if not props:
        return f"There are no options for {device_type.name}.\n"
    lines = [f"{device_type.name} options:"]
    for p in props:
        line = f"  {p.name}=<{p.type}>"
        if p.description or p.default is not None:
            line = line.ljust(24) + f" - {p.description}"
            if p.default is not None:
                line += f" (default: {json_default(p.default)})"
        lines.append(line)
    return "\n".join(lines) + "\n"


def json_default(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    return str(value)


# QEMU's -device help sections, in its order
CATEGORIES = ("Controller/Bridge/Hub", "USB", "Storage", "Network", "Input", "Display",
              "Sound", "Misc", "CPU", "Watchdog", "Uncategorized")


def device_help(with_board_parts: bool = False) -> str:
    """-device help, in QEMU's format: a section per category, models sorted by name;
    with the board's own parts too (HMP info qdm), each marked no-user."""
    sections = []
    creatable = [t for t in all_types()
                 if not t.abstract and (t.user_creatable or with_board_parts)]
    for category in CATEGORIES:
        models = sorted((t for t in creatable if t.category == category), key=lambda t: t.name)
        if not models:
            continue
        lines = [f"{category} devices:"]
        for t in models:
            line = f'name "{t.name}", bus {t.bus}'
            if t.alias:
                line += f', alias "{t.alias}"'
            if t.description:
                line += f', desc "{t.description}"'
            if not t.user_creatable:
                line += ", no-user"
            lines.append(line)
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)


# -- the abstract types ----------------------------------------------------
declare(DeviceType("device", None, abstract=True))
declare(DeviceType("sys-bus-device", "device", abstract=True, bus="System"))
declare(DeviceType("isa-device", "device", abstract=True, bus="ISA"))
declare(DeviceType("pci-device", "device", abstract=True, bus="PCI", hotpluggable=True, props=(
    Prop("addr", "int32", -1, "Slot and optional function number, example: 06.0 or 06",
         kind="devfn"),
    Prop("romfile", "str", honoured=False),     # kvmkit has no option ROMs to load
    fixed("romsize", "uint32", 0xFFFFFFFF),
    fixed("rombar", "uint32", 1),
    on_off("multifunction", False, honoured=False),
    on_off("x-pcie-lnksta-dllla", True, honoured=False),
    on_off("x-pcie-extcap-init", True, honoured=False),
    fixed("failover_pair_id", "str", None),
    fixed("acpi-index", "uint32", 0))))

declare(DeviceType("virtio-device", "device", abstract=True, bus="virtio-bus", props=(
    on_off("indirect_desc", True, honoured=False), on_off("event_idx", True, honoured=False),
    on_off("notify_on_empty", True, honoured=False), on_off("any_layout", True, honoured=False),
    on_off("iommu_platform", False, honoured=False), on_off("packed", False, honoured=False),
    on_off("queue_reset", True, honoured=False), flag("use-started", True, honoured=False),
    flag("use-disabled-flag", True, honoured=False),
    flag("x-disable-legacy-check", False, honoured=False))))
declare(DeviceType("virtio-pci", "pci-device", abstract=True, props=(
    on_off("virtio-pci-bus-master-bug-migration", False, honoured=False),
    on_off("migrate-extra", True, honoured=False),
    on_off("modern-pio-notify", False, honoured=False),
    on_off("x-disable-pcie", False, honoured=False),
    on_off("page-per-vq", False, honoured=False),
    flag("x-ignore-backend-features", False, honoured=False),
    on_off("ats", False, honoured=False), on_off("x-ats-page-aligned", True, honoured=False),
    on_off("x-pcie-deverr-init", True, honoured=False),
    on_off("x-pcie-lnkctl-init", True, honoured=False),
    on_off("x-pcie-pm-init", True, honoured=False),
    on_off("x-pcie-flr-init", True, honoured=False), on_off("aer", False, honoured=False))))

# What every virtio-pci proxy QEMU builds from a generic type has first.
TRANSITIONAL_PROPS = (Prop("disable-legacy", "OnOffAuto", "auto", "on/off/auto"),
                      flag("disable-modern", False))
IOEVENTFD = on_off("ioeventfd", True)


def vectors(default: int = 0xFFFFFFFF) -> Prop:
    """A proxy's MSI-X vector count (all-ones: the device chooses)."""
    return Prop("vectors", "uint32", default)


def bootindex() -> Prop:
    """Accepted and kept: kvmkit boots -kernel only, where QEMU ignores it too."""
    return Prop("bootindex", "int32", qdev=False)


_loaded = False


def _load_models() -> None:
    """Imports every module under vmm/devices, whose declarations fill TYPES."""
    global _loaded
    if _loaded:
        return
    _loaded = True
    import importlib
    import pkgutil

    import vmm.devices
    for module in pkgutil.iter_modules(vmm.devices.__path__):
        importlib.import_module(f"vmm.devices.{module.name}")
