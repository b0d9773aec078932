"""Stand-ins for the parts around a device model in unit tests."""

from __future__ import annotations

from vmm.net.backend import SingleQueueBackend


class FakeNetdev(SingleQueueBackend):
    """A network back end that keeps what the NIC sends and counts receive_ready()."""

    def __init__(self) -> None:
        self.sent: list[bytes] = []
        self.ready = 0

    def send(self, frame: bytes) -> None:
        self.sent.append(frame)

    def receive_ready(self) -> None:
        self.ready += 1


def wire_nic(nic) -> tuple[FakeNetdev, list[int]]:
    """Gives a NIC model a fake back end and records its INTx levels."""
    netdev = FakeNetdev()
    nic.netdev = netdev
    irqs: list[int] = []
    nic.set_intx = irqs.append
    return netdev, irqs


class FakeTimer:
    """Stands in for the machine's DeviceTimer: the test fires it by hand."""

    def __init__(self, callback):
        self.callback = callback
        self.armed = None

    def arm(self, seconds):
        self.armed = seconds

    def cancel(self):
        self.armed = None

    def fire(self):
        self.armed = None
        self.callback()
