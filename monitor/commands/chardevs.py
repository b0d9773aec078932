"""Character devices at run time: query-chardev and -backends, chardev-add, -remove,
-change and -send-break, the ring buffer's ringbuf-write and -read, and yank
(which drops a socket chardev's connection, or a migration's)."""

from __future__ import annotations

import base64
import binascii

from monitor.errors import DEVICE_NOT_FOUND, QmpError
from monitor.registry import command
from monitor.types import BOOL, INT, STR, UINT16, Enum, ListOf, Member, Struct, Union
from vmm.chardev import Chardev, ChardevError, MuxChardev, RingbufChardev, SocketChardev
from vmm.config import ChardevSpec
from vmm.qemuopts import OptsError

# what kvmkit can open, in the order query-chardev-backends lists them
BACKENDS = ("file", "socket", "pty", "null", "stdio", "ringbuf", "memory")
BACKEND_KIND = Enum("ChardevBackendKind", (
    "file", "serial", "parallel", "pipe", "socket", "udp", "pty", "null", "mux", "msmouse",
    "wctablet", "braille", "testdev", "stdio", "console", "spicevmc", "spiceport",
    "qemu-vdagent", "dbus", "vc", "ringbuf", "memory"))
COMMON = (Member("logfile", STR, True), Member("logappend", BOOL, True))
INET = Struct("InetSocketAddress", (
    Member("host", STR), Member("port", STR), Member("numeric", BOOL, True),
    Member("to", UINT16, True),
    Member("ipv4", BOOL, True), Member("ipv6", BOOL, True), Member("keep-alive", BOOL, True),
    Member("mptcp", BOOL, True)))
UNIX = Struct("UnixSocketAddress", (Member("path", STR), Member("abstract", BOOL, True),
                                    Member("tight", BOOL, True)))
VSOCK = Struct("VsockSocketAddress", (Member("cid", STR), Member("port", STR)))
FD = Struct("String", (Member("str", STR),))


def _wrapper(name: str, struct: Struct) -> Struct:
    return Struct(f"q_obj_{name}-wrapper", (Member("data", struct),))


SOCKET_ADDRESS = Union("SocketAddressLegacy", (
    Member("type", Enum("SocketAddressType", ("inet", "unix", "vsock", "fd"))),), "type", (
    ("inet", _wrapper("InetSocketAddress", INET)), ("unix", _wrapper("UnixSocketAddress", UNIX)),
    ("vsock", _wrapper("VsockSocketAddress", VSOCK)), ("fd", _wrapper("String", FD))))


def _struct(name: str, *members: Member) -> Struct:
    return Struct(name, COMMON + members)


HOST_DEVICE = _struct("ChardevHostdev", Member("device", STR))
PLAIN = _struct("ChardevCommon")
BACKEND_STRUCTS = {
    "file": _struct("ChardevFile", Member("in", STR, True), Member("out", STR),
                    Member("append", BOOL, True)),
    "serial": HOST_DEVICE, "parallel": HOST_DEVICE, "pipe": HOST_DEVICE,
    "socket": _struct("ChardevSocket", Member("addr", SOCKET_ADDRESS),
                      Member("tls-creds", STR, True), Member("tls-authz", STR, True),
                      Member("server", BOOL, True), Member("wait", BOOL, True),
                      Member("nodelay", BOOL, True), Member("telnet", BOOL, True),
                      Member("tn3270", BOOL, True), Member("websocket", BOOL, True),
                      Member("reconnect", INT, True)),
    "udp": _struct("ChardevUdp", Member("remote", SOCKET_ADDRESS),
                   Member("local", SOCKET_ADDRESS, True)),
    "pty": PLAIN, "null": PLAIN, "mux": _struct("ChardevMux", Member("chardev", STR)),
    "msmouse": PLAIN, "wctablet": PLAIN, "braille": PLAIN, "testdev": PLAIN,
    "stdio": _struct("ChardevStdio", Member("signal", BOOL, True)), "console": PLAIN,
    "spicevmc": _struct("ChardevSpiceChannel", Member("type", STR)),
    "spiceport": _struct("ChardevSpicePort", Member("fqdn", STR)),
    "qemu-vdagent": _struct("ChardevQemuVDAgent", Member("mouse", BOOL, True),
                            Member("clipboard", BOOL, True)),
    "dbus": _struct("ChardevDBus", Member("name", STR)),
    "vc": _struct("ChardevVC", *(Member(m, INT, True) for m in ("width", "height", "cols",
                                                                "rows"))),
    "ringbuf": _struct("ChardevRingbuf", Member("size", INT, True)),
}
BACKEND_STRUCTS["memory"] = BACKEND_STRUCTS["ringbuf"]
CHARDEV_BACKEND = Union("ChardevBackend", (Member("type", BACKEND_KIND),), "type", tuple(
    (kind, _wrapper(struct.schema_name, struct)) for kind, struct in BACKEND_STRUCTS.items()))
