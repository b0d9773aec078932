"""-netdev user's options checked and resolved as QEMU 7.2's net/slirp.c does:
the addresses of the virtual network (IPv4 and IPv6), what the DHCP server
offers, and the forwarding rules, with QEMU's error for each bad value.

The back end (vmm/net/slirp.py) hands the result to libslirp.
"""

from __future__ import annotations

import ipaddress
import os
import socket
from dataclasses import dataclass, field

from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_bool

SMBD = "/usr/sbin/smbd"          # QEMU's CONFIG_SMBD_COMMAND on Debian


class SlirpConfigError(UserError):
    pass


@dataclass
class SlirpSettings:
    restricted: bool = False
    ipv4: bool = True
    ipv6: bool = True
    network: str = "10.0.2.0"
    netmask: str = "255.255.255.0"
    host: str = "10.0.2.2"
    dhcp_start: str = "10.0.2.15"
    dns: str = "10.0.2.3"
    prefix6: str = "fec0::"
    prefix6_len: int = 64
    host6: str = "fec0::2"
    dns6: str = "fec0::3"
    hostname: str | None = None
    domainname: str | None = None
    dnssearch: list[str] = field(default_factory=list)
    tftp: str | None = None
    tftp_server_name: str | None = None
    bootfile: str | None = None
    smb: str | None = None
    smbserver: str | None = None
    hostfwd: list[str] = field(default_factory=list)
    guestfwd: list[str] = field(default_factory=list)


def _flag(opts: dict, name: str) -> bool | None:
    if name not in opts:
        return None
    try:
        return parse_bool(name, opts[name])
    except OptsError as e:
        raise SlirpConfigError(str(e)) from None


def _aton(text: str) -> int | None:
    """inet_aton's reading (it takes 10.2 and 0x0a000202 too), as an integer."""
    try:
        return int.from_bytes(socket.inet_aton(text), "big")
    except OSError:
        return None


def _ntoa(value: int) -> str:
    return socket.inet_ntoa(value.to_bytes(4, "big"))


def _classful_mask(net: int) -> int:
    """The mask QEMU gives net=ADDR without a length."""
    if not net & 0x80000000:
        return 0xff000000
    if net & 0xfff00000 == 0xac100000:
        return 0xfff00000
    if net & 0xc0000000 == 0x80000000:
        return 0xffff0000
    if net & 0xffff0000 == 0xc0a80000:
        return 0xffff0000
    if net & 0xffff0000 == 0xc6120000:
        return 0xfffe0000
    if net & 0xe0000000 == 0xe0000000:
        return 0xffffff00
    return 0xfffffff0


def _network(text: str) -> tuple[int, int]:
    """net=ADDR[/LEN or /MASK] as (network, mask)."""
    addr, slash, length = text.partition("/")
    net = _aton(addr)
    if net is None:
        raise SlirpConfigError("Failed to parse netmask")
    if not slash:
        mask = _classful_mask(net)
    elif length.lstrip("+-").isdigit():
        shift = int(length)
        if not 4 <= shift <= 32:
            raise SlirpConfigError("Invalid netmask provided (must be in range 4-32)")
        mask = (0xffffffff << (32 - shift)) & 0xffffffff
    else:
        mask = _aton(length)
        if mask is None:
            raise SlirpConfigError("Failed to parse netmask (trailing chars)")
    return net & mask, mask


def _in6(text: str) -> ipaddress.IPv6Address | None:
    try:
        return ipaddress.IPv6Address(text)
    except ValueError:
        return None


def _same_net6(a: ipaddress.IPv6Address, b: ipaddress.IPv6Address, length: int) -> bool:
    shift = 128 - length
    return int(a) >> shift == int(b) >> shift


def settings(opts: dict) -> SlirpSettings:
    """Option text (vmm.net.netdev_options) as checked settings; QEMU's errors."""
    s = SlirpSettings()
    has_ipv4, has_ipv6 = _flag(opts, "ipv4"), _flag(opts, "ipv6")
    # QEMU: asking for one family alone turns the other off
    s.ipv4 = not ((has_ipv6 and has_ipv4 is None) or has_ipv4 is False)
    s.ipv6 = not ((has_ipv4 and has_ipv6 is None) or has_ipv6 is False)
    s.restricted = bool(_flag(opts, "restrict"))
    vnetwork = opts.get("net") or (f"{opts['ip']}/24" if opts.get("ip") else None)
    if not s.ipv4 and (vnetwork or opts.get("host") or opts.get("dns")):
        raise SlirpConfigError("IPv4 disabled but netmask/host/dns provided")
    if not s.ipv6 and (opts.get("ipv6-prefix") or opts.get("ipv6-host") or
                       opts.get("ipv6-dns")):
        raise SlirpConfigError("IPv6 disabled but prefix/host6/dns6 provided")
    if not s.ipv4 and not s.ipv6:
        raise SlirpConfigError("IPv4 and IPv6 disabled")
    _resolve_ipv4(s, opts, vnetwork)
    _resolve_ipv6(s, opts)
    domain = opts.get("domainname")
    if domain is not None and not domain:
        raise SlirpConfigError("'domainname' parameter cannot be empty")
    for name, label in (("domainname", "domainname"), ("hostname", "vhostname"),
                        ("tftp-server-name", "tftp-server-name")):
        if len(opts.get(name) or "") > 255:
            raise SlirpConfigError(f"'{label}' parameter cannot exceed 255 bytes")
    s.hostname, s.domainname = opts.get("hostname"), domain
    s.tftp, s.bootfile = opts.get("tftp"), opts.get("bootfile")
    s.tftp_server_name = opts.get("tftp-server-name")
    s.dnssearch = _texts(opts.get("dnssearch"))
    s.hostfwd, s.guestfwd = _texts(opts.get("hostfwd")), _texts(opts.get("guestfwd"))
    s.smb, s.smbserver = opts.get("smb"), opts.get("smbserver")
    if s.smbserver is not None and _aton(s.smbserver) is None:
        raise SlirpConfigError("Failed to parse SMB address")
    if s.smbserver is not None and s.smb is None:      # QEMU would ignore it
        raise SlirpConfigError("smbserver= is used only with smb=")
    return s


