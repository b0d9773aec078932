"""The source side of a migration (QMP migrate): precopy, as QEMU does it.

A thread of its own writes the stream while the guest runs: every page once,
then pass after pass the pages written since the pass before, until what is
left would go within the downtime limit at the bandwidth measured. Then the VM
stops (runstate finish-migrate), block I/O in flight completes, the last pages
and the machine's state go, and the source ends postmigrate. Any failure or a
cancel before that point leaves the source as it was: running if it ran.
"""

from __future__ import annotations

import concurrent.futures
import logging
import threading
import time
from collections.abc import Callable

from vmm.errors import UserError
from vmm.memory import PAGE_SIZE
from vmm.migration.channel import Channel
from vmm.migration.ram import RamTracker
from vmm.migration.stream import Writer

log = logging.getLogger(__name__)

# The states query-migrate reports while a migration runs (QEMU's migration_is_running).
RUNNING = ("setup", "active", "device", "cancelling")


class Cancelled(Exception):
    pass


# QEMU 7.2's migration parameters and their defaults (migrate-set-parameters sets
# them; kvmkit honours downtime-limit, max-bandwidth and the announce-* ones).
DEFAULT_PARAMETERS = {
    "announce-initial": 50, "announce-max": 550, "announce-rounds": 5, "announce-step": 100,
    "compress-level": 1, "compress-threads": 8, "compress-wait-thread": True,
    "decompress-threads": 2, "throttle-trigger-threshold": 50, "cpu-throttle-initial": 20,
    "cpu-throttle-increment": 10, "cpu-throttle-tailslow": False, "tls-creds": "",
    "tls-hostname": "", "tls-authz": "", "max-bandwidth": 128 << 20, "downtime-limit": 300,
    "x-checkpoint-delay": 20000, "block-incremental": False, "multifd-channels": 2,
    "multifd-compression": "none", "multifd-zlib-level": 1, "multifd-zstd-level": 1,
    "xbzrle-cache-size": 64 << 20, "max-postcopy-bandwidth": 0, "max-cpu-throttle": 99,
}


class Settings:
    """migrate-set-parameters and -capabilities."""

    def __init__(self) -> None:
        self.parameters = dict(DEFAULT_PARAMETERS)
        self.capabilities: dict[str, bool] = {}

    def on(self, capability: str) -> bool:
        return self.capabilities.get(capability, False)

    @property
    def downtime_limit(self) -> int:
        """ms"""
        return self.parameters["downtime-limit"]

    @property
    def max_bandwidth(self) -> int:
        """bytes/s (0: unlimited)"""
        return self.parameters["max-bandwidth"]

    @property
    def announce(self) -> tuple[int, int, int, int]:
        """The self-announcement after an incoming migration: initial, max, rounds,
        step (ms, ms, count, ms)."""
        return tuple(self.parameters[f"announce-{key}"]
                     for key in ("initial", "max", "rounds", "step"))


