"""-netdev tap: frames to and from a Linux tap interface.

The interface is opened through /dev/net/tun (TUNSETIFF, IFF_TAP|IFF_NO_PI),
created by that if it does not exist, or handed over as open fds (``fd=N``,
``fds=A:B``, how libvirt passes taps). As QEMU does, kvmkit asks for
IFF_VNET_HDR when the kernel has it (``vnet_hdr=off`` declines): every frame
then carries a struct virtio_net_hdr, through which virtio-net passes checksum
and segmentation offloads straight to the kernel. NICs that know nothing of
that header (e1000, rtl8139, the hub) get it stripped and zero-filled here.
``queues=N`` opens N queues (IFF_MULTI_QUEUE), one per virtio-net queue pair;
queues the guest does not use are detached so that the kernel does not steer
frames to them.

Reads happen on the machine's loop; while the guest has no receive buffers a
queue's fd is not read at all, so the kernel queues (and at worst drops)
rather than kvmkit, as with QEMU.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import fcntl
import logging
import os
import signal
import socket
import struct
import subprocess
import sys
import threading
from collections.abc import Callable
from typing import TypeVar

from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_size

T = TypeVar("T")

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
TUNGETFEATURES = 0x800454CF
TUNSETOFFLOAD = 0x400454D0
TUNSETVNETHDRSZ = 0x400454D8
TUNSETQUEUE = 0x400454D9
TUNSETSNDBUF = 0x400454D4
INT_MAX = 2**31 - 1
# QEMU's ways of getting a tap other than opening one, and what each excludes
EXCLUSIVE = {
    "fd": ("ifname", "script", "downscript", "vnet_hdr", "helper", "queues", "fds",
           "vhostfds"),
    "fds": ("ifname", "script", "downscript", "vnet_hdr", "helper", "queues", "vhostfd"),
    "helper": ("ifname", "script", "downscript", "vnet_hdr", "queues", "vhostfds"),
}
IFF_TAP = 0x0002
IFF_MULTI_QUEUE = 0x0100
IFF_ATTACH_QUEUE, IFF_DETACH_QUEUE = 0x0200, 0x0400
IFF_NO_PI = 0x1000
IFF_VNET_HDR = 0x4000
TUN_F_CSUM, TUN_F_TSO4, TUN_F_TSO6, TUN_F_TSO_ECN, TUN_F_UFO = 0x01, 0x02, 0x04, 0x08, 0x10
VNET_HDR_LEN = 10                 # the kernel's default: struct virtio_net_hdr
MAX_FRAME = 65536 + 256           # a 64 KiB GSO frame and its header
MAX_QUEUES = 1024                 # QEMU's MAX_TAP_QUEUES
DEFAULT_SCRIPT = "/etc/qemu-ifup"
DEFAULT_DOWNSCRIPT = "/etc/qemu-ifdown"
BRIDGE_HELPER = "/usr/lib/qemu/qemu-bridge-helper"   # named in info network as QEMU does


class TapError(OSError):
    pass


def _tun_features() -> int:
    """What this kernel's tun driver offers (IFF_VNET_HDR, IFF_MULTI_QUEUE, ...)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return 0
    try:
        return struct.unpack("I", fcntl.ioctl(fd, TUNGETFEATURES, bytes(4)))[0]
    except OSError:
        return 0
    finally:
        os.close(fd)


