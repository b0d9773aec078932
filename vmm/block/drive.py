"""A drive: what QEMU calls a BlockBackend, the device's end of the node graph.

It is named by -drive id (or anonymous, made when -device drive= names a node),
holds the guest-visible write cache setting, throttles requests (its own limits
or its throttle group's), keeps query-blockstats' counts, and passes the I/O to
its root node. Devices make every call from their I/O engine's threads.
"""

from __future__ import annotations

import bisect
import errno
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from vmm.block.graph import Node
from vmm.block.throttle import ThrottleGroup

# -drive cache= modes: (write cache on, O_DIRECT, flushes ignored), as QEMU's
CACHE_MODES = {"writeback": (True, False, False), "writethrough": (False, False, False),
               "none": (True, True, False), "directsync": (False, True, False),
               "unsafe": (True, False, True)}
KINDS = ("rd", "wr", "flush", "unmap")


@dataclass
class BlockStats:
    """QEMU's BlockDeviceStats counts, by kind of request."""
    bytes: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    operations: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    total_time_ns: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    failed: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    invalid: dict[str, int] = field(default_factory=lambda: dict.fromkeys(KINDS, 0))
    last_done: float | None = None      # monotonic seconds of the last completion
    # block-latency-histogram-set: kind -> (boundaries in ns, a count per bin)
    histograms: dict[str, tuple[list[int], list[int]]] = field(default_factory=dict)

    def done(self, kind: str, length: int, started: float, ok: bool) -> None:
        now = time.monotonic()
        if ok:
            self.bytes[kind] += length
            self.operations[kind] += 1
            latency = int((now - started) * 1e9)
            self.total_time_ns[kind] += latency
            if kind in self.histograms:
                boundaries, bins = self.histograms[kind]
                bins[bisect.bisect_right(boundaries, latency)] += 1
        else:
            self.failed[kind] += 1
        self.last_done = now


@dataclass(eq=False)
class Drive:
    name: str                        # -drive id; "" for one a device made for a node
    root: Node | None                # None once drive_del took it from its device
    cache_writeback: bool = True     # the write cache as configured (reset goes back to it)
    attached_to: str = ""            # QOM path of the device using it
    device_id: str = ""              # and its qdev id, which query-block shows if it has one
    on_resize: Callable[[], None] | None = None   # the device's, to tell its guest
    throttle: ThrottleGroup | None = None
    werror: str = "enospc"           # what an error does: report, ignore, enospc, stop
    rerror: str = "report"
    io_status: str = "ok"            # query-block's: failed or nospace while stopped
    stats: BlockStats = field(default_factory=BlockStats)
    # A device with removable media (ide-cd): its tray, as the monitor sees it
    # (tray_open, locked, change_media(load), eject_request(force)).
    media: object | None = None
    medium_read_only: bool = False   # how a medium changed in later is opened (-drive's)

    def __post_init__(self) -> None:
        self.writeback = self.cache_writeback      # the guest may switch it (WCE)
        self.cancelled = threading.Event()         # set while a device reset drops requests
        self.claims: list = []                     # (node, Use) its device holds
        if self.root is not None:
            self.root.users += 1

    # -- what query-block shows ------------------------------------------------------
    @property
    def read_only(self) -> bool:
        return self.root is not None and self.root.read_only

    @property
    def size(self) -> int:
        return self.root.image.size if self.root is not None else 0

    def _image(self):
        if self.root is None:
            raise OSError(errno.ENOMEDIUM, "No medium found")
        return self.root.image

    # -- I/O, on a device's I/O thread -------------------------------------------------
    def _go(self, is_write: bool, length: int) -> None:
        if self.throttle is not None and \
                not self.throttle.acquire(is_write, length, self.cancelled):
            raise InterruptedError("request dropped by a device reset")

    def _timed(self, kind: str, length: int, call: Callable[[], None]) -> None:
        """Runs one request, counted in the stats as done or failed."""
        started, ok = time.monotonic(), False
        try:
            call()
            ok = True
        finally:
            self.stats.done(kind, length, started, ok)

    def read_into(self, offset: int, buffers: list[memoryview]) -> None:
        length = sum(len(view) for view in buffers)
        self._go(False, length)
        self._timed("rd", length, lambda: self._image().read_into(offset, buffers))

    def write(self, offset: int, data: bytes | memoryview) -> None:
        length = len(data)
        self._go(True, length)
        if self.root is not None and self.root.detect_zeroes != "off" and \
                data == bytes(length):
            unmap = self.root.detect_zeroes == "unmap"
            self._observed("wr", offset, length, lambda: self._then_flush().write_zeroes(
                offset, length, unmap))
        else:
            self._observed("wr", offset, length,
                           lambda: self._then_flush().write(offset, data))

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self._go(True, length)
        self._observed("wr", offset, length, lambda: self._then_flush().write_zeroes(
            offset, length, may_unmap))

    def _observed(self, kind: str, offset: int, length: int, call: Callable[[], None]) -> None:
        """A change to the data, shown to what watches the root node (dirty bitmaps,
        mirror and backup jobs) before and after it is made."""
        observers = list(self.root.observers) if self.root is not None else []
        for observer in observers:
            observer.before_write(offset, length)
        self._timed(kind, length, call)
        for observer in observers:
            observer.after_write(offset, length)

    def _then_flush(self):
        """The image, to write to; with the write cache off, flushed after the write."""
        image = self._image()
        if self.writeback:
            return image
        return _WriteThrough(image)

    def flush(self) -> None:
        self._timed("flush", 0, lambda: self._image().flush())

    def discard(self, offset: int, length: int) -> None:
        call = lambda: self._image().discard(offset, length)  # noqa: E731
        if self.root is not None and self.root.discard == "unmap":
            self._observed("unmap", offset, length, call)
        else:                             # ignored (discard=ignore): nothing changes
            self._timed("unmap", length, call)

    def error_action(self, is_write: bool, error: OSError) -> str:
        """What werror/rerror say to do about a failed request: report, ignore or
        stop (enospc: stop when the disk is full, otherwise report)."""
        action = self.werror if is_write else self.rerror
        if action == "enospc":
            return "stop" if error.errno == errno.ENOSPC else "report"
        return action

    @property
    def iostatus_enabled(self) -> bool:
        """Whether query-block shows an io-status (QEMU's rule: a device uses the
        drive, and an error may stop the VM)."""
        return bool(self.attached_to) and (self.werror in ("enospc", "stop") or
                                           self.rerror == "stop")

    def error_event(self, is_write: bool, action: str, error: OSError) -> dict:
        """BLOCK_IO_ERROR's data, as QEMU sends it."""
        data = {"device": self.name, "node-name": self.root.name if self.root else "",
                "operation": "write" if is_write else "read", "action": action,
                "reason": error.strerror or str(error)}
        if self.iostatus_enabled:
            data["nospace"] = error.errno == errno.ENOSPC
        return data

    def invalid_request(self, kind: str) -> None:
        """A request the device refused (past the end, on a read-only drive)."""
        self.stats.invalid[kind] += 1


class _WriteThrough:
    """An image whose writes each end with a flush (the guest turned its cache off)."""

    def __init__(self, image) -> None:
        self.image = image

    def write(self, offset: int, data) -> None:
        self.image.write(offset, data)
        self.image.flush()

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        self.image.write_zeroes(offset, length, may_unmap)
        self.image.flush()
