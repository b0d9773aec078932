"""Displays and remote desktops: screendump of the display card, the VNC server's
commands (vmm/vnc.py), and the input commands (vmm/input.py). SPICE does not
exist in kvmkit, and its commands answer as QEMU 7.2 answers without it."""

from __future__ import annotations

import os

from monitor import image
from monitor.commands.exports import SOCKET_ADDRESS_FLAT
from monitor.errors import DEVICE_NOT_ACTIVE, QmpError
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, INT, STR, Enum, ListOf, Member, Struct, Union
from vmm import input as input_layer

SPICE_NOT_IN_USE = "SPICE is not in use"
NO_VNC = "Can not find vnc display"
DISPLAY_PROTOCOL = Enum("DisplayProtocol", ("vnc", "spice"))


@command("query-display-options", returns=Struct("DisplayOptions", (
    Member("type", Enum("DisplayType", ("default", "none", "gtk", "sdl", "egl-headless",
                                         "curses", "cocoa", "spice-app", "dbus"))),
    Member("full-screen", BOOL, True), Member("window-close", BOOL, True),
    Member("show-cursor", BOOL, True), Member("gl", STR, True))))
def query_display_options(ctx):
    return {"type": "none"}                # kvmkit opens no window, whatever -display says


@command("query-mice", returns=ListOf(Struct("MouseInfo", (
    Member("name", STR), Member("index", INT), Member("current", BOOL),
    Member("absolute", BOOL)))))
def query_mice(ctx):
    hub = ctx.machine.input
    current = hub.current_mouse()
    # QEMU builds the list by prepending: the last handler comes first
    return [{"name": m.name, "index": m.index, "current": m is current,
             "absolute": m.absolute} for m in reversed(hub.mice())]


KEY_VALUE = Union("KeyValue", (Member("type", Enum("KeyValueKind", ("number", "qcode"))),),
                  "type", (("number", Struct("IntWrapper", (Member("data", INT),))),
                           ("qcode", Struct("QKeyCodeWrapper", (
                               Member("data", Enum("QKeyCode", input_layer.QKEYCODES)),)))))
INPUT_EVENT = Union("InputEvent", (Member("type", Enum("InputEventKind", (
    "key", "btn", "rel", "abs"))),), "type", (
    ("key", Struct("InputKeyEventWrapper", (Member("data", Struct("InputKeyEvent", (
        Member("key", KEY_VALUE), Member("down", BOOL)))),))),
    ("btn", Struct("InputBtnEventWrapper", (Member("data", Struct("InputBtnEvent", (
        Member("button", Enum("InputButton", input_layer.BUTTONS)),
        Member("down", BOOL)))),))),
    ("rel", Struct("InputMoveEventWrapper", (Member("data", Struct("InputMoveEvent", (
        Member("axis", Enum("InputAxis", input_layer.AXES)), Member("value", INT)))),))),
    ("abs", Struct("InputMoveEventWrapper", (Member("data", Struct("InputMoveEvent", (
        Member("axis", Enum("InputAxis", input_layer.AXES)), Member("value", INT)))),)))))


def key_name(key: dict) -> str:
    """A KeyValue as a QKeyCode name (numbers are set-1 codes, +0x80 for E0 keys)."""
    if key["type"] == "qcode":
        return key["data"]
    return input_layer.qcode_of_number(key["data"])


def press_keys(machine, names: list[str], hold_ms: int) -> None:
    """Presses the keys in order, and after ``hold_ms`` lets them go in reverse."""
    hub = machine.input
    hub.send([input_layer.InputEvent("key", key=name, value=1) for name in names])

    def release() -> None:
        with machine.lock:
            hub.send([input_layer.InputEvent("key", key=name, value=0)
                      for name in reversed(names)])
    machine.loop.call_later(max(hold_ms, 0) / 1000, release)


@command("send-key", args=[Member("keys", ListOf(KEY_VALUE)), Member("hold-time", INT, True)])
def send_key(ctx, keys, hold_time=100):
    press_keys(ctx.machine, [key_name(k) for k in keys], hold_time)


@command("input-send-event", args=[Member("device", STR, True), Member("head", INT, True),
                                   Member("events", ListOf(INPUT_EVENT))])