def open_tap(ifname: str, vnet_hdr: bool = False, multi_queue: bool = False) -> tuple[int, str]:
    """Opens (creating if needed) tap `ifname` ('' lets the kernel name it)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(e.errno, f"could not open /dev/net/tun: {e.strerror}") from None
    flags = IFF_TAP | IFF_NO_PI | (IFF_VNET_HDR if vnet_hdr else 0) | \
        (IFF_MULTI_QUEUE if multi_queue else 0)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(), flags))
    except OSError as e:
        os.close(fd)
        raise TapError(e.errno, f"could not configure /dev/net/tun ({ifname}): "
                                f"{e.strerror}") from None
    return fd, answer[:16].rstrip(b"\0").decode()


def _tap_ifreq(fd: int) -> tuple[str, int]:
    try:
        name, flags = struct.unpack_from("16sH", fcntl.ioctl(fd, TUNGETIFF, bytes(18)))
        return name.rstrip(b"\0").decode(), flags
    except OSError:
        return "", 0


def tap_name(fd: int) -> str:
    return _tap_ifreq(fd)[0]


def _wants(opts: dict, name: str) -> bool | None:
    value = opts.get(name)
    return None if value is None else value in ("on", "true", "yes", "1")


class _Queue:
    """One tap queue: its fd, whether the loop reads it, and the NIC side it feeds."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        self.reading = False
        self.port = None                 # has receive(frame) -> bool and can_receive()


