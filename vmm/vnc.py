"""-vnc: a VNC (RFB 3.3/3.7/3.8) server for the guest's display, as QEMU's answers.

Standard clients connect with no authentication, or with VNC password
authentication (-vnc ...,password=on and a password set through the monitor).
The framebuffer goes out in raw encoding in the pixel format the client asks for
(true colour), with DesktopSize when the guest changes mode; updates are sent as
the guest's screen changes. Keys (X keysyms, US layout, or QEMU's extended key
events with scancodes) go to the guest's keyboard and the pointer to its current
mouse (absolute for a tablet, relative for the PS/2 mouse).

kvmkit writes this server itself rather than binding libvncserver: that library
runs its own threads and socket loop, where kvmkit's back ends live on its one
asyncio loop under the machine lock (DESIGN.md), and it would add a C dependency
for what is, with raw encoding, a small protocol.
"""

from __future__ import annotations

import asyncio
import logging
import os
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vmm import des
from vmm.input import ABS_MAX, InputEvent, InputHub, qcode_of_number
from vmm.qemuopts import OptsError, parse_bool, parse_opts

log = logging.getLogger(__name__)

BASE_PORT = 5900
REFRESH_S = 0.05                       # how often the screen is compared for changes
ENCODING_RAW, ENCODING_DESKTOP_SIZE, ENCODING_QEMU_KEY = 0, -223, -258
SECURITY_NONE, SECURITY_VNC = 1, 2
BLANK = (640, 480)                     # what a client sees with no display card


class VncError(ValueError):
    """A bad -vnc option; the message is QEMU's."""


@dataclass
class VncSpec:
    host: str = ""
    port: int = 0
    path: str | None = None            # unix:PATH
    password: bool = False
    share: str = "allow-exclusive"
    enabled: bool = True               # -vnc none: a display with no listener


def parse_vnc(arg: str) -> VncSpec:
    """-vnc [HOST]:DISPLAY|unix:PATH|none[,password=on][,to=N][,...]"""
    where, _, rest = arg.partition(",")
    try:
        opts = parse_opts(rest) if rest else {}
    except OptsError as e:
        raise VncError(str(e)) from None
    spec = VncSpec()
    for key, value in opts.items():
        if key == "password":
            spec.password = parse_bool(key, value or "on")
        elif key == "share":
            spec.share = value
        elif key in ("lossy", "non-adaptive", "power-control", "key-delay-ms", "id",
                     "display", "audiodev", "to", "connections"):
            pass                           # accepted; they tune what kvmkit does not do
        elif key in ("websocket", "tls-creds", "tls-authz", "sasl", "sasl-authz",
                     "reverse", "x509", "x509verify", "acl"):
            raise VncError(f"{key} is not supported by kvmkit's VNC server")
        else:
            raise VncError(f"Invalid parameter '{key}'")
    if where == "none":
        spec.enabled = False
    elif where.startswith("unix:"):
        spec.path = where[5:]
    else:
        host, colon, display = where.rpartition(":")
        if not colon or not display.isdigit():
            raise VncError(f"Failed to parse vnc display '{where}'" if colon else
                           "address resolution failed for " + where)
        spec.host, spec.port = host.strip("[]"), BASE_PORT + int(display)
    return spec


