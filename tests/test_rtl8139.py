"""The rtl8139 model against a driver in fake guest RAM: transmit slots, the
receive ring with its headers, CAPR and BUFE, filtering, hostile addresses."""

from __future__ import annotations

import struct

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