class TapBackend:
    kind = "tap"

    def __init__(self, fds: list[int], ifname: str, script: str | None,
                 downscript: str | None, lock: threading.RLock, vnet_hdr: bool = False) -> None:
        self.queues = [_Queue(fd) for fd in fds]
        self.ifname = ifname
        self.script, self.downscript = script, downscript
        self.lock = lock
        self.has_vnet_hdr = vnet_hdr
        self.header_len = VNET_HDR_LEN if vnet_hdr else 0   # what the kernel reads and writes
        self.nic_uses_header = False     # the NIC reads and writes that header itself
        self._nic = None
        self.loop: asyncio.AbstractEventLoop | None = None
        self.loop_thread = 0
        self.link_down = False
        self.bridge: str | None = None
        self.helper: str | None = None        # the bridge helper that opened it
        if vnet_hdr:
            self.set_offload()

    @property
    def fd(self) -> int:
        return self.queues[0].fd

    @classmethod
    def from_options(cls, opts: dict, lock: threading.RLock,
                     fd_lookup: Callable[[str], int]) -> TapBackend:
        """-netdev tap: QEMU's four ways (fd=, fds=, helper=, or a tap of its own),
        with QEMU's checks; vhost and sndbuf as _check_vhost and set_sndbuf say."""
        if "poll-us" in opts:
            raise TapError(0, "poll-us= is not supported by kvmkit (it tunes vhost-net's "
                              "busy polling, and kvmkit has no vhost-net)")
        if "br" in opts and "helper" not in opts:
            raise TapError(0, "br= is used only with helper= (QEMU ignores it otherwise; "
                              "kvmkit does not)")
        mode = next((m for m in EXCLUSIVE if m in opts), None)
        clash = [name for name in EXCLUSIVE.get(mode, ()) if name in opts]
        if clash:
            names = [f"{name}=" for name in EXCLUSIVE[mode]]
            raise TapError(0, f"{', '.join(names[:-1])}, and {names[-1]} are invalid "
                              f"with {mode}=")
        if "vhostfds" in opts and "fds" not in opts:
            raise TapError(0, "vhostfds= is invalid if fds= wasn't specified")
        if "vhostfds" in opts and len(opts["vhostfds"].split(":")) != len(opts["fds"].split(":")):
            raise TapError(0, "The number of fds passed does not match the number of "
                              "vhostfds passed")
        if mode == "fd":
            backend = cls._adopt([fd_lookup(opts["fd"])], lock)
        elif mode == "fds":
            backend = cls._adopt([fd_lookup(name) for name in opts["fds"].split(":")], lock)
        elif mode == "helper":
            backend = cls._adopt([run_bridge_helper(opts["helper"],
                                                    opts.get("br", "br0"))], lock)
            backend.helper = opts["helper"]
        else:
            backend = cls._open(opts, lock)
        try:                          # (QEMU sees to vhost once it has the tap)
            _check_vhost(opts, fd_lookup)
            backend.set_sndbuf(opts.get("sndbuf"))
        except TapError:
            backend.close()
            raise
        return backend

    @classmethod
    def _adopt(cls, fds: list[int], lock: threading.RLock) -> TapBackend:
        """Taps opened by someone else (libvirt, a helper); every queue must agree on
        the vnet header, as QEMU checks. An fd that is not a tap (or macvtap) is
        refused as QEMU refuses it: the event loop could not even poll some."""
        for fd in fds:
            try:
                fcntl.ioctl(fd, TUNGETIFF, bytes(18))
            except OSError as e:
                raise TapError(e.errno, f"Unable to query TUNGETIFF on FD {fd}: "
                                        f"{e.strerror}") from None
        name, first_flags = _tap_ifreq(fds[0])
        vnet_hdr = bool(first_flags & IFF_VNET_HDR)
        if any(bool(_tap_ifreq(fd)[1] & IFF_VNET_HDR) != vnet_hdr for fd in fds[1:]):
            raise TapError(0, "vnet_hdr not consistent across given tap fds")
        for fd in fds:
            os.set_blocking(fd, False)
        return cls(fds, name, None, None, lock, vnet_hdr=vnet_hdr)

    @classmethod
    def _open(cls, opts: dict, lock: threading.RLock) -> TapBackend:
        """A tap of kvmkit's own: ifname= (made if missing), queues=, vnet_hdr=, and
        the script that sets it up."""
        vnet_wanted = _wants(opts, "vnet_hdr")
        try:
            queues = int(opts.get("queues", "1"), 0)
        except ValueError:
            raise TapError(0, "Parameter 'queues' expects uint32_t") from None
        if not 1 <= queues <= MAX_QUEUES:
            raise TapError(0, f"queues={queues} must be between 1 and {MAX_QUEUES}")
        features = _tun_features()
        vnet_hdr = vnet_wanted is not False and bool(features & IFF_VNET_HDR)
        if vnet_wanted and not vnet_hdr:
            raise TapError(0, "vnet_hdr=1 requested, but no kernel support for "
                              "IFF_VNET_HDR available")
        fds: list[int] = []
        ifname = opts.get("ifname", "")
        try:
            for _ in range(queues):
                fd, ifname = open_tap(ifname, vnet_hdr, multi_queue=queues > 1)
                fds.append(fd)
        except TapError:
            for fd in fds:
                os.close(fd)
            raise
        script = opts.get("script", DEFAULT_SCRIPT)
        downscript = opts.get("downscript", DEFAULT_DOWNSCRIPT)
        backend = cls(fds, ifname, script, downscript, lock, vnet_hdr)
        backend._run_script(script)
        return backend

    def set_sndbuf(self, text: str | None) -> None:
        """sndbuf=: how much the kernel queues for the tap (TUNSETSNDBUF); QEMU sets
        it always, unlimited (INT_MAX) unless told, and complains only when told."""
        try:
            size = min(parse_size(text), INT_MAX) if text is not None else 0
        except OptsError:
            raise TapError(0, "Parameter 'sndbuf' expects a size value") from None
        for queue in self.queues:
            try:
                fcntl.ioctl(queue.fd, TUNSETSNDBUF, struct.pack("i", size or INT_MAX))
            except OSError as e:
                if text is not None:
                    raise TapError(e.errno, f"TUNSETSNDBUF ioctl failed: {e.strerror}") \
                        from None

    @classmethod
    def on_bridge(cls, opts: dict, lock: threading.RLock) -> TapBackend:
        """-netdev bridge,br=NAME: a new tap, enslaved to the bridge and up (pyroute2;
        QEMU asks its setuid helper to do the same)."""
        from pyroute2 import IPRoute

        bridge = opts.get("br", "br0")
        if "helper" in opts:                  # the user's helper, as QEMU runs it
            backend = cls._adopt([run_bridge_helper(opts["helper"], bridge)], lock)
            backend.bridge, backend.helper = bridge, opts["helper"]
            return backend

        def new_tap_on_bridge() -> tuple[int, str, bool]:
            with IPRoute() as ipr:
                found = ipr.link_lookup(ifname=bridge)
                if not found:
                    raise TapError(0, f"bridge '{bridge}' does not exist")
                vnet_hdr = bool(_tun_features() & IFF_VNET_HDR)
                fd, ifname = open_tap("", vnet_hdr)
                try:
                    tap = ipr.link_lookup(ifname=ifname)[0]
                    ipr.link("set", index=tap, master=found[0], state="up")
                except Exception as e:
                    os.close(fd)
                    raise TapError(0, f"could not add {ifname} to bridge '{bridge}': "
                                      f"{e}") from None
            return fd, ifname, vnet_hdr

        try:
            fd, ifname, vnet_hdr = outside_event_loop(new_tap_on_bridge)
        except TapError as e:             # the helper's reason on stderr, QEMU's error
            print(e.strerror, file=sys.stderr, flush=True)
            raise TapError(0, "bridge helper failed") from None
        backend = cls([fd], ifname, None, None, lock, vnet_hdr)
        backend.bridge = bridge
        return backend

    def _run_script(self, script: str | None) -> None:
        if not script or script == "no" or not os.path.exists(script):
            return
        # kvmkit blocks SIGTERM/SIGINT/SIGHUP for its signal thread: the script must not
        result = subprocess.run([script, self.ifname], stdin=subprocess.DEVNULL,
                                preexec_fn=_default_signal_mask)
        if result.returncode:
            raise TapError(0, f"network script {script} failed with status "
                              f"{result.returncode}")

    @property
    def queue_count(self) -> int:
        return len(self.queues)

    def info(self, index: int, queue: int | None = None) -> str:
        """Its `info network` text, as QEMU's (net/tap.c)."""
        if self.bridge is not None:
            return f"index={index},type=tap,helper={self.helper or BRIDGE_HELPER}," \
                   f"br={self.bridge}"
        if self.helper is not None:
            return f"index={index},type=tap,helper={self.helper}"
        if self.script is None:
            fd = self.queues[index if queue is None else queue].fd
            return f"index={index},type=tap,fd={fd}"
        return (f"index={index},type=tap,ifname={self.ifname},script={self.script},"
                f"downscript={self.downscript}")

    # -- the NIC's side ----------------------------------------------------------------
    @property
    def nic(self):
        return self._nic

    @nic.setter
    def nic(self, nic) -> None:
        """Queue 0 feeds the NIC; further queues feed its queue_port(i) where it has
        queues of its own (virtio-net), else the NIC too, as QEMU's NIC queues do."""
        self._nic = nic
        self.nic_uses_header = False
        port_of = getattr(nic, "queue_port", None)
        for index, queue in enumerate(self.queues):
            queue.port = port_of(index) if port_of and index else nic

    def use_vnet_hdr(self, length: int) -> None:
        """The NIC (virtio-net) reads and writes headers of `length` bytes itself."""
        if not self.has_vnet_hdr:
            return
        if length != self.header_len:
            try:
                for queue in self.queues:
                    fcntl.ioctl(queue.fd, TUNSETVNETHDRSZ, struct.pack("i", length))
            except OSError as e:       # the kernel keeps the length it had
                log.warning("tap %s: TUNSETVNETHDRSZ %d failed: %s", self.ifname, length,
                            e.strerror)
                return
            self.header_len = length
        self.nic_uses_header = True

    def set_offload(self, csum: bool = False, tso4: bool = False, tso6: bool = False,
                    ecn: bool = False, ufo: bool = False) -> None:
        """Which offloads the kernel may leave to the guest in frames it delivers."""
        if not self.has_vnet_hdr:
            return
        flags = (TUN_F_CSUM if csum else 0) | (TUN_F_TSO4 if tso4 else 0) | \
            (TUN_F_TSO6 if tso6 else 0) | (TUN_F_TSO_ECN if ecn else 0)
        for queue in self.queues:
            try:
                fcntl.ioctl(queue.fd, TUNSETOFFLOAD, flags | (TUN_F_UFO if ufo else 0))
            except OSError:         # kernels without UFO: the rest, as QEMU retries
                try:
                    fcntl.ioctl(queue.fd, TUNSETOFFLOAD, flags)
                except OSError as e:
                    log.warning("tap %s: TUNSETOFFLOAD failed: %s", self.ifname, e.strerror)

    def set_queue_enabled(self, index: int, enabled: bool) -> None:
        """Attaches or detaches one queue of a multiqueue tap (the guest's queue pairs)."""
        if len(self.queues) < 2 or index >= len(self.queues):
            return
        flag = IFF_ATTACH_QUEUE if enabled else IFF_DETACH_QUEUE
        try:
            fcntl.ioctl(self.queues[index].fd, TUNSETQUEUE, struct.pack("16sH", b"", flag))
        except OSError as e:
            if e.errno != 22:      # EINVAL: already in that state
                log.warning("tap %s: queue %d: %s", self.ifname, index, e.strerror)

    # -- frames ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """On the loop's thread."""
        self.loop = loop
        self.loop_thread = threading.get_ident()
        self.receive_ready()

    def send(self, frame: bytes) -> None:
        """A plain frame from a NIC that has no use for the vnet header."""
        if self.header_len and not self.nic_uses_header:
            self.send_iov([bytes(self.header_len), frame])
        else:
            self.send_iov([frame])

    def send_raw(self, frame: bytes) -> None:
        """A frame of the VMM's own (an announcement): with an empty vnet header
        whenever the tap expects one, whoever the NIC is."""
        self.send_iov([bytes(self.header_len), frame] if self.header_len else [frame])

    def send_iov(self, parts: list, queue: int = 0) -> None:
        """A frame in pieces (virtio-net: the guest's header and buffers, zero-copy)."""
        fd = self.tx_fd(queue)
        if fd < 0:
            return
        try:
            os.writev(fd, parts)
        except OSError as e:
            log.debug("tap %s: frame dropped: %s", self.ifname, e)

    def tx_fd(self, queue: int = 0) -> int:
        """Where a NIC queue's frames go (virtio-net writes there itself); -1 while the
        link is down."""
        if self.link_down:
            return -1
        return self.queues[queue].fd if queue < len(self.queues) else self.fd

    def receive_ready(self) -> None:
        """The guest gave receive buffers: read the tap's queues again. On the loop's
        thread (a doorbell) that happens at once; from elsewhere, on the loop."""
        for queue in self.queues:
            was_reading = queue.reading
            self._want_reading(queue, True)
            if not was_reading and self._on_loop():
                self._readable(queue)       # what waited in the kernel, now

    def _on_loop(self) -> bool:
        return self.loop is not None and threading.get_ident() == self.loop_thread

    def _want_reading(self, queue: _Queue, on: bool) -> None:
        if self.loop is None or on == queue.reading:
            return
        queue.reading = on
        if self._on_loop():                 # no self-pipe round trip for the loop itself
            if on:
                self._add_reader(queue)
            else:
                self.loop.remove_reader(queue.fd)
        elif on:
            self.loop.call_soon_threadsafe(self._add_reader, queue)
        else:
            self.loop.call_soon_threadsafe(self.loop.remove_reader, queue.fd)

    def _add_reader(self, queue: _Queue) -> None:
        if queue.reading:
            self.loop.add_reader(queue.fd, self._readable, queue)

    def _readable(self, queue: _Queue) -> None:
        strip = self.header_len if not self.nic_uses_header else 0
        with self.lock:
            # virtio-net reads frames with their headers into the guest itself (in C)
            take = getattr(queue.port, "receive_from_fd", None) \
                if self.nic_uses_header and not self.link_down else None
            keep = take(queue.fd, 64) if take is not None else None
            if keep is not None:
                if not keep:
                    self._want_reading(queue, False)
                return
            for _ in range(64):            # a bounded batch, then let the loop breathe
                port = queue.port
                if port is None or not port.can_receive():
                    self._want_reading(queue, False)
                    return
                try:
                    frame = os.read(queue.fd, MAX_FRAME)
                except BlockingIOError:
                    return
                except OSError as e:
                    log.warning("tap %s: read failed: %s", self.ifname, e)
                    self._want_reading(queue, False)
                    return
                if not self.link_down and len(frame) > strip:
                    port.receive(frame[strip:] if strip else frame)

    def close(self) -> None:
        for queue in self.queues:
            if self.loop is not None and queue.reading:
                try:
                    self.loop.remove_reader(queue.fd)
                except (RuntimeError, ValueError):
                    pass
            try:
                os.close(queue.fd)
            except OSError:
                pass
        self._run_script(self.downscript)