def _texts(value) -> list[str]:
    if value is None:
        return []
    return [value] if isinstance(value, str) else list(value)


def _resolve_ipv4(s: SlirpSettings, opts: dict, vnetwork: str | None) -> None:
    net, mask = 0x0a000200, 0xffffff00
    host, dhcp, dns = 0x0a000202, 0x0a00020f, 0x0a000203
    if vnetwork:
        net, mask = _network(vnetwork)
        host, dhcp, dns = (net | (low & ~mask & 0xffffffff) for low in (0x0202, 0x020f, 0x0203))
    if opts.get("host") is not None:
        host = _aton(opts["host"])
        if host is None:
            raise SlirpConfigError("Failed to parse host")
    if host & mask != net:
        raise SlirpConfigError("Host doesn't belong to network")
    if opts.get("dns") is not None:
        dns = _aton(opts["dns"])
        if dns is None:
            raise SlirpConfigError("Failed to parse DNS")
    if s.restricted and dns & mask != net:
        raise SlirpConfigError("DNS doesn't belong to network")
    if dns == host:
        raise SlirpConfigError("DNS must be different from host")
    if opts.get("dhcpstart") is not None:
        dhcp = _aton(opts["dhcpstart"])
        if dhcp is None:
            raise SlirpConfigError("Failed to parse DHCP start address")
    if dhcp & mask != net:
        raise SlirpConfigError("DHCP doesn't belong to network")
    if dhcp in (host, dns):
        raise SlirpConfigError("DHCP must be different from host and DNS")
    s.network, s.netmask = _ntoa(net), _ntoa(mask)
    s.host, s.dhcp_start, s.dns = _ntoa(host), _ntoa(dhcp), _ntoa(dns)


def _resolve_ipv6(s: SlirpSettings, opts: dict) -> None:
    prefix = _in6(opts.get("ipv6-prefix") or "fec0::")
    if prefix is None:
        raise SlirpConfigError("Failed to parse IPv6 prefix")
    try:
        length = int(opts.get("ipv6-prefixlen") or 0) or 64
    except ValueError:
        raise SlirpConfigError("Parameter 'ipv6-prefixlen' expects a number") from None
    if not 0 <= length <= 126:
        raise SlirpConfigError("Invalid IPv6 prefix provided "
                               "(IPv6 prefix length must be between 0 and 126)")
    if opts.get("ipv6-host"):
        host6 = _in6(opts["ipv6-host"])
        if host6 is None:
            raise SlirpConfigError("Failed to parse IPv6 host")
        if not _same_net6(prefix, host6, length):
            raise SlirpConfigError("IPv6 Host doesn't belong to network")
    else:
        host6 = ipaddress.IPv6Address(int(prefix) | 2)
    if opts.get("ipv6-dns"):
        dns6 = _in6(opts["ipv6-dns"])
        if dns6 is None:
            raise SlirpConfigError("Failed to parse IPv6 DNS")
        if s.restricted and not _same_net6(prefix, dns6, length):
            raise SlirpConfigError("IPv6 DNS doesn't belong to network")
    else:
        dns6 = ipaddress.IPv6Address(int(prefix) | 3)
    s.prefix6, s.prefix6_len, s.host6, s.dns6 = str(prefix), length, str(host6), str(dns6)


# -- forwarding rules ---------------------------------------------------------------
def _strtol(text: str, base: int = 0) -> int | None:
    """C's strtol with nothing left over (base 0: 0x.. hex, 0.. octal); an empty
    text is 0, as there."""
    digits = text.lstrip(" \t\n\r\f\v")
    sign = -1 if digits.startswith("-") else 1
    if digits[:1] in ("+", "-"):
        digits = digits[1:]
    if base == 0:
        base = 16 if digits[:2].lower() == "0x" and len(digits) > 2 else \
            8 if digits.startswith("0") and len(digits) > 1 else 10
        digits = digits[2:] if base == 16 else digits
    if not digits:
        return 0 if not text.strip() else None
    if not digits.isalnum():
        return None
    try:
        return sign * int(digits, base)
    except ValueError:
        return None


