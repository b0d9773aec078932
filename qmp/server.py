"""QMP monitors on character devices (-qmp, -mon mode=control).

A socket chardev serves one client at a time (a second waits in the listen
queue, as with QEMU); each connection gets a fresh session and greeting. A
stdio chardev has one session for the life of the process.
"""

from __future__ import annotations

import os

from monitor.monitor import Monitor, Session
from qmp.session import QmpSession
from vmm.chardev import Chardev, SocketChardev


class QmpServer:
    def __init__(self, monitor: Monitor, chardev: Chardev, pretty: bool = False) -> None:
        self.monitor = monitor
        self.chardev = chardev
        self.pretty = pretty
        self.state = Session(name=chardev.id)   # getfd names live as long as the monitor
        self.session: QmpSession | None = None
        chardev.attach(self._receive)
        if isinstance(chardev, SocketChardev):
            chardev.on_connect = self._connected
            chardev.on_disconnect = self._disconnected
            chardev.on_fds = self.state.received_fds.extend

    def start(self) -> None:
        """Call on the loop once the chardev has started (sockets start on connect)."""
        if not isinstance(self.chardev, SocketChardev) and self.session is None:
            self._connected()

    def _connected(self) -> None:
        if self.session is not None:
            self.session.close()
        self.session = QmpSession(self.monitor, self.chardev.write, self.pretty, self.state)
        self.session.start()

    def _disconnected(self) -> None:
        if self.session is not None:
            self.session.parser.flush()
            self.session.close()
            self.session = None
        for fd in self.state.received_fds:
            os.close(fd)
        self.state.received_fds.clear()

    def _receive(self, data: bytes) -> None:
        if self.session is not None:
            self.session.feed(data)
