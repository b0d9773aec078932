"""The monitor: QMP command execution and events over one Machine.

Transports (qmp/, the HMP readline monitors) hand it parsed requests; it
validates them against the registry, runs them on the loop thread, and
fans machine events out to every subscriber, with QEMU's timestamps.
"""

from __future__ import annotations

import inspect
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.errors import QmpError
from monitor.registry import REGISTRY, Command, Registry

EventSink = Callable[[dict], None]


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
        machine.listeners.append(self.emit)

    def subscribe(self, sink: EventSink) -> None:
        self.sinks.append(sink)

    def unsubscribe(self, sink: EventSink) -> None:
        if sink in self.sinks:
            self.sinks.remove(sink)

    def emit(self, name: str, data: dict | None = None) -> None:
        message = event_message(name, data)
        for sink in list(self.sinks):
            sink(message)

    def find(self, name: str) -> Command:
        return self.registry.find(name)

    async def execute(self, command: Command, arguments: dict, session: Session) -> Any:
        """Runs a validated call; returns its result or raises QmpError."""
        args = self.registry.check_args(command, arguments)
        kwargs = {name.replace("-", "_"): value for name, value in args.items()}
        result = command.handler(Context(self, session), **kwargs)
        if inspect.isawaitable(result):
            result = await result
        return {} if result is None else result

    async def call(self, command: str, session: Session | None = None, /,
                   **arguments) -> Any:
        """For in-process callers (HMP, tests): run a command by name."""
        return await self.execute(self.find(command), arguments, session or Session())


__all__ = ["Context", "Monitor", "QmpError", "Session", "event_message"]
