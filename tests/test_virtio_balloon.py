"""The virtio-pci transport and the balloon device against a driver in fake guest RAM."""

from __future__ import annotations

import struct

from vmm.devices.virtio_balloon import VirtioBalloon
from vmm.memory import GuestMemory
from vmm.virtio.pci import S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET, VirtioPciDevice

MiB = 1 << 20


def make(ram=64 * MiB):
    mem = GuestMemory(ram)
    changes = []
    balloon = VirtioBalloon(mem, ram, changes.append)
    dev = VirtioPciDevice(balloon, mem, 0x00FF00)
    return mem, balloon, dev, changes


def common(dev, offset, size, value=None):
    if value is None:
        return dev.common_read(offset, size)
    dev.common_write(offset, size, value)


def drive(dev, features=1 << 32):
    common(dev, 0x14, 1, 1 | 2)
    common(dev, 0x08, 4, 1)
    common(dev, 0x0C, 4, features >> 32)
    common(dev, 0x14, 1, 1 | 2 | S_FEATURES_OK)
    return common(dev, 0x14, 1)


def test_feature_negotiation_requires_version_1():
    _, _, dev, _ = make()
    common(dev, 0x00, 4, 1)
    assert common(dev, 0x04, 4) & 1          # VERSION_1 offered
    assert drive(dev, features=0) & S_FEATURES_OK == 0
    common(dev, 0x14, 1, 0)                  # reset
    assert drive(dev) & S_FEATURES_OK


def test_inflate_discards_pages_and_actual_reports_back():
    mem, balloon, dev, changes = make()
    drive(dev)
    desc, avail, used = 0x10000, 0x11000, 0x12000
    common(dev, 0x16, 2, 0)
    common(dev, 0x18, 2, 8)
    for offset, addr in ((0x20, desc), (0x28, avail), (0x30, used)):
        common(dev, offset, 4, addr)
    common(dev, 0x1C, 2, 1)
    common(dev, 0x14, 1, 1 | 2 | S_FEATURES_OK | S_DRIVER_OK)
    balloon.set_target(60 * MiB)
    assert balloon.num_pages == 1024 and dev.isr & 2
    mem.write(0x800000, b"\xAA" * 8 * 4096)
    pfns = struct.pack("<8I", *range(0x800, 0x808))
    mem.write(0x20000, pfns)
    mem.write(desc, struct.pack("<QIHH", 0x20000, len(pfns), 0, 0))
    mem.write_u16(avail + 4, 0)
    mem.write_u16(avail + 2, 1)
    dev.notify(0)
    assert mem.read(0x800000, 8 * 4096) == b"\0" * 8 * 4096     # discarded
    assert balloon.discarded_pages == 8
    assert mem.read_u16(used + 2) == 1
    balloon.config_write(4, 4, 8)
    assert changes == [64 * MiB - 8 * 4096] and balloon.actual_bytes() == 64 * MiB - 32768


def test_a_hostile_ring_sets_needs_reset():
    mem, balloon, dev, _ = make()
    drive(dev)
    common(dev, 0x16, 2, 0)
    for offset in (0x20, 0x28, 0x30):
        common(dev, offset, 4, 0x10000 + offset * 0x100)
    common(dev, 0x1C, 2, 1)
    common(dev, 0x14, 1, 1 | 2 | S_FEATURES_OK | S_DRIVER_OK)
    mem.write(0x12000, struct.pack("<QIHH", 0x20000, 4, 1, 0))   # a loop: next is itself
    mem.write_u16(0x12800 + 2, 1)
    dev.notify(0)
    assert common(dev, 0x14, 1) & S_NEEDS_RESET
