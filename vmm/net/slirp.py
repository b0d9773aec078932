"""-netdev user: QEMU's user-mode networking, through libslirp (cffi, ABI mode).

libslirp is the library QEMU itself uses; it is opened at run time
(libslirp.so.0, Debian's libslirp0), so kvmkit builds without its headers and
only `-netdev user` needs it. The declarations below follow libslirp.h 4.x for
SlirpConfig version 1 and SlirpCb's first nine callbacks.

Every call into libslirp happens under the machine lock (libslirp is not
thread-safe): frames from the guest (slirp_input) on the device's thread, its
sockets polled by one thread of this module, its timers on the machine loop.
"""

from __future__ import annotations

import asyncio
import ipaddress
import logging
import os
import select
import socket
import struct
import threading
import time

from cffi import FFI

from vmm.net.backend import SingleQueueBackend
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


def parse_hostfwd(rule: str) -> tuple[bool, str, int, str, int]:
    """hostfwd=[tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport, as QEMU's."""
    try:
        proto, rest = rule.split(":", 1) if rule.split(":", 1)[0] in ("tcp", "udp", "") \
            else ("tcp", rule)
        host, guest = rest.split("-", 1)
        host_addr, host_port = host.rsplit(":", 1)
        guest_addr, guest_port = guest.rsplit(":", 1)
        return (proto == "udp", host_addr or "0.0.0.0", int(host_port), guest_addr,
                int(guest_port))
    except ValueError:
        raise SlirpError(0, f"Invalid host forwarding rule '{rule}'") from None


class UserBackend(SingleQueueBackend):
    """A slirp instance as a network back end: send(frame) in, nic.receive() out."""

    kind = "user"

    def __init__(self, opts: dict, lock: threading.RLock) -> None:
        lib = _library()
        self.lock = lock
        self.nic = None
        self.link_down = False
        self.loop: asyncio.AbstractEventLoop | None = None
        network = ipaddress.ip_network(opts.get("net", "10.0.2.0/24"), strict=False)
        self.network = network
        self.restrict = opts.get("restrict", "off") in ("on", "yes", "true", "y")
        hosts = list(network.hosts())
        host = opts.get("host", str(hosts[1]))
        dhcp_start = opts.get("dhcpstart", str(hosts[14]))
        dns = opts.get("dns", str(hosts[2]))
        self._keep = [_ffi.new("char[]", b"kvmkit")]
        cfg = _ffi.new("SlirpConfig *", {
            "version": 1, "restricted": int(self.restrict), "in_enabled": True,
            "vnetwork": _in_addr(str(network.network_address)),
            "vnetmask": _in_addr(str(network.netmask)), "vhost": _in_addr(host),
            "in6_enabled": False, "vdhcp_start": _in_addr(dhcp_start),
            "vnameserver": _in_addr(dns), "if_mtu": 1500, "if_mru": 1500})
        self._callbacks = self._make_callbacks()
        self.slirp = lib.slirp_new(cfg, self._callbacks["table"], _ffi.NULL)
        if self.slirp == _ffi.NULL:
            raise SlirpError(0, "could not start user networking (slirp_new failed)")
        self._timers: dict[int, tuple] = {}
        self._fds: list[tuple[int, int]] = []         # what slirp wants polled, by index
        self._revents: list[int] = []
        self._add_poll = _ffi.callback("int(int, int, void *)", self._on_add_poll)
        self._get_revents = _ffi.callback("int(int, void *)", self._on_get_revents)
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._running = True
        rules = opts.get("hostfwd", [])
        for rule in [rules] if isinstance(rules, str) else rules:   # [String] from JSON
            self.add_hostfwd(rule)
        self._thread = threading.Thread(target=self._poll_sockets, daemon=True,
                                        name="slirp")
        self._thread.start()

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

    # -- the monitor's and the NIC's side ----------------------------------------------
    def add_hostfwd(self, rule: str) -> None:
        is_udp, host_addr, host_port, guest_addr, guest_port = parse_hostfwd(rule)
        guest = guest_addr or str(list(self.network.hosts())[14])
        with self.lock:
            result = _library().slirp_add_hostfwd(self.slirp, int(is_udp), _in_addr(host_addr),
                                                  host_port, _in_addr(guest), guest_port)
        if result < 0:
            raise SlirpError(0, f"Could not set up host forwarding rule '{rule}'")

    def info(self, index: int) -> str:
        return (f"index={index},type=user,net={self.network.network_address},"
                f"restrict={'on' if self.restrict else 'off'}")

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop

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
            _library().slirp_cleanup(self.slirp)
            os.close(self._wake_r)
            os.close(self._wake_w)


def _slirp_events(revents: int) -> int:
    return ((POLL_IN if revents & select.POLLIN else 0) |
            (POLL_OUT if revents & select.POLLOUT else 0) |
            (POLL_PRI if revents & select.POLLPRI else 0) |
            (POLL_ERR if revents & select.POLLERR else 0) |
            (POLL_HUP if revents & select.POLLHUP else 0))

