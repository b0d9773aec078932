"""The I/O engine: a device's blocking block I/O runs on a few worker threads of
its own (several requests in flight, as a guest's queue depth wants; the host
calls release the GIL), without the machine lock; each completion then runs
under the lock, where it may touch virtqueues and raise interrupts.

A device reset cancels what was submitted before it: ``cancel`` waits only for
a call already in progress (which holds no lock), and completions of cancelled
work are dropped, so the guest never sees a request of an earlier life finish.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import threading
import weakref
from collections.abc import Callable, Iterator
from typing import Any

log = logging.getLogger(__name__)


WORKERS = 4


class IoEngine:
    live: weakref.WeakSet[IoEngine] = weakref.WeakSet()     # for quiesced()

    def __init__(self, lock: threading.RLock, name: str = "io", workers: int = WORKERS) -> None:
        self.lock = lock
        self._paused = 0                 # quiesce() calls not yet resumed
        IoEngine.live.add(self)
        self._jobs: queue.SimpleQueue = queue.SimpleQueue()
        self._generation = 0
        self._idle = threading.Condition()
        self._busy = 0
        self._pending = 0                # submitted, not yet completed or dropped
        self._threads = [threading.Thread(target=self._run, name=f"{name} #{n}", daemon=True)
                         for n in range(workers)]
        for thread in self._threads:
            thread.start()

    def submit(self, work: Callable[[], Any], done: Callable[[Any], None]) -> None:
        """Runs ``work()`` on the worker, then ``done(result)`` under the machine lock."""
        with self._idle:
            self._pending += 1
        self._jobs.put((self._generation, work, done))

    def drain(self, timeout: float = 60.0) -> bool:
        """Waits until every submitted request has completed (call without the machine
        lock: completions take it). False if some are still running at the timeout."""
        with self._idle:
            return self._idle.wait_for(lambda: not self._pending, timeout)

    def cancel(self) -> None:
        """Forgets submitted work and waits for calls in progress to return."""
        with self._idle:
            self._generation += 1
            self._idle.wait_for(lambda: not self._busy)

    def quiesce(self) -> None:
        """No request starts until resume(), and none is running when this returns
        (their completions may wait for the machine lock: callable with it held)."""
        with self._idle:
            self._paused += 1
            self._idle.wait_for(lambda: not self._busy)

    def resume(self) -> None:
        with self._idle:
            self._paused -= 1
            self._idle.notify_all()

    def close(self) -> None:
        self.cancel()
        for _thread in self._threads:
            self._jobs.put(None)

    def _run(self) -> None:
        while (job := self._jobs.get()) is not None:
            generation, work, done = job
            with self._idle:
                self._idle.wait_for(lambda: not self._paused)
                if generation != self._generation:
                    self._pending -= 1
                    self._idle.notify_all()
                    continue
                self._busy += 1
            try:
                result = work()
            except Exception:            # a bug in the device's work: keep serving
                log.exception("block I/O failed")
                result = None
            finally:
                with self._idle:
                    self._busy -= 1
                    self._idle.notify_all()
            try:
                with self.lock:
                    if generation == self._generation:
                        done(result)
            finally:
                with self._idle:
                    self._pending -= 1
                    self._idle.notify_all()


@contextlib.contextmanager
def quiesced() -> Iterator[None]:
    """QEMU's drained section: while it lasts no disk request of any device is at
    work, so the block graph can change under the devices (a job's switch to its
    target, a snapshot's overlay). Hold the machine lock too, so no new request
    is submitted meanwhile."""
    engines = list(IoEngine.live)
    done = []
    try:
        for engine in engines:
            engine.quiesce()
            done.append(engine)
        yield
    finally:
        for engine in done:
            engine.resume()
