"""The I/O engine: a device's blocking block I/O runs on a worker thread of its
own, in submission order, without the machine lock; its completion then runs
under the lock, where it may touch virtqueues and raise interrupts.

A device reset cancels what was submitted before it: ``cancel`` waits only for
a call already in progress (which holds no lock), and completions of cancelled
work are dropped, so the guest never sees a request of an earlier life finish.
"""

from __future__ import annotations

import logging
import queue
import threading
from collections.abc import Callable
from typing import Any

log = logging.getLogger(__name__)


class IoEngine:
    def __init__(self, lock: threading.RLock, name: str = "io") -> None:
        self.lock = lock
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._generation = 0
        self._idle = threading.Condition()
        self._busy = False
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()

    def submit(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Runs ``work()`` on the worker, then ``done(result)`` under the machine lock."""
        self._jobs.put((self._generation, work, done))

    def cancel(self) -> None:
        """Forgets submitted work and waits for a call in progress to return."""
        with self._idle:
            self._generation += 1
            self._idle.wait_for(lambda: not self._busy)

    def close(self) -> None:
        self.cancel()
        self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            generation, work, done = job
            with self._idle:
                if generation != self._generation:
                    continue
                self._busy = True
            try:
                result = work()
            except Exception:            # a bug in the device's work: keep serving
                log.exception("block I/O failed")
                result = None
            finally:
                with self._idle:
                    self._busy = False
                    self._idle.notify_all()
            with self.lock:
                if generation == self._generation:
                    done(result)
