"""netdev_add / netdev_del: host network back ends.

Until kvmkit's back ends land (user, tap, bridge: issue 7), a valid request
gets QEMU's own answer for a back end a binary lacks.
"""

from __future__ import annotations

import re

from monitor.errors import QmpError, device_not_found
from monitor.registry import command
from monitor.types import STR, Enum, Member

NET_CLIENT_DRIVER = Enum("NetClientDriver", (
    "none", "nic", "user", "tap", "l2tpv3", "socket", "stream", "dgram", "vde", "bridge",
    "hubport", "netmap", "vhost-user", "vhost-vdpa"))
ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def valid_id(name: str) -> bool:
    return ID_PATTERN.fullmatch(name) is not None


@command("netdev_add", args=[Member("id", STR), Member("type", NET_CLIENT_DRIVER)],
         extra_args=True)
def netdev_add(ctx, id, type, props):
    if not valid_id(id):
        raise QmpError("Parameter 'id' expects an identifier")
    add = getattr(ctx.machine, "add_netdev", None)
    if add is None:
        raise QmpError(f"network backend '{type}' is not compiled into this binary")
    add(id, type, props)


@command("netdev_del", args=[Member("id", STR)])
def netdev_del(ctx, id):
    remove = getattr(ctx.machine, "remove_netdev", None)
    if remove is None:
        raise device_not_found(id)
    remove(id)
