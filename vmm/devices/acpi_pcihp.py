"""ACPI PCI hotplug for the root bus, as QEMU's PIIX4 does it (acpi-pci-hotplug).

Registers at 0xAE00 (I/O, 0x18 bytes), as the DSDT's PCNT/PCEJ methods use them:

    0x00 PCIU  slots with a new device (read clears, QEMU's non-legacy mode)
    0x04 PCID  slots whose device the host wants removed
    0x08 B0EJ  write a slot bitmap: the guest has let go, eject them
    0x0C RMV   slots that can be hot-unplugged
    0x10 BNUM  bus selector (only the root bus, 0, exists)
    0x14 AIDX  acpi-index (none: reads 0)

A plug or unplug request sets the bit and raises GPE0 bit 1 (the DSDT's _E01),
which raises the SCI if the guest enabled it. The eject callback removes the
device (and the machine says DEVICE_DELETED); requests the guest never
acknowledges are carried out at the next reset, as QEMU's are.
"""

from __future__ import annotations

from collections.abc import Callable

from vmm import savestate

PCIHP_BASE = 0xAE00
PCIHP_LEN = 0x18
PCIHP_GPE_BIT = 1
FIRST_HOTPLUG_SLOT = 2            # 0: host bridge, 1: PIIX3/IDE/PM (not removable)


class PciHotplug:
    mtree_name = "acpi-pci-hotplug"

    def __init__(self, raise_gpe: Callable[[int], None],
                 eject: Callable[[int], None],
                 occupied: Callable[[int], bool]) -> None:
        self.raise_gpe = raise_gpe      # sets a GPE0 status bit (and the SCI)
        self.eject = eject              # removes whatever is in a slot
        self.occupied = occupied        # is there a hot-pluggable device in the slot?
        self.reset()

    STATE = ("up", "down", "select")

    def save_state(self) -> dict:
        return savestate.save_fields(self, self.STATE)

    def load_state(self, state: dict) -> None:
        savestate.load_fields(self, self.STATE, state, "acpi-pci-hotplug")

    def reset(self) -> None:
        self.up = 0
        self.down = 0
        self.select = 0

    # -- the host's side -----------------------------------------------------
    def plugged(self, slot: int) -> None:
        self.up |= 1 << slot
        self.raise_gpe(PCIHP_GPE_BIT)

    def unplug_requested(self, slot: int) -> None:
        self.down |= 1 << slot
        self.raise_gpe(PCIHP_GPE_BIT)

    def pending_unplugs(self) -> list[int]:
        return [slot for slot in range(32) if self.down & (1 << slot)]

    # -- the guest's side ------------------------------------------------------
    def removable(self) -> int:
        return sum(1 << slot for slot in range(FIRST_HOTPLUG_SLOT, 32) if self.occupied(slot))

    def bus_read(self, offset: int, size: int) -> int:
        if self.select != 0:             # no other bus is hot-pluggable
            return 0
        if offset == 0x00:
            value, self.up = self.up, 0
            return value
        if offset == 0x04:
            return self.down
        if offset == 0x0C:
            return self.removable()
        if offset == 0x10:
            return self.select
        return 0

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0x08 and self.select == 0:
            for slot in range(FIRST_HOTPLUG_SLOT, 32):
                if value & (1 << slot):
                    self.down &= ~(1 << slot)
                    self.eject(slot)
        elif offset == 0x10:
            self.select = value
