"""RTC/CMOS, i8042, ACPI PM block, isa-debug-exit, buses and guest memory."""

import calendar

import pytest
from fakes import FakeTimer

from vmm.bus import Bus, BusConflict
from vmm.devices.acpi_pm import AcpiPm
from vmm.devices.debug_exit import IsaDebugExit
from vmm.devices.i8042 import I8042
from vmm.devices.rtc import Rtc
from vmm.memory import GuestMemory, GuestMemoryError

MiB = 1 << 20
FIXED_TIME = calendar.timegm((2026, 11, 22, 13, 45, 30, 0, 0, 0))


def cmos(rtc, reg):
    rtc.bus_write(0, 1, reg)
    return rtc.bus_read(1, 1)


def test_rtc_reads_the_host_clock_in_bcd():
    rtc = Rtc(512 * MiB, 0, 2, clock=lambda: FIXED_TIME)
    assert [cmos(rtc, r) for r in (0, 2, 4, 7, 8, 9, 0x32)] == \
        [0x30, 0x45, 0x13, 0x22, 0x11, 0x26, 0x20]
    assert cmos(rtc, 0x0D) == 0x80


def test_rtc_binary_mode_and_setting_the_time():
    rtc = Rtc(512 * MiB, 0, 1, clock=lambda: FIXED_TIME)
    rtc.bus_write(0, 1, 0x0B)
    rtc.bus_write(1, 1, 0x06)               # binary, 24h
    assert cmos(rtc, 4) == 13
    rtc.bus_write(0, 1, 4)
    rtc.bus_write(1, 1, 20)                 # the guest sets 20:xx
    assert cmos(rtc, 4) == 20
    assert cmos(rtc, 2) == 45


def test_cmos_memory_sizes_and_cpu_count():
    rtc = Rtc(3 << 30, 1 << 30, 4)
    above_16m = cmos(rtc, 0x34) | cmos(rtc, 0x35) << 8
    assert above_16m == ((3 << 30) - 16 * MiB) // 65536
    above_4g = cmos(rtc, 0x5B) | cmos(rtc, 0x5C) << 8 | cmos(rtc, 0x5D) << 16
    assert above_4g == (1 << 30) // 65536
    assert cmos(rtc, 0x5F) == 3
    assert cmos(rtc, 0x30) | cmos(rtc, 0x31) << 8 == 0xFFFF   # 1-64 MiB, capped


def test_i8042_pulse_reset_and_self_test():
    resets = []
    kbc = I8042(lambda: resets.append(1))
    data, cmd = kbc.port(0x60), kbc.port(0x64)
    cmd.bus_write(0, 1, 0xAA)
    assert cmd.bus_read(0, 1) & 1
    assert data.bus_read(0, 1) == 0x55
    cmd.bus_write(0, 1, 0xFE)
    assert resets == [1]
    cmd.bus_write(0, 1, 0xD1)              # write output port with the reset bit low
    data.bus_write(0, 1, 0xFE)
    assert resets == [1, 1]


def test_acpi_power_button_raises_sci_and_s5_powers_off():
    sci, off = [], []
    pm = AcpiPm(sci.append, lambda: off.append(1), clock=lambda: 1.0)
    pm.press_power_button()
    assert sci[-1] == 0                     # not enabled yet
    pm.pm_write(2, 2, 0x0100)               # PWRBTN_EN
    assert sci[-1] == 1
    assert pm.pm_read(0, 2) & 0x0100
    pm.pm_write(0, 2, 0x0100)               # write 1 to clear
    assert sci[-1] == 0
    pm.pm_write(4, 2, (1 << 10) | (1 << 13))  # S3 type: ignored
    assert off == []
    pm.pm_write(4, 2, 1 << 13)              # S5
    assert off == [1]
    assert pm.pm_read(8, 4) == 3579545 & 0xFFFFFF


def test_gpe_status_and_enable():
    sci = []
    pm = AcpiPm(sci.append, lambda: None)
    pm.raise_gpe(1)
    assert sci[-1] == 0
    pm.gpe_write(2, 1, 0x02)
    assert sci[-1] == 1 and pm.gpe_read(0, 1) == 0x02
    pm.gpe_write(0, 1, 0x02)
    assert sci[-1] == 0


def test_debug_exit_status():
    statuses = []
    dev = IsaDebugExit(statuses.append)
    dev.bus_write(0, 1, 3)
    dev.bus_write(0, 1, 0x80)
    assert statuses == [7, 1]


