"""QMP monitors on character devices (-qmp, -mon mode=control)."""

from __future__ import annotations

from monitor.frontend import ChardevFrontend
from monitor.monitor import Monitor, Session
from qmp.session import QmpSession
from vmm.chardev import Chardev


class QmpServer(ChardevFrontend):
    def __init__(self, monitor: Monitor, chardev: Chardev, pretty: bool = False) -> None:
        # getfd names live as long as the monitor, across client connections
        self.state = Session(name=chardev.id)
        super().__init__(chardev, lambda write: QmpSession(monitor, write, pretty, self.state),
                         self.state.received_fds)
