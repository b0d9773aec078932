"""Realizing a virtio-pci proxy: a virtio device on its PCI transport, placed on the bus.

Every `virtio-*-pci` model's realize builds its virtio device, then calls
``realize_proxy``, which resolves disable-legacy=auto as QEMU does (legacy on
where the device type has a transitional id) and writes back what info qtree
shows. ``declare_proxies`` declares a virtio device's PCI models.
"""

from __future__ import annotations

from vmm.qdev import (
    TRANSITIONAL_PROPS,
    Board,
    Device,
    DeviceError,
    DeviceType,
    Prop,
    Realize,
    declare,
)
from vmm.virtio.device import VirtioDevice
from vmm.virtio.pci import TRANSITIONAL_IDS, VirtioPciDevice


def realize_proxy(board: Board, device: Device, backend: VirtioDevice, class_code: int,
                  vectors: int = 0, plug: bool = True) -> VirtioPciDevice:
    """The transport for ``backend``, placed on the PCI bus unless ``plug`` is False
    (a NIC's realize places it once its back end is attached)."""
    props = device.props
    mode = device.type.extra.get("virtio_mode")
    if mode is not None:                       # X-transitional, X-non-transitional
        legacy, modern = mode == "transitional", True
    else:
        legacy = props["disable-legacy"] != "on"
        if props["disable-legacy"] == "auto":
            legacy = backend.device_type in TRANSITIONAL_IDS
        modern = not props["disable-modern"]
    try:
        transport = VirtioPciDevice(backend, board.memory, class_code, legacy=legacy,
                                    modern=modern, msix_vectors=vectors,
                                    msi_routes=board.msi_routes if vectors else None)
    except ValueError as e:
        raise DeviceError(str(e)) from None
    if mode is None:
        props["disable-legacy"] = "off" if legacy else "on"
    if "vectors" in props:
        props["vectors"] = vectors
    transport.qdev_id = device.id or ""
    if props.get("ioeventfd", True):          # off: every doorbell is an exit to us
        transport.ioevents = board.ioevents
    if plug:
        board.plug_pci(transport, device)
    return transport


def declare_proxies(name: str, virtio: str, realize: Realize, base_props: tuple[Prop, ...] = (),
                    unrealize: Realize | None = None, category: str = "Misc",
                    alias: str = "") -> None:
    """A virtio device's PCI models, as QEMU registers them: NAME-base (abstract, with
    the proxy's own properties), NAME (legacy and modern as disable-legacy and
    disable-modern say), NAME-transitional (both) and NAME-non-transitional (modern
    only)."""
    base = f"{name}-base"
    declare(DeviceType(base, "virtio-pci", abstract=True, props=base_props))
    common = dict(virtio=virtio, realize=realize, unrealize=unrealize, category=category)
    declare(DeviceType(name, base, props=TRANSITIONAL_PROPS, alias=alias, **common))
    for mode in ("transitional", "non-transitional"):
        declare(DeviceType(f"{name}-{mode}", base, extra={"virtio_mode": mode}, **common))
