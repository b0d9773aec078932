"""virtio-rng (virtio spec 5.4): the guest gives writable buffers, the device fills
them with random bytes from the host (os.urandom, as QEMU's default rng-builtin
back end draws on the host's generator). `max-bytes` per `period` milliseconds
limits the rate, as QEMU's properties do.
"""

from __future__ import annotations

import os
import time

from vmm.virtio.device import VirtioDevice

F_RING_INDIRECT_DESC = 1 << 28
F_RING_EVENT_IDX = 1 << 29
UNLIMITED = (1 << 63) - 1
MAX_PER_BUFFER = 64 * 1024


class VirtioRng(VirtioDevice):
    name = "virtio-rng"
    device_type = 4
    queue_sizes = (8,)
    features = F_RING_INDIRECT_DESC | F_RING_EVENT_IDX

    def __init__(self, max_bytes: int = UNLIMITED, period_ms: int = 65536) -> None:
        super().__init__()
        self.max_bytes = max_bytes
        self.period_ms = max(period_ms, 1)
        self.window_start = time.monotonic()
        self.window_bytes = 0
        self.given = 0

    def queue_notify(self, index: int) -> None:
        queue = self.transport.queue(index)
        while queue.pending():
            budget = self._budget()
            if budget <= 0:
                return                     # the rest waits for the next kick
            chain = queue.pop()
            size = min(chain.writable_len, MAX_PER_BUFFER, budget)
            written = chain.write(os.urandom(size))
            self.window_bytes += written
            self.given += written
            queue.push(chain.head, written)
        self.transport.interrupt_queue(index)

    def _budget(self) -> int:
        now = time.monotonic()
        if (now - self.window_start) * 1000 >= self.period_ms:
            self.window_start, self.window_bytes = now, 0
        return self.max_bytes - self.window_bytes
