"""MC146818 RTC and CMOS memory (ports 0x70/0x71).

The clock follows the host's UTC clock plus whatever offset the guest sets.
Register A's update-in-progress bit is set for the last 244 us before each
second, as the chip's; at each second the update-ended flag, and the alarm flag
where the alarm matches ("don't care" fields match anything), are set in
register C and raise IRQ 8 when enabled in register B. An alarm with AIE can
also wake a suspended machine (through ACPI). The CMOS carries what PC firmware
and Linux read from it: memory sizes (in SeaBIOS's slots) and the CPU count.
"""

from __future__ import annotations

import calendar
import math
import time
from collections.abc import Callable

from vmm import savestate
from vmm.qdev import DeviceType, declare, fixed

REG_SECONDS, REG_MINUTES, REG_HOURS = 0x00, 0x02, 0x04
REG_WEEKDAY, REG_DAY, REG_MONTH, REG_YEAR = 0x06, 0x07, 0x08, 0x09
REG_A, REG_B, REG_C, REG_D = 0x0A, 0x0B, 0x0C, 0x0D
REG_CENTURY = 0x32

REG_SECONDS_ALARM, REG_MINUTES_ALARM, REG_HOURS_ALARM = 0x01, 0x03, 0x05
SHUTDOWN_STATUS = 0x0F           # CMOS byte firmware reads after a reset
SHUTDOWN_STATUS_S3_RESUME = 0xFE

B_SET = 0x80
B_AIE = 0x20
B_UIE = 0x10
B_24H = 0x02
B_BINARY = 0x04
A_UIP = 0x80
A_DIVIDER = 0x70
A_DIVIDER_NORMAL = 0x20
C_IRQF = 0x80
C_AF = 0x20
C_UF = 0x10
D_VALID = 0x80
ALARM_DONT_CARE = 0xC0
UIP_WINDOW = 244e-6          # seconds before each update that UIP reads 1
RTC_IRQ = 8


