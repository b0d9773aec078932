"""The interrupt controllers and timer KVM emulates in the kernel (KVM_CREATE_IRQCHIP,
KVM_CREATE_PIT2), declared as QEMU shows them; the board creates them, and
vmm/boot/firmware.py programs them as SeaBIOS leaves them."""

from __future__ import annotations

from vmm.qdev import DeviceType, declare, fixed

IOAPIC_BASE, IOAPIC_SIZE = 0xFEC00000, 0x1000

declare(DeviceType("ioapic-common", "sys-bus-device", abstract=True))
declare(DeviceType("pit-common", "isa-device", abstract=True))
declare(DeviceType("kvm-ioapic", "ioapic-common", user_creatable=False,
                   gpios=('gpio-in "" 24',), props=(fixed("gsi_base", "uint32", 0),),
                   extra={"mmio": ((IOAPIC_BASE, IOAPIC_SIZE),)}))
declare(DeviceType("kvm-pit", "pit-common", user_creatable=False, gpios=('gpio-in "" 1',),
                   props=(fixed("iobase", "uint32", 0x40),)))
