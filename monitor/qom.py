"""A QOM view of the machine, as qom-list/qom-get/qom-set and `info qom-tree` see it.

The tree is rebuilt from the machine on each request, so it is never stale:
/machine/peripheral/<id> for devices with an id, /machine/peripheral-anon
for the others, /machine/unattached/device[N] for the CPUs, /chardevs.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.errors import QmpError, device_not_found
from monitor.types import BOOL, STR, Builtin, Type

CHECKS: dict[str, Type] = {"bool": BOOL, "str": STR, "OnOffAuto": STR, **{
    kind: Builtin(kind, "int") for kind in ("size", "int", "int32", "uint8", "uint16",
                                             "uint32", "uint64")}}


@dataclass
class Prop:
    name: str
    type: str
    get: Callable[[], Any] | None = None
    set: Callable[[Any], None] | None = None


@dataclass
class QomObject:
    typename: str
    props: list[Prop] = field(default_factory=list)
    children: dict[str, QomObject] = field(default_factory=dict)

    def add_child(self, name: str, child: QomObject) -> QomObject:
        self.children[name] = child
        return child

    def properties(self) -> list[Prop]:
        props = [Prop("type", "string", lambda: self.typename), *self.props]
        props += [Prop(name, f"child<{child.typename}>", None)
                  for name, child in self.children.items()]
        return props

    def find_prop(self, name: str) -> Prop | None:
        return next((p for p in self.properties() if p.name == name), None)


def _container() -> QomObject:
    return QomObject("container")


def _device_object(machine, device) -> QomObject:
    from vmm import qdev

    obj = QomObject(device.driver)
    bus = machine.devices.first_bus(device.type.bus) or ""
    obj.props += [
        Prop("parent_bus", "link<bus>", lambda: f"/machine/unattached/{bus}"),
        Prop("realized", "bool", lambda: True, _stay_realized),
        Prop("hotplugged", "bool", lambda: device.hotplugged),
        Prop("hotpluggable", "bool", lambda: device.type.hotpluggable),
    ]
    for prop in reversed(qdev.all_props(device.type)):   # QEMU lists the newest first
        if prop.writable:
            obj.props.append(Prop(prop.name, prop.type,
                                  (lambda name=prop.name: _prop_value(device, name)),
                                  _after_realize(device, prop.name)))
    # Properties a running device answers itself (the balloon's guest-stats...).
    backend = getattr(device.obj, "backend", device.obj)
    for name, kind, get, set_ in getattr(backend, "live_properties", list)():
        obj.props = [p for p in obj.props if p.name != name]
        obj.props.append(Prop(name, kind, get, set_))
    return obj


def _stay_realized(value: bool) -> None:
    """QEMU lets qom-set unrealize a device in place; kvmkit unplugs with device_del
    only (setting it true, as it is, changes nothing in either)."""
    if not value:
        raise QmpError("kvmkit does not unrealize a device through 'realized' "
                       "(device_del unplugs it)")


def _prop_value(device, name: str) -> Any:
    value = device.props.get(name)
    return "" if value is None else value


def _after_realize(device, name: str) -> Callable[[Any], None]:
    def refuse(value: Any) -> None:
        raise QmpError(f"Attempt to set property '{name}' on device "
                       f"'{device.id or ''}' (type '{device.driver}') after it was realized")
    refuse.refuses = True                           # type: ignore[attr-defined]
    return refuse


def build_tree(machine) -> QomObject:
    from monitor.commands.core import cpu_qom_path

    root = _container()
    m = root.add_child("machine", QomObject("pc-i440fx-7.2-machine"))
    peripheral = m.add_child("peripheral", _container())
    anon = m.add_child("peripheral-anon", _container())
    unattached = m.add_child("unattached", _container())
    for index, _thread in enumerate(machine.vcpus):
        cpu = QomObject(f"{machine.cfg.cpu.model}-x86_64-cpu")
        cpu.props.append(Prop("apic-id", "uint32", lambda index=index: index))
        unattached.add_child(cpu_qom_path(index).rsplit("/", 1)[1], cpu)
    for device in machine.devices.user_devices():
        parent, _, name = machine.devices.path(device).rpartition("/")
        (peripheral if parent.endswith("/peripheral") else anon).add_child(
            name, _device_object(machine, device))
    chardevs = root.add_child("chardevs", _container())
    for chardev in machine.chardevs.values():
        chardevs.add_child(chardev.id, QomObject(f"chardev-{chardev.backend}"))
    objects = root.add_child("objects", _container())
    for obj in machine.objects.by_id.values():
        objects.add_child(obj.id, _user_object(obj))
    return root


def _user_object(obj) -> QomObject:
    """An -object/object-add object: its properties as given, or their defaults."""
    from vmm import objects as user_objects

    node = QomObject(obj.qom_type)
    for p in user_objects.TYPES[obj.qom_type]:
        if p.name in user_objects.READ_ONLY:
            node.props.append(Prop(p.name, p.type, lambda: True))
        elif p.name in obj.props:
            node.props.append(Prop(p.name, p.type, lambda v=obj.props[p.name]: v))
    return node


def _walk(obj: QomObject, path: str):
    yield path or "/", obj
    for name, child in obj.children.items():
        yield from _walk(child, f"{path}/{name}")


def resolve(machine, path: str, say_ambiguous: bool = True) -> QomObject:
    """The object at a path, or at the end of a partial one; qom-list says when a
    partial path is ambiguous, qom-get and qom-set only that nothing was found."""
    root = build_tree(machine)
    if path.startswith("/"):
        obj = root
        for part in [p for p in path.split("/") if p]:
            obj = obj.children.get(part)
            if obj is None:
                raise device_not_found(path)
        return obj
    # a partial path: the one object whose path ends so ('' ends every path)
    parts = [p for p in path.split("/") if p]
    matches = [obj for full, obj in _walk(root, "")
               if not parts or full.split("/")[-len(parts):] == parts]
    if len(matches) > 1 and say_ambiguous:
        raise QmpError(f"Path '{path}' is ambiguous")
    if len(matches) != 1:
        raise device_not_found(path)
    return matches[0]


def qom_list(machine, path: str) -> list[dict]:
    return [{"name": p.name, "type": p.type} for p in resolve(machine, path).properties()]


def qom_get(machine, path: str, prop_name: str) -> Any:
    obj = resolve(machine, path, say_ambiguous=False)
    prop = obj.find_prop(prop_name)
    if prop is None:
        raise QmpError(f"Property '{obj.typename}.{prop_name}' not found")
    if prop.get is None:
        return f"{path.rstrip('/')}/{prop_name}"   # a child<> property reads as its path
    return prop.get()


def qom_set(machine, path: str, prop_name: str, value: Any) -> None:
    obj = resolve(machine, path, say_ambiguous=False)
    prop = obj.find_prop(prop_name)
    if prop is None:
        raise QmpError(f"Property '{obj.typename}.{prop_name}' not found")
    if prop.set is None:
        raise QmpError(f"Property '{obj.typename}.{prop_name}' is not writable")
    if getattr(prop.set, "refuses", False):      # a device's own setting, once realized:
        prop.set(value)                          # refused before its value is read
    check = CHECKS.get(prop.type)
    if check is not None:
        value = check.check(prop_name, value)
    prop.set(value)


def tree_lines(machine, path: str = "/machine") -> list[str]:
    """`info qom-tree`: each object with its type, children indented."""
    obj = resolve(machine, path)
    lines: list[str] = []

    def visit(name: str, node: QomObject, depth: int) -> None:
        lines.append(f"{'  ' * depth}{name} ({node.typename})")
        for child_name, child in node.children.items():
            visit("/" + child_name, child, depth + 1)

    visit("/" + path.rstrip("/").split("/")[-1] if path != "/" else "/", obj, 0)
    return lines
