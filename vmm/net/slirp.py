"""-netdev user: QEMU's user-mode networking, through libslirp (cffi, ABI mode).

libslirp is the library QEMU itself uses; it is opened at run time
(libslirp.so.0, Debian's libslirp0), so kvmkit builds without its headers and
only `-netdev user` needs it. The declarations below follow libslirp.h 4.x for
SlirpConfig version 1 and SlirpCb's first nine callbacks. The options are
checked and resolved as QEMU does in vmm/net/slirp_config.py.

Every call into libslirp happens under the machine lock (libslirp is not
thread-safe): frames from the guest (slirp_input) on the device's thread, its
sockets polled by one thread of this module, its timers on the machine loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import pwd
import select
import shutil
import socket
import struct
import tempfile
import threading
import time
from collections.abc import Callable

from cffi import FFI

from vmm.net import slirp_config
from vmm.net.backend import SingleQueueBackend
from vmm.net.slirp_config import SlirpConfigError
from vmm.timer import DeviceTimer

log = logging.getLogger(__name__)

_ffi = FFI()
_ffi.cdef("""
struct in_addr { uint32_t s_addr; };
struct in6_addr { uint32_t s6_addr32[4]; };
typedef struct Slirp Slirp;
typedef struct SlirpConfig {
    uint32_t version;
    int restricted;
    bool in_enabled;
    struct in_addr vnetwork;
    struct in_addr vnetmask;
    struct in_addr vhost;
    bool in6_enabled;
    struct in6_addr vprefix_addr6;
    uint8_t vprefix_len;
    struct in6_addr vhost6;
    const char *vhostname;
    const char *tftp_server_name;
    const char *tftp_path;
    const char *bootfile;
    struct in_addr vdhcp_start;
    struct in_addr vnameserver;
    struct in6_addr vnameserver6;
    const char **vdnssearch;
    const char *vdomainname;
    size_t if_mtu;
    size_t if_mru;
    bool disable_host_loopback;
    bool enable_emu;
} SlirpConfig;
typedef void (*SlirpTimerCb)(void *opaque);
typedef struct SlirpCb {
    ssize_t (*send_packet)(const void *buf, size_t len, void *opaque);
    void (*guest_error)(const char *msg, void *opaque);
    int64_t (*clock_get_ns)(void *opaque);
    void *(*timer_new)(SlirpTimerCb cb, void *cb_opaque, void *opaque);
    void (*timer_free)(void *timer, void *opaque);
    void (*timer_mod)(void *timer, int64_t expire_time, void *opaque);
    void (*register_poll_fd)(int fd, void *opaque);
    void (*unregister_poll_fd)(int fd, void *opaque);
    void (*notify)(void *opaque);
} SlirpCb;
typedef int (*SlirpAddPollCb)(int fd, int events, void *opaque);
typedef int (*SlirpGetREventsCb)(int idx, void *opaque);
Slirp *slirp_new(const SlirpConfig *cfg, const SlirpCb *callbacks, void *opaque);
void slirp_cleanup(Slirp *slirp);
void slirp_pollfds_fill(Slirp *slirp, uint32_t *timeout, SlirpAddPollCb add_poll,
                        void *opaque);
void slirp_pollfds_poll(Slirp *slirp, int select_error, SlirpGetREventsCb get_revents,
                        void *opaque);
void slirp_input(Slirp *slirp, const uint8_t *pkt, int pkt_len);
int slirp_add_hostfwd(Slirp *slirp, int is_udp, struct in_addr host_addr, int host_port,
                      struct in_addr guest_addr, int guest_port);
int slirp_remove_hostfwd(Slirp *slirp, int is_udp, struct in_addr host_addr, int host_port);
typedef ssize_t (*SlirpWriteCb)(const void *buf, size_t len, void *opaque);
int slirp_add_exec(Slirp *slirp, const char *cmdline, struct in_addr *guest_addr,
                   int guest_port);
