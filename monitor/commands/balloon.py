"""balloon / query-balloon (the virtio-balloon device itself is vmm's, when present)."""

from __future__ import annotations

from monitor.errors import DEVICE_NOT_ACTIVE, QmpError
from monitor.registry import REGISTRY, command
from monitor.types import INT, Member, Struct

REGISTRY.event("BALLOON_CHANGE", [Member("actual", INT)])


def active_balloon(machine):
    balloon = getattr(machine, "balloon", None)
    if balloon is None:
        raise QmpError("No balloon device has been activated", DEVICE_NOT_ACTIVE)
    return balloon


@command("balloon", args=[Member("value", INT)])
def balloon(ctx, value):
    device = active_balloon(ctx.machine)
    if value <= 0:
        raise QmpError("Parameter 'target' expects a size")
    device.set_target(value)


@command("query-balloon", returns=Struct("BalloonInfo", (Member("actual", INT),)))
def query_balloon(ctx):
    return {"actual": active_balloon(ctx.machine).actual_bytes()}