def test_bus_dispatch_unassigned_and_conflicts():
    class Reg:
        def __init__(self):
            self.writes = []

        def bus_read(self, offset, size):
            return 0x1000 + offset

        def bus_write(self, offset, size, value):
            self.writes.append((offset, size, value))

    bus = Bus("pio")
    reg = Reg()
    bus.map(0x100, 8, reg)
    assert bus.read(0x104, 2) == 0x1004
    bus.write(0x107, 1, 9)
    assert reg.writes == [(7, 1, 9)]
    assert bus.read(0x108, 4) == 0xFFFFFFFF
    assert bus.read(0xFF, 1) == 0xFF
    with pytest.raises(BusConflict):
        bus.map(0x104, 2, reg)
    with pytest.raises(BusConflict):
        bus.map(0xFC, 8, reg)
    bus.unmap(0x100)
    assert bus.read(0x100, 1) == 0xFF


def test_a_failing_device_does_not_escape_the_bus():
    class Broken:
        def bus_read(self, offset, size):
            raise RuntimeError("bug")

        def bus_write(self, offset, size, value):
            raise RuntimeError("bug")

    bus = Bus("mmio")
    bus.map(0x1000, 0x10, Broken())
    assert bus.read(0x1000, 4) == 0xFFFFFFFF
    bus.write(0x1000, 4, 1)


def test_guest_memory_checks_every_range():
    mem = GuestMemory((3 << 30) + 16 * MiB)
    try:
        assert len(mem.regions) == 2
        mem.write(0x1000, b"abc")
        assert mem.read(0x1000, 3) == b"abc"
        mem.write_u64(1 << 32, 0x1122334455667788)
        assert mem.read_u64(1 << 32) == 0x1122334455667788
        for gpa, length in [(0xC000_0000 - 2, 4), (0xC000_0000, 1), ((1 << 32) + 16 * MiB, 1),
                            (-1, 1), (0, -1), (0x1000, 1 << 40)]:
            with pytest.raises(GuestMemoryError):
                mem.view(gpa, length)
        assert not mem.is_ram(0xD000_0000)
        mem.write(0x200000, b"\xff" * 8192)
        mem.discard(0x200000, 8192)
        assert mem.read(0x200000, 8192) == b"\0" * 8192
    finally:
        mem.close()


def cmos_write(rtc, reg, value):
    rtc.bus_write(0, 1, reg)
    rtc.bus_write(1, 1, value)


def test_rtc_update_in_progress_in_the_last_244_us_of_each_second():
    now = [FIXED_TIME + 0.5]
    rtc = Rtc(512 * MiB, 0, 1, clock=lambda: now[0])
    assert not cmos(rtc, 0x0A) & 0x80
    now[0] = FIXED_TIME + 1 - 100e-6
    assert cmos(rtc, 0x0A) & 0x80
    cmos_write(rtc, 0x0B, 0x82)               # SET: the clock stops updating
    assert not cmos(rtc, 0x0A) & 0x80


def test_rtc_alarm_and_update_interrupts_and_wakeup():
    now = [FIXED_TIME + 0.25]
    irqs, wakeups, timers = [], [], []
    rtc = Rtc(512 * MiB, 0, 1, clock=lambda: now[0],
              set_irq=lambda irq, level: irqs.append((irq, level)),
              timer_factory=lambda cb: timers.append(FakeTimer(cb)) or timers[-1],
              alarm_wakeup=lambda: wakeups.append(1))
    timer = timers[0]
    assert timer.armed is None                # nothing enabled: no timer runs
    for reg in (1, 3, 5):                     # alarm at any second
        cmos_write(rtc, reg, 0xC0)
    cmos_write(rtc, 0x0B, 0x22)               # AIE, 24h
    assert timer.armed == pytest.approx(0.75, abs=1e-3)
    now[0] += 0.75
    timer.fire()
    assert irqs == [(8, 1)] and wakeups == [1]
    assert cmos(rtc, 0x0C) == 0x80 | 0x20 | 0x10   # IRQF, AF, UF
    assert irqs == [(8, 1), (8, 0)]           # reading C lowers the line
    assert cmos(rtc, 0x0C) == 0
    cmos_write(rtc, 1, 0x59)                  # an alarm at :59 does not match :31
    now[0] += 1
    timer.fire()
    assert cmos(rtc, 0x0C) == 0x10 and wakeups == [1] and irqs[-1] == (8, 0)
    cmos_write(rtc, 0x0B, 0x02)
    assert timer.armed is None


def test_pm1_sleep_types_are_qemus():
    off, sleeps = [], []
    pm = AcpiPm(lambda level: None, lambda: off.append(1), sleep=sleeps.append)
    for slp_typ in (1, 2, 0):
        pm.pm_write(4, 2, (slp_typ << 10) | 0x2000)
    assert sleeps == [1, 2] and off == [1]
    pm.pm_write(2, 2, 0x400)                  # RTC_EN
    assert pm.rtc_wakeup_enabled
    pm.woke_up("rtc")
    assert pm.pm_read(0, 2) == 0x8400         # WAK_STS | RTC_STS
    pm.reset_pm()
    pm.woke_up("other")
    assert pm.pm_read(0, 2) == 0x8100         # as if the power button woke it
