"""virtio-net against a driver in fake guest RAM: transmit, mergeable receive,
the control queue (good and hostile requests), receive filtering, MSI-X."""

from __future__ import annotations

import socket
import struct

from fakes import FakeNetdev
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_virtio_balloon import common, drive, modern_queue, offer

from vmm.devices.virtio_net import VirtioNet
from vmm.memory import GuestMemory
from vmm.msix import Msix
from vmm.virtio.pci import S_DRIVER_OK, S_FEATURES_OK, VirtioPciDevice

MiB = 1 << 20
MAC = bytes.fromhex("525400123456")
QUEUES = {0: (0x10000, 0x11000, 0x12000), 1: (0x20000, 0x21000, 0x22000),
          2: (0x30000, 0x31000, 0x32000)}



def make(features=(1 << 32) | (1 << 15) | (1 << 5) | (1 << 16) | (1 << 17) | (1 << 18)):
    mem = GuestMemory(4 * MiB)
    net = VirtioNet(MAC)
    dev = VirtioPciDevice(net, mem, 0x020000, msix_vectors=4)
    net.netdev = backend = FakeNetdev()
    drive(dev, features)
    for index, rings in QUEUES.items():
        modern_queue(dev, index, *rings)
    common(dev, 0x14, 1, 1 | 2 | S_FEATURES_OK | S_DRIVER_OK)
    return mem, net, dev, backend


def used(mem, queue):
    _, _, ring = QUEUES[queue]
    count = mem.read_u16(ring + 2)
    return [struct.unpack("<II", mem.read(ring + 4 + 8 * i, 8)) for i in range(count)]


def test_transmit_strips_the_header_and_drops_while_the_link_is_down():
    mem, net, dev, backend = make()
    desc, avail, _ = QUEUES[1]
    mem.write(0x50000, bytes(12) + b"F" * 60)
    offer(mem, desc, avail, 0, 0x50000, 72)
    dev.notify(1)
    assert backend.sent == [b"F" * 60] and used(mem, 1) == [(0, 0)]
    net.set_link(False)
    offer(mem, desc, avail, 1, 0x50000, 72)
    dev.notify(1)
    assert len(backend.sent) == 1 and len(used(mem, 1)) == 2


def test_mergeable_receive_spans_buffers_and_counts_them():
    mem, net, dev, _ = make()
    desc, avail, _ = QUEUES[0]
    for slot in range(3):
        offer(mem, desc, avail, slot, 0x60000 + 0x1000 * slot, 64, writable=True)
    frame = bytes(range(100))
    assert net.receive(frame)
    assert used(mem, 0) == [(0, 64), (1, 48)]             # 12 + 100 bytes over two buffers
    assert struct.unpack_from("<H", mem.read(0x60000 + 10, 2))[0] == 2   # num_buffers
    assert mem.read(0x60000 + 12, 52) + mem.read(0x61000, 48) == frame
    assert net.receive(bytes(200)) and net.rx_dropped == 1  # no room: dropped, not stuck
    assert used(mem, 0)[-1][1] == 0


def test_control_queue_sets_rx_mode_and_mac_table_and_refuses_garbage():
    mem, net, dev, _ = make()
    desc, avail, _ = QUEUES[2]
    requests = [bytes([0, 0, 0]),                                   # promiscuous off
                bytes([1, 0]) + struct.pack("<I", 1) + bytes.fromhex("020000000009")
                + struct.pack("<I", 0),                              # MAC table
                bytes([9, 9]),                                       # unknown class
                bytes([1, 0]) + struct.pack("<I", 1000)]             # table longer than sent
    for slot, request in enumerate(requests):
        base = 0x70000 + 0x100 * slot
        mem.write(base, request)
        mem.write(desc + 16 * (2 * slot), struct.pack("<QIHH", base, len(request), 1,
                                                      2 * slot + 1))
        mem.write(desc + 16 * (2 * slot + 1), struct.pack("<QIHH", base + 0x80, 1, 2, 0))
        idx = mem.read_u16(avail + 2)
        mem.write_u16(avail + 4 + 2 * idx, 2 * slot)
        mem.write_u16(avail + 2, idx + 1)
    dev.notify(2)
    acks = [mem.read(0x70000 + 0x100 * slot + 0x80, 1)[0] for slot in range(4)]
    assert acks == [0, 0, 1, 1]
    assert not net.filter.promiscuous and net.filter.unicast == [bytes.fromhex("020000000009")]
    assert net._accepts(b"\xff" * 6 + bytes(8))                      # broadcast
    assert net._accepts(bytes.fromhex("020000000009") + bytes(8))    # in the table
    assert net._accepts(MAC + bytes(8))                              # its own address
    assert not net._accepts(bytes.fromhex("020000000001") + bytes(8))


def test_queue_and_config_interrupts_use_msix_vectors_once_enabled():
    mem, net, dev, _ = make()
    msix: Msix = dev.msix
    common(dev, 0x10, 2, 0)                     # config -> vector 0
    common(dev, 0x16, 2, 1)
    common(dev, 0x1A, 2, 2)                     # tx queue -> vector 2
    common(dev, 0x1A, 2, 9)                     # no such vector: NO_VECTOR reads back
    assert common(dev, 0x1A, 2) == 0xFFFF
    common(dev, 0x1A, 2, 2)
    dev.config_write(msix.cap + 2, 2, 0x8000)   # MSI-X enable
    for n in range(4):                          # entries: unmasked, to the BSP
        msix.bus_write(16 * n, 4, 0xFEE00000)
        msix.bus_write(16 * n + 8, 4, 0x60 + n)
        msix.bus_write(16 * n + 12, 4, 0)
    net.set_link(False)
    assert msix.fired == [0] and dev.isr == 0   # no INTx while MSI-X is on
    msix.bus_write(16 * 2 + 12, 4, 1)           # mask vector 2
    desc, avail, _ = QUEUES[1]
    mem.write(0x50000, bytes(72))
    offer(mem, desc, avail, 0, 0x50000, 72)
    dev.notify(1)
    assert msix.fired == [0] and msix.bus_read(0x800, 1) == 0b100   # pending
    msix.bus_write(16 * 2 + 12, 4, 0)           # unmask: the pending vector fires
    assert msix.fired == [0, 2] and msix.bus_read(0x800, 1) == 0


