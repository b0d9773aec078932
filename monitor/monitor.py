"""The monitor: QMP command execution and events over one Machine.

Transports (qmp/, the HMP readline monitors) hand it parsed requests; it
validates them against the registry, runs them on the loop thread, and
fans machine events out to every subscriber, with QEMU's timestamps.
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.errors import QmpError
from monitor.registry import REGISTRY, Command, Registry
from vmm.errors import UserError

EventSink = Callable[[dict], None]

# Events QEMU rate-limits (monitor_qapi_event_conf): at most one per period; the
# last one of a burst comes at the end of the period, with its own timestamp.
THROTTLED_EVENTS = {"BALLOON_CHANGE": 1.0, "RTC_CHANGE": 1.0, "WATCHDOG": 1.0,
                    "QUORUM_REPORT_BAD": 1.0, "QUORUM_FAILURE": 1.0,
                    "VSERPORT_CHANGE": 1.0, "MEMORY_DEVICE_SIZE_CHANGE": 1.0}
THROTTLE_KEYS = {"VSERPORT_CHANGE": "id", "MEMORY_DEVICE_SIZE_CHANGE": "qom-path"}


@dataclass
class Session:
    """What a command may need to know about the client that sent it."""

    name: str = "qmp"
    capabilities: set[str] = field(default_factory=set)
    negotiated: bool = True
    fds: dict[str, int] = field(default_factory=dict)   # getfd, per monitor as in QEMU
    received_fds: list[int] = field(default_factory=list)
    hmp_state: Any = None                                # HMP's last x/xp format


@dataclass
class Context:
    monitor: Monitor
    session: Session

    @property
    def machine(self):
        return self.monitor.machine


def event_message(name: str, data: dict | None, now: float | None = None) -> dict:
    now = time.time() if now is None else now
    seconds = int(now)
    message: dict[str, Any] = {"event": name,
                               "timestamp": {"seconds": seconds,
                                             "microseconds": int((now - seconds) * 1e6)}}
    if data is not None:
        message["data"] = data
    return message


class Monitor:
    def __init__(self, machine, registry: Registry = REGISTRY) -> None:
        import monitor.commands  # noqa: F401  (registers every command)

        self.machine = machine
        self.registry = registry
        self.sinks: list[EventSink] = []
        self._throttled: dict[tuple, dict | None] = {}   # key -> pending message
        machine.listeners.append(self.emit)

    def subscribe(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def unsubscribe(self, sink: EventSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def emit(self, name: str, data: dict | None = None) -> None:
        message = event_message(name, data)
        period = THROTTLED_EVENTS.get(name)
        if period is not None:
            key = (name, (data or {}).get(THROTTLE_KEYS.get(name, ""), ""))
            if key in self._throttled:
                self._throttled[key] = message       # the newest waits for the period end
                return
            try:
                asyncio.get_running_loop().call_later(period, self._period_over, key, period)
                self._throttled[key] = None
            except RuntimeError:                    # no loop (unit tests): no throttling
                pass
        self._deliver(message)

    def _period_over(self, key: tuple, period: float) -> None:
        pending = self._throttled.pop(key, None)
        if pending is not None:
            self._throttled[key] = None
            asyncio.get_running_loop().call_later(period, self._period_over, key, period)
            self._deliver(pending)

    def _deliver(self, message: dict) -> None:
        for sink in list(self.sinks):
            sink(message)

    def find(self, name: str) -> Command:
        return self.registry.find(name)

    async def execute(self, command: Command, arguments: dict, session: Session) -> Any:
        """Runs a validated call; returns its result or raises QmpError.

        Commands run under the machine lock unless they say otherwise (run control
        waits for the vCPUs, which take it) or are coroutines (which call others).
        A user error from any layer becomes a QmpError here, and only here.
        """
        try:
            args = self.registry.check_args(command, arguments)
            kwargs = {name.replace("-", "_"): value for name, value in args.items()}
            context = Context(self, session)
            if command.lock and not inspect.iscoroutinefunction(command.handler):
                with self.machine.lock:
                    result = command.handler(context, **kwargs)
            else:
                result = command.handler(context, **kwargs)
            if inspect.isawaitable(result):
                result = await result
        except UserError as e:
            raise QmpError.of(e) from None
        return {} if result is None else result

    async def call(self, command: str, session: Session | None = None, /,
                   **arguments) -> Any:
        """For in-process callers (HMP, tests): run a command by name."""
        return await self.execute(self.find(command), arguments, session or Session())


__all__ = ["Context", "Monitor", "QmpError", "Session", "event_message"]