def input_send_event(ctx, events, device=None, head=None):
    hub = ctx.machine.input
    if device is not None:
        from monitor.commands.devices import find_device

        find_device(ctx.machine, device)           # input goes to a display's console
        if head or not any(d.qdev_id == device for d in ctx.machine.displays):
            raise QmpError(f"Device {device} (head {head or 0}) is not bound to a QemuConsole")
    if ctx.machine.runstate != "running":
        raise QmpError("VM not running")
    batch = []
    for event in events:
        data = event["data"]
        if event["type"] == "key":
            batch.append(input_layer.InputEvent("key", key=key_name(data["key"]),
                                                value=int(data["down"])))
        elif event["type"] == "btn":
            batch.append(input_layer.InputEvent("btn", button=data["button"],
                                                value=int(data["down"])))
        else:
            batch.append(input_layer.InputEvent(event["type"], axis=data["axis"],
                                                value=data["value"]))
    hub.send(batch)


def vnc_server(ctx):
    return ctx.machine.vnc


@command("set_password", args=[Member("protocol", DISPLAY_PROTOCOL), Member("password", STR),
                               Member("connected", Enum("SetPasswordAction", (
                                   "keep", "fail", "disconnect")), True),
                               Member("display", STR, True)])
def set_password(ctx, protocol, password, connected=None, display=None):
    if protocol == "spice":
        raise QmpError(SPICE_NOT_IN_USE, DEVICE_NOT_ACTIVE)
    if connected not in (None, "keep"):            # VNC can only keep its clients
        raise QmpError("Invalid parameter 'connected'")
    server = vnc_server(ctx)
    if server is None or not server.set_password(password):
        raise QmpError("Could not set password")


@command("change-vnc-password", args=[Member("password", STR)])
def change_vnc_password(ctx, password):
    server = vnc_server(ctx)
    if server is None or not server.set_password(password):
        raise QmpError("Could not set password")


def expiry_time(text: str) -> float | None:
    """expire_password's time: now, never, +SECONDS or an absolute UNIX time."""
    import time as clock

    if text == "now":
        return 0.0
    if text == "never":
        return None
    try:
        return clock.time() + int(text[1:]) if text.startswith("+") else float(int(text))
    except ValueError:
        return 0.0                                 # QEMU's strtoull: no digits, time 0


@command("expire_password", args=[Member("protocol", DISPLAY_PROTOCOL), Member("time", STR),
                                  Member("display", STR, True)])
def expire_password(ctx, protocol, time, display=None):
    if protocol == "spice":
        raise QmpError(SPICE_NOT_IN_USE, DEVICE_NOT_ACTIVE)
    server = vnc_server(ctx)
    if server is None:
        raise QmpError("Could not set password expire time")
    server.expires = expiry_time(time)


VNC_BASIC = (Member("host", STR), Member("service", STR),
             Member("family", Enum("NetworkAddressFamily", ("ipv4", "ipv6", "unix", "vsock",
                                                            "unknown"))),
             Member("websocket", BOOL))
VNC_AUTH = Enum("VncPrimaryAuth", ("none", "vnc", "ra2", "ra2ne", "tight", "ultra", "tls",
                                   "vencrypt", "sasl"))
VNC_CLIENT = Struct("VncClientInfo", VNC_BASIC + (Member("x509_dname", STR, True),
                                                 Member("sasl_username", STR, True)))


VNC_SERVER = Struct("VncServerInfo", VNC_BASIC + (Member("auth", STR, True),))
for _event in ("VNC_CONNECTED", "VNC_INITIALIZED", "VNC_DISCONNECTED"):
    REGISTRY.event(_event, [Member("server", VNC_SERVER),
                            Member("client", VNC_CLIENT if _event != "VNC_CONNECTED"
                                   else Struct("VncBasicInfo", VNC_BASIC))])


@command("query-vnc", returns=Struct("VncInfo", (
    Member("enabled", BOOL), Member("host", STR, True),
    Member("family", VNC_BASIC[2].type, True), Member("service", STR, True),
    Member("auth", STR, True), Member("clients", ListOf(VNC_CLIENT), True))))
def query_vnc(ctx):
    server = vnc_server(ctx)
    listeners = server.listeners() if server is not None else []
    if not listeners:
        return {"enabled": False}
    first = listeners[-1]               # QEMU reports its last socket (IPv4 of the two)
    return {"enabled": True, "auth": server.auth, "family": first["family"],
            "clients": [c.basic_info() for c in server.clients],
            "service": first["service"], "host": first["host"]}


