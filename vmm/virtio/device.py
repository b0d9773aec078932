"""What every virtio device provides to its transport (vmm/virtio/pci.py)."""

from __future__ import annotations


class VirtioDevice:
    device_type = 0
    queue_sizes: tuple[int, ...] = ()
    features = 0                      # offered, besides VIRTIO_F_VERSION_1

    def __init__(self) -> None:
        self.transport = None         # set by the transport that carries the device
        self.negotiated = 0

    def reset(self) -> None:
        self.negotiated = 0

    def features_negotiated(self, features: int) -> None:
        self.negotiated = features

    def config_bytes(self) -> bytes:
        return b""

    def config_read(self, offset: int, size: int) -> int:
        raw = self.config_bytes()
        if offset + size > len(raw):
            return 0
        return int.from_bytes(raw[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        pass

    def queue_notify(self, index: int) -> None:
        """The driver kicked queue `index`; may raise VirtqueueError for a bad ring."""
