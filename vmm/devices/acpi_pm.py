"""PIIX4-style ACPI power management (PCI 00:01.3, 8086:7113).

Fixed-hardware registers as the FADT describes them (ACPI spec, chapter 4):
PM1 event block (status/enable) at PM_BASE, PM1 control at PM_BASE+4, the
24-bit 3.579545 MHz PM timer at PM_BASE+8, and GPE0 (status/enable) at
GPE0_BASE. The SCI is ISA IRQ 9, level-triggered. The sleep types are QEMU's
(the DSDT's _S3, _S4, _S5): S5 powers off, S3 suspends to RAM, S4 powers off
as QEMU does. On wake-up, WAK_STS and the status of the wake-up source are set.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from vmm.pci import PciDevice
from vmm.qdev import DeviceType, declare, fixed, flag

PM_BASE = 0x600
PM_LEN = 0x40
GPE0_BASE = 0xAFE0
GPE0_LEN = 4
SCI_IRQ = 9
PM_TIMER_HZ = 3579545
PMBA = 0x40     # PIIX4 PM base address register
PMREGMISC = 0x80

PM1_TMR_STS = 1 << 0
PM1_GBL_STS = 1 << 5
PM1_PWRBTN_STS = 1 << 8
PM1_RTC_STS = 1 << 10
PM1_WAK_STS = 1 << 15
PM1_SCI_EN = 1 << 0
PM1_SLP_EN = 1 << 13
PM1_RTC_EN = 1 << 10
# QEMU's PIIX4 DSDT: _S3 {1, 1, 0, 0}, _S4 {2, 2, 0, 0}, _S5 {0, 0, 0, 0}
SLP_TYP_S5, SLP_TYP_S3, SLP_TYP_S4 = 0, 1, 2
WAKEUP_STATUS = {"rtc": PM1_WAK_STS | PM1_RTC_STS,
                 "other": PM1_WAK_STS | PM1_PWRBTN_STS}   # QEMU's: as if the button woke it


class AcpiPm(PciDevice):
    def __init__(self, set_sci: Callable[[int], None], power_off: Callable[[], None],
                 clock: Callable[[], float] = time.monotonic,
                 sleep: Callable[[int], None] = lambda slp_typ: None) -> None:
        super().__init__(0x8086, 0x7113, 0x068000, revision=0x03, interrupt_pin=1)
        self.set_sci = set_sci
        self.power_off = power_off
        self.sleep = sleep              # S3 and S4, with the sleep type
        self.clock = clock
        self.config[PMBA:PMBA + 4] = (PM_BASE | 1).to_bytes(4, "little")
        self.config[PMREGMISC] = 1
        self._sci_level = -1
        self.reset_pm()

    STATE = ("pm1_sts", "pm1_en", "pm1_cnt", "gpe_sts", "gpe_en")

    def state_loaded(self) -> None:
        self._sci_level = -1
        self._update_sci()

    def reset_pm(self) -> None:
        self.pm1_sts = 0
        self.pm1_en = 0
        self.pm1_cnt = PM1_SCI_EN   # no SMI_CMD in the FADT: ACPI mode from the start
        self.gpe_sts = 0
        self.gpe_en = 0
        self._update_sci()

    # -- events from the host ---------------------------------------------
    def press_power_button(self) -> None:
        self.pm1_sts |= PM1_PWRBTN_STS
        self._update_sci()

    @property
    def rtc_wakeup_enabled(self) -> bool:
        return bool(self.pm1_en & PM1_RTC_EN)

    def woke_up(self, reason: str) -> None:
        """After the wake-up reset: what the guest's resume code finds in PM1_STS."""
        self.pm1_sts |= WAKEUP_STATUS[reason]
        self._update_sci()

    def raise_gpe(self, bit: int) -> None:
        self.gpe_sts |= 1 << bit
        self._update_sci()

    def _update_sci(self) -> None:
        pending = (self.pm1_sts & self.pm1_en & (PM1_TMR_STS | PM1_GBL_STS | PM1_PWRBTN_STS
                                                 | PM1_RTC_STS)) or (self.gpe_sts & self.gpe_en)
        level = 1 if pending and self.pm1_cnt & PM1_SCI_EN else 0
        if level != self._sci_level:
            self._sci_level = level
            self.set_sci(level)

    def timer(self) -> int:
        return int(self.clock() * PM_TIMER_HZ) & 0xFFFFFF

    # -- the two I/O blocks ------------------------------------------------
    def pm_read(self, offset: int, size: int) -> int:
        regs = self.pm1_sts | (self.pm1_en << 16)
        if offset < 4:
            return (regs >> (8 * offset)) & ((1 << (8 * size)) - 1)
        if offset in (4, 5):
            return (self.pm1_cnt >> (8 * (offset - 4))) & ((1 << (8 * size)) - 1)
        if 8 <= offset < 12:
            return (self.timer() >> (8 * (offset - 8))) & ((1 << (8 * size)) - 1)
        return 0

    def pm_write(self, offset: int, size: int, value: int) -> None:
        if offset < 4:
            for i in range(size):
                byte = (value >> (8 * i)) & 0xFF
                pos = offset + i
                if pos < 2:
                    self.pm1_sts &= ~(byte << (8 * pos))  # write 1 to clear
                elif pos < 4:
                    shift = 8 * (pos - 2)
                    self.pm1_en = (self.pm1_en & ~(0xFF << shift)) | (byte << shift)
            self._update_sci()
        elif offset in (4, 5):
            shift = 8 * (offset - 4)
            mask = ((1 << (8 * min(size, 6 - offset))) - 1) << shift
            value = (value << shift) & mask
            self.pm1_cnt = (self.pm1_cnt & ~mask) | value
            if self.pm1_cnt & PM1_SLP_EN:
                self.pm1_cnt &= ~PM1_SLP_EN
                slp_typ = (self.pm1_cnt >> 10) & 7
                if slp_typ == SLP_TYP_S5:
                    self.power_off()
                elif slp_typ in (SLP_TYP_S3, SLP_TYP_S4):
                    self.sleep(slp_typ)
            self._update_sci()

    def gpe_read(self, offset: int, size: int) -> int:
        regs = self.gpe_sts | (self.gpe_en << 16)
        return (regs >> (8 * offset)) & ((1 << (8 * size)) - 1)

    def gpe_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            pos = offset + i
            if pos < 2:
                self.gpe_sts &= ~(byte << (8 * pos))
            elif pos < 4:
                shift = 8 * (pos - 2)
                self.gpe_en = (self.gpe_en & ~(0xFF << shift)) | (byte << shift)
        self._update_sci()

    def io_blocks(self) -> list[tuple[int, int, object]]:
        pm_parts = [(0, 4, "acpi-evt"), (4, 2, "acpi-cnt"), (8, 4, "acpi-tmr")]
        return [(PM_BASE, PM_LEN, _Block(self.pm_read, self.pm_write, "piix4-pm", pm_parts)),
                (GPE0_BASE, GPE0_LEN, _Block(self.gpe_read, self.gpe_write, "acpi-gpe0"))]


class _Block:
    """An I/O block of the PM function, named as QEMU's memory regions (info mtree)."""

    def __init__(self, read, write, name: str, parts: list | None = None) -> None:
        self.bus_read = read
        self.bus_write = write
        self.mtree_name = name
        self._parts = parts or []

    def mtree_children(self) -> list[tuple[int, int, str]]:
        return self._parts


declare(DeviceType(
    "PIIX4_PM", "pci-device", user_creatable=False, hotpluggable=False,
    gpios=('gpio-out "smi-irq" 1', 'gpio-out "" 1'), props=(
        fixed("smb_io_base", "uint32", 0x700), fixed("disable_s3", "uint8", 0),
        fixed("disable_s4", "uint8", 0), fixed("s4_val", "uint8", 2),
        flag("acpi-pci-hotplug-with-bridge-support", True, honoured=False),
        flag("acpi-root-pci-hotplug", True, honoured=False),
        flag("memory-hotplug-support", True, honoured=False),
        flag("smm-compat", False, honoured=False), flag("smm-enabled", False, honoured=False),
        flag("x-not-migrate-acpi-index", False, honoured=False))))