# X keysyms of the US layout and what is not a character
KEYSYMS = {0xFF08: "backspace", 0xFF09: "tab", 0xFF0D: "ret", 0xFF1B: "esc",
           0xFFFF: "delete", 0xFF50: "home", 0xFF51: "left", 0xFF52: "up", 0xFF53: "right",
           0xFF54: "down", 0xFF55: "pgup", 0xFF56: "pgdn", 0xFF57: "end", 0xFF63: "insert",
           0xFFE1: "shift", 0xFFE2: "shift_r", 0xFFE3: "ctrl", 0xFFE4: "ctrl_r",
           0xFFE9: "alt", 0xFFEA: "alt_r", 0xFFE7: "meta_l", 0xFFE8: "meta_r",
           0xFFEB: "meta_l", 0xFFEC: "meta_r", 0xFFE5: "caps_lock", 0xFF7F: "num_lock",
           0xFF14: "scroll_lock", 0xFF13: "pause", 0xFF61: "print", 0xFF67: "menu",
           0xFF8D: "kp_enter", 0xFFAA: "kp_multiply", 0xFFAB: "kp_add",
           0xFFAD: "kp_subtract", 0xFFAE: "kp_decimal", 0xFFAF: "kp_divide",
           0xFE03: "alt_r", 0x20: "spc",
           **{0xFFBE + i: f"f{i + 1}" for i in range(12)},
           **{0xFFB0 + i: f"kp_{i}" for i in range(10)}}
_US = ("1!", "2@", "3#", "4$", "5%", "6^", "7&", "8*", "9(", "0)", "-_", "=+", "[{", "]}",
       ";:", "'\"", "`~", "\\|", ",<", ".>", "/?")
_US_NAMES = ("1", "2", "3", "4", "5", "6", "7", "8", "9", "0", "minus", "equal",
             "bracket_left", "bracket_right", "semicolon", "apostrophe", "grave_accent",
             "backslash", "comma", "dot", "slash")
for _pair, _name in zip(_US, _US_NAMES):
    KEYSYMS[ord(_pair[0])] = KEYSYMS[ord(_pair[1])] = _name
for _letter in "abcdefghijklmnopqrstuvwxyz":
    KEYSYMS[ord(_letter)] = KEYSYMS[ord(_letter.upper())] = _letter