def _check_vhost(opts: dict, fd_lookup: Callable[[str], int]) -> None:
    """vhost=, vhostfd(s)= and vhostforce= as QEMU reads them. kvmkit has no
    vhost-net: a request for it (vhost=on, or a vhostfd as libvirt passes when
    /dev/vhost-net exists) falls back to kvmkit's own virtio-net path with a
    warning, as QEMU falls back when vhost-net cannot start; vhostforce=on makes
    that an error, as in QEMU."""
    given = [name for key in ("vhostfd", "vhostfds") if key in opts
             for name in opts[key].split(":")]
    force = _wants(opts, "vhostforce")
    vhost = _wants(opts, "vhost")
    if vhost is None:
        vhost = bool(given) or bool(force)
    if not vhost:
        if given:
            raise TapError(0, "vhostfd(s)= is not valid without vhost")
        return
    if force:
        raise TapError(0, "vhost-net requested but could not be initialized "
                          "(kvmkit has no vhost-net)")
    for name in given:            # handed to us: ours to close
        try:
            os.close(fd_lookup(name))
        except (OSError, ValueError, UserError):
            pass
    log.warning("warning: tap: vhost-net is not supported by kvmkit; virtio-net frames "
                "go through kvmkit itself")


def outside_event_loop(work: Callable[[], T]) -> T:
    """pyroute2 runs an asyncio loop of its own, which cannot start inside a running
    one (netdev_add runs in the monitor's): there, the work gets a thread."""
    try:
        asyncio.get_running_loop()
    except RuntimeError:
        return work()
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        return pool.submit(work).result()


