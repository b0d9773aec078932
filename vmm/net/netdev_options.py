"""-netdev and netdev_add members by back-end type, with QEMU's QAPI types
(NetdevUserOptions, NetdevTapOptions, NetdevBridgeOptions), for the back ends
kvmkit has: every member QEMU 7.2 lists, each one either implemented or refused
by its back end with a clear error (none is taken in silence).

Option text (-netdev user,ipv4=on) is read as QEMU's keyval does; JSON
(-netdev {...}, netdev_add) is checked as QEMU's QAPI visitor checks it, and
both become the option-text dictionary the back ends take. A list member
(hostfwd, guestfwd, dnssearch: QEMU's [String]) becomes a list of texts.
"""

from __future__ import annotations

from typing import Any

from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_bool, parse_int, parse_opts_repeated, parse_size

STR, BOOL, INT, UINT32, SIZE, STRINGS = "str", "bool", "int", "uint32", "size", "[String]"
MEMBERS: dict[str, dict[str, str]] = {
    "user": {"hostname": STR, "restrict": BOOL, "ipv4": BOOL, "ipv6": BOOL, "ip": STR,
             "net": STR, "host": STR, "tftp": STR, "bootfile": STR, "dhcpstart": STR,
             "dns": STR, "dnssearch": STRINGS, "domainname": STR, "ipv6-prefix": STR,
             "ipv6-prefixlen": INT, "ipv6-host": STR, "ipv6-dns": STR, "smb": STR,
             "smbserver": STR, "hostfwd": STRINGS, "guestfwd": STRINGS,
             "tftp-server-name": STR},
    "tap": {"ifname": STR, "fd": STR, "fds": STR, "script": STR, "downscript": STR,
            "br": STR, "helper": STR, "sndbuf": SIZE, "vnet_hdr": BOOL, "vhost": BOOL,
            "vhostfd": STR, "vhostfds": STR, "vhostforce": BOOL, "queues": UINT32,
            "poll-us": UINT32},
    "bridge": {"br": STR, "helper": STR},
}
NETDEV_TYPES = tuple(MEMBERS)
# The rest of QEMU 7.2's NetClientDriver: named, and refused as kvmkit's
QEMU_ONLY_TYPES = ("l2tpv3", "socket", "stream", "dgram", "vde", "hubport", "netmap",
                   "vhost-user", "vhost-vdpa")
LIST_MEMBERS = frozenset(name for members in MEMBERS.values()
                         for name, kind in members.items() if kind == STRINGS)
EXPECTED = {STR: "string", BOOL: "boolean", INT: "integer", UINT32: "integer",
            SIZE: "integer"}


def from_json(kind: str, members: dict[str, Any]) -> dict[str, Any]:
    """JSON members as option text, after QEMU's type checks."""
    known = MEMBERS.get(kind, {})
    for key, value in members.items():
        member_type = known.get(key)
        if member_type is None:
            raise UserError(f"Parameter '{key}' is unexpected")
        if member_type == STRINGS:
            if not isinstance(value, list):
                raise UserError(f"Invalid parameter type for '{key}', expected: array")
            for index, item in enumerate(value):
                if not isinstance(item, dict) or not isinstance(item.get("str"), str) or \
                        set(item) != {"str"}:
                    raise UserError(f"Invalid parameter type for '{key}[{index}]', "
                                    f"expected: object")
            continue
        wanted = {STR: str, BOOL: bool, INT: int, UINT32: int, SIZE: int}[member_type]
        if not isinstance(value, wanted) or (wanted is int and isinstance(value, bool)):
            raise UserError(f"Invalid parameter type for '{key}', expected: "
                            f"{EXPECTED[member_type]}")
    return to_text(kind, members)


def to_text(kind: str, members: dict[str, Any]) -> dict[str, Any]:
    """Members already of their QAPI types (netdev_add's, checked by the registry) as
    the option text the back ends take."""
    known = MEMBERS.get(kind, {})
    opts: dict[str, Any] = {}
    for key, value in members.items():
        if known.get(key) == STRINGS:
            opts[key] = [item["str"] for item in value]
        elif known.get(key) == BOOL:
            opts[key] = "on" if value else "off"
        else:
            opts[key] = str(value)
    return opts


def parse_text(text: str, implied: str = "type") -> dict[str, Any]:
    """-netdev/-net/-nic/netdev_add option text, as QEMU's opts visitor reads it: a
    list member may be given again and again (hostfwd=...,hostfwd=...), and the
    text-only convenience ipv6-net=PREFIX[/LEN] stands for ipv6-prefix and
    ipv6-prefixlen."""
    opts: dict[str, Any] = {}
    for key, value in parse_opts_repeated(text, implied):
        if key in LIST_MEMBERS:
            opts.setdefault(key, []).append(value)
        else:
            opts[key] = value
    if "ipv6-net" in opts:
        prefix, _, length = opts.pop("ipv6-net").partition("/")
        if not prefix:
            raise UserError("Parameter 'ipv6-net' expects a valid IPv6 prefix")
        if length and not length.isdigit():
            raise UserError("Parameter 'ipv6-prefixlen' expects a number")
        opts["ipv6-prefix"], opts["ipv6-prefixlen"] = prefix, length or "64"
    return opts


def from_text(kind: str, opts: dict[str, Any]) -> dict[str, Any]:
    """Option text (HMP's netdev_add user,ipv4=on; from parse_text) as the JSON
    values QMP takes."""
    known = MEMBERS.get(kind, {})
    typed: dict[str, Any] = {}
    for key, text in opts.items():
        if known.get(key) == STRINGS:
            typed[key] = [{"str": item} for item in ([text] if isinstance(text, str) else text)]
            continue
        member_type = known.get(key)
        try:
            if member_type == BOOL:
                typed[key] = parse_bool(key, text)
            elif member_type in (INT, UINT32):
                typed[key] = parse_int(key, text)
            elif member_type == SIZE:
                typed[key] = parse_size(text)
            else:
                typed[key] = text
        except OptsError as e:
            raise UserError(str(e) if member_type != SIZE else
                            f"Parameter '{key}' expects a size") from None
    return typed
