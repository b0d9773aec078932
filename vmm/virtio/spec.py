"""The virtio constants, as the kernel's <linux/virtio_*.h> define them.

Built by _spec_build.py: every name here is the header's (VIRTIO_NET_F_CSUM,
VIRTIO_CONFIG_S_DRIVER_OK, VIRTIO_PCI_COMMON_Q_SIZE, VRING_DESC_F_NEXT, ...)
with the header's value. Feature constants are bit numbers; ``feature`` makes
the mask a feature word uses.
"""

from __future__ import annotations

from vmm.virtio._spec import lib

globals().update({name: getattr(lib, name) for name in dir(lib)})


def feature(*bits: int) -> int:
    """The feature-word mask of one or more feature bit numbers."""
    mask = 0
    for bit in bits:
        mask |= 1 << bit
    return mask


# The ring features every kvmkit device offers, as feature-word masks
F_RING_INDIRECT_DESC = feature(lib.VIRTIO_RING_F_INDIRECT_DESC)
F_RING_EVENT_IDX = feature(lib.VIRTIO_RING_F_EVENT_IDX)
F_VERSION_1 = feature(lib.VIRTIO_F_VERSION_1)
