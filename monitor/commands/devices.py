"""Device hotplug (device_add, device_del) and link state (set_link)."""

from __future__ import annotations

from monitor.errors import QmpError, device_not_found
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, STR, ListOf, Member, Struct, option_text

REGISTRY.event("DEVICE_DELETED", [Member("device", STR, True), Member("path", STR)])


def find_device(machine, qdev_id: str):
    for instance in machine.device_instances:
        if instance.id == qdev_id:
            return instance
    raise device_not_found(qdev_id)


@command("device_add", args=[Member("driver", STR), Member("bus", STR, True),
                             Member("id", STR, True)], extra_args=True)
def device_add(ctx, driver, props, bus=None, id=None):
    from vmm.device_models import MODELS

    model = MODELS.get(driver)
    if model is None:
        raise QmpError(f"'{driver}' is not a valid device model name")
    if id is not None and any(d.id == id for d in ctx.machine.device_instances):
        raise QmpError(f"Duplicate device ID '{id}'")
    hotplug = getattr(ctx.machine, "hotplug_device", None)
    if model.bus != "pci" or hotplug is None:
        raise QmpError(f"Bus '{model.bus}.0' does not support hotplugging")
    options = {k: option_text(v) for k, v in props.items()}
    if bus is not None:
        options["bus"] = bus
    try:
        hotplug(driver, {**options, **({"id": id} if id is not None else {})})
    except ValueError as e:
        raise QmpError(str(e)) from None



@command("device_del", args=[Member("id", STR)])
def device_del(ctx, id):
    from vmm.device_models import MODELS

    instance = find_device(ctx.machine, id)
    bus = MODELS[instance.driver].bus
    unplug = getattr(ctx.machine, "request_unplug", None)
    if bus != "pci" or unplug is None:
        raise QmpError(f"Bus '{bus}.0' does not support hotplugging")
    try:
        unplug(instance)
    except ValueError as e:       # already being unplugged
        raise QmpError(str(e)) from None


@command("set_link", args=[Member("name", STR), Member("up", BOOL)])
def set_link(ctx, name, up):
    try:
        with ctx.machine.lock:    # the vCPUs see the link and its interrupt together
            ctx.machine.network.set_link(name, up)
    except KeyError:
        raise device_not_found(name) from None


@command("qom-list-types", args=[Member("implements", STR, True),
                                 Member("abstract", BOOL, True)],
         returns=ListOf(Struct("ObjectTypeInfo", (Member("name", STR),
                                                  Member("abstract", BOOL, True),
                                                  Member("parent", STR, True)))))
def qom_list_types(ctx, implements=None, abstract=False):
    from vmm.device_models import MODELS

    if implements not in (None, "device", "pci-device", "isa-device"):
        return []
    wanted = {"pci-device": "pci", "isa-device": "isa"}.get(implements)
    return [{"name": m.name, "parent": f"{m.bus}-device"} for m in MODELS.values()
            if wanted is None or m.bus == wanted]


# QOM types kvmkit shows that are not devices (QEMU answers these differently)
NON_DEVICE_TYPES = ("container", "pc-i440fx-7.2-machine", "device", "pci-device",
                    "isa-device")


@command("device-list-properties", args=[Member("typename", STR)],
         returns=ListOf(Struct("ObjectPropertyInfo", (Member("name", STR),
                                                      Member("type", STR)))))
def device_list_properties(ctx, typename):
    from monitor.qom import QOM_TYPES
    from vmm.device_models import MODELS

    model = MODELS.get(typename)
    if model is None and typename in NON_DEVICE_TYPES:
        raise QmpError("Parameter 'typename' expects a non-abstract device type")
    if model is None:
        raise device_not_found(typename)
    return [{"name": name, "type": QOM_TYPES.get(kind, "str")}
            for name, (kind, _default) in model.properties.items()]
