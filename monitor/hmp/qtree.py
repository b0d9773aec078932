"""`info qtree`: the device tree as QEMU prints it, from the devices' declarations.

Each bus lists its devices newest first (QEMU inserts at the head). A device
prints its gpio lines, then its qdev properties (its type's first, then its
parents'), then what its bus adds (a PCI function's class and BARs), then the
buses it provides, a virtio proxy's virtio device among them.
"""

from __future__ import annotations

import math

from monitor.commands.pci import CLASS_NAMES
from vmm import qdev
from vmm.device_manager import bus_name

SIZE_SUFFIXES = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")


def size_text(value: int) -> str:
    """QEMU's size_to_str: three significant digits, switching unit at 1000."""
    exponent = math.frexp(value / (1000.0 / 1024.0))[1]
    index = int((exponent - 1) / 10)          # C's division: truncates towards zero
    return f"{value / (1 << (index * 10)):0.3g} {SIZE_SUFFIXES[index]}"


def value_text(prop: qdev.Prop, value) -> str:
    """A property's value as qdev prints it."""
    if prop.kind == "devfn":
        return f"{value >> 3:02x}.{value & 7}"
    if prop.type == "bool":
        return "true" if value else "false"
    if prop.type == "size":
        return f"{value} ({size_text(value)})"
    if prop.type in qdev.INT_RANGES:
        return f"{value} (0x{value & 0xFFFFFFFFFFFFFFFF:x})"
    return f'"{"" if value is None else value}"'


def lines(machine) -> list[str]:
    roots = [d for d in machine.devices if d.type.bus == "System" and d.parent is None]
    out = ["bus: main-system-bus", "  type System"]
    for device in reversed(roots):
        out += _device(machine, device, "  ")
    return out


def _device(machine, device, indent: str) -> list[str]:
    inner = indent + "  "
    out = [f'{indent}dev: {device.driver}, id "{device.id or ""}"']
    out += [inner + gpio for gpio in device.type.gpios]
    values = _live_values(device)
    out += [f"{inner}{p.name} = {value_text(p, values.get(p.name))}"
            for p in qdev.qdev_props(device.type)]
    printer = BUS_PRINTERS.get(device.type.bus)
    if printer is not None:
        out += [inner + line for line in printer(machine, device)]
    if device.type.virtio:
        child = qdev.TYPES[device.type.virtio]
        out += [f"{inner}bus: virtio-bus", f"{inner}  type virtio-pci-bus",
                f'{inner}  dev: {child.name}, id ""']
        out += [f"{inner}    {p.name} = {value_text(p, values.get(p.name))}"
                for p in qdev.qdev_props(child)]
        out += _buses(machine, device, child, inner + "    ")
    out += _buses(machine, device, device.type, inner)
    return out


def _buses(machine, device, device_type, indent: str) -> list[str]:
    out = []
    for template, bus_type in device_type.buses:
        out += [f"{indent}bus: {bus_name(template, device)}", f"{indent}  type {bus_type}"]
        for child in reversed(machine.devices.children(device, bus_type,
                                                       bus_name(template, device))):
            out += _device(machine, child, indent + "  ")
    return out


def _live_values(device) -> dict:
    """Its properties, with what a PCI function's config space says where they differ."""
    values = dict(device.props)
    function = device.obj
    if qdev.implements(device.type, "pci-device") and function is not None:
        values["multifunction"] = bool(function.config[0x0E] & 0x80)
        rom = function.bars.get(6)
        if rom is not None:
            values["romsize"] = rom.size
    return values


def _pci_lines(machine, device) -> list[str]:
    """pci.0's view of a function: its class, address, ids and BARs."""
    function = device.obj
    klass = function.class_code >> 8
    name = CLASS_NAMES.get(klass, f"Class {klass:04x}")
    config = function.config
    sub_vendor, sub = int.from_bytes(config[0x2C:0x2E], "little"), \
        int.from_bytes(config[0x2E:0x30], "little")
    out = [f"class {name}, addr 00:{function.slot:02x}.{function.function}, pci id "
           f"{function.vendor_id:04x}:{function.device_id:04x} (sub {sub_vendor:04x}:{sub:04x})"]
    for bar in sorted(function.bars.values(), key=lambda b: b.index):
        addr = bar.mapped_at         # QEMU prints where it is mapped, all-ones if nowhere
        end = (addr + bar.size - 1) & 0xFFFFFFFFFFFFFFFF
        out.append(f"bar {bar.index}: {'i/o' if bar.kind == 'io' else 'mem'} at 0x{addr:x} "
                   f"[0x{end:x}]")
    return out


def _serial_port_lines(machine, device) -> list[str]:
    """A virtio-serial port. Port 0 counts as open by the guest once a driver without
    MULTIPORT is running, as in QEMU."""
    console = device.obj
    transport = console.transport
    guest = transport is not None and transport.running and \
        not console.negotiated & (1 << 1)                     # VIRTIO_CONSOLE_F_MULTIPORT
    host = bool(device.props.get("chardev"))
    return [f"port {device.props['nr']}, guest {'on' if guest else 'off'}, "
            f"host {'on' if host else 'off'}, throttle off"]


def _sysbus_lines(machine, device) -> list[str]:
    return [f"mmio {base:016x}/{size:016x}" for base, size in device.type.extra.get("mmio", ())]


BUS_PRINTERS = {"PCI": _pci_lines, "virtio-serial-bus": _serial_port_lines,
                "System": _sysbus_lines}
