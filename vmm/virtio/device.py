"""What every virtio device provides to its transport (vmm/virtio/pci.py)."""

from __future__ import annotations

from vmm import savestate


def read_le(raw: bytes, offset: int, size: int) -> int:
    """A little-endian register read from a byte image; 0 past its end."""
    if offset < 0 or offset + size > len(raw):
        return 0
    return int.from_bytes(raw[offset:offset + size], "little")


class VirtioDevice:
    name = "virtio"                   # QEMU's type name without "-device" (memory regions)
    device_type = 0
    queue_sizes: tuple[int, ...] = ()   # a property where the count changes (virtio-net MQ)
    features = 0                      # offered, besides VIRTIO_F_VERSION_1
    config_size = 0                   # bytes of device configuration (sizes legacy BAR0)

    def __init__(self) -> None:
        self.transport = None         # set by the transport that carries the device
        self.negotiated = 0

    @property
    def max_queues(self) -> int:
        """The most queues the device can have (each gets a doorbell)."""
        return len(self.queue_sizes)

    def reset(self) -> None:
        self.negotiated = 0

    # -- migration: the device's own registers, beside the transport's ------------
    STATE: tuple[str, ...] = ()

    def save_state(self) -> dict:
        return {"negotiated": self.negotiated, **savestate.save_fields(self, self.STATE)}

    def load_state(self, state: dict) -> None:
        savestate.load_fields(self, ("negotiated",) + self.STATE, state, self.name)
        self.state_loaded()

    def state_loaded(self) -> None:
        """Hook: registers were loaded (before the transport's queues are)."""

    def forget_inflight(self) -> None:
        """Hook: the destination re-takes every chain the source had taken but not
        returned (the saved queues are rewound), so the device drops any it holds."""

    def features_negotiated(self, features: int) -> None:
        self.negotiated = features

    def config_bytes(self) -> bytes:
        return b""

    def config_read(self, offset: int, size: int) -> int:
        """Past the device's configuration, all ones (QEMU's virtio_config_read)."""
        if offset + size > self.config_size:
            return (1 << (8 * size)) - 1
        return read_le(self.config_bytes(), offset, size)

    def config_write(self, offset: int, size: int, value: int) -> None:
        pass

    def queue_notify(self, index: int) -> None:
        """The driver kicked queue `index`; may raise VirtqueueError for a bad ring."""
