"""16550A register behaviour as Linux's 8250 driver and the probe guest use it."""

import pytest

from vmm.devices.serial import Serial16550

RBR = THR = DLL = 0
IER = DLM = 1
IIR = FCR = 2
LCR, MCR, LSR, MSR, SCR = 3, 4, 5, 6, 7


@pytest.fixture
def uart():
    out, irq = [], []
    u = Serial16550(out.append, irq.append)
    u.out, u.irq = out, irq
    return u


def test_transmit_goes_to_the_backend_and_thr_stays_empty(uart):
    uart.bus_write(THR, 1, ord("A"))
    uart.bus_write(THR, 1, ord("B"))
    assert uart.out == [b"A", b"B"]
    assert uart.bus_read(LSR, 1) & 0x60 == 0x60


def test_divisor_latch_hides_thr_and_ier(uart):
    uart.bus_write(LCR, 1, 0x80)
    uart.bus_write(DLL, 1, 0x01)
    uart.bus_write(DLM, 1, 0x02)
    assert (uart.bus_read(DLL, 1), uart.bus_read(DLM, 1)) == (0x01, 0x02)
    assert uart.out == []
    uart.bus_write(LCR, 1, 0x03)
    assert uart.bus_read(IER, 1) == 0 and uart.bus_read(LCR, 1) == 0x03


def test_receive_sets_data_ready_and_raises_the_irq_when_enabled(uart):
    uart.receive(b"hi")
    assert uart.bus_read(LSR, 1) & 0x01
    assert uart.irq[-1] == 0
    uart.bus_write(IER, 1, 0x01)
    assert uart.irq[-1] == 1
    assert uart.bus_read(IIR, 1) & 0x0F == 0x04
    assert uart.bus_read(RBR, 1) == ord("h")
    assert uart.bus_read(RBR, 1) == ord("i")
    assert not uart.bus_read(LSR, 1) & 0x01
    assert uart.irq[-1] == 0
    assert uart.bus_read(IIR, 1) & 0x0F == 0x01


def test_fifo_below_trigger_reports_character_timeout(uart):
    uart.bus_write(FCR, 1, 0xC7)          # FIFO on, trigger level 14
    uart.bus_write(IER, 1, 0x01)
    uart.receive(b"x")
    assert uart.bus_read(IIR, 1) == 0xC0 | 0x0C


def test_thre_interrupt_fires_on_enable_and_clears_on_iir_read(uart):
    uart.bus_write(IER, 1, 0x02)
    assert uart.irq[-1] == 1
    assert uart.bus_read(IIR, 1) & 0x0F == 0x02
    assert uart.irq[-1] == 0
    assert uart.bus_read(IIR, 1) & 0x0F == 0x01
    uart.bus_write(THR, 1, ord("z"))      # the byte leaves at once: THRE again
    assert uart.irq[-1] == 1


def test_loopback_returns_transmitted_bytes_and_modem_lines(uart):
    uart.bus_write(MCR, 1, 0x10 | 0x03)   # loop, DTR, RTS
    uart.bus_write(THR, 1, 0x5A)
    assert uart.out == []
    assert uart.bus_read(RBR, 1) == 0x5A
    assert uart.bus_read(MSR, 1) & 0x30 == 0x30


def test_scratch_register_and_idle_modem_status(uart):
    uart.bus_write(SCR, 1, 0xA5)
    assert uart.bus_read(SCR, 1) == 0xA5
    assert uart.bus_read(MSR, 1) == 0xB0


def test_fifo_clear_drops_pending_input(uart):
    uart.receive(b"abc")
    uart.bus_write(FCR, 1, 0x03)
    assert not uart.bus_read(LSR, 1) & 0x01


def test_overrun_on_a_flood_is_reported_and_bounded(uart):
    uart.receive(b"x" * (200 * 1024))
    assert len(uart.rx) == 64 * 1024
    assert uart.bus_read(LSR, 1) & 0x02
    assert not uart.bus_read(LSR, 1) & 0x02
