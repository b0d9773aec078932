"""The PCI device model: masks, BAR sizing and mapping, capabilities, INTx, config ports."""

import pytest

from vmm.bus import Bus
from vmm.devices.i440fx import PciConfigPorts, Piix3IsaBridge, slot_pirq
from vmm.pci import COMMAND, PciBus, PciDevice


class Regs:
    def bus_read(self, offset, size):
        return 0xAB

    def bus_write(self, offset, size, value):
        pass


@pytest.fixture
def world():
    pio, mmio = Bus("pio"), Bus("mmio")
    irqs = []
    piix3 = Piix3IsaBridge()
    bus = PciBus(pio, mmio, lambda slot, pin: piix3.pirq_irq(slot_pirq(slot, pin)),
                 lambda irq, level: irqs.append((irq, level)))
    bus.plug(piix3, 1, 0)
    dev = PciDevice(0x1AF4, 0x1000, 0x020000, interrupt_pin=1)
    dev.add_bar(0, 0x20, "io", Regs())
    dev.add_bar(1, 0x1000, "mem32", Regs())
    dev.add_bar(4, 0x4000, "mem64", Regs(), prefetchable=True)
    bus.plug(dev)
    ports = PciConfigPorts(bus, lambda: None)
    return pio, mmio, bus, dev, ports, irqs, piix3


def cfg_read(ports, slot, offset, size=4):
    ports.bus_write(0, 4, 0x80000000 | slot << 11 | (offset & 0xFC))
    return ports.bus_read(4 + (offset & 3), size)


def cfg_write(ports, slot, offset, value, size=4):
    ports.bus_write(0, 4, 0x80000000 | slot << 11 | (offset & 0xFC))
    ports.bus_write(4 + (offset & 3), size, value)


def test_automatic_slot_and_identity(world):
    _, _, bus, dev, ports, _, _ = world
    assert dev.slot == 0   # slot 0 was free in this bus
    assert cfg_read(ports, dev.slot, 0) == 0x10001AF4
    assert cfg_read(ports, 5, 0) == 0xFFFFFFFF


def test_bar_sizing_reads_back_the_size_mask(world):
    _, _, _, dev, ports, _, _ = world
    for offset, expected in [(0x10, 0xFFFFFFE1), (0x14, 0xFFFFF000), (0x20, 0xFFFFC00C),
                             (0x24, 0xFFFFFFFF)]:
        cfg_write(ports, dev.slot, offset, 0xFFFFFFFF)
        assert cfg_read(ports, dev.slot, offset) == expected
    cfg_write(ports, dev.slot, 0x18, 0xFFFFFFFF)      # no BAR 2: reads as zero
    assert cfg_read(ports, dev.slot, 0x18) == 0


def test_bars_map_only_while_decoding_is_enabled(world):
    pio, mmio, _, dev, ports, _, _ = world
    cfg_write(ports, dev.slot, 0x10, 0xC040)
    cfg_write(ports, dev.slot, 0x14, 0xE0000000)
    cfg_write(ports, dev.slot, 0x20, 0x00000000)
    cfg_write(ports, dev.slot, 0x24, 0x8)             # BAR4 at 0x8_0000_0000
    assert pio.read(0xC040, 1) == 0xFF and mmio.read(0xE0000000, 1) == 0xFF
    cfg_write(ports, dev.slot, COMMAND, 0x3, size=2)
    assert pio.read(0xC040, 1) == 0xAB
    assert mmio.read(0xE0000000, 4) == 0xAB
    assert mmio.read(0x8_0000_0000, 4) == 0xAB
    cfg_write(ports, dev.slot, 0x14, 0xE0100000)      # relocate while enabled
    assert mmio.read(0xE0000000, 1) == 0xFF and mmio.read(0xE0100000, 1) == 0xAB
    cfg_write(ports, dev.slot, COMMAND, 0x0, size=2)
    assert mmio.read(0xE0100000, 1) == 0xFF and pio.read(0xC040, 1) == 0xFF


