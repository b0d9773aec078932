"""The destination side (-incoming URI, or migrate-incoming after -incoming defer).

The machine waits in runstate inmigrate. A thread accepts the source, reads the
stream into guest RAM, and hands the machine state to the loop, which loads it
whole or not at all. Then the guest runs if it was to start (no -S, or a `cont`
while it waited), else it stays paused. A stream that fails or is refused ends
the destination with QEMU's "load of migration failed" and exit status 1: a
half-loaded guest never runs.
"""

from __future__ import annotations

import logging
import threading

from vmm.errors import UserError
from vmm.migration.channel import Listener
from vmm.migration.stream import Reader

log = logging.getLogger(__name__)


class IncomingMigration:
    def __init__(self, machine, listener: Listener) -> None:
        self.machine = machine
        self.listener = listener
        self.status = "none"
        self.thread = threading.Thread(target=self._run, name="incoming migration",
                                       daemon=True)

    def start(self) -> None:
        """On the loop thread. QEMU announces the incoming side's setup at once, events
        capability or not (libvirt waits on these events once migrate-incoming
        returns); query-migrate shows no status until the source is there."""
        self.machine.emit("MIGRATION", {"status": "setup"})
        self.thread.start()

    def info(self) -> dict:
        info: dict = {}
        if self.listener.socket_address and self.status in ("none", "active", "setup"):
            info["socket-address"] = self.listener.socket_address
        if self.status != "none":
            info["status"] = self.status
        return info

    def _set_status(self, status: str) -> None:
        self.status = status
        if self.machine.migration_settings.on("events"):
            self.machine.emit("MIGRATION", {"status": status})

    def _run(self) -> None:
        loop = self.machine.loop
        try:
            channel = self.listener.accept()
        except OSError as e:
            loop.call_soon_threadsafe(self._failed, f"{e.strerror or e}")
            return
        loop.call_soon_threadsafe(self._set_status, "active")
        try:
            state = Reader(channel.file).load(self.machine.memory)
        except (UserError, OSError) as e:
            channel.abort()
            channel.close()
            loop.call_soon_threadsafe(self._failed, str(e))
            return
        except Exception as e:                # a bug must not leave a half-loaded guest
            log.exception("incoming migration failed")
            loop.call_soon_threadsafe(self._failed, str(e))
            return
        channel.close()
        loop.call_soon_threadsafe(self._load, state)

    def _load(self, state) -> None:
        try:
            self.machine.load_state(state)
            self.machine.block.activate()
        except UserError as e:
            self._failed(str(e))
            return
        self.machine.incoming_done()
        self._set_status("completed")

    def _failed(self, reason: str) -> None:
        self._set_status("failed")
        log.error("load of migration failed: %s", reason)
        self.machine.finish(1)