CHARDEV_ARGS = [Member("id", STR), Member("backend", CHARDEV_BACKEND)]
CHARDEV_RETURN = Struct("ChardevReturn", (Member("pty", STR, True),))
DATA_FORMAT = Enum("DataFormat", ("utf8", "base64"))


@command("query-chardev", returns=ListOf(Struct("ChardevInfo", (
    Member("label", STR), Member("filename", STR), Member("frontend-open", BOOL)))))
def query_chardev(ctx):
    return [{"label": c.id, "filename": c.filename, "frontend-open": c.receiver is not None}
            for c in ctx.machine.chardevs.values()]


@command("query-chardev-backends", returns=ListOf(Struct("ChardevBackendInfo", (
    Member("name", STR),))))
def query_chardev_backends(ctx):
    return [{"name": name} for name in BACKENDS]


def _spec(chardev_id: str, backend: dict) -> ChardevSpec:
    """-chardev's options for a QMP ChardevBackend, or the reason kvmkit cannot."""
    kind, data = backend["type"], backend.get("data", {})
    if kind not in BACKENDS:
        raise ChardevError(f"chardev backend '{kind}' is not supported by kvmkit")
    if "logfile" in data:
        raise ChardevError("chardev logfile is not supported by kvmkit")
    if kind == "file":
        if "in" in data:
            raise ChardevError("a file chardev's 'in' file is not supported by kvmkit")
        return ChardevSpec(chardev_id, "file", {
            "path": data["out"], "append": "on" if data.get("append") else "off"})
    if kind == "socket":
        for unsupported in ("tls-creds", "tls-authz", "telnet", "tn3270", "websocket",
                            "reconnect"):
            if data.get(unsupported):
                raise ChardevError(f"socket chardev option '{unsupported}' is not "
                                   "supported by kvmkit")
        addr, options = data["addr"], {
            "server": "on" if data.get("server", True) else "off",   # QMP's default: server
            "wait": "on" if data.get("wait", False) else "off"}
        where = addr.get("data", {})
        if addr["type"] == "unix":
            options["path"] = where["path"]
        elif addr["type"] == "inet":
            options.update(host=where["host"], port=where["port"])
        elif addr["type"] == "fd":
            options["fd"] = where["str"]
        else:
            raise ChardevError("vsock sockets are not supported by kvmkit")
        return ChardevSpec(chardev_id, "socket", options)
    if kind in ("ringbuf", "memory"):
        return ChardevSpec(chardev_id, kind, {"size": str(data.get("size", 65536))})
    if kind == "stdio":
        return ChardevSpec(chardev_id, "stdio",
                           {"signal": "on" if data.get("signal", True) else "off"})
    return ChardevSpec(chardev_id, kind, {})


def _open(ctx, chardev_id: str, backend: dict) -> Chardev:
    from vmm.chardev import make_chardev

    try:
        spec = _spec(chardev_id, backend)
        if spec.backend == "stdio" and any(c.backend == "stdio"
                                           for c in ctx.machine.chardevs.values()):
            raise ChardevError("cannot use stdio by multiple character devices")
        chardev = make_chardev(spec, lambda: ctx.machine.finish(0))
    except (ChardevError, OptsError) as e:
        reason = str(e).split(": ", 1)[-1] if str(e).startswith("-chardev ") else str(e)
        raise QmpError(f"Failed to add chardev '{chardev_id}': {reason}") from None
    if ctx.machine.loop is not None:
        chardev.start(ctx.machine.loop)
    return chardev


def _reply(chardev: Chardev) -> dict:
    return {"pty": chardev.pty_name} if chardev.backend == "pty" else {}


@command("chardev-add", args=CHARDEV_ARGS, returns=CHARDEV_RETURN)
def chardev_add(ctx, id, backend):
    if id in ctx.machine.chardevs:
        raise QmpError(f"Chardev with id '{id}' already exists")
    chardev = _open(ctx, id, backend)
    ctx.machine.chardevs[id] = chardev
    return _reply(chardev)


