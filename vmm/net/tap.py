"""-netdev tap: frames to and from a Linux tap interface.

The interface is opened through /dev/net/tun (TUNSETIFF, IFF_TAP|IFF_NO_PI),
created by that if it does not exist, or handed over as an open fd (``fd=N``,
how libvirt passes taps). Reads happen on the machine's loop; while the guest
has no receive buffers the fd is not read at all, so the kernel queues (and
at worst drops) rather than kvmkit, as with QEMU.
"""

from __future__ import annotations

import asyncio
import fcntl
import logging
import os
import struct
import subprocess
import threading
from collections.abc import Callable

log = logging.getLogger(__name__)

TUNSETIFF = 0x400454CA
TUNGETIFF = 0x800454D2
IFF_TAP = 0x0002
IFF_NO_PI = 0x1000
MAX_FRAME = 65536
DEFAULT_SCRIPT = "/etc/qemu-ifup"
DEFAULT_DOWNSCRIPT = "/etc/qemu-ifdown"
BRIDGE_HELPER = "/usr/lib/qemu/qemu-bridge-helper"   # named in info network as QEMU does


class TapError(OSError):
    pass


def open_tap(ifname: str) -> tuple[int, str]:
    """Opens (creating if needed) tap `ifname` ('' lets the kernel name it)."""
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
    except OSError as e:
        raise TapError(e.errno, f"could not open /dev/net/tun: {e.strerror}") from None
    request = struct.pack("16sH", ifname.encode(), IFF_TAP | IFF_NO_PI)
    try:
        answer = fcntl.ioctl(fd, TUNSETIFF, request)
    except OSError as e:
        os.close(fd)
        raise TapError(e.errno, f"could not configure /dev/net/tun ({ifname}): "
                                f"{e.strerror}") from None
    return fd, answer[:16].rstrip(b"\0").decode()


def tap_name(fd: int) -> str:
    try:
        return fcntl.ioctl(fd, TUNGETIFF, bytes(18))[:16].rstrip(b"\0").decode()
    except OSError:
        return ""


class TapBackend:
    kind = "tap"

    def __init__(self, fd: int, ifname: str, script: str | None, downscript: str | None,
                 lock: threading.RLock) -> None:
        self.fd = fd
        self.ifname = ifname
        self.script, self.downscript = script, downscript
        self.lock = lock
        self.nic = None                  # has receive(frame) -> bool
        self.loop: asyncio.AbstractEventLoop | None = None
        self.reading = False
        self.link_down = False
        self.sent = self.received = 0
        self.bridge: str | None = None

    @classmethod
    def from_options(cls, opts: dict, lock: threading.RLock,
                     fd_lookup: Callable[[str], int]) -> TapBackend:
        if "fd" in opts:
            fd = fd_lookup(opts["fd"])
            os.set_blocking(fd, False)
            return cls(fd, tap_name(fd), None, None, lock)
        if opts.get("vhost") in ("on", "true", "yes") and not os.path.exists("/dev/vhost-net"):
            # QEMU warns and goes on without vhost unless vhostforce=on.
            log.warning("warning: tap: open vhost char device failed: No such file or directory")
        fd, ifname = open_tap(opts.get("ifname", ""))
        script = opts.get("script", DEFAULT_SCRIPT)
        downscript = opts.get("downscript", DEFAULT_DOWNSCRIPT)
        backend = cls(fd, ifname, script, downscript, lock)
        backend._run_script(script)
        return backend

    @classmethod
    def on_bridge(cls, opts: dict, lock: threading.RLock) -> TapBackend:
        """-netdev bridge,br=NAME: a new tap, enslaved to the bridge and up (pyroute2;
        QEMU asks its setuid helper to do the same)."""
        from pyroute2 import IPRoute

        bridge = opts.get("br", "br0")
        with IPRoute() as ipr:
            found = ipr.link_lookup(ifname=bridge)
            if not found:
                raise TapError(0, f"bridge '{bridge}' does not exist")
            fd, ifname = open_tap("")
            try:
                tap = ipr.link_lookup(ifname=ifname)[0]
                ipr.link("set", index=tap, master=found[0], state="up")
            except Exception as e:
                os.close(fd)
                raise TapError(0, f"could not add {ifname} to bridge '{bridge}': {e}") from None
        backend = cls(fd, ifname, None, None, lock)
        backend.bridge = bridge
        return backend

    def _run_script(self, script: str | None) -> None:
        if not script or script == "no" or not os.path.exists(script):
            return
        result = subprocess.run([script, self.ifname], stdin=subprocess.DEVNULL)
        if result.returncode:
            raise TapError(0, f"network script {script} failed with status "
                              f"{result.returncode}")

    def info(self, index: int) -> str:
        """Its `info network` text, as QEMU's (net/tap.c)."""
        if self.bridge is not None:
            return f"index={index},type=tap,helper={BRIDGE_HELPER},br={self.bridge}"
        if self.script is None:
            return f"index={index},type=tap,fd={self.fd}"
        return (f"index={index},type=tap,ifname={self.ifname},script={self.script},"
                f"downscript={self.downscript}")

    # -- frames ---------------------------------------------------------------------
    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self._want_reading(True)

    def send(self, frame: bytes) -> None:
        if self.link_down:
            return
        try:
            os.write(self.fd, frame)
            self.sent += 1
        except (BlockingIOError, OSError) as e:
            log.debug("tap %s: frame dropped: %s", self.ifname, e)

    def receive_ready(self) -> None:
        """The guest gave receive buffers: read the tap again."""
        self._want_reading(True)

    def _want_reading(self, on: bool) -> None:
        if self.loop is None or on == self.reading:
            return
        self.reading = on
        if on:
            self.loop.call_soon_threadsafe(self._add_reader)
        else:
            self.loop.call_soon_threadsafe(self.loop.remove_reader, self.fd)

    def _add_reader(self) -> None:
        if self.reading:
            self.loop.add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        with self.lock:
            for _ in range(64):            # a bounded batch, then let the loop breathe
                if self.nic is None or not self.nic.can_receive():
                    self._want_reading(False)
                    return
                try:
                    frame = os.read(self.fd, MAX_FRAME)
                except BlockingIOError:
                    return
                except OSError as e:
                    log.warning("tap %s: read failed: %s", self.ifname, e)
                    self._want_reading(False)
                    return
                self.received += 1
                if not self.link_down:
                    self.nic.receive(frame)

    def close(self) -> None:
        if self.loop is not None and self.reading:
            try:
                self.loop.remove_reader(self.fd)
            except (RuntimeError, ValueError):
                pass
        try:
            os.close(self.fd)
        except OSError:
            pass
        self._run_script(self.downscript)