@command("query-vnc-servers", returns=ListOf(Struct("VncInfo2", (
    Member("id", STR), Member("server", ListOf(Struct("VncServerInfo2", VNC_BASIC + (
        Member("auth", VNC_AUTH), Member("vencrypt", STR, True))))),
    Member("clients", ListOf(VNC_CLIENT)), Member("auth", VNC_AUTH),
    Member("vencrypt", STR, True), Member("display", STR, True)))))
def query_vnc_servers(ctx):
    server = vnc_server(ctx)
    if server is None:
        return []
    return [{"auth": server.auth, "clients": [c.basic_info() for c in server.clients],
             "server": server.listeners(), "id": "default"}]


@command("add_client", args=[Member("protocol", STR), Member("fdname", STR),
                             Member("skipauth", BOOL, True), Member("tls", BOOL, True)])
def add_client(ctx, protocol, fdname, skipauth=None, tls=None):
    fd = ctx.session.fds.pop(fdname, None)
    if fd is None:
        raise QmpError(f"File descriptor named '{fdname}' has not been found")
    os.close(fd)
    if protocol == "spice":
        raise QmpError(SPICE_NOT_IN_USE, DEVICE_NOT_ACTIVE)
    if protocol == "vnc":
        if vnc_server(ctx) is None:
            raise QmpError(NO_VNC)
        raise QmpError("add_client of a VNC client is not supported by kvmkit")
    raise QmpError(f"protocol '{protocol}' is invalid")


@command("client_migrate_info", args=[Member("protocol", STR), Member("hostname", STR),
                                      Member("port", INT, True), Member("tls-port", INT, True),
                                      Member("cert-subject", STR, True)])
def client_migrate_info(ctx, protocol, hostname, port=None, tls_port=None, cert_subject=None):
    if protocol == "spice":
        raise QmpError(SPICE_NOT_IN_USE, DEVICE_NOT_ACTIVE)
    raise QmpError("Parameter 'protocol' expects 'spice'")


@command("screendump", args=[Member("filename", STR), Member("device", STR, True),
                             Member("head", INT, True),
                             Member("format", Enum("ImageFormat", ("ppm", "png")), True)])
def screendump(ctx, filename, device=None, head=None, format="ppm"):
    displays = ctx.machine.displays
    if head is not None and device is None:
        raise QmpError("'head' must be specified together with 'device'")
    if device is not None:
        from monitor.commands.devices import find_device

        find_device(ctx.machine, device)             # QEMU's DeviceNotFound first
        displays = [d for d in displays if d.qdev_id == device]
        if not displays or head:
            raise QmpError(f"Device {device} (head {head or 0}) is not bound to a QemuConsole")
    if not displays:
        raise QmpError("There is no console to take a screendump from")
    width, height, rgb = displays[0].core.render()
    data = image.png(width, height, rgb) if format == "png" else image.ppm(width, height, rgb)
    try:
        fd = os.open(filename, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o666)
    except OSError as e:
        raise QmpError(f"failed to open file '{filename}': {e.strerror}") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)




# -- display-reload and display-update (VNC only, as QEMU 7.2) -------------------------
def _vnc_or_error(ctx):
    server = vnc_server(ctx)
    if server is None:
        raise QmpError("Can not find vnc display")
    return server


@command("display-reload", args=[Member("type", Enum("DisplayReloadType", ("vnc",))),
                                 Member("tls-certs", BOOL, True)])
def display_reload(ctx, type, tls_certs=False):
    """Reloads the VNC server's TLS certificates: kvmkit's VNC has no TLS."""
    if tls_certs:
        _vnc_or_error(ctx)
        raise QmpError("vnc tls is not enabled")


@command("display-update", args=[Member("type", Enum("DisplayUpdateType", ("vnc",))),
                                 Member("addresses", ListOf(SOCKET_ADDRESS_FLAT), True)],
         lock=False)
async def display_update(ctx, type, addresses=None):
    """The VNC server listens on the new addresses (inet or unix); its clients stay."""
    with ctx.machine.lock:
        server = _vnc_or_error(ctx)
    if addresses is None:
        return
    for address in addresses:
        if address["type"] not in ("inet", "unix"):
            raise QmpError(f"kvmkit's VNC server cannot listen on a '{address['type']}' "
                           "address")
    await server.listen_on(addresses)