def test_queue_reset_takes_one_queue_back_to_its_defaults():
    """VIRTIO_F_RING_RESET (offered, as by QEMU 7.2): queue_reset=1 disables the
    selected queue and reads 1 until the driver enables it again; the other
    queues go on."""
    mem, net, dev, backend = make(features=(1 << 32) | (1 << 40))
    common(dev, 0x16, 2, 1)                              # the transmit queue
    assert (common(dev, 0x1C, 2), common(dev, 0x3A, 2)) == (1, 0)
    common(dev, 0x3A, 2, 1)
    assert (common(dev, 0x1C, 2), common(dev, 0x3A, 2), common(dev, 0x18, 2)) == (0, 1, 256)
    assert dev.queue(1) is None and dev.queue(0) is not None
    modern_queue(dev, 1, *QUEUES[1])                     # set up again and enabled
    assert (common(dev, 0x1C, 2), common(dev, 0x3A, 2)) == (1, 0)
    desc, avail, _ = QUEUES[1]
    offer(mem, desc, avail, 0, 0x40000, 12 + 60)
    dev.notify(1)
    assert len(backend.sent) == 1


def test_queue_reset_needs_the_feature():
    _, _, dev, _ = make()                                # RING_RESET not negotiated
    common(dev, 0x16, 2, 1)
    common(dev, 0x3A, 2, 1)
    assert (common(dev, 0x1C, 2), common(dev, 0x3A, 2)) == (1, 0)


class VnetTap(FakeNetdev):
    """A tap with vnet headers, as virtio-net sees one (frames come in through an fd)."""
    has_vnet_hdr = True

    def use_vnet_hdr(self, length: int) -> None:
        pass

    def set_offload(self, *flags) -> None:
        pass

    def set_queue_enabled(self, index: int, enabled: bool) -> None:
        pass

    def tx_fd(self, queue: int = 0) -> int:
        return -1


rx_desc = st.tuples(st.integers(0x100000, 0x140000), st.integers(0, 3000),
                    st.sampled_from([2, 2, 2, 3, 0, 4]), st.integers(0, 9))


@settings(max_examples=250, deadline=None,
          suppress_health_check=[HealthCheck.too_slow])
@given(descs=st.lists(rx_desc, min_size=8, max_size=8),
       heads=st.lists(st.integers(0, 9), min_size=8, max_size=8),
       avail_idx=st.integers(0, 10), merge=st.booleans(),
       frames=st.lists(st.tuples(st.sampled_from(["mine", "bcast", "mcast", "other"]),
                                 st.integers(0, 5000)), max_size=6),
       promiscuous=st.booleans(), nobcast=st.booleans(), allmulti=st.booleans())
def test_the_c_receive_path_takes_what_python_takes(descs, heads, avail_idx, merge, frames,
                                                     promiscuous, nobcast, allmulti):
    """receive_from_fd (C) against the tap reader's Python loop over receive(): the
    same guest error or none, indices, used entries, bytes in guest RAM, drops."""
    features = (1 << 32) | (1 << 5) | (1 << 16) | (1 << 17) | (1 << 18) | \
        ((1 << 15) if merge else 0)
    dests = {"mine": MAC, "bcast": b"\xff" * 6, "mcast": bytes.fromhex("01005e000001"),
             "other": bytes.fromhex("020000000009")}
    outcomes = []
    for path in ("python", "c"):
        mem = GuestMemory(4 * MiB)
        net = VirtioNet(MAC)
        dev = VirtioPciDevice(net, mem, 0x020000)
        net.netdev = VnetTap()
        drive(dev, features)
        for index, rings in QUEUES.items():
            modern_queue(dev, index, *rings)
        common(dev, 0x14, 1, 1 | 2 | S_FEATURES_OK | S_DRIVER_OK)
        net.filter.promiscuous, net.filter.nobcast = promiscuous, nobcast
        net.filter.allmulti = allmulti
        desc, avail, _ = QUEUES[0]
        for i, (addr, length, flags, nxt) in enumerate(descs):
            mem.write(desc + 16 * i, struct.pack("<QIHH", addr, length, flags, nxt))
        for i, head in enumerate(heads):
            mem.write_u16(avail + 4 + 2 * i, head)
        mem.write_u16(avail + 2, avail_idx)
        mine, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        for kind, length in frames:
            body = dests[kind] + bytes(range(256)) * (length // 256 + 1)
            theirs.send(bytes(range(12)) + body[:max(length, 0)])
        mine.setblocking(False)
        try:
            if path == "c":
                net.receive_from_fd(mine.fileno(), 64)
            else:
                for _ in range(64):
                    if not net.can_receive():
                        break
                    try:
                        net.receive(mine.recv(70000))
                    except BlockingIOError:
                        break
            queue = dev.queues[0].queue
            outcomes.append((dev.device_status & 0x40, queue.last_avail if queue else None,
                             queue.used_idx if queue else None, net.rx_dropped,
                             bytes(mem.read(QUEUES[0][2], 6 + 8 * 8)),
                             bytes(mem.read(0x100000, 0x140000 + 3000 - 0x100000))))
        finally:
            mine.close()
            theirs.close()
            mem.close()
    assert outcomes[0] == outcomes[1]
