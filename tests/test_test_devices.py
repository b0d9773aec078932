"""fw_cfg, pc-testdev and pci-testdev registers, as QEMU's devices answer them."""

from __future__ import annotations

import struct

from vmm.boot.layout import e820_map
from vmm.devices import fw_cfg, pc_testdev
from vmm.devices.fw_cfg import FwCfg
from vmm.devices.pc_testdev import PcTestdev
from vmm.devices.pci_testdev import PciTestdev
from vmm.pci import COMMAND, COMMAND_IO, COMMAND_MEMORY


def read_item(dev: FwCfg, key: int, length: int) -> bytes:
    dev.bus_write(0, 2, key)
    return bytes(dev.bus_read(1, 1) for _ in range(length))


def test_fw_cfg_items_kvm_unit_tests_reads():
    dev = FwCfg(256 << 20, 3, "12345678-1234-5678-1234-567812345678", e820_map(256 << 20, 0))
    assert read_item(dev, fw_cfg.SIGNATURE, 4) == b"QEMU"
    assert read_item(dev, fw_cfg.ID, 4) == struct.pack("<I", 1)
    assert struct.unpack("<H", read_item(dev, fw_cfg.NB_CPUS, 2))[0] == 3
    assert struct.unpack("<H", read_item(dev, fw_cfg.MAX_CPUS, 2))[0] == 3
    assert struct.unpack("<Q", read_item(dev, fw_cfg.RAM_SIZE, 8))[0] == 256 << 20
    assert read_item(dev, fw_cfg.UUID, 16).hex() == "12345678123456781234567812345678"
    # past the end of an item, and an item that does not exist, read as zeros
    assert read_item(dev, fw_cfg.SIGNATURE, 6) == b"QEMU\0\0"
    assert read_item(dev, 0x1234, 4) == b"\0" * 4
    # the write-channel bit does not select another item
    assert read_item(dev, fw_cfg.SIGNATURE | 0x4000, 4) == b"QEMU"
    assert dev.bus_read(0, 1) == 0xFF


def test_fw_cfg_file_directory_lists_the_e820_table():
    e820 = e820_map(128 << 20, 0)
    dev = FwCfg(128 << 20, 1, "00000000-0000-0000-0000-000000000000", e820)
    count = struct.unpack(">I", read_item(dev, fw_cfg.FILE_DIR, 4))[0]
    entry = read_item(dev, fw_cfg.FILE_DIR, 4 + 64 * count)[4:68]
    size, key, _, name = struct.unpack(">IHH56s", entry)
    assert (count, name.rstrip(b"\0"), size) == (1, b"etc/e820", 20 * len(e820))
    table = read_item(dev, key, size)
    assert struct.unpack_from("<QQI", table, 20 * (len(e820) - 1)) == (
        e820[-1].addr, e820[-1].size, e820[-1].type)


class FakeBus:
    def __init__(self):
        self.maps = {}

    def map(self, start, length, device):
        self.maps[start] = (length, device)


def test_pc_testdev_scratch_irq_flush_and_iomem():
    irqs, flushed = [], []
    dev = PcTestdev(lambda line, level: irqs.append((line, level)), flushed.append)
    pio, mmio = FakeBus(), FakeBus()
    dev.map(pio, mmio)
    scratch = pio.maps[pc_testdev.SCRATCH_PORT][1]
    scratch.bus_write(0, 4, 0x11223344)
    assert scratch.bus_read(0, 4) == 0x11223344
    assert scratch.bus_read(2, 2) == 0x1122           # the same register byte-wise (0xe8)
    scratch.bus_write(1, 1, 0xAB)
    assert scratch.bus_read(0, 4) == 0x1122AB44
    irq = pio.maps[pc_testdev.IRQ_PORT][1]
    irq.bus_write(10, 1, 5)
    irq.bus_write(10, 1, 0)
    irq.bus_write(11, 4, 0x00000001)                 # a byte per line, as QEMU splits it
    assert irqs == [(10, 1), (10, 0), (11, 1), (12, 0), (13, 0), (14, 0)]
    pio.maps[pc_testdev.FLUSH_PORT][1].bus_write(0, 4, 0x12345678)
    assert flushed == [0x12345000]
    iomem = mmio.maps[pc_testdev.IOMEM_ADDR][1]
    iomem.bus_write(0x100, 8, 0x0102030405060708)
    assert iomem.bus_read(0x104, 4) == 0x01020304


class FakeIoEvents:
    def __init__(self):
        self.active = {}
        self.next = 100

    def add(self, addr, length, callback, pio=False, datamatch=None):
        self.next += 1
        self.active[self.next] = (addr, length, pio, datamatch)
        return self.next

    def remove(self, key):
        del self.active[key]


def header(dev: PciTestdev, window) -> tuple:
    raw = bytes(window.bus_read(i, 1) for i in range(16))
    name = bytes(window.bus_read(16 + i, 1) for i in range(30)).split(b"\0")[0]
    return struct.unpack("<BB2xIB3xI", raw) + (name.decode(),)


def test_pci_testdev_tests_count_writes_and_arm_ioeventfds():
    events = FakeIoEvents()
    dev = PciTestdev(events)
    assert (dev.vendor_id, dev.device_id, dev.class_code) == (0x1B36, 0x0005, 0xFF0000)
    mmio, pio = dev.bars[0], dev.bars[1]
    assert (mmio.size, mmio.kind, pio.size, pio.kind) == (4096, "mem32", 256, "io")
    dev.set_bar_address(mmio, 0xFE000000)
    dev.set_bar_address(pio, 0xC000)
    struct.pack_into("<H", dev.config, COMMAND, COMMAND_IO | COMMAND_MEMORY)
    dev.bar_moved(mmio, 0xFE000000)
    dev.bar_moved(pio, 0xC000)
    window = pio.device
    window.bus_write(0, 1, 0)                       # portio-no-eventfd
    test, width, offset, data, count, name = header(dev, window)
    assert (test, width, offset, data, count, name) == (3, 1, 131, 0xFA, 0, "portio-no-eventfd")
    window.bus_write(offset, 1, 0xFA)
    window.bus_write(offset, 1, 0x11)               # QEMU matches the data here too
    window.bus_write(offset + 1, 1, 0xFA)           # and the offset
    assert header(dev, window)[4] == 1 and not events.active
    window.bus_write(0, 1, 2)                       # portio-datamatch-eventfd
    test, width, offset, data, count, name = header(dev, window)
    assert name == "portio-datamatch-eventfd"
    assert list(events.active.values()) == [(0xC000 + offset, 1, True, 0xFA)]
    window.bus_write(offset, 1, 0x11)               # the wrong value is not counted
    window.bus_write(offset, 1, 0xFA)
    assert header(dev, window)[4] == 1
    mmio.device.bus_write(0, 1, 1)                  # mmio-wildcard-eventfd replaces it
    assert header(dev, mmio.device)[5] == "mmio-wildcard-eventfd"
    assert list(events.active.values()) == [(0xFE000000 + 2048 + 1, 1, False, None)]
    mmio.device.bus_write(0, 1, 7)                  # no such test: none runs
    assert not events.active and header(dev, mmio.device)[0] == 0
    dev.reset()
    assert dev.current is None
