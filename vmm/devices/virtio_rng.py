"""virtio-rng (virtio spec 5.4): the guest gives writable buffers, the device fills
them with random bytes from the host: os.urandom, as QEMU's default rng-builtin
back end draws on the host's generator, or the file of an rng-random object
(rng=ID). `max-bytes` per `period` milliseconds limits the rate, as QEMU's
properties do.
"""

from __future__ import annotations

import os
import time

from vmm.qdev import (
    IOEVENTFD,
    DeviceError,
    DeviceType,
    Prop,
    declare,
    vectors,
)
from vmm.virtio import spec
from vmm.virtio.device import VirtioDevice
from vmm.virtio.proxy import declare_proxies, realize_proxy
from vmm.virtio.spec import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC

UNLIMITED = (1 << 63) - 1
MAX_PER_BUFFER = 64 * 1024


class VirtioRng(VirtioDevice):
    name = "virtio-rng"
    device_type = spec.VIRTIO_ID_RNG
    queue_sizes = (8,)
    features = F_RING_INDIRECT_DESC | F_RING_EVENT_IDX

    def __init__(self, max_bytes: int = UNLIMITED, period_ms: int = 65536,
                 source_fd: int | None = None) -> None:
        super().__init__()
        self.source_fd = source_fd         # an rng-random's file; None: the host's generator
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
            written = chain.write(self._random_bytes(size))
            self.window_bytes += written
            self.given += written
            queue.push(chain.head, written)
        self.transport.interrupt_queue(index)

    def _random_bytes(self, size: int) -> bytes:
        if self.source_fd is None:
            return os.urandom(size)
        try:
            return os.read(self.source_fd, size)
        except OSError:
            return b""

    def _budget(self) -> int:
        now = time.monotonic()
        if (now - self.window_start) * 1000 >= self.period_ms:
            self.window_start, self.window_bytes = now, 0
        return self.max_bytes - self.window_bytes


# -- the models, as QEMU declares them -------------------------------------
def _realize(board, device):
    props = device.props
    if props["max-bytes"] >= 1 << 63:
        raise DeviceError("'max-bytes' parameter must be non-negative, and less than 2^63")
    if props["vectors"] == 0xFFFFFFFF:
        props["vectors"] = 2
    source_fd = None
    if props.get("rng"):
        backend = board.objects.by_id.get(props["rng"])
        if backend is None:
            raise DeviceError(f"Device '{props['rng']}' not found")
        if backend.qom_type not in ("rng-random", "rng-builtin"):
            raise DeviceError("Invalid parameter type for 'rng', expected: rng-backend")
        # a copy of its own: object-del may close the object's while the device lives on
        source_fd = os.dup(backend.resource) if backend.qom_type == "rng-random" else None
    rng = VirtioRng(props["max-bytes"], props["period"], source_fd)
    return realize_proxy(board, device, rng, 0x00FF00, props["vectors"])


def _unrealize(board, device):
    rng = device.obj.backend
    if rng.source_fd is not None:
        os.close(rng.source_fd)
        rng.source_fd = None


declare(DeviceType("virtio-rng-device", "virtio-device", user_creatable=False, props=(
    Prop("max-bytes", "uint64", (1 << 63) - 1), Prop("period", "uint32", 65536),
    Prop("rng", "link<rng-backend>", qdev=False, kind="object"))))
declare_proxies("virtio-rng-pci", "virtio-rng-device", _realize, (IOEVENTFD, vectors()),
                alias="virtio-rng", unrealize=_unrealize)
