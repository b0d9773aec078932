"""The machine lock (kvmkit's big lock, QEMU's BQL), with QEMU's sync-profile:
while profiling is on, the time each acquisition waited is summed by call site
(file:line of the `with` or acquire), for HMP `info sync-profile`. Off, it costs
one flag test per acquisition."""

from __future__ import annotations

import os
import sys
import threading
import time

_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__))) + os.sep
_THIS = os.path.abspath(__file__)


class ProfiledRLock:
    type_name = "BQL mutex"

    def __init__(self) -> None:
        self._lock = threading.RLock()
        self.profiling = False
        self.sites: dict[str, list[int]] = {}       # call site -> [waited ns, count]

    def acquire(self, blocking: bool = True, timeout: float = -1) -> bool:
        if not self.profiling:
            return self._lock.acquire(blocking, timeout)
        started = time.perf_counter_ns()
        got = self._lock.acquire(blocking, timeout)
        if got:
            self._count(time.perf_counter_ns() - started)
        return got

    def release(self) -> None:
        self._lock.release()

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(self, *_exc) -> None:
        self._lock.release()

    def _count(self, waited_ns: int) -> None:
        frame = sys._getframe(1)
        while frame is not None and os.path.abspath(frame.f_code.co_filename) == _THIS:
            frame = frame.f_back
        if frame is None:
            return
        path = os.path.abspath(frame.f_code.co_filename)
        site = f"{path[len(_ROOT):] if path.startswith(_ROOT) else path}:{frame.f_lineno}"
        entry = self.sites.setdefault(site, [0, 0])
        entry[0] += waited_ns
        entry[1] += 1

    def reset(self) -> None:
        self.sites = {}

    def report(self, limit: int, by_mean: bool) -> str:
        """QEMU's table: the sites with the most waiting (or the longest mean wait)
        first, up to ``limit``."""
        rows = sorted(self.sites.items(), key=lambda kv: (
            kv[1][0] / kv[1][1] if by_mean else kv[1][0]), reverse=True)[:limit]
        width = max([len(site) for site, _ in rows] + [len("Call site")])
        dashes = "-" * (79 + width - len("Call site"))
        out = [f"Type               Object  Call site{' ' * (width - 9)}  Wait Time (s)  "
               "       Count  Average (us)", dashes]
        for site, (ns, count) in rows:
            out.append(f"{self.type_name:<9}  {hex(id(self._lock)):>14}  {site:<{width}}  "
                       f"{ns * 1e-9:13.5f}  {count:12d}  {ns / count * 1e-3:12.2f}")
        out.append(dashes)
        return "\n".join(out) + "\n"
