"""The i440FX host bridge and PIIX3 south bridge functions of QEMU's `pc` machine.

00.0 host bridge (config mechanism #1 on ports 0xCF8/0xCFC), 01.0 PIIX3 ISA
bridge (PIRQ routing, reset control register at 0xCF9), 01.1 IDE controller
(present for the topology QEMU shows; no drives), 01.3 is the PIIX4 ACPI
function in acpi_pm.py.
"""

from __future__ import annotations

from collections.abc import Callable

from vmm import savestate, trace
from vmm.pci import PciBus, PciDevice
from vmm.qdev import DeviceType, declare, fixed, flag

CONFIG_ADDRESS_PORT = 0xCF8
CONFIG_PORTS_LEN = 8            # 0xCF8-0xCFF: address, reset control, data
RESET_CONTROL_OFFSET = 1        # 0xCF9
PIRQ_ROUTE = 0x60               # PIIX3 PIRQA-D route control registers
PIRQ_DISABLED = 0x80
FIRMWARE_PIRQ_IRQS = (10, 10, 11, 11)   # what SeaBIOS programs


class I440fxHostBridge(PciDevice):
    def __init__(self) -> None:
        super().__init__(0x8086, 0x1237, 0x060000, revision=0x02)


class Piix3IsaBridge(PciDevice):
    def __init__(self) -> None:
        super().__init__(0x8086, 0x7000, 0x060100, multifunction=True)
        self._set_wmask(PIRQ_ROUTE, 4, 0x8F8F8F8F)
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.config[PIRQ_ROUTE:PIRQ_ROUTE + 4] = bytes([PIRQ_DISABLED] * 4)

    def pirq_irq(self, pirq: int) -> int | None:
        route = self.config[PIRQ_ROUTE + pirq]
        return None if route & PIRQ_DISABLED else route & 0x0F

    def program_pirqs(self) -> None:
        """The routing SeaBIOS leaves for the OS."""
        self.config[PIRQ_ROUTE:PIRQ_ROUTE + 4] = bytes(FIRMWARE_PIRQ_IRQS)


def slot_pirq(slot: int, pin: int) -> int:
    """The PIIX swizzle as QEMU's piix3 and SeaBIOS have it: INTA of slot N uses
    PIRQ (N - 1 + pin - 1) mod 4, so slot 1 starts at PIRQA."""
    return (slot - 1 + pin - 1) & 3


class PciConfigPorts:
    """Ports 0xCF8-0xCFF: config address/data and the PIIX3 reset control register."""

    # info mtree: QEMU has three regions here (the reset register on top).
    mtree_regions = [(0, 4, "pci-conf-idx", 0), (1, 1, "piix3-reset-control", 1),
                     (4, 4, "pci-conf-data", 0)]

    def __init__(self, bus: PciBus, request_reset: Callable[[], None]) -> None:
        self.bus = bus
        self.request_reset = request_reset
        self.address = 0
        self.reset_control = 0

    STATE = ("address", "reset_control")

    def save_state(self) -> dict:
        return savestate.save_fields(self, self.STATE)

    def load_state(self, state: dict) -> None:
        savestate.load_fields(self, self.STATE, state, "pci-config-ports")

    def _target(self) -> tuple[PciDevice | None, int]:
        if not self.address & 0x80000000 or (self.address >> 16) & 0xFF:
            return None, 0
        slot = (self.address >> 11) & 0x1F
        function = (self.address >> 8) & 0x7
        return self.bus.find(slot, function), self.address & 0xFF

    def bus_read(self, offset: int, size: int) -> int:
        if offset == 0 and size == 4:
            return self.address
        if offset == RESET_CONTROL_OFFSET and size == 1:
            return self.reset_control
        if offset >= 4:
            device, register = self._target()
            if device is not None:
                return device.config_read(register | (offset - 4), size)
        return (1 << (8 * size)) - 1

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 4:
            # QEMU keeps the low bits: they select the byte, ORed with the data
            # port's offset (kvm-unit-tests writes reg 2, then reads a word at 0xCFC)
            self.address = value & 0x80FFFFFF
        elif offset == RESET_CONTROL_OFFSET and size == 1:
            if value & 0x04:  # RST_CPU
                self.reset_control = 0
                self.request_reset()
            else:
                self.reset_control = value & 0x02
        elif offset >= 4:
            device, register = self._target()
            if device is not None:
                if trace.pci_cfg_write.enabled:
                    trace.pci_cfg_write(dev=type(device).__name__,
                                        slot=(self.address >> 11) & 0x1F,
                                        func=(self.address >> 8) & 7,
                                        offset=register | (offset - 4), val=value)
                device.config_write(register | (offset - 4), size, value)


# -- the board's chipset, as QEMU declares it (built by the board, not -device) --
declare(DeviceType("pci-host-bridge", "sys-bus-device", abstract=True))
declare(DeviceType("pci-piix3", "pci-device", abstract=True, hotpluggable=False))
declare(DeviceType("pci-ide", "pci-device", abstract=True, hotpluggable=False))
declare(DeviceType("i440FX-pcihost", "pci-host-bridge", user_creatable=False,
                   buses=(("pci.0", "PCI"),), props=(
                       fixed("pci-hole64-size", "size", 2 << 30),
                       fixed("short_root_bus", "uint32", 0),
                       flag("x-pci-hole64-fix", True, honoured=False),
                       flag("x-config-reg-migration-enabled", True, honoured=False),
                       flag("bypass-iommu", False, honoured=False))))
declare(DeviceType("i440FX", "pci-device", user_creatable=False, hotpluggable=False))
declare(DeviceType("PIIX3", "pci-piix3", user_creatable=False,
                   buses=(("isa.0", "ISA"),)))
declare(DeviceType("piix3-ide", "pci-ide", user_creatable=False,
                   buses=(("ide.1", "IDE"), ("ide.0", "IDE"))))
