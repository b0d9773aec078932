"""virtio-console ("virtio-serial", virtio spec 5.3) with its console port 0.

QEMU's device: MULTIPORT and EMERG_WRITE offered, up to 31 ports, queues laid
out as port 0 (receive, transmit), control (receive, transmit), then two per
further port. A driver that does not negotiate MULTIPORT (as this probe's)
sees one console on queues 0 and 1: what it transmits goes to the console's
chardev, what the chardev receives fills its receive buffers (held on the host
side until the guest posts some). The multiport control protocol is not
implemented yet, so drivers that negotiate MULTIPORT get no port announcements.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vmm.virtio.device import VirtioDevice

F_MULTIPORT = 1 << 1
F_EMERG_WRITE = 1 << 2
F_RING_INDIRECT_DESC = 1 << 28
F_RING_EVENT_IDX = 1 << 29
RX_Q, TX_Q = 0, 1
MAX_PENDING = 1 << 20                  # host-side input kept while the guest reads none


class VirtioConsole(VirtioDevice):
    name = "virtio-serial"
    device_type = 3
    config_size = 12                   # cols, rows, max_nr_ports, emerg_wr
    features = F_MULTIPORT | F_EMERG_WRITE | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX

    def __init__(self, max_ports: int = 31) -> None:
        super().__init__()
        self.max_ports = max_ports
        self.queue_sizes = (128,) * (2 * (max_ports + 1))
        self.output: Callable[[bytes], None] | None = None   # the console's chardev
        self.pending = bytearray()

    def config_bytes(self) -> bytes:
        return struct.pack("<HHII", 0, 0, self.max_ports, 0)

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset == 8 and self.output is not None:          # emerg_wr: one character
            self.output(bytes([value & 0xFF]))

    def queue_notify(self, index: int) -> None:
        if index == TX_Q:
            queue = self.transport.queue(TX_Q)
            while (chain := queue.pop()) is not None:
                data = chain.read_all()
                if self.output is not None and data:
                    self.output(data)
                queue.push(chain.head, 0)
            self.transport.interrupt_queue(TX_Q)
        elif index == RX_Q:
            self._fill_rx()

    def receive(self, data: bytes) -> None:
        """Input from the console's chardev."""
        self.pending += data[:MAX_PENDING - len(self.pending)]
        self._fill_rx()

    def _fill_rx(self) -> None:
        queue = self.transport.queue(RX_Q) if self.transport is not None else None
        if queue is None or not self.pending:
            return
        while self.pending and (chain := queue.pop()) is not None:
            written = chain.write(self.pending)
            del self.pending[:written]
            queue.push(chain.head, written)
        self.transport.interrupt_queue(RX_Q)