def _bcd(v: int) -> int:
    return ((v // 10) << 4) | (v % 10)


def _from_bcd(v: int) -> int:
    return (v >> 4) * 10 + (v & 0x0F)


class Rtc:
    def __init__(self, ram_below_4g: int, ram_above_4g: int, cpus: int,
                 clock=time.time, set_irq: Callable[[int, int], None] | None = None,
                 timer_factory: Callable[[Callable[[], None]], object] | None = None,
                 alarm_wakeup: Callable[[], None] | None = None) -> None:
        self.clock = clock
        self.offset = 0.0
        self.cmos = bytearray(128)
        self.index = 0
        self.set_irq = set_irq or (lambda irq, level: None)
        self.alarm_wakeup = alarm_wakeup or (lambda: None)
        self._timer = timer_factory(self._second_ended) if timer_factory else None
        self._irq_level = 0
        self._set_memory(ram_below_4g, ram_above_4g, cpus)
        self.reset()

    def _set_memory(self, below: int, above: int, cpus: int) -> None:
        c = self.cmos
        c[0x15], c[0x16] = 640 & 0xFF, 640 >> 8               # base memory, KiB
        ext_kib = min(max(below - 0x100000, 0) // 1024, 0xFFFF)  # 1 MiB..64 MiB, KiB
        c[0x17], c[0x18] = ext_kib & 0xFF, ext_kib >> 8
        c[0x30], c[0x31] = ext_kib & 0xFF, ext_kib >> 8
        above16 = min(max(below - 0x1000000, 0) // 0x10000, 0xFFFF)  # 64 KiB units
        c[0x34], c[0x35] = above16 & 0xFF, above16 >> 8
        high = above // 0x10000
        c[0x5B], c[0x5C], c[0x5D] = high & 0xFF, (high >> 8) & 0xFF, (high >> 16) & 0xFF
        c[0x5F] = max(cpus - 1, 0)

    def reset(self) -> None:
        self.cmos[REG_A] = 0x26
        self.cmos[REG_B] = B_24H
        self.cmos[REG_C] = 0
        self.cmos[REG_D] = D_VALID
        self._lower_irq()
        self._arm()

    # -- the once-a-second update: flags, IRQ 8, alarm wake-up ---------------
    # -- migration -----------------------------------------------------------
    STATE = ("cmos", "index", "offset", "_irq_level")

    def save_state(self) -> dict:
        return savestate.save_fields(self, self.STATE)

    def load_state(self, state: dict) -> None:
        savestate.load_fields(self, self.STATE, state, "mc146818rtc")
        self.set_irq(RTC_IRQ, self._irq_level)
        self._arm()

    def _seconds(self) -> float:
        return self.clock() + self.offset

    def _running(self) -> bool:
        return (self.cmos[REG_A] & A_DIVIDER) == A_DIVIDER_NORMAL and \
            not self.cmos[REG_B] & B_SET

    def _arm(self) -> None:
        """The timer runs only while the guest asked for update or alarm interrupts."""
        if self._timer is None:
            return
        if self.cmos[REG_B] & (B_AIE | B_UIE) and self._running():
            now = self._seconds()
            self._timer.arm(math.floor(now) + 1 - now + 1e-4)
        else:
            self._timer.cancel()

    def _alarm_matches(self) -> bool:
        for alarm, now in ((REG_SECONDS_ALARM, REG_SECONDS), (REG_MINUTES_ALARM, REG_MINUTES),
                           (REG_HOURS_ALARM, REG_HOURS)):
            value = self.cmos[alarm]
            if value & ALARM_DONT_CARE != ALARM_DONT_CARE and value != self._time_register(now):
                return False
        return True

    def _second_ended(self) -> None:
        flags = C_UF | (C_AF if self._alarm_matches() else 0)
        self.cmos[REG_C] |= flags
        reg_b = self.cmos[REG_B]
        if reg_b & B_UIE or (flags & C_AF and reg_b & B_AIE):
            self.cmos[REG_C] |= C_IRQF
            if not self._irq_level:
                self._irq_level = 1
                self.set_irq(RTC_IRQ, 1)
        if flags & C_AF and reg_b & B_AIE:
            self.alarm_wakeup()
        self._arm()

    def _lower_irq(self) -> None:
        if self._irq_level:
            self._irq_level = 0
            self.set_irq(RTC_IRQ, 0)

    # -- clock -------------------------------------------------------------
    def _encode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _bcd(value)

    def _decode(self, value: int) -> int:
        return value if self.cmos[REG_B] & B_BINARY else _from_bcd(value)

    def _now(self) -> time.struct_time:
        return time.gmtime(self.clock() + self.offset)

    def _time_register(self, reg: int) -> int:
        t = self._now()
        if reg == REG_SECONDS:
            return self._encode(t.tm_sec)
        if reg == REG_MINUTES:
            return self._encode(t.tm_min)
        if reg == REG_HOURS:
            hour = t.tm_hour
            if self.cmos[REG_B] & B_24H:
                return self._encode(hour)
            pm = 0x80 if hour >= 12 else 0
            return self._encode(hour % 12 or 12) | pm
        if reg == REG_WEEKDAY:
            return self._encode((t.tm_wday + 1) % 7 + 1)  # Sunday = 1
        if reg == REG_DAY:
            return self._encode(t.tm_mday)
        if reg == REG_MONTH:
            return self._encode(t.tm_mon)
        if reg == REG_YEAR:
            return self._encode(t.tm_year % 100)
        return self._encode(t.tm_year // 100)  # century

    def _set_time_register(self, reg: int, value: int) -> None:
        t = self._now()
        fields = [t.tm_year, t.tm_mon, t.tm_mday, t.tm_hour, t.tm_min, t.tm_sec]
        v = self._decode(value & 0x7F if reg == REG_HOURS else value)
        if reg == REG_HOURS and not self.cmos[REG_B] & B_24H:
            v = v % 12 + (12 if value & 0x80 else 0)
        slot = {REG_SECONDS: 5, REG_MINUTES: 4, REG_HOURS: 3, REG_DAY: 2, REG_MONTH: 1}.get(reg)
        if slot is not None:
            fields[slot] = v
        elif reg == REG_YEAR:
            fields[0] = fields[0] // 100 * 100 + v
        elif reg == REG_CENTURY:
            fields[0] = v * 100 + fields[0] % 100
        else:
            return
        try:
            wanted = calendar.timegm((*fields, 0, 0, 0))
        except (ValueError, OverflowError):
            return
        self.offset = wanted - self.clock()

    # -- ports -------------------------------------------------------------
    def bus_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return 0xFF
        reg = self.index
        if reg in (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_WEEKDAY, REG_DAY, REG_MONTH,
                   REG_YEAR, REG_CENTURY):
            return self._time_register(reg)
        if reg == REG_A:
            now = self._seconds()
            updating = self._running() and now - math.floor(now) >= 1 - UIP_WINDOW
            return (self.cmos[REG_A] & ~A_UIP) | (A_UIP if updating else 0)
        if reg == REG_C:
            value = self.cmos[REG_C]
            self.cmos[REG_C] = 0
            self._lower_irq()
            return value
        return self.cmos[reg]

    def bus_write(self, offset: int, size: int, value: int) -> None:
        value &= 0xFF
        if offset == 0:
            self.index = value & 0x7F
            return
        reg = self.index
        if reg in (REG_SECONDS, REG_MINUTES, REG_HOURS, REG_DAY, REG_MONTH, REG_YEAR,
                   REG_CENTURY):
            self._set_time_register(reg, value)
        elif reg in (REG_C, REG_D):
            return  # read-only
        elif reg == REG_WEEKDAY:
            return  # derived from the date
        else:
            self.cmos[reg] = value
            if reg in (REG_A, REG_B):
                self._arm()


declare(DeviceType("mc146818rtc", "isa-device", user_creatable=False, gpios=('gpio-out "" 1',),
                   props=(fixed("base_year", "int32", 0),)))
