"""Devices: hotplug (device_add, device_del), link state (set_link), and the type
introspection libvirt reads (qom-list-types, device-list-properties,
qom-list-properties), all from the models' declarations in vmm/devices/."""

from __future__ import annotations

from monitor import qom
from monitor.errors import DEVICE_NOT_FOUND, QmpError, device_not_found
from monitor.registry import REGISTRY, command
from monitor.types import ANY, BOOL, STR, ListOf, Member, Struct, option_text
from vmm import objects as user_objects
from vmm import qdev
from vmm.cpu_models import FEATURES, MODEL_NAMES

REGISTRY.event("DEVICE_DELETED", [Member("device", STR, True), Member("path", STR)])


def find_device(machine, qdev_id: str):
    """QEMU's find_device_state: an id is a QOM path relative to /machine/peripheral
    (or an absolute one), so '' names that container and '/machine' the machine:
    objects there, but not devices."""
    if "/" not in qdev_id and qdev_id:
        device = machine.devices.find(qdev_id)
        if device is None:
            raise device_not_found(qdev_id)
        return device
    base = [] if qdev_id.startswith("/") else ["machine", "peripheral"]
    path = "/" + "/".join(base + [part for part in qdev_id.split("/") if part])
    device = next((d for d in machine.devices if machine.devices.path(d) == path), None)
    if device is not None:
        return device
    try:
        qom.resolve(machine, path)
    except QmpError:
        raise device_not_found(qdev_id) from None
    raise QmpError(f"{qdev_id} is not a hotpluggable device")


def _bus_of(machine, device_type, bus: str | None = None) -> str:
    """The name of the board's bus a device of this type would go on (isa.0, pci.0),
    or the one named."""
    return bus or machine.devices.bus_for(device_type) or device_type.bus or "main-system-bus"


@command("device_add", args=[Member("driver", STR), Member("bus", STR, True),
                             Member("id", STR, True)], extra_args=True,
         features=("json-cli", "json-cli-hotplug"))
def device_add(ctx, props):
    """QEMU 7.2 reads device_add's arguments as -device's option text: a number or a
    boolean becomes text, a list, an object or a null is passed over, and an id that
    is not a string is no id; then the id is checked, the model, the bus, and only
    then whether that bus takes hotplugged devices."""
    machine = ctx.machine
    options = {k: option_text(v) for k, v in props.items()
               if v is not None and not isinstance(v, (list, dict))}
    if not isinstance(props.get("id"), str):
        options.pop("id", None)
    if "id" in options:
        qdev.check_id(options["id"])
    driver = options.pop("driver", None)
    if driver is None:
        raise QmpError("Parameter 'driver' is missing")
    device_type = qdev.lookup(driver)
    if device_type is None or device_type.abstract:
        raise QmpError(f"'{driver}' is not a valid device model name")
    if device_type.name in qdev.BOARD_PARTS | qdev.UNPLUGGABLE_TYPES:
        raise QmpError("Parameter 'driver' expects a pluggable device type")
    if "bus" in options:
        machine.devices.check_bus(device_type, options["bus"])
    if not device_type.hotpluggable:
        raise QmpError(f"Bus '{_bus_of(machine, device_type, options.get('bus'))}' does not "
                       "support hotplugging")
    if "id" in options and machine.devices.find(options["id"]) is not None:
        raise QmpError(f"Duplicate device ID '{options['id']}'")
    machine.hotplug_device(driver, options)


@command("device_del", args=[Member("id", STR)])
def device_del(ctx, id):
    device = find_device(ctx.machine, id)
    if not device.type.hotpluggable:
        raise QmpError(f"Bus '{_bus_of(ctx.machine, device.type)}' does not support "
                       f"hotplugging")
    ctx.machine.request_unplug(device)


@command("set_link", args=[Member("name", STR), Member("up", BOOL)])
def set_link(ctx, name, up):
    try:
        ctx.machine.network.set_link(name, up)
    except KeyError:
        raise device_not_found(name) from None


# QOM types kvmkit has that are not devices (vmm.qdev): name -> (parent, abstract)
OTHER_TYPES: dict[str, tuple[str, bool]] = {
    "container": ("object", False),
    "machine": ("object", True), "x86-machine": ("machine", True),
    "generic-pc-machine": ("x86-machine", True),
    "pc-i440fx-7.2-machine": ("generic-pc-machine", False), "none-machine": ("machine", False),
    "cpu": ("device", True), "x86_64-cpu": ("cpu", True),
    **{f"{name}-x86_64-cpu": ("max-x86_64-cpu" if name == "host" else "x86_64-cpu", False)
       for name in MODEL_NAMES},
    "memory-backend": ("object", True), "rng-backend": ("object", True),
    "secret_common": ("object", True), "event-loop-base": ("object", True),
    **{name: ({"rng": "rng-backend", "memory": "memory-backend", "secret": "secret_common",
               "iothread": "event-loop-base"}.get(name.split("-")[0], "object"), False)
       for name in user_objects.TYPES},
}


def _other_implements(name: str, ancestor: str) -> bool:
    while name in OTHER_TYPES:
        if name == ancestor:
            return True
        name = OTHER_TYPES[name][0]
    return name == ancestor


