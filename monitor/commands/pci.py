"""query-pci: the PCI bus as QEMU reports it (QAPI's PciInfo)."""

from __future__ import annotations

from monitor.registry import command
from monitor.types import BOOL, INT, STR, ListOf, Member, Struct

# QEMU's pci_class_descriptions, for the classes a pc machine shows
CLASS_NAMES = {
    0x0100: "SCSI controller", 0x0101: "IDE controller", 0x0106: "SATA controller",
    0x0180: "Storage controller", 0x0200: "Ethernet controller",
    0x0280: "Network controller", 0x0300: "VGA controller", 0x0380: "Display controller",
    0x0401: "Audio controller", 0x0403: "Audio controller", 0x0500: "RAM controller",
    0x0600: "Host bridge", 0x0601: "ISA bridge", 0x0604: "PCI bridge", 0x0680: "Bridge",
    0x0700: "Serial port", 0x0880: "System peripheral",
    0x0c03: "USB controller",
}
UNASSIGNED = -1


def device_info(device) -> dict:
    from vmm.pci import INTERRUPT_LINE, INTERRUPT_PIN

    klass = device.class_code >> 8
    class_info: dict = {"class": klass}
    if klass in CLASS_NAMES:
        class_info = {"desc": CLASS_NAMES[klass], "class": klass}
    info: dict = {"bus": 0, "slot": device.slot, "function": device.function,
                  "class_info": class_info,
                  "id": {"vendor": device.vendor_id, "device": device.device_id,
                         "subsystem-vendor": int.from_bytes(device.config[0x2C:0x2E], "little"),
                         "subsystem": int.from_bytes(device.config[0x2E:0x30], "little")}}
    pin = device.config[INTERRUPT_PIN]
    if pin:
        info["irq"] = device.config[INTERRUPT_LINE]
    info["irq_pin"] = pin
    info["qdev_id"] = device.qdev_id
    regions = []
    for bar in sorted(device.bars.values(), key=lambda b: b.index):
        address = device.bar_address(bar)
        if bar.kind == "rom" and not device.config[0x30] & 1:
            address = 0                  # a ROM counts as mapped only once enabled
        region = {"bar": bar.index, "type": "io" if bar.kind == "io" else "memory",
                  "address": address if address else UNASSIGNED, "size": bar.size}
        if bar.kind != "io":
            region["prefetch"] = bar.prefetchable
            region["mem_type_64"] = bar.kind == "mem64"
        regions.append(region)
    info["regions"] = regions
    return info


# QEMU's qapi/pci.json (no bridges here, so no PciBridgeInfo)
PCI_DEVICE_INFO = Struct("PciDeviceInfo", (
    Member("bus", INT), Member("slot", INT), Member("function", INT),
    Member("class_info", Struct("PciDeviceClass", (Member("desc", STR, True),
                                                   Member("class", INT)))),
    Member("id", Struct("PciDeviceId", (Member("device", INT), Member("vendor", INT),
                                        Member("subsystem", INT, True),
                                        Member("subsystem-vendor", INT, True)))),
    Member("irq", INT, True), Member("irq_pin", INT), Member("qdev_id", STR),
    Member("regions", ListOf(Struct("PciMemoryRegion", (
        Member("bar", INT), Member("type", STR), Member("address", INT), Member("size", INT),
        Member("prefetch", BOOL, True), Member("mem_type_64", BOOL, True)))))))


@command("query-pci", returns=ListOf(Struct("PciInfo", (
    Member("bus", INT), Member("devices", ListOf(PCI_DEVICE_INFO))))))
def query_pci(ctx):
    if ctx.machine.pci is None:            # -machine none: no PCI host bridge
        return []
    return [{"bus": 0, "devices": [device_info(d) for d in ctx.machine.pci.sorted_devices()]}]
