"""The virtio-pci transport and the balloon device against a driver in fake guest RAM."""

from __future__ import annotations

import struct

import pytest
from fakes import FakeTimer

from vmm.devices.virtio_balloon import VirtioBalloon
from vmm.errors import UserError
from vmm.memory import GuestMemory
from vmm.virtio.pci import S_DRIVER_OK, S_FEATURES_OK, S_NEEDS_RESET, VirtioPciDevice

MiB = 1 << 20


def make(ram=64 * MiB, legacy=False, **options):
    mem = GuestMemory(ram)
    changes = []
    balloon = VirtioBalloon(mem, ram, changes.append, FakeTimer, **options)
    dev = VirtioPciDevice(balloon, mem, 0x00FF00, legacy=legacy)
    return mem, balloon, dev, changes


def common(dev, offset, size, value=None):
    if value is None:
        return dev.common_read(offset, size)
    dev.common_write(offset, size, value)


def drive(dev, features=1 << 32):
    common(dev, 0x14, 1, 1 | 2)
    for select in (0, 1):
        common(dev, 0x08, 4, select)
        common(dev, 0x0C, 4, (features >> (32 * select)) & 0xFFFFFFFF)
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


def modern_queue(dev, index, desc, avail, used, size=8):
    common(dev, 0x16, 2, index)
    common(dev, 0x18, 2, size)
    for offset, addr in ((0x20, desc), (0x28, avail), (0x30, used)):
        common(dev, offset, 4, addr)
    common(dev, 0x1C, 2, 1)


def offer(mem, desc, avail, slot, addr, length, writable=False):
    """Puts one buffer in descriptor `slot` and on the avail ring."""
    mem.write(desc + 16 * slot, struct.pack("<QIHH", addr, length, 2 if writable else 0, 0))
    idx = mem.read_u16(avail + 2)
    mem.write_u16(avail + 4 + 2 * (idx % 8), slot)
    mem.write_u16(avail + 2, idx + 1)


def test_pci_identity_follows_qemu_transitional_and_modern_ids():
    _, _, transitional, _ = make(legacy=True)
    assert (transitional.device_id, transitional.config[0x08], transitional.config[0x2E]) == \
        (0x1002, 0, 5)
    assert transitional.bars[0].kind == "io" and transitional.bars[0].size == 0x40
    _, _, modern, _ = make()
    assert (modern.device_id, modern.config[0x08]) == (0x1045, 1) and 0 not in modern.bars
    with pytest.raises(ValueError, match="neither modern nor legacy"):
        VirtioPciDevice(make()[1], GuestMemory(MiB), 0xFF00, legacy=False, modern=False)


def test_legacy_interface_inflates_through_a_page_frame_number_ring():
    mem, balloon, dev, changes = make(legacy=True)
    assert dev.legacy_read(0x00, 4) & 0x12 == 0x12          # STATS_VQ and PAGE_POISON
    assert dev.legacy_read(0x00, 4) & (1 << 29)             # EVENT_IDX is offered
    dev.legacy_write(0x04, 4, 0)                             # no features
    dev.legacy_write(0x0E, 2, 0)
    assert dev.legacy_read(0x0C, 2) == 128                   # fixed queue size
    dev.legacy_write(0x08, 4, 0x10)                          # ring at 0x10000
    desc, avail = 0x10000, 0x10000 + 16 * 128
    used = (avail + 6 + 2 * 128 + 4095) & ~4095
    dev.legacy_write(0x12, 1, 1 | 2 | 4)
    balloon.set_target(63 * MiB)
    assert dev.legacy_read(0x13, 1) == 2 and dev.legacy_read(0x13, 1) == 0  # read clears
    assert dev.legacy_read(20, 4) == 256                     # num_pages, after the header
    mem.write(0x900000, b"\x55" * 4096)
    mem.write(0x20000, struct.pack("<I", 0x900))
    mem.write(desc, struct.pack("<QIHH", 0x20000, 4, 0, 0))
    mem.write_u16(avail + 4, 0)
    mem.write_u16(avail + 2, 1)
    dev.legacy_write(0x10, 2, 0)
    assert mem.read(0x900000, 4096) == bytes(4096) and mem.read_u16(used + 2) == 1
    dev.legacy_write(20 + 4, 4, 1)                           # actual
    assert changes == [64 * MiB - 4096]
    dev.legacy_write(0x12, 1, 0)                             # reset
    assert dev.legacy_read(0x08, 4) == 0 and balloon.actual == 0


