"""One-shot device timers that fire on the machine's loop, under the machine lock.

Devices arm them from any thread (a vCPU exit, the monitor); re-arming or
cancelling makes an earlier arming harmless, so no handle needs cancelling
across threads.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable


class DeviceTimer:
    def __init__(self, loop: Callable[[], asyncio.AbstractEventLoop | None],
                 lock: threading.RLock, callback: Callable[[], None]) -> None:
        self._loop = loop              # the machine's loop, once it has one
        self._lock = lock
        self._callback = callback
        self._generation = 0

    def arm(self, seconds: float) -> None:
        self._generation += 1
        loop = self._loop()
        if loop is not None:
            loop.call_soon_threadsafe(self._schedule, self._generation, seconds)

    def cancel(self) -> None:
        self._generation += 1

    def _schedule(self, generation: int, seconds: float) -> None:
        if generation == self._generation:
            asyncio.get_running_loop().call_later(seconds, self._fire, generation)

    def _fire(self, generation: int) -> None:
        with self._lock:
            if generation == self._generation:
                self._callback()