int slirp_add_guestfwd(Slirp *slirp, SlirpWriteCb write_cb, void *opaque,
                       struct in_addr *guest_addr, int guest_port);
size_t slirp_socket_can_recv(Slirp *slirp, struct in_addr guest_addr, int guest_port);
void slirp_socket_recv(Slirp *slirp, struct in_addr guest_addr, int guest_port,
                       const uint8_t *buf, int size);
char *slirp_connection_info(Slirp *slirp);
void free(void *ptr);
""")
POLL_IN, POLL_OUT, POLL_PRI, POLL_ERR, POLL_HUP = 1, 2, 4, 8, 16
_lib = None


class SlirpError(OSError):
    pass


def _library():
    global _lib
    if _lib is None:
        try:
            _lib = _ffi.dlopen("libslirp.so.0")
        except OSError:
            raise SlirpError(0, "network backend 'user' needs libslirp "
                                "(Debian: apt-get install libslirp0)") from None
    return _lib


def _in_addr(text: str):
    return {"s_addr": struct.unpack("<I", socket.inet_aton(text))[0]}


def _in6_addr(text: str):
    return {"s6_addr32": list(struct.unpack("<4I", ipaddress.IPv6Address(text).packed))}


class UserBackend(SingleQueueBackend):
    """A slirp instance as a network back end: send(frame) in, nic.receive() out.
    ``chardev_for(target, label)`` finds or opens a guestfwd rule's chardev:
    (chardev, opened for the rule?), or None."""

    kind = "user"

    def __init__(self, opts: dict, lock: threading.RLock,
                 chardev_for: Callable[[str, str], object] | None = None) -> None:
        lib = _library()
        config = slirp_config.settings(opts)
        if config.smb is not None:
            slirp_config.check_smb_export(config.smb)
        self.config = config
        self.lock = lock
        self.nic = None
        self.link_down = False
        self.loop: asyncio.AbstractEventLoop | None = None
        self._keep: list = []                     # C strings libslirp points at
        cfg = _ffi.new("SlirpConfig *", {
            "version": 1, "restricted": int(config.restricted), "in_enabled": config.ipv4,
            "vnetwork": _in_addr(config.network), "vnetmask": _in_addr(config.netmask),
            "vhost": _in_addr(config.host), "in6_enabled": config.ipv6,
            "vprefix_addr6": _in6_addr(config.prefix6), "vprefix_len": config.prefix6_len,
            "vhost6": _in6_addr(config.host6), "vdhcp_start": _in_addr(config.dhcp_start),
            "vnameserver": _in_addr(config.dns), "vnameserver6": _in6_addr(config.dns6),
            "if_mtu": 1500, "if_mru": 1500})
        for field_name, value in (("vhostname", config.hostname),
                                  ("tftp_server_name", config.tftp_server_name),
                                  ("tftp_path", config.tftp), ("bootfile", config.bootfile),
                                  ("vdomainname", config.domainname)):
            if value is not None:
                setattr(cfg, field_name, self._c_string(value))
        if config.dnssearch:
            names = _ffi.new("const char *[]", [self._c_string(n) for n in config.dnssearch]
                             + [_ffi.NULL])
            self._keep.append(names)
            cfg.vdnssearch = names
        # (slirp_new already calls back: IPv6's router advertisement timer)
        self._timers: dict[int, tuple] = {}
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._running = True
        self._callbacks = self._make_callbacks()
        self.slirp = lib.slirp_new(cfg, self._callbacks["table"], _ffi.NULL)
        if self.slirp == _ffi.NULL:
            os.close(self._wake_r)
            os.close(self._wake_w)
            raise SlirpError(0, "could not start user networking (slirp_new failed)")
        self._fds: list[tuple[int, int]] = []         # what slirp wants polled, by index
        self._revents: list[int] = []
        self._add_poll = _ffi.callback("int(int, int, void *)", self._on_add_poll)
        self._get_revents = _ffi.callback("int(int, void *)", self._on_get_revents)
        self._forwards: list[_ChardevForward] = []
        self._smb_dir: str | None = None
        try:
            # QEMU sets its rules up last first (it keeps them on a stack)
            for rule in reversed(config.hostfwd):
                self.add_hostfwd(rule)
            for rule in reversed(config.guestfwd):
                self._add_guestfwd(rule, chardev_for)
            if config.smb is not None:
                self._start_smb(config.smb, config.smbserver)
        except SlirpConfigError:
            self._running = False
            self._release()
            raise
        self._thread = threading.Thread(target=self._poll_sockets, daemon=True,
                                        name="slirp")
        self._thread.start()

    def _c_string(self, text: str):
        value = _ffi.new("char[]", text.encode())
        self._keep.append(value)
        return value

    def _make_callbacks(self) -> dict:
        def send_packet(buf, length, _opaque):
            frame = bytes(_ffi.buffer(buf, length))
            if self.nic is not None and not self.link_down:
                self.nic.receive(frame)
            return length

        def guest_error(msg, _opaque):
            log.warning("user networking: guest error: %s", _ffi.string(msg).decode())

        def clock_get_ns(_opaque):
            return time.monotonic_ns()

        def timer_new(cb, cb_opaque, _opaque):
            handle = _ffi.new("int *")            # a unique pointer for this timer
            fire = (lambda: cb(cb_opaque) if self._running else None)
            self._timers[int(_ffi.cast("uintptr_t", handle))] = (
                handle, DeviceTimer(lambda: self.loop, self.lock, fire))
            return handle

        def timer_free(timer, _opaque):
            entry = self._timers.pop(int(_ffi.cast("uintptr_t", timer)), None)
            if entry is not None:
                entry[1].cancel()

        def timer_mod(timer, expire_ms, _opaque):
            entry = self._timers.get(int(_ffi.cast("uintptr_t", timer)))
            if entry is not None:           # expire_ms is on clock_get_ns's clock
                entry[1].arm(max(0.0, expire_ms / 1000 - time.monotonic()))

        def register_poll_fd(_fd, _opaque):
            pass

        def notify(_opaque):
            self._wake()

        table = _ffi.new("SlirpCb *")
        funcs = {
            "send_packet": _ffi.callback("ssize_t(const void *, size_t, void *)", send_packet),
            "guest_error": _ffi.callback("void(const char *, void *)", guest_error),
            "clock_get_ns": _ffi.callback("int64_t(void *)", clock_get_ns),
            "timer_new": _ffi.callback("void *(SlirpTimerCb, void *, void *)", timer_new),
            "timer_free": _ffi.callback("void(void *, void *)", timer_free),
            "timer_mod": _ffi.callback("void(void *, int64_t, void *)", timer_mod),
            "register_poll_fd": _ffi.callback("void(int, void *)", register_poll_fd),
            "unregister_poll_fd": _ffi.callback("void(int, void *)", register_poll_fd),
            "notify": _ffi.callback("void(void *)", notify),
        }
        for name, func in funcs.items():
            setattr(table, name, func)
        return {"table": table, **funcs}

    # -- forwarding rules -------------------------------------------------------------
    def add_hostfwd(self, rule: str) -> None:
        fwd = slirp_config.parse_hostfwd(rule)
        with self.lock:
            result = _library().slirp_add_hostfwd(
                self.slirp, int(fwd.is_udp), _in_addr(fwd.host_addr), fwd.host_port,
                _in_addr(fwd.guest_addr), fwd.guest_port)
        if result < 0:
            raise SlirpConfigError(f"Could not set up host forwarding rule '{rule}'")

    def remove_hostfwd(self, is_udp: bool, host_addr: str, host_port: int) -> bool:
        with self.lock:
            return _library().slirp_remove_hostfwd(self.slirp, int(is_udp),
                                                   _in_addr(host_addr), host_port) == 0

    def _add_guestfwd(self, rule: str, chardev_for) -> None:
        fwd = slirp_config.parse_guestfwd(rule)
        lib = _library()
        server = _ffi.new("struct in_addr *", _in_addr(fwd.server))
        conflict = SlirpConfigError(f"Conflicting/invalid host:port in guest forwarding "
                                    f"rule '{rule}'")
        if fwd.command is not None:
            with self.lock:
                if lib.slirp_add_exec(self.slirp, self._c_string(fwd.command), server,
                                      fwd.port) < 0:
                    raise conflict
            return
        label = f"guestfwd.tcp.{fwd.port}"
        found = chardev_for(fwd.chardev, label) if chardev_for is not None else None
        if found is None:
            raise SlirpConfigError(f"Could not open guest forwarding device '{label}'")
        forward = _ChardevForward(self, *found, fwd.server, fwd.port)
        with self.lock:
            if lib.slirp_add_guestfwd(self.slirp, forward.write_cb, _ffi.NULL, server,
                                      fwd.port) < 0:
                forward.close()
                raise conflict
        self._forwards.append(forward)           # start() starts it with the loop

    def _start_smb(self, export: str, smbserver: str | None) -> None:
        """smb=DIR: QEMU's own smbd set-up, one share for the guest at 10.0.2.4
        (or smbserver=) on ports 139 and 445."""
        self._smb_dir = tempfile.mkdtemp(prefix="qemu-smb.")
        conf = os.path.join(self._smb_dir, "smb.conf")
        with open(conf, "w") as f:
            f.write(slirp_config.smb_config(self._smb_dir, export,
                                            pwd.getpwuid(os.geteuid()).pw_name))
        command = self._c_string(f"{slirp_config.SMBD} -l {self._smb_dir} -s {conf}")
        server = _ffi.new("struct in_addr *", _in_addr(smbserver or "0.0.0.0"))
        with self.lock:
            for port in (139, 445):
                if _library().slirp_add_exec(self.slirp, command, server, port) < 0:
                    raise SlirpConfigError("Conflicting/invalid smbserver address")

    # -- the monitor's and the NIC's side ----------------------------------------------
    def info(self, index: int, queue: int | None = None) -> str:
        return (f"index={index},type=user,net={self.config.network},"
                f"restrict={'on' if self.config.restricted else 'off'}")

    def connection_info(self) -> str:
        """libslirp's table of its sockets, as `info usernet` prints it."""
        with self.lock:
            text = _library().slirp_connection_info(self.slirp)
            try:
                return _ffi.string(text).decode(errors="replace")
            finally:
                _library().free(text)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        for forward in self._forwards:
            forward.start(loop)

    def send(self, frame: bytes) -> None:
        if self.link_down:
            return
        with self.lock:
            if not self._running:         # netdev_del'd: libslirp is going away
                return
            _library().slirp_input(self.slirp, frame, len(frame))
            self._wake()

    def receive_ready(self) -> None:
        pass                              # frames from slirp are offered as they come

    # -- libslirp's sockets -------------------------------------------------------------
    def _wake(self) -> None:
        if not self._running:             # (its pipe is closed once the thread ends)
            return
        try:
            os.write(self._wake_w, b"x")
        except BlockingIOError:
            pass

    def _on_add_poll(self, fd: int, events: int, _opaque) -> int:
        self._fds.append((fd, events))
        return len(self._fds) - 1

    def _on_get_revents(self, index: int, _opaque) -> int:
        return self._revents[index] if 0 <= index < len(self._revents) else 0

    def _poll_sockets(self) -> None:
        try:
            self._poll_until_closed()
        finally:
            self._cleanup()

    def _poll_until_closed(self) -> None:
        lib = _library()
        timeout = _ffi.new("uint32_t *")
        while self._running:
            with self.lock:
                if not self._running:
                    return
                self._fds = []
                timeout[0] = 100
                lib.slirp_pollfds_fill(self.slirp, timeout, self._add_poll, _ffi.NULL)
                fds = list(self._fds)
            poller = select.poll()
            poller.register(self._wake_r, select.POLLIN)
            for fd, events in fds:
                poller.register(fd, (select.POLLIN if events & POLL_IN else 0) |
                                (select.POLLOUT if events & POLL_OUT else 0) |
                                (select.POLLPRI if events & POLL_PRI else 0))
            ready = dict(poller.poll(min(timeout[0], 100)))
            if ready.pop(self._wake_r, 0):
                try:
                    os.read(self._wake_r, 4096)
                except BlockingIOError:
                    pass
            with self.lock:
                if self._running:
                    self._revents = [_slirp_events(ready.get(fd, 0)) for fd, _ in fds]
                    lib.slirp_pollfds_poll(self.slirp, 0, self._get_revents, _ffi.NULL)
                    for forward in self._forwards:
                        forward.flush()

    def close(self) -> None:
        """Stops the back end at once; its thread frees libslirp when it sees that.
        (netdev_del calls this holding the machine lock, which that thread may be
        waiting for: joining it here would stall the monitor.)"""
        with self.lock:
            if not self._running:
                return
            self._wake()
            self._running = False

    def _cleanup(self) -> None:
        with self.lock:
            for _handle, timer in self._timers.values():
                timer.cancel()
            self._release()

    def _release(self) -> None:
        _library().slirp_cleanup(self.slirp)
        os.close(self._wake_r)
        os.close(self._wake_w)
        for forward in self._forwards:
            forward.close()
        if self._smb_dir is not None:
            shutil.rmtree(self._smb_dir, ignore_errors=True)