def test_stats_buffer_is_held_until_the_polling_period_ends():
    mem, balloon, dev, _ = make(stats_interval=0)
    drive(dev, features=(1 << 32) | 0x2)
    desc, avail, used = 0x30000, 0x31000, 0x32000
    modern_queue(dev, 2, desc, avail, used)
    stats = struct.pack("<HQHQHQ", 4, 5 * MiB, 5, 60 * MiB, 3, 77)
    mem.write(0x40000, stats)
    offer(mem, desc, avail, 0, 0x40000, len(stats))
    dev.notify(2)                                            # before DRIVER_OK: not yet taken
    assert balloon.stats_last_update == 0
    common(dev, 0x14, 1, 1 | 2 | S_FEATURES_OK | S_DRIVER_OK)
    got = balloon.guest_stats()
    assert got["last-update"] > 0
    assert got["stats"]["stat-free-memory"] == 5 * MiB
    assert got["stats"]["stat-total-memory"] == 60 * MiB
    assert got["stats"]["stat-minor-faults"] == 77
    assert got["stats"]["stat-htlb-pgfail"] == (1 << 64) - 1    # never reported
    assert mem.read_u16(used + 2) == 0 and balloon.stats_timer.armed is None
    balloon.set_stats_interval(2)
    assert balloon.stats_timer.armed == 2
    balloon.stats_timer.fire()
    assert mem.read_u16(used + 2) == 1                       # handed back to be refilled
    with pytest.raises(UserError, match="greater than zero"):
        balloon.set_stats_interval(-1)
    with pytest.raises(UserError, match="too big"):
        balloon.set_stats_interval(1 << 32)


def test_reported_free_pages_are_discarded_unless_the_guest_poisons():
    mem, balloon, dev, _ = make(free_page_reporting=True)
    assert dev.backend.queue_sizes[3] == 32
    drive(dev, features=(1 << 32) | (1 << 5) | (1 << 4))
    desc, avail, used = 0x30000, 0x31000, 0x32000
    modern_queue(dev, 3, desc, avail, used)
    common(dev, 0x14, 1, 1 | 2 | S_FEATURES_OK | S_DRIVER_OK)
    mem.write(0x400000, b"\x77" * 2 * MiB)
    offer(mem, desc, avail, 0, 0x400000, 2 * MiB, writable=True)
    dev.notify(3)
    assert mem.read(0x400000, 2 * MiB) == bytes(2 * MiB) and balloon.reported_pages == 512
    assert mem.read_u16(used + 2) == 1
    balloon.config_write(12, 4, 0xAA)                        # poison_val: keep contents
    mem.write(0x400000, b"\x77" * 4096)
    offer(mem, desc, avail, 1, 0x400000, 4096, writable=True)
    dev.notify(3)
    assert mem.read(0x400000, 1) == b"\x77" and mem.read_u16(used + 2) == 2


def test_config_space_window_reaches_the_common_registers():
    _, _, dev, _ = make()
    cap = dev.pci_cfg_cap
    assert dev.config[cap + 3] == 5                          # VIRTIO_PCI_CAP_PCI_CFG
    dev.config_write(cap + 4, 1, 4)                          # BAR4
    dev.config_write(cap + 8, 4, 0x12)                       # num_queues
    dev.config_write(cap + 12, 4, 2)
    assert dev.config_read(cap + 16, 2) == 3
    dev.config_write(cap + 8, 4, 0x16)                       # queue_select, through the window
    dev.config_write(cap + 16, 2, 2)
    assert dev.queue_select == 2