@dataclass
class PixelFormat:
    bits: int = 32
    depth: int = 24
    big_endian: bool = False
    true_color: bool = True
    maxes: tuple[int, int, int] = (255, 255, 255)
    shifts: tuple[int, int, int] = (16, 8, 0)

    def pack(self) -> bytes:
        return struct.pack(">BBBBHHHBBB3x", self.bits, self.depth, self.big_endian,
                           self.true_color, *self.maxes, *self.shifts)

    @classmethod
    def unpack(cls, data: bytes) -> PixelFormat:
        bits, depth, big, true, rmax, gmax, bmax, rs, gs, bs = struct.unpack(">BBBBHHHBBB3x",
                                                                              data)
        return cls(bits, depth, bool(big), bool(true), (rmax, gmax, bmax), (rs, gs, bs))

    def encode(self, rgb: bytes) -> bytes:
        """RGB bytes (3 per pixel) in this format."""
        count = len(rgb) // 3
        if self.bits == 32 and self.maxes == (255, 255, 255) and \
                sorted(self.shifts) == [0, 8, 16] and len(set(self.shifts)) == 3:
            out = bytearray(count * 4)
            for channel, shift in enumerate(self.shifts):
                at = shift // 8 if not self.big_endian else 3 - shift // 8
                out[at::4] = rgb[channel::3]
            return bytes(out)
        size = self.bits // 8
        order = "big" if self.big_endian else "little"
        out = bytearray()
        for i in range(count):
            value = 0
            for channel in range(3):
                top = self.maxes[channel]
                value |= (rgb[3 * i + channel] * top // 255) << self.shifts[channel]
            out += value.to_bytes(size, order)
        return bytes(out)


@dataclass
class _Client:
    writer: asyncio.StreamWriter
    host: str
    service: str
    family: str
    format: PixelFormat = field(default_factory=PixelFormat)
    encodings: set[int] = field(default_factory=set)
    wanted: bool = False               # an update was asked for and not yet sent
    sent: tuple[int, int, bytes] | None = None
    buttons: int = 0
    shifts: frozenset = frozenset()    # the shift keys held down
    position: tuple[int, int] | None = None
    initialized: bool = False

    def basic_info(self) -> dict:
        return {"host": self.host, "service": self.service, "family": self.family,
                "websocket": False}


class VncServer:
    def __init__(self, spec: VncSpec, screen: Callable[[], tuple[int, int, bytes] | None],
                 hub: InputHub, lock, emit: Callable[[str, dict], None], name: str,
                 caps_lock: Callable[[], bool] = lambda: False) -> None:
        self.spec = spec
        self.screen = screen
        self.hub = hub
        self.lock = lock
        self.emit = emit
        self.name = name
        self.caps_lock = caps_lock                  # the guest keyboard's caps lock LED
        self.password: str | None = None
        self.expires: float | None = None          # time.time() after which auth fails
        self.clients: list[_Client] = []
        self._server: asyncio.AbstractServer | None = None
        self._refresh: asyncio.Task | None = None

    # -- listening -------------------------------------------------------------
    async def start(self) -> None:
        if not self.spec.enabled:
            return
        await self._listen()
        self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def listen_on(self, addresses: list[dict]) -> None:
        """display-update: the listening sockets are replaced (the first address
        of the list; connected clients stay)."""
        address = addresses[0] if addresses else None
        if address is None:
            return
        old = self._server
        if address["type"] == "unix":
            self.spec.path, self.spec.host, self.spec.port = address["path"], "", 0
        else:
            self.spec.path = None
            self.spec.host, self.spec.port = address["host"], int(address["port"])
        await self._listen()
        if old is not None:
            old.close()
        if self._refresh is None:
            self._refresh = asyncio.get_running_loop().create_task(self._refresh_loop())

    async def _listen(self) -> None:
        if self.spec.path is not None:
            if os.path.exists(self.spec.path):
                os.unlink(self.spec.path)
            self._server = await asyncio.start_unix_server(self._serve, self.spec.path)
        else:
            # no host: every address of both families, as QEMU listens on :: and 0.0.0.0
            host = self.spec.host or None
            self._server = await asyncio.start_server(self._serve, host, self.spec.port,
                                                      reuse_address=True)

    def close(self) -> None:
        if self._server is not None:
            self._server.close()
        if self._refresh is not None:
            self._refresh.cancel()
        for client in list(self.clients):
            client.writer.close()

    @property
    def auth(self) -> str:
        return "vnc" if self.spec.password else "none"

    def listeners(self) -> list[dict]:
        """QEMU's VncServerInfo2 of each listening socket, IPv6 first."""
        if self._server is None:
            return []
        if self.spec.path is not None:
            return [{"auth": self.auth, "family": "unix", "service": self.spec.path,
                     "host": "", "websocket": False}]
        out = []
        for sock in sorted(self._server.sockets, key=lambda s: s.family != socket.AF_INET6):
            host, port = sock.getsockname()[:2]
            out.append({"auth": self.auth,
                        "family": "ipv6" if sock.family == socket.AF_INET6 else "ipv4",
                        "service": str(port), "host": host, "websocket": False})
        return out

    def server_info(self) -> dict:
        """The server part of the VNC events and of query-vnc."""
        first = (self.listeners() or [{"auth": self.auth, "family": "ipv4", "service": "",
                                       "host": "", "websocket": False}])[0]
        return dict(first)

    def set_password(self, password: str) -> bool:
        """set_password/change-vnc-password: only with password=on, as QEMU's."""
        if not self.spec.password:
            return False
        self.password = password
        return True

    # -- one client --------------------------------------------------------------
    async def _serve(self, reader: asyncio.StreamReader,
                     writer: asyncio.StreamWriter) -> None:
        peer = writer.get_extra_info("peername")
        if isinstance(peer, tuple):
            client = _Client(writer, peer[0], str(peer[1]),
                             "ipv6" if ":" in peer[0] else "ipv4")
        else:
            client = _Client(writer, "", self.spec.path or "", "unix")
        self.clients.append(client)
        self.emit("VNC_CONNECTED", {"server": self.server_info(),
                                    "client": client.basic_info()})
        try:
            if await self._handshake(client, reader):
                client.initialized = True
                self.emit("VNC_INITIALIZED", {"server": self.server_info(),
                                              "client": client.basic_info()})
                await self._messages(client, reader)
        except (asyncio.IncompleteReadError, ConnectionError, struct.error):
            pass
        except Exception:
            log.exception("VNC client failed")
        finally:
            self.clients.remove(client)
            writer.close()
            self.emit("VNC_DISCONNECTED", {"server": self.server_info(),
                                           "client": client.basic_info()})

    async def _handshake(self, client: _Client, reader: asyncio.StreamReader) -> bool:
        writer = client.writer
        writer.write(b"RFB 003.008\n")
        version = await reader.readexactly(12)
        minor = int(version[8:11]) if version[:4] == b"RFB " and version[8:11].isdigit() else 3
        minor = 3 if minor < 7 else min(minor, 8)
        kind = SECURITY_VNC if self.spec.password else SECURITY_NONE
        if minor == 3:
            writer.write(struct.pack(">I", kind))
        else:
            writer.write(bytes((1, kind)))
            if (await reader.readexactly(1))[0] != kind:
                return self._fail(client, minor, "Unsupported security type")
        if kind == SECURITY_VNC:
            challenge = os.urandom(16)
            writer.write(challenge)
            response = await reader.readexactly(16)
            expired = self.expires is not None and time.time() >= self.expires
            if not self.password or expired or \
                    response != des.vnc_response(self.password, challenge):
                return self._fail(client, minor, "Authentication failed")
            writer.write(struct.pack(">I", 0))
        elif minor == 8:
            writer.write(struct.pack(">I", 0))
        await reader.readexactly(1)                          # ClientInit: shared or not
        width, height, _ = self._frame()
        name = self.name.encode()
        writer.write(struct.pack(">HH", width, height) + client.format.pack() +
                     struct.pack(">I", len(name)) + name)
        return True

    @staticmethod
    def _fail(client: _Client, minor: int, reason: str) -> bool:
        client.writer.write(struct.pack(">I", 1))
        if minor == 8:
            client.writer.write(struct.pack(">I", len(reason)) + reason.encode())
        return False

    async def _messages(self, client: _Client, reader: asyncio.StreamReader) -> None:
        while True:
            kind = (await reader.readexactly(1))[0]
            if kind == 0:                                    # SetPixelFormat
                data = await reader.readexactly(19)
                fmt = PixelFormat.unpack(data[3:])
                if fmt.true_color and fmt.bits in (8, 16, 32):
                    client.format = fmt
                    client.sent = None
            elif kind == 2:                                  # SetEncodings
                count = struct.unpack(">xH", await reader.readexactly(3))[0]
                data = await reader.readexactly(4 * count)
                client.encodings = set(struct.unpack(f">{count}i", data))
            elif kind == 3:                                  # FramebufferUpdateRequest
                incremental = (await reader.readexactly(9))[0]
                if not incremental:
                    client.sent = None
                client.wanted = True
                await self._update(client)
            elif kind == 4:                                  # KeyEvent
                down, keysym = struct.unpack(">B2xI", await reader.readexactly(7))
                self._keysym(client, keysym, down)
            elif kind == 5:                                  # PointerEvent
                mask, x, y = struct.unpack(">BHH", await reader.readexactly(5))
                self._pointer(client, mask, x, y)
            elif kind == 6:                                  # ClientCutText
                length = struct.unpack(">3xI", await reader.readexactly(7))[0]
                await reader.readexactly(length)
            elif kind == 255:                                # QEMU's client messages
                sub = (await reader.readexactly(1))[0]
                if sub != 0:
                    raise ConnectionError("unknown QEMU client message")
                down, _keysym, keycode = struct.unpack(">HII", await reader.readexactly(10))
                self._key(qcode_of_number(keycode), down)
            else:
                raise ConnectionError(f"unknown client message {kind}")

    # -- the screen ----------------------------------------------------------------
    def _frame(self) -> tuple[int, int, bytes]:
        with self.lock:
            frame = self.screen()
        if frame is None:
            return BLANK[0], BLANK[1], bytes(BLANK[0] * BLANK[1] * 3)
        return frame

    async def _update(self, client: _Client) -> None:
        if not client.wanted:
            return
        width, height, rgb = self._frame()
        old = client.sent
        if old is not None and old[:2] == (width, height) and old[2] == rgb:
            return                                           # nothing new: wait for a change
        rects = []
        if old is not None and old[:2] != (width, height) and \
                ENCODING_DESKTOP_SIZE in client.encodings:
            rects.append(struct.pack(">HHHHi", 0, 0, width, height, ENCODING_DESKTOP_SIZE))
        top, bottom = 0, height
        if old is not None and old[:2] == (width, height):
            stride = width * 3
            changed = [y for y in range(height)
                       if old[2][y * stride:(y + 1) * stride] != rgb[y * stride:(y + 1) * stride]]
            top, bottom = changed[0], changed[-1] + 1
        band = rgb[top * width * 3:bottom * width * 3]
        rects.append(struct.pack(">HHHHi", 0, top, width, bottom - top, ENCODING_RAW) +
                     client.format.encode(band))
        client.writer.write(struct.pack(">BxH", 0, len(rects)) + b"".join(rects))
        client.sent, client.wanted = (width, height, rgb), False
        await client.writer.drain()

    async def _refresh_loop(self) -> None:
        while True:
            await asyncio.sleep(REFRESH_S)
            for client in list(self.clients):
                if client.initialized and client.wanted:
                    try:
                        await self._update(client)
                    except ConnectionError:
                        pass

    # -- input ---------------------------------------------------------------------
    def _keysym(self, client: _Client, keysym: int, down: int) -> None:
        """A key by its keysym. A letter whose case disagrees with shift and the
        guest's caps lock gets a caps lock press first, as QEMU syncs lock keys."""
        qcode = KEYSYMS.get(keysym)
        if qcode in ("shift", "shift_r"):
            client.shifts = client.shifts | {qcode} if down else client.shifts - {qcode}
        if down and 0x41 <= keysym <= 0x5A or down and 0x61 <= keysym <= 0x7A:
            uppercase = keysym <= 0x5A
            if uppercase != (bool(client.shifts) != self.caps_lock()):
                self._key("caps_lock", 1)
                self._key("caps_lock", 0)
        self._key(qcode, down)

    def _key(self, qcode: str | None, down: int) -> None:
        if qcode is None or qcode == "unmapped":
            return
        with self.lock:
            self.hub.send([InputEvent("key", key=qcode, value=int(bool(down)))])

    def _pointer(self, client: _Client, mask: int, x: int, y: int) -> None:
        events = []
        mouse = self.hub.current_mouse()
        width, height = client.sent[:2] if client.sent else BLANK
        if mouse is not None and mouse.absolute:
            events += [InputEvent("abs", axis="x", value=x * ABS_MAX // max(width - 1, 1)),
                       InputEvent("abs", axis="y", value=y * ABS_MAX // max(height - 1, 1))]
        elif client.position is not None:    # the first position only sets where it is
            events += [InputEvent("rel", axis="x", value=x - client.position[0]),
                       InputEvent("rel", axis="y", value=y - client.position[1])]
        client.position = (x, y)
        for bit, button in ((1, "left"), (2, "middle"), (4, "right"), (8, "wheel-up"),
                            (16, "wheel-down")):
            if (mask ^ client.buttons) & bit:
                events.append(InputEvent("btn", button=button, value=int(bool(mask & bit))))
        client.buttons = mask
        if events:
            with self.lock:
                self.hub.send(events)