@command("qom-list-types", args=[Member("implements", STR, True),
                                 Member("abstract", BOOL, True)],
         returns=ListOf(Struct("ObjectTypeInfo", (Member("name", STR),
                                                  Member("abstract", BOOL, True),
                                                  Member("parent", STR, True)))))
def qom_list_types(ctx, implements=None, abstract=False):
    found = []
    for t in qdev.all_types():
        if (t.abstract and not abstract) or \
                (implements is not None and not qdev.implements(t, implements)):
            continue
        entry = {"name": t.name, **({"abstract": True} if t.abstract else {}),
                 "parent": t.parent or "object"}
        found.append(entry)
    for name, (parent, is_abstract) in OTHER_TYPES.items():
        if (is_abstract and not abstract) or \
                (implements is not None and not _other_implements(name, implements)):
            continue
        found.append({"name": name, **({"abstract": True} if is_abstract else {}),
                      "parent": parent})
    return found


PROPERTY_INFO = ListOf(Struct("ObjectPropertyInfo", (
    Member("name", STR), Member("type", STR), Member("description", STR, True),
    Member("default-value", ANY, True))))


def _property_info(prop: qdev.Prop, with_default: bool) -> dict:
    info = {"name": prop.name, "type": prop.type}
    if prop.description:
        info["description"] = prop.description
    if with_default and prop.default is not None:
        info["default-value"] = prop.default
    return info


@command("device-list-properties", args=[Member("typename", STR)], returns=PROPERTY_INFO)
def device_list_properties(ctx, typename):
    device_type = qdev.TYPES.get(typename) if qdev.lookup(typename) else None
    if device_type is None and (typename in OTHER_TYPES or typename == "object"):
        raise QmpError("Parameter 'typename' expects a non-abstract device type")
    if device_type is None:
        raise device_not_found(typename)
    if device_type.abstract:
        raise QmpError("Parameter 'typename' expects a non-abstract device type")
    return [_property_info(p, with_default=True) for p in qdev.all_props(device_type)]


# Properties every QOM device has, which qom-list-properties lists and
# device-list-properties leaves out
DEVICE_OBJECT_PROPS = (qdev.Prop("type", "string"), qdev.Prop("parent_bus", "link<bus>"),
                       qdev.Prop("realized", "bool"), qdev.Prop("hotplugged", "bool"),
                       qdev.Prop("hotpluggable", "bool"))


@command("qom-list-properties", args=[Member("typename", STR)], returns=PROPERTY_INFO)
def qom_list_properties(ctx, typename):
    """The properties of the type and its parents (not a virtio proxy's child's),
    without defaults, as QEMU."""
    device_type = qdev.TYPES.get(typename)
    if device_type is None:
        if typename in user_objects.TYPES:
            return user_objects.qom_properties(typename)
        if typename.endswith("-machine") and typename in OTHER_TYPES:
            return [{"name": "type", "type": "string"}] + MACHINE_PROPS
        if typename.endswith("-x86_64-cpu") and typename in OTHER_TYPES:
            return _cpu_properties()
        if typename in OTHER_TYPES:
            return [{"name": "type", "type": "string"}]
        raise QmpError(f"Class '{typename}' not found", DEVICE_NOT_FOUND)
    props = [p for t in reversed(qdev.ancestry(device_type)) for p in t.props]
    if qdev.implements(device_type, "pci-device"):
        pci = len(qdev.TYPES["pci-device"].props)
        props.insert(pci, qdev.Prop("legacy-addr", "str"))
    return [_property_info(p, with_default=False) for p in (*DEVICE_OBJECT_PROPS, *props)]


# the -machine properties kvmkit reads (vmm/config.py), with QEMU's descriptions
MACHINE_PROPS = [
    {"name": "kernel", "description": "Linux kernel image file", "type": "string"},
    {"name": "initrd", "description": "Linux initial ramdisk file", "type": "string"},
    {"name": "append", "description": "Linux kernel command line", "type": "string"},
    {"name": "usb", "description": "Set on/off to enable/disable usb", "type": "bool"},
    {"name": "memory-backend", "description": "Set RAM backendValid value is ID of hostmem "
     "based backend", "type": "link<memory-backend>"},
    {"name": "dump-guest-core", "description": "Include guest memory in a core dump",
     "type": "bool"},
    {"name": "mem-merge", "description": "Enable/disable memory merge support",
     "type": "bool"},
    {"name": "peripheral-anon", "type": "child<container>"},
    {"name": "peripheral", "type": "child<container>"}]


def _cpu_properties() -> list[dict]:
    """An x86 CPU's feature flags and identity, the names -cpu and
    query-cpu-model-expansion take."""
    props = [{"name": "type", "type": "string"}]
    props += [{"name": name, "type": "bool"} for name in FEATURES]
    props += [{"name": "vendor", "type": "string"}, {"name": "model-id", "type": "string"},
              {"name": "family", "type": "int"}, {"name": "model", "type": "int"},
              {"name": "stepping", "type": "int"}, {"name": "level", "type": "uint32"},
              {"name": "xlevel", "type": "uint32"}]
    return props
