"""netdev_add / netdev_del (host network back ends, vmm/net/) and query-rx-filter."""

from __future__ import annotations

import re

from monitor.errors import QmpError, device_not_found
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, INT, SIZE, STR, UINT32, Enum, ListOf, Member, Struct, Union
from vmm.net import netdev_options
from vmm.net.netdev_options import NETDEV_TYPES

# The back ends kvmkit has: as a QEMU built without the others, it names only these
NET_CLIENT_DRIVER = Enum("NetClientDriver", NETDEV_TYPES)
ID_PATTERN = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")


def valid_id(name: str) -> bool:
    return ID_PATTERN.fullmatch(name) is not None



def _member_type(kind: str):
    return {netdev_options.STR: STR, netdev_options.BOOL: BOOL, netdev_options.INT: INT,
            netdev_options.UINT32: UINT32, netdev_options.SIZE: SIZE,
            netdev_options.STRINGS: ListOf(Struct("String", (Member("str", STR),)))}[kind]


NETDEV_BASE = (Member("id", STR), Member("type", NET_CLIENT_DRIVER))
# QEMU's Netdev: a flat union on 'type', a branch per back end kvmkit has
NETDEV = Union("Netdev", NETDEV_BASE, "type", tuple(
    (kind, Struct(f"Netdev{kind.capitalize()}Options",
                  tuple(Member(name, _member_type(t), True) for name, t in members.items())))
    for kind, members in netdev_options.MEMBERS.items()))


@command("netdev_add", args=NETDEV_BASE, variants=NETDEV)
def netdev_add(ctx, id, type, props):
    from vmm.net.network import NetError

    if not valid_id(id):
        raise QmpError("Parameter 'id' expects an identifier")
    opts = netdev_options.to_text(type, props)      # typed as QEMU's Netdev, by the registry

    def session_fd(name: str) -> int:
        """fd=NAME: a descriptor passed with getfd (the back end takes it over)."""
        if name.isdigit():
            return int(name)
        if name not in ctx.session.fds:
            raise NetError(f"File descriptor named '{name}' has not been found")
        return ctx.session.fds.pop(name)

    ctx.machine.network.add_netdev(id, type, {"id": id, "type": type, **opts},
                                   fd_lookup=session_fd)


@command("netdev_del", args=[Member("id", STR)])
def netdev_del(ctx, id):
    try:
        ctx.machine.network.remove_netdev(id)
    except KeyError:
        raise device_not_found(id) from None


RX_STATE = Enum("RxState", ("normal", "none", "all"))
RX_FILTER_INFO = Struct("RxFilterInfo", (
    Member("name", STR), Member("promiscuous", BOOL), Member("multicast", RX_STATE),
    Member("unicast", RX_STATE), Member("vlan", RX_STATE), Member("broadcast-allowed", BOOL),
    Member("multicast-overflow", BOOL), Member("unicast-overflow", BOOL),
    Member("main-mac", STR), Member("vlan-table", ListOf(INT)),
    Member("unicast-table", ListOf(STR)), Member("multicast-table", ListOf(STR))))
REGISTRY.event("NIC_RX_FILTER_CHANGED", [Member("name", STR, True), Member("path", STR)])


@command("query-rx-filter", args=[Member("name", STR, True)], returns=ListOf(RX_FILTER_INFO))
def query_rx_filter(ctx, name=None):
    try:
        return ctx.machine.network.query_rx_filter(name)
    except KeyError:
        raise QmpError(f"invalid net client name: {name}") from None


@command("announce-self", args=[
    Member("initial", INT), Member("max", INT), Member("rounds", INT), Member("step", INT),
    Member("interfaces", ListOf(STR), True), Member("id", STR, True)])
def announce_self(ctx, initial, max, rounds, step, interfaces=None, id=None):
    """RARP from the NICs (all, or those named), on QEMU's announce timer."""
    ctx.machine.announce_self(initial, max, rounds, step, interfaces, id)