class _ChardevForward:
    """guestfwd=...-DEV: the guest's connections to server:port meet chardev DEV.
    slirp writes what the guest sends into it; what it reads goes to the guest as
    fast as the guest's socket takes it (held here meanwhile, up to a bound)."""

    PENDING_LIMIT = 1 << 20

    def __init__(self, backend: UserBackend, chardev, owned: bool, server: str,
                 port: int) -> None:
        self.backend, self.chardev = backend, chardev
        self.owned = owned            # opened for this rule (else a -chardev's)
        self.server, self.port = _in_addr(server), port
        self.pending = bytearray()
        self.write_cb = _ffi.callback("ssize_t(const void *, size_t, void *)",
                                      self._to_chardev)
        chardev.attach(self._from_chardev)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        if self.owned:
            self.chardev.start(loop)

    def close(self) -> None:
        if self.owned:
            self.chardev.close()
        else:
            self.chardev.attach(None)

    def _to_chardev(self, buf, length, _opaque) -> int:
        self.chardev.write(bytes(_ffi.buffer(buf, length)))
        return length

    def _from_chardev(self, data: bytes) -> None:
        with self.backend.lock:
            if len(self.pending) + len(data) > self.PENDING_LIMIT:
                log.warning("guestfwd %d: the guest is not reading; %d bytes dropped",
                            self.port, len(data))
                return
            self.pending += data
            self.flush()
        self.backend._wake()

    def flush(self) -> None:
        """Under the machine lock, with libslirp running."""
        if not self.pending or not self.backend._running:
            return
        lib = _library()
        room = lib.slirp_socket_can_recv(self.backend.slirp, self.server, self.port)
        if room <= 0:
            return
        chunk = bytes(self.pending[:room])
        lib.slirp_socket_recv(self.backend.slirp, self.server, self.port, chunk, len(chunk))
        del self.pending[:len(chunk)]


def _slirp_events(revents: int) -> int:
    return ((POLL_IN if revents & select.POLLIN else 0) |
            (POLL_OUT if revents & select.POLLOUT else 0) |
            (POLL_PRI if revents & select.POLLPRI else 0) |
            (POLL_ERR if revents & select.POLLERR else 0) |
            (POLL_HUP if revents & select.POLLHUP else 0))

