"""Device hot-unplug (device_del) and link state (set_link)."""

from __future__ import annotations

from monitor.errors import QmpError, device_not_found
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, STR, Member

REGISTRY.event("DEVICE_DELETED", [Member("device", STR, True), Member("path", STR)])


def find_device(machine, qdev_id: str):
    for instance in machine.device_instances:
        if instance.id == qdev_id:
            return instance
    raise device_not_found(qdev_id)


@command("device_del", args=[Member("id", STR)])
def device_del(ctx, id):
    from vmm.device_models import MODELS

    instance = find_device(ctx.machine, id)
    bus = MODELS[instance.driver].bus
    unplug = getattr(ctx.machine, "request_unplug", None)
    if bus != "pci" or unplug is None:
        raise QmpError(f"Bus '{bus}.0' does not support hotplugging")
    unplug(instance)


@command("set_link", args=[Member("name", STR), Member("up", BOOL)])
def set_link(ctx, name, up):
    links = getattr(ctx.machine, "net_clients", {})
    client = links.get(name)
    if client is None:
        raise device_not_found(name)
    client.set_link(up)
