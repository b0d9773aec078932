"""Realizing a virtio-pci proxy: a virtio device on its PCI transport, placed on the bus.

Every `virtio-*-pci` model's realize builds its virtio device, then calls
``realize_proxy``, which resolves disable-legacy=auto as QEMU does (legacy on
where the device type has a transitional id) and writes back what info qtree
shows.
"""

from __future__ import annotations

from vmm.qdev import Board, Device, DeviceError
from vmm.virtio.device import VirtioDevice
from vmm.virtio.pci import TRANSITIONAL_IDS, VirtioPciDevice


def realize_proxy(board: Board, device: Device, backend: VirtioDevice, class_code: int,
                  vectors: int = 0, plug: bool = True) -> VirtioPciDevice:
    """The transport for ``backend``, placed on the PCI bus unless ``plug`` is False
    (a NIC's realize places it once its back end is attached)."""
    props = device.props
    legacy = props["disable-legacy"] != "on"
    if props["disable-legacy"] == "auto":
        legacy = backend.device_type in TRANSITIONAL_IDS
    try:
        transport = VirtioPciDevice(backend, board.memory, class_code, legacy=legacy,
                                    modern=not props["disable-modern"], msix_vectors=vectors,
                                    msi_routes=board.msi_routes if vectors else None)
    except ValueError as e:
        raise DeviceError(str(e)) from None
    props["disable-legacy"] = "off" if legacy else "on"
    if "vectors" in props:
        props["vectors"] = vectors
    transport.qdev_id = device.id or ""
    transport.ioevents = board.ioevents
    if plug:
        board.plug_pci(transport, device)
    return transport