def run_bridge_helper(helper: str, bridge: str) -> int:
    """QEMU's bridge-helper protocol: the helper makes a tap, puts it on `bridge` and
    sends its fd back over a socketpair (SCM_RIGHTS); `helper` with a space in it is
    a shell command (--br= added unless it has one)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
    fd_arg = f"--fd={theirs.fileno()}"
    if " " in helper or "\t" in helper:
        br_arg = "" if "--br=" in helper else f"--br={bridge}"
        argv = ["/bin/sh", "-c", f"{helper} --use-vnet {fd_arg} {br_arg}"]
    else:
        argv = [helper, "--use-vnet", fd_arg, f"--br={bridge}"]
    try:
        child = subprocess.Popen(argv, pass_fds=[theirs.fileno()], stdin=subprocess.DEVNULL,
                                 preexec_fn=_default_signal_mask)
    except OSError:               # as QEMU, whose forked child cannot exec it
        ours.close()
        theirs.close()
        raise TapError(0, "bridge helper failed") from None
    theirs.close()
    try:
        _msg, fds, _flags, _addr = socket.recv_fds(ours, 16, 1)
    except OSError as e:
        fds = []
        log.debug("bridge helper: %s", e)
    finally:
        ours.close()
    status = child.wait()
    if status != 0:
        for fd in fds:
            os.close(fd)
        raise TapError(0, "bridge helper failed")
    if not fds:
        raise TapError(0, "failed to recv file descriptor")
    return fds[0]


def _default_signal_mask() -> None:
    signal.pthread_sigmask(signal.SIG_SETMASK, set())