def test_read_only_and_write_one_to_clear_bits(world):
    _, _, _, dev, ports, _, _ = world
    cfg_write(ports, dev.slot, 0x00, 0)                # ids are read-only
    assert cfg_read(ports, dev.slot, 0) == 0x10001AF4
    dev.config[0x07] |= 0x20                           # a latched error bit in STATUS
    cfg_write(ports, dev.slot, 0x06, 0x2000, size=2)
    assert not dev.config[0x07] & 0x20


def test_capability_list(world):
    _, _, _, dev, ports, _, _ = world
    first = dev.add_capability(0x11, b"\x01\x00" + bytes(8))
    second = dev.add_capability(0x09, bytes(6))
    assert cfg_read(ports, dev.slot, 0x06, 2) & 0x10
    # each new capability goes to the head of the list, as with QEMU
    assert cfg_read(ports, dev.slot, 0x34, 1) == second
    assert cfg_read(ports, dev.slot, second + 1, 1) == first
    assert cfg_read(ports, dev.slot, first + 1, 1) == 0
    assert dev.capabilities() == [(second, 0x09), (first, 0x11)]


def test_intx_follows_pirq_routing_and_the_disable_bit(world):
    _, _, bus, dev, _, irqs, piix3 = world
    dev.set_intx(1)
    assert irqs == []                                  # PIRQ not routed yet
    dev.set_intx(0)
    piix3.program_pirqs()
    dev.set_intx(1)
    irq = piix3.pirq_irq(slot_pirq(dev.slot, 1))
    assert irqs == [(irq, 1)] and dev.status & 0x08
    dev.config_write(COMMAND, 2, 0x400)                # INTx disable
    assert irqs[-1] == (irq, 0)
    dev.config_write(COMMAND, 2, 0)
    assert irqs[-1] == (irq, 1)


def test_firmware_assignment_places_every_bar(world):
    pio, mmio, bus, dev, _, _, piix3 = world
    piix3.program_pirqs()
    bus.assign_resources()
    io = dev.bar_address(dev.bars[0])
    assert io >= 0xC000 and io % 0x20 == 0
    assert pio.read(io, 1) == 0xAB
    assert mmio.read(dev.bar_address(dev.bars[4]), 1) == 0xAB
    assert dev.bar_address(dev.bars[4]) < 1 << 32   # small 64-bit BARs stay low
    assert dev.config[0x3C] == piix3.pirq_irq(slot_pirq(dev.slot, 1))
    mem = dev.bar_address(dev.bars[1])
    assert mem + dev.bars[1].size <= 0xFEC0_0000 and mmio.read(mem, 1) == 0xAB
    dev.reset()
    assert dev.bar_address(dev.bars[1]) == 0 and mmio.read(mem, 1) == 0xFF


def test_config_address_register_and_reset_control():
    resets = []
    ports = PciConfigPorts(PciBus(Bus("p"), Bus("m"), lambda s, p: None, lambda irq, level: None),
                           lambda: resets.append(1))
    ports.bus_write(0, 4, 0x80001234)
    assert ports.bus_read(0, 4) == 0x80001234
    ports.bus_write(1, 1, 0x02)
    assert ports.bus_read(1, 1) == 0x02 and resets == []
    ports.bus_write(1, 1, 0x06)
    assert resets == [1]


def test_config_address_low_bits_select_the_byte_as_qemu(world):
    """kvm-unit-tests writes the register's offset whole to 0xCF8 (reg 2 for the device
    id) and reads a word at 0xCFC; QEMU ORs the low bits with the data port's."""
    _, _, _, dev, ports, _, _ = world
    ports.bus_write(0, 4, 0x80000000 | dev.slot << 11 | 2)
    assert ports.bus_read(0, 4) == 0x80000000 | dev.slot << 11 | 2
    assert ports.bus_read(4, 2) == 0x1000
    ports.bus_write(0, 4, 0x80000000 | dev.slot << 11 | 1)
    assert ports.bus_read(4, 1) == 0x1A