def _port(text: str, low: int) -> int | None:
    value = _strtol(text)
    return value if value is not None and low <= value <= 65535 else None


@dataclass
class HostForward:
    is_udp: bool
    host_addr: str
    host_port: int
    guest_addr: str                 # "0.0.0.0": slirp's first DHCP address
    guest_port: int


def _address_ok(text: str) -> bool:
    return not text or _aton(text) is not None


# hostfwd's fields: the separator after each, and QEMU's reasons when the separator
# is missing or the field is bad (QEMU checks each field before looking further)
HOSTFWD_FIELDS = (
    (":", "No : separators", lambda t: t in ("tcp", "udp", ""), "Bad protocol name"),
    (":", "Missing : separator", _address_ok, "Bad host address"),
    ("-", "Bad host port separator", lambda t: _port(t, 0) is not None, "Bad host port"),
    (":", "Missing guest address", _address_ok, "Bad guest address"))


def parse_hostfwd(rule: str) -> HostForward:
    """[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport; QEMU's reasons."""
    fields, rest = [], rule
    for separator, missing, valid, bad in HOSTFWD_FIELDS:
        if separator not in rest:
            raise SlirpConfigError(f"Invalid host forwarding rule '{rule}' ({missing})")
        field_text, rest = rest.split(separator, 1)
        if not valid(field_text):
            raise SlirpConfigError(f"Invalid host forwarding rule '{rule}' ({bad})")
        fields.append(field_text)
    guest_port = _port(rest, 1)
    if guest_port is None:
        raise SlirpConfigError(f"Invalid host forwarding rule '{rule}' (Bad guest port)")
    proto, host_addr, host_port, guest_addr = fields
    return HostForward(proto == "udp", _canonical(host_addr), _port(host_port, 0),
                       _canonical(guest_addr), guest_port)


def _canonical(address: str) -> str:
    """An address as inet_aton reads it; "" is INADDR_ANY."""
    return _ntoa(_aton(address)) if address else "0.0.0.0"


def parse_hostfwd_key(text: str) -> tuple[bool, str, int] | None:
    """hostfwd_remove's [tcp|udp]:[hostaddr]:hostport, or None (invalid format)."""
    proto, first, rest = text.partition(":")
    host_addr, second, port_text = rest.partition(":")
    port = _strtol(port_text, 10) if port_text.strip() else None
    if not (first and second) or proto not in ("tcp", "udp", "") or \
            not _address_ok(host_addr) or port is None or not -2**31 <= port < 2**31:
        return None
    return proto == "udp", _canonical(host_addr), port


@dataclass
class GuestForward:
    server: str                     # "0.0.0.0": any address slirp does not own
    port: int
    command: str | None             # cmd:COMMAND
    chardev: str | None             # else a chardev in -serial's syntax


def parse_guestfwd(rule: str) -> GuestForward:
    """[tcp]:server:port-dev or [tcp]:server:port-cmd:command."""
    proto, first, rest = rule.partition(":")
    server, second, rest = rest.partition(":")
    port_text, third, target = rest.partition("-")
    port = _strtol(port_text, 10)
    if not (first and second and third) or proto not in ("tcp", "") or \
            not _address_ok(server) or port is None or not 1 <= port <= 65535:
        raise SlirpConfigError(f"Invalid guest forwarding rule '{rule}'")
    server = _canonical(server)
    if target.startswith("cmd:"):
        return GuestForward(server, port, target[4:], None)
    return GuestForward(server, port, None, target)


def smb_config(directory: str, export: str, user: str) -> str:
    """The smb.conf QEMU writes for smb=DIR: one share, [qemu], for the guest."""
    return (f"[global]\nprivate dir={directory}\ninterfaces=127.0.0.1\n"
            f"bind interfaces only=yes\npid directory={directory}\n"
            f"lock directory={directory}\nstate directory={directory}\n"
            f"cache directory={directory}\nncalrpc dir={directory}/ncalrpc\n"
            f"log file={directory}/log.smbd\nsmb passwd file={directory}/smbpasswd\n"
            "security = user\nmap to guest = Bad User\nload printers = no\n"
            "printing = bsd\ndisable spoolss = yes\nusershare max shares = 0\n"
            f"[qemu]\npath={export}\nread only=no\nguest ok=yes\nforce user={user}\n")


def check_smb_export(export: str) -> None:
    if not os.path.exists(SMBD):
        raise SlirpConfigError(f"Could not find '{SMBD}', please install it")
    if not os.access(export, os.R_OK | os.X_OK):
        error = "No such file or directory" if not os.path.exists(export) else \
            "Permission denied"
        raise SlirpConfigError(f"Error accessing shared directory '{export}': {error}")
