"""Virtio: the split virtqueue now; the virtio-pci transport and devices follow (issue 6)."""
