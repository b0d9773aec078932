"""I/O throttling with QEMU's semantics: six leaky buckets (bytes and operations,
in total and for reads and for writes), each with an average rate, an optional
burst rate (``_max``) held for at most ``_max_length`` seconds, and
``iops_size`` counting a big request as several operations.

A bucket fills with each request and leaks at its average rate; a request waits
while a bucket it uses holds more than it may (a tenth of a second at the
average rate, or the whole burst), and while a burst bucket leaking at the
burst rate is over a tenth of a second of it. Drives in one throttle group
share the buckets, so the group's I/O together keeps the limits.
"""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field

from vmm.errors import UserError

VALUE_MAX = 10**15
# QEMU's names: (-drive throttling.X, block_set_io_throttle / query-block member)
LIMITS = (("bps-total", "bps"), ("bps-read", "bps_rd"), ("bps-write", "bps_wr"),
          ("iops-total", "iops"), ("iops-read", "iops_rd"), ("iops-write", "iops_wr"))


@dataclass
class Bucket:
    avg: float = 0
    max: float = 0
    burst_length: int = 1
    level: float = 0
    burst_level: float = 0

    def leak(self, seconds: float) -> None:
        self.level = max(self.level - self.avg * seconds, 0)
        if self.burst_length > 1:
            self.burst_level = max(self.burst_level - self.max * seconds, 0)

    def wait(self) -> float:
        """Seconds before a request may use this bucket."""
        if not self.avg:
            return 0
        if not self.max:
            size, burst_size = self.avg / 10, 0
        else:
            size, burst_size = self.max * self.burst_length, self.max / 10
        if self.level > size:
            return (self.level - size) / self.avg
        if self.burst_length > 1 and self.burst_level > burst_size:
            return (self.burst_level - burst_size) / self.max
        return 0

    def fill(self, amount: float) -> None:
        self.level += amount
        if self.burst_length > 1:
            self.burst_level += amount


@dataclass
class ThrottleConfig:
    """The limits, keyed by block_set_io_throttle's names (bps, bps_max,
    bps_max_length, ..., iops_size)."""
    values: dict[str, int] = field(default_factory=dict)

    def get(self, key: str) -> int:
        return self.values.get(key, 0)

    @property
    def enabled(self) -> bool:
        return any(self.get(name) for _opt, name in LIMITS)

    def check(self) -> None:
        """QEMU's checks, with its words."""
        for total, read, write in (("bps", "bps_rd", "bps_wr"), ("iops", "iops_rd", "iops_wr")):
            for suffix in ("", "_max"):
                if self.get(total + suffix) and (self.get(read + suffix) or
                                                 self.get(write + suffix)):
                    raise UserError("bps/iops/max total values and read/write values "
                                    "cannot be used at the same time")
        for _opt, name in LIMITS:
            avg, burst = self.get(name), self.get(name + "_max")
            if not 0 <= avg <= VALUE_MAX or not 0 <= burst <= VALUE_MAX:
                raise UserError(f"bps/iops/max values must be within [0, {VALUE_MAX}]")
            length = self.values.get(name + "_max_length", 1)
            if length == 0:
                raise UserError("the burst length cannot be 0")
            if length > 1 and not burst:
                raise UserError("burst length set without burst rate")
            if burst and burst < avg:
                raise UserError("bps_max/iops_max cannot be lower than bps/iops")
            if burst and not avg:
                raise UserError("bps_max/iops_max require corresponding bps/iops values")
        if self.get("iops_size") and not any(self.get(n) for n in ("iops", "iops_rd",
                                                                    "iops_wr")):
            raise UserError("iops size requires an iops value to be set")


class ThrottleGroup:
    """Buckets shared by the drives of one group."""

    def __init__(self, name: str, config: ThrottleConfig) -> None:
        self.name = name
        self.members: set[object] = set()
        self._lock = threading.Lock()
        self._turn = (threading.Lock(), threading.Lock())     # reads, writes: one waits
        self._cancelled = threading.Event()
        self.configure(config)

    def configure(self, config: ThrottleConfig) -> None:
        with self._lock:
            self.config = config
            self.buckets = {}
            for _opt, name in LIMITS:
                avg = config.get(name)
                self.buckets[name] = Bucket(avg, config.get(name + "_max"),
                                            config.values.get(name + "_max_length", 1))
            self.op_size = config.get("iops_size")
            self._last = time.monotonic()

    def _wait_for(self, is_write: bool) -> float:
        now = time.monotonic()
        for bucket in self.buckets.values():
            bucket.leak(now - self._last)
        self._last = now
        names = ("bps", "iops") + (("bps_wr", "iops_wr") if is_write else ("bps_rd", "iops_rd"))
        return max(self.buckets[name].wait() for name in names)

    def acquire(self, is_write: bool, size: int, cancelled: threading.Event) -> bool:
        """Blocks until the request may go, and counts it; False if ``cancelled``
        was set meanwhile (the device reset: the request is dropped)."""
        with self._turn[is_write]:                 # requests of a kind go in order
            while True:
                with self._lock:
                    wait = self._wait_for(is_write)
                    if not wait:
                        units = size / self.op_size if self.op_size and \
                            size > self.op_size else 1.0
                        kind = ("bps_wr", "iops_wr") if is_write else ("bps_rd", "iops_rd")
                        for name, amount in (("bps", size), ("iops", units),
                                             (kind[0], size), (kind[1], units)):
                            self.buckets[name].fill(amount)
                        return True
                if cancelled.wait(min(wait, 0.5)):
                    return False