class OutgoingMigration:
    """One migrate command's job; query-migrate reports the last one."""

    def __init__(self, machine, connect: Callable[[], Channel], settings: Settings) -> None:
        self.machine = machine
        self.connect = connect
        self.settings = settings
        self.status = "setup"
        self.error: str | None = None
        self.start_time = time.monotonic()
        self.setup_time = self.total_time = self.downtime = self.expected_downtime = 0
        self.transferred = self.precopy_bytes = self.downtime_bytes = 0
        self.normal = self.duplicate = self.remaining = self.dirty_pages_rate = 0
        self.dirty_sync_count = 0
        self.mbps = 0.0
        self.pages_per_second = 0
        self._cancel = threading.Event()
        self._channel: Channel | None = None
        self.thread = threading.Thread(target=self._run, name="migration", daemon=True)

    @property
    def running(self) -> bool:
        return self.status in RUNNING

    def start(self) -> None:
        """On the loop thread: the setup event goes before the command's reply (libvirt
        waits for the migration as soon as `migrate` returns)."""
        self.status = "setup"
        if self.settings.on("events"):
            self.machine.emit("MIGRATION", {"status": "setup"})
        self.thread.start()

    def yank(self) -> None:
        """QMP yank: the stream is cut at once, and the migration fails."""
        if self.running and self._channel is not None:
            self._channel.abort()

    def cancel(self) -> None:
        """migrate_cancel: the stream is cut; the thread puts the source back."""
        if self.running:
            self._cancel.set()
            self._set_status("cancelling")
            if self._channel is not None:
                self._channel.abort()

    # -- on the loop thread --------------------------------------------------------
    def _on_loop(self, func: Callable, *args):
        """Runs func on the machine's loop and waits for its result."""
        future: concurrent.futures.Future = concurrent.futures.Future()

        def call() -> None:
            try:
                future.set_result(func(*args))
            except BaseException as e:           # handed to the migration thread
                future.set_exception(e)
        self.machine.loop.call_soon_threadsafe(call)
        return future.result()

    def _emit(self, event: str, data: dict) -> None:
        if self.settings.on("events"):
            self.machine.loop.call_soon_threadsafe(self.machine.emit, event, data)

    def _set_status(self, status: str) -> None:
        if self.status == "cancelling" and status not in ("cancelled", "failed"):
            return                   # a cancel already came: only its end follows
        if status != self.status:
            self.status = status
            self._emit("MIGRATION", {"status": status})

    # -- the migration thread --------------------------------------------------------
    def _run(self) -> None:
        machine = self.machine
        tracker = RamTracker(machine.vm, machine.memory, machine.lock)
        stopped_it = False
        try:
            self._channel = self.connect()
            if self._cancel.is_set():
                raise Cancelled
            writer = Writer(self._channel.file)
            writer.header()
            tracker.start()
            self.setup_time = self._ms_since(self.start_time)
            self._set_status("active")
            pages = self._sync(tracker)
            while True:
                began, sent_before = time.monotonic(), writer.sent
                self._send(tracker, writer)
                elapsed = max(time.monotonic() - began, 1e-3)
                bandwidth = max((writer.sent - sent_before) / elapsed, 1.0)   # bytes/s
                self.mbps = bandwidth * 8 / 1e6
                self.pages_per_second = int(pages / elapsed)
                pages = self._sync(tracker)
                self.dirty_pages_rate = int(pages / max(time.monotonic() - began, 1e-3))
                self.remaining = pages * PAGE_SIZE
                self.expected_downtime = int(self.remaining / bandwidth * 1000)
                if self.expected_downtime <= self.settings.downtime_limit:
                    break
            self.precopy_bytes = writer.sent
            # Stop and copy: what the last sync found, then whatever came since.
            stop_at = time.monotonic()
            stopped_it = self._on_loop(self._stop_vm)
            machine.drain_io()
            self._send(tracker, writer)
            self._on_loop(machine.mark_device_rings_dirty)
            self._sync(tracker)
            self._send(tracker, writer)
            # the destination may take the images as soon as the stream ends
            self._on_loop(machine.block.inactivate)
            writer.state(self._on_loop(machine.save_state))
            writer.end()
            self._channel.close()
            self._channel = None
            self.remaining = 0
            self.downtime_bytes = writer.sent - self.precopy_bytes
            self.transferred = writer.sent
            self.downtime = self._ms_since(stop_at)
            self.total_time = self._ms_since(self.start_time)
            self.mbps = writer.sent * 8 / 1e6 / max(self.total_time / 1000, 1e-3)
            tracker.stop()
            self._on_loop(self._finished)
        except BaseException as e:                   # the source must survive anything
            self._fail(e, tracker, stopped_it)

    def _sync(self, tracker: RamTracker) -> int:
        """Takes the dirty pages (QEMU's bitmap sync, one MIGRATION_PASS each)."""
        pages = tracker.collect()
        self.dirty_sync_count += 1
        self._emit("MIGRATION_PASS", {"pass": self.dirty_sync_count})
        return pages

    def _send(self, tracker: RamTracker, writer: Writer) -> None:
        began, base = time.monotonic(), writer.sent
        limit = self.settings.max_bandwidth

        def keep_going(sent: int) -> None:
            if self._cancel.is_set():
                raise Cancelled
            self.transferred = sent
            if limit:
                ahead = (sent - base) / limit - (time.monotonic() - began)
                if ahead > 0:
                    time.sleep(ahead)
        normal, zero = tracker.send(writer, keep_going)
        self.normal += normal
        self.duplicate += zero
        self.transferred = writer.sent

    @staticmethod
    def _ms_since(start: float) -> int:
        return int((time.monotonic() - start) * 1000)

    def _stop_vm(self) -> bool:
        """Loop thread: the guest stops for the last pass (QEMU's finish-migrate)."""
        machine = self.machine
        if self._cancel.is_set():
            raise Cancelled
        was_running = machine.runstate == "running"
        machine.prior_runstate = machine.runstate
        if was_running:
            machine.stop("finish-migrate")
        else:
            machine.runstate = "finish-migrate"
        return was_running

    def _finished(self) -> None:
        self.machine.runstate = "postmigrate"
        self.machine.prior_runstate = None
        self._set_status("completed")

    def _fail(self, error: BaseException, tracker: RamTracker, stopped_it: bool) -> None:
        cancelled = isinstance(error, Cancelled) or self._cancel.is_set()
        if not cancelled:
            if not isinstance(error, (OSError, UserError)):
                log.error("migration failed", exc_info=error)
            self.error = str(error) if isinstance(error, UserError) else \
                (getattr(error, "strerror", None) or str(error) or type(error).__name__)
        if self._channel is not None:
            self._channel.abort()
            self._channel.close()
        try:
            tracker.stop()
        except Exception:
            log.exception("could not stop the dirty log")

        def restore() -> None:
            machine = self.machine
            try:
                machine.block.activate()          # the images are this side's again
            except UserError as e:
                log.error("%s", e)
            if machine.runstate == "finish-migrate":
                if stopped_it:
                    machine.runstate = "paused"
                    machine.cont()
                else:
                    machine.runstate = machine.prior_runstate or "paused"
            machine.prior_runstate = None
            self._set_status("cancelled" if cancelled else "failed")
        self.machine.loop.call_soon_threadsafe(restore)

    # -- query-migrate ---------------------------------------------------------------
    def info(self) -> dict:
        """MigrationInfo as QEMU's fill_source_migration_info builds it."""
        if self.status == "failed":
            return {"status": "failed", **({"error-desc": self.error} if self.error else {})}
        if self.status in ("setup", "cancelled"):
            return {"status": self.status}
        completed = self.status == "completed"
        info = {"status": self.status, "setup-time": self.setup_time}
        if completed:
            info.update({"total-time": self.total_time, "downtime": self.downtime})
        else:
            info.update({"total-time": self._ms_since(self.start_time),
                         "expected-downtime": self.expected_downtime})
        info["ram"] = {
            "transferred": self.transferred, "remaining": 0 if completed else self.remaining,
            "total": self.machine.memory.size, "duplicate": self.duplicate, "skipped": 0,
            "normal": self.normal, "normal-bytes": self.normal * PAGE_SIZE,
            "dirty-pages-rate": 0 if completed else self.dirty_pages_rate,
            "mbps": self.mbps, "dirty-sync-count": self.dirty_sync_count,
            "postcopy-requests": 0, "page-size": PAGE_SIZE, "multifd-bytes": 0,
            "pages-per-second": self.pages_per_second, "precopy-bytes": self.precopy_bytes,
            "downtime-bytes": self.downtime_bytes, "postcopy-bytes": 0,
            "dirty-sync-missed-zero-copy": 0}
        return info
