"""The rtl8139 model against a driver in fake guest RAM: transmit slots, the
receive ring with its headers, CAPR and BUFE, filtering, hostile addresses."""

from __future__ import annotations

import struct
import zlib

from fakes import wire_nic

from vmm.devices.rtl8139 import CAPR, CR, IMR, ISR, RBSTART, RCR, TSAD, TSD, Rtl8139
from vmm.memory import GuestMemory

MAC = bytes.fromhex("525400123458")


def make():
    mem = GuestMemory(4 << 20)
    nic = Rtl8139(mem, MAC)
    netdev, irqs = wire_nic(nic)
    nic.write(CR, 1, 0x0C)                                  # RE, TE
    return mem, nic, netdev, irqs


def test_transmit_slots_and_status():
    mem, nic, netdev, irqs = make()
    assert nic.read(0, 4) == int.from_bytes(MAC[:4], "little")
    nic.write(IMR, 2, 0x04)                                 # TOK
    mem.write(0x10000, b"T" * 64)
    nic.write(TSAD + 4, 4, 0x10000)
    nic.write(TSD + 4, 4, 64)
    assert netdev.sent == [b"T" * 64]
    assert nic.read(TSD + 4, 4) & 0xA000 == 0xA000          # OWN and TOK
    assert irqs[-1] == 1
    nic.write(ISR, 2, 0x04)                                 # write 1 to clear
    assert irqs[-1] == 0
    nic.write(TSAD, 4, 0xFFFFF000)                          # outside RAM: no crash
    nic.write(TSD, 4, 64)
    assert len(netdev.sent) == 1


def test_receive_ring_headers_capr_and_bufe():
    mem, nic, _, _ = make()
    nic.write(RBSTART, 4, 0x20000)
    nic.write(RCR, 4, 0x02 | 0x80)                          # APM, WRAP, 8 KiB
    assert nic.read(CR, 1) & 0x01                           # empty
    frame = MAC + bytes.fromhex("020000000001") + b"\x88\xb5" + b"x" * 50
    assert nic.receive(frame)
    status, length = struct.unpack("<HH", mem.read(0x20000, 4))
    assert status & 0x4001 == 0x4001 and length == 64 + 4
    assert mem.read(0x20004, 64) == frame
    assert not nic.read(CR, 1) & 0x01                       # something to read
    nic.write(CAPR, 2, (72 - 16) & 0xFFFF)                  # read it: CAPR = next - 16
    assert nic.read(CR, 1) & 0x01
    assert nic.receive(b"\xff" * 6 + bytes(54))             # broadcast without AB: dropped
    assert nic.read(CR, 1) & 0x01


def cplus(mem, nic):
    """C+ mode as 8139cp starts it: 4-descriptor rings, the last with EOR."""
    nic.write(0xE0, 2, 0x2B)                                 # CpCmd: CpRxOn, CpTxOn, ...
    nic.write(0xE4, 4, 0x30000)                              # RDSAR
    nic.write(0x20, 4, 0x31000)                              # TNPDS
    for i in range(4):
        eor = 1 << 30 if i == 3 else 0
        mem.write(0x30000 + 16 * i, struct.pack("<IIQ", (1 << 31) | eor | 1536, 0,
                                                0x40000 + 0x800 * i))


def test_cplus_rings_both_ways():
    mem, nic, netdev, irqs = make()
    cplus(mem, nic)
    nic.write(RCR, 4, 0x02)                                  # APM
    frame = MAC + bytes.fromhex("020000000001") + b"\x88\xb5" + b"c+" * 20
    for _ in range(5):                                       # the fifth finds no buffer
        assert nic.receive(frame) in (True, False)
    opts1 = [struct.unpack("<I", mem.read(0x30000 + 16 * i, 4))[0] for i in range(4)]
    assert [o & ~(1 << 30) for o in opts1] == [(1 << 29) | (1 << 28) | (1 << 25) | 64] * 4
    assert mem.read(0x40000, len(frame)) == frame
    assert not nic.can_receive()                             # all four are the guest's now
    mem.write(0x30000, struct.pack("<I", (1 << 31) | 1536))  # the driver gives #0 back:
    assert nic.can_receive()                                 # EOR on #3 wrapped the card to it
    mem.write(0x31000, struct.pack("<IIQ", (1 << 31) | (1 << 29) | (1 << 28) | 60, 0, 0x50000))
    mem.write(0x50000, b"X" * 60)
    nic.write(0xD9, 1, 0x40)                                 # TxPoll
    assert netdev.sent == [b"X" * 60]
    assert not struct.unpack("<I", mem.read(0x31000, 4))[0] & (1 << 31)   # OWN cleared
    assert nic.read(ISR, 2) & 0x04                            # TxOK


def test_cplus_hostile_descriptors_and_small_buffers():
    mem, nic, netdev, _ = make()
    cplus(mem, nic)
    nic.write(RCR, 4, 0x02)
    mem.write(0x30000, struct.pack("<IIQ", (1 << 31) | 32, 0, 0x40000))    # a 32-byte buffer
    assert nic.receive(MAC + bytes(54))                      # dropped: RxOverflow
    assert nic.read(ISR, 2) & 0x10
    nic.write(0xE4, 4, 0xFFFFF000)                           # the ring outside RAM
    assert not nic.can_receive()
    mem.write(0x31000, struct.pack("<IIQ", (1 << 31) | (1 << 29) | (1 << 28) | 60, 0, 1 << 40))
    nic.write(0xD9, 1, 0x40)                                 # a buffer outside RAM
    nic.write(0x20, 4, 0xFFFFF000)
    nic.write(0xD9, 1, 0x40)                                 # a ring outside RAM
    assert netdev.sent == []


def test_multicast_hash_is_exact():
    """8139too sets MAR bit ether_crc(addr) >> 26; only that group passes."""
    from vmm.devices.rtl8139 import ether_crc

    mem, nic, _, _ = make()
    nic.write(RBSTART, 4, 0x20000)
    nic.write(RCR, 4, 0x04 | 0x80)                           # AM, WRAP
    group, other = bytes.fromhex("01005e0000fb"), bytes.fromhex("333300000001")
    bit = ether_crc(group) >> 26
    assert bit != ether_crc(other) >> 26
    nic.write(0x08 + (bit >> 3), 1, 1 << (bit & 7))
    # Reflected input, plain register, no final XOR: zlib's register bit-reversed.
    for data in (group, other, b"123456789"):
        register = zlib.crc32(data) ^ 0xFFFFFFFF
        assert ether_crc(data) == int(f"{register:032b}"[::-1], 2)
    before = nic.rx_offset
    nic.receive(other + bytes(54))
    assert nic.rx_offset == before                           # not accepted
    nic.receive(group + bytes(54))
    assert nic.rx_offset != before


def test_cplus_frame_longer_than_64k_is_dropped_whole():
    mem, nic, netdev, _ = make()
    cplus(mem, nic)
    fs, ls, own = 1 << 29, 1 << 28, 1 << 31
    mem.write(0x31000, struct.pack("<IIQ", own | fs | 0xFFFF, 0, 0x100000))
    mem.write(0x31010, struct.pack("<IIQ", own | 0xFFFF, 0, 0x100000))
    mem.write(0x31020, struct.pack("<IIQ", own | ls | 60, 0, 0x100000))
    mem.write(0x31030, struct.pack("<IIQ", own | fs | ls | 60, 0, 0x100000))   # the next one
    nic.write(0xD9, 1, 0x40)
    assert [len(f) for f in netdev.sent] == [60]