@command("chardev-change", args=CHARDEV_ARGS, returns=CHARDEV_RETURN)
def chardev_change(ctx, id, backend):
    """A new back end under the same id. A front end keeps the one it holds (none
    of kvmkit's can be switched over yet), so one in use cannot change."""
    old = ctx.machine.chardevs.get(id)
    if old is None:
        raise QmpError(f"Chardev '{id}' does not exist")
    if isinstance(old, MuxChardev):
        raise QmpError("Mux device hotswap not supported yet")
    if old.receiver is not None:
        raise QmpError("Chardev user does not support chardev hotswap")
    new = _open(ctx, id, backend)
    old.close()
    ctx.machine.chardevs[id] = new
    return _reply(new)


def _find(ctx, chardev_id: str) -> Chardev:
    chardev = ctx.machine.chardevs.get(chardev_id)
    if chardev is None:
        raise QmpError(f"Chardev '{chardev_id}' not found")
    return chardev


@command("chardev-remove", args=[Member("id", STR)])
def chardev_remove(ctx, id):
    chardev = _find(ctx, id)
    if chardev.receiver is not None:
        raise QmpError(f"Chardev '{id}' is busy")
    chardev.close()
    del ctx.machine.chardevs[id]


@command("chardev-send-break", args=[Member("id", STR)])
def chardev_send_break(ctx, id):
    _find(ctx, id).send_break()


def _ringbuf(ctx, device: str) -> RingbufChardev:
    chardev = ctx.machine.chardevs.get(device)
    if chardev is None:
        raise QmpError(f"Device '{device}' not found")
    if not isinstance(chardev, RingbufChardev):
        raise QmpError(f"{device} is not a ringbuf device")
    return chardev


def base64_decode(text: str) -> bytes:
    """QEMU's qbase64_decode: only the alphabet, '=' and newlines are allowed; then
    glib decodes whole groups of four, and '=' closes a group early."""
    if "\0" in text:
        raise QmpError("Base64 data contains embedded NUL characters")
    allowed = set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n")
    if any(c not in allowed for c in text):
        raise QmpError("Base64 data contains invalid characters")
    chars = text.replace("\n", "")
    out = bytearray()
    for start in range(0, len(chars) - len(chars) % 4, 4):
        group = chars[start:start + 4]
        padding = len(group) - len(group.rstrip("="))
        try:
            out += binascii.a2b_base64(group.replace("=", "A"))[:3 - min(padding, 2)]
        except binascii.Error:
            pass
    return bytes(out)


@command("ringbuf-write", args=[Member("device", STR), Member("data", STR),
                                Member("format", DATA_FORMAT, True)])
def ringbuf_write(ctx, device, data, format="utf8"):
    ring = _ringbuf(ctx, device)
    ring.write(base64_decode(data) if format == "base64" else data.encode())


@command("ringbuf-read", args=[Member("device", STR), Member("size", INT),
                               Member("format", DATA_FORMAT, True)], returns=STR)
def ringbuf_read(ctx, device, size, format="utf8"):
    ring = _ringbuf(ctx, device)
    if size <= 0:
        raise QmpError("size must be greater than zero")
    data = ring.read(size)
    if format == "base64":
        return base64.b64encode(data).decode()
    # QEMU hands the bytes on as a C string: a NUL ends it, bad UTF-8 becomes U+FFFD
    return data.split(b"\0", 1)[0].decode("utf-8", errors="replace")


# -- yank -----------------------------------------------------------------------------
YANK_INSTANCE = Union("YankInstance", (Member("type", Enum("YankInstanceType", (
    "block-node", "chardev", "migration"))),), "type", (
    ("block-node", Struct("YankInstanceBlockNode", (Member("node-name", STR),))),
    ("chardev", Struct("YankInstanceChardev", (Member("id", STR),))),
    ("migration", Struct("q_empty", ()))))


def _yank_instances(machine) -> list[dict]:
    out = [{"type": "chardev", "id": c.id} for c in machine.chardevs.values()
           if isinstance(c, SocketChardev)]
    migration = machine.migration
    if migration is not None and migration.running:
        out.append({"type": "migration"})
    return out


@command("query-yank", returns=ListOf(YANK_INSTANCE), allow_oob=True)
def query_yank(ctx):
    return _yank_instances(ctx.machine)


@command("yank", args=[Member("instances", ListOf(YANK_INSTANCE))], allow_oob=True)
def yank(ctx, instances):
    """Every instance must exist before any is yanked, as QEMU checks."""
    known = _yank_instances(ctx.machine)
    for instance in instances:
        if instance not in known:
            raise QmpError("Instance not found", DEVICE_NOT_FOUND)
    for instance in instances:
        if instance["type"] == "chardev":
            ctx.machine.chardevs[instance["id"]].yank()
        else:
            ctx.machine.migration.yank()
