"""-device driver names and their properties, with QEMU's validation messages.

Each model lists its properties as name -> (kind, default). The machine asks
``validate`` for a typed property dict before it builds the device.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from vmm.devices.virtio_net import FEATURE_PROPERTIES as NET_FEATURES
from vmm.qemuopts import OptsError, parse_bool, parse_int, parse_size


@dataclass(frozen=True)
class DeviceModel:
    name: str
    bus: str                                   # "isa" or "pci"
    description: str                           # QEMU's desc ("" where QEMU has none)
    properties: dict[str, tuple[str, object]]  # name -> (kind, default)
    qom_parent: str = ""                       # QEMU's type whose property errors name it
    category: str = "Misc"                     # QEMU's -device help section
    alias: str = ""                            # QEMU's other name for the model


COMMON = {"id": ("str", None)}
# QEMU's id_wellformed: a letter, then letters, digits, '-', '.' and '_'
_IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")

MODELS: dict[str, DeviceModel] = {}


def register(model: DeviceModel) -> DeviceModel:
    MODELS[model.name] = model
    return model


register(DeviceModel("isa-serial", "isa", "", {
    "chardev": ("chardev", None), "index": ("int", -1), "iobase": ("int", -1),
    "irq": ("int", -1)}, qom_parent="serial", category="Input"))
register(DeviceModel("isa-debug-exit", "isa", "", {
    "iobase": ("int", 0x501), "iosize": ("int", 2)}))
register(DeviceModel("pc-testdev", "isa", "", {}))
register(DeviceModel("pci-testdev", "pci", "PCI Test Device", {
    "addr": ("str", None), "bus": ("str", None)}))


register(DeviceModel("virtio-balloon-pci", "pci", "", {
    "addr": ("str", None), "bus": ("str", None), "deflate-on-oom": ("bool", False),
    "free-page-reporting": ("bool", False), "page-poison": ("bool", True),
    "guest-stats-polling-interval": ("int", 0),
    "disable-legacy": ("OnOffAuto", "auto"), "disable-modern": ("bool", False)},
    alias="virtio-balloon"))


register(DeviceModel("virtio-net-pci", "pci", "", {
    "addr": ("str", None), "bus": ("str", None), "netdev": ("str", None), "mac": ("str", None),
    # QEMU's default: 2 per queue pair of the back end, and 2 more
    "vectors": ("int", None), "romfile": ("str", "efi-virtio.rom"),
    "disable-legacy": ("OnOffAuto", "auto"), "disable-modern": ("bool", False),
    "gso": ("bool", True),
    **{name: ("bool", default) for name, (_, default) in NET_FEATURES.items()}},
    category="Network", alias="virtio-net"))


register(DeviceModel("e1000", "pci", "Intel Gigabit Ethernet", {
    "addr": ("str", None), "bus": ("str", None), "netdev": ("str", None), "mac": ("str", None),
    "romfile": ("str", "efi-e1000.rom"), "autonegotiation": ("bool", True),
    "mitigation": ("bool", True)}, category="Network", alias="e1000-82540em"))


register(DeviceModel("rtl8139", "pci", "", {
    "addr": ("str", None), "bus": ("str", None), "netdev": ("str", None), "mac": ("str", None),
    "romfile": ("str", "efi-rtl8139.rom")}, category="Network"))


register(DeviceModel("virtio-rng-pci", "pci", "", {
    "addr": ("str", None), "bus": ("str", None), "vectors": ("int", 2),
    "max-bytes": ("int", (1 << 63) - 1), "period": ("int", 65536), "rng": ("str", None),
    "disable-legacy": ("OnOffAuto", "auto"), "disable-modern": ("bool", False)},
    alias="virtio-rng"))


register(DeviceModel("virtio-blk-pci", "pci", "", {
    "addr": ("str", None), "bus": ("str", None), "drive": ("str", None),
    # QEMU's defaults: a queue per vCPU, and a vector for each and the configuration
    "serial": ("str", None), "num-queues": ("int", None), "vectors": ("int", None),
    "disable-legacy": ("OnOffAuto", "auto"), "disable-modern": ("bool", False)},
    category="Storage", alias="virtio-blk"))


register(DeviceModel("virtio-serial-pci", "pci", "", {
    "addr": ("str", None), "bus": ("str", None), "vectors": ("int", 2),
    "max_ports": ("int", 31), "disable-legacy": ("OnOffAuto", "auto"),
    "disable-modern": ("bool", False)}, category="Input", alias="virtio-serial"))
register(DeviceModel("virtconsole", "virtio-serial", "", {
    "chardev": ("chardev", None), "nr": ("int", 0), "name": ("str", "")}, category="Input"))


class DeviceError(ValueError):
    """A -device/device_add error. The hint is a line QEMU adds on the command line
    only (its error_append_hint)."""

    def __init__(self, message: str, hint: str = "") -> None:
        super().__init__(message)
        self.hint = hint


def validate(driver: str, options: dict[str, str], chardevs: set[str]) -> dict[str, object]:
    """Returns typed properties; raises DeviceError with QEMU's message."""
    model = MODELS.get(resolve(driver))
    if model is None:
        raise DeviceError(f"'{driver}' is not a valid device model name")
    driver = model.name
    typed: dict[str, object] = {k: default for k, (_, default) in model.properties.items()}
    typed["id"] = None
    for key, value in options.items():
        if key in COMMON:
            if key == "id" and not _IDENTIFIER.fullmatch(value):
                raise DeviceError("Parameter 'id' expects an identifier",
                                  hint="Identifiers consist of letters, digits, '-', '.', "
                                       "'_', starting with a letter.")
            typed[key] = value
            continue
        if key not in model.properties:
            raise DeviceError(f"Property '{driver}.{key}' not found")
        kind = model.properties[key][0]
        try:
            if kind == "int":
                typed[key] = parse_int(key, value)
            elif kind == "bool":
                typed[key] = parse_bool(key, value)
            elif kind == "OnOffAuto":
                if value not in ("on", "off", "auto"):
                    raise DeviceError(f"Parameter '{key}' does not accept value '{value}'")
                typed[key] = value
            elif kind == "size":
                typed[key] = parse_size(value)
            elif kind == "chardev":
                if value not in chardevs:
                    owner = model.qom_parent or driver
                    raise DeviceError(f"Property '{owner}.{key}' can't find value '{value}'")
                typed[key] = value
            else:
                typed[key] = value
        except OptsError as e:
            raise DeviceError(str(e)) from None
    return typed


# QEMU's -device help sections, in its order
CATEGORIES = ("Controller/Bridge/Hub", "USB", "Storage", "Network", "Input", "Display",
              "Sound", "Misc", "CPU", "Watchdog", "Uncategorized")
BUS_NAMES = {"isa": "ISA", "pci": "PCI", "virtio-serial": "virtio-serial-bus"}


def resolve(driver: str) -> str:
    """A model's name from its name or QEMU's alias for it."""
    for model in MODELS.values():
        if driver == model.alias:
            return model.name
    return driver


def help_text() -> str:
    """-device help, in QEMU's format: a section per category, models sorted by name."""
    sections = []
    for category in CATEGORIES:
        models = sorted((m for m in MODELS.values() if m.category == category),
                        key=lambda m: m.name)
        if not models:
            continue
        lines = [f"{category} devices:"]
        for m in models:
            line = f'name "{m.name}", bus {BUS_NAMES[m.bus]}'
            if m.alias:
                line += f', alias "{m.alias}"'
            if m.description:
                line += f', desc "{m.description}"'
            lines.append(line)
        sections.append("\n".join(lines) + "\n")
    return "\n".join(sections)
