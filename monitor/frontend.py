"""Monitors on character devices: one session per socket connection (a second
client waits in the listen queue, as with QEMU), or one session for the life
of a stdio or pty chardev."""

from __future__ import annotations

import os
from collections.abc import Callable
from typing import Protocol

from vmm.chardev import Chardev, MuxChardev, SocketChardev


class MonitorSession(Protocol):
    def start(self) -> None: ...

    def feed(self, data: bytes) -> None: ...

    def close(self) -> None: ...


class ChardevFrontend:
    def __init__(self, chardev: Chardev,
                 make_session: Callable[[Callable[[bytes], None]], MonitorSession],
                 received_fds: list[int] | None = None) -> None:
        self.chardev = chardev
        self.make_session = make_session
        self.received_fds = received_fds if received_fds is not None else []
        self.session: MonitorSession | None = None
        if isinstance(chardev, MuxChardev):
            chardev.attach(self._receive, on_focus=self._mux_focus)
        else:
            chardev.attach(self._receive)
        if isinstance(chardev, SocketChardev):
            chardev.on_connect = self._connected
            chardev.on_disconnect = self._disconnected
            chardev.on_fds = self.received_fds.extend

    def start(self) -> None:
        """Call on the loop once the chardev has started (sockets start on connect,
        a muxed monitor when it first gets the focus)."""
        if not isinstance(self.chardev, (SocketChardev, MuxChardev)) and self.session is None:
            self._connected()

    def _mux_focus(self, focused: bool) -> None:
        if focused and self.session is None:
            self._connected()
            return
        handler = getattr(self.session, "focus", None)
        if handler is not None:
            handler(focused)

    def _connected(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = self.make_session(self.chardev.write)
        self.session.start()

    def _disconnected(self) -> None:
        if self.session is not None:
            flush = getattr(self.session, "end_of_input", None)
            if flush is not None:
                flush()
            self.session.close()
            self.session = None
        for fd in self.received_fds:
            os.close(fd)
        self.received_fds.clear()

    def _receive(self, data: bytes) -> None:
        if self.session is not None:
            self.session.feed(data)
