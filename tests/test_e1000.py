"""The e1000 model against a driver in fake guest RAM: EEPROM, PHY, interrupt
causes, both rings, receive filtering, and rings that point outside RAM."""

from __future__ import annotations

import struct

from fakes import wire_nic

from vmm.devices.e1000 import (
    E1000,
    ICR,
    IMS,
    RA,
    RCTL,
    RDBAL,
    RDH,
    RDLEN,
    RDT,
    STATUS,
    TCTL,
    TDBAL,
    TDH,
    TDLEN,
    TDT,
)
from vmm.memory import GuestMemory

MAC = bytes.fromhex("525400123457")



def make():
    mem = GuestMemory(4 << 20)
    nic = E1000(mem, MAC)
    netdev, irqs = wire_nic(nic)
    return mem, nic, netdev, irqs


def eeprom(nic, word):
    nic.write(0x14, (word << 8) | 1)
    value = nic.read(0x14)
    assert value & 0x10                       # done
    return value >> 16


def test_eeprom_mac_checksum_and_phy():
    _, nic, _, _ = make()
    words = [eeprom(nic, w) for w in range(64)]
    assert sum(words) & 0xFFFF == 0xBABA
    assert b"".join(struct.pack("<H", w) for w in words[:3]) == MAC
    assert nic.read(RA) == int.from_bytes(MAC[:4], "little")
    nic.write(0x20, (2 << 26) | (1 << 21) | (2 << 16))    # MDIC: read PHY id 1
    assert nic.read(0x20) & 0xFFFF == 0x0141 and nic.read(0x20) & (1 << 28)
    assert nic.read(STATUS) & 2                           # link up


def test_transmit_ring_and_interrupt_causes():
    mem, nic, backend, irqs = make()
    nic.write(IMS, 0x1)                                   # TXDW
    nic.write(TDBAL, 0x10000)
    nic.write(TDLEN, 128)
    nic.write(TCTL, 2)
    mem.write(0x20000, b"A" * 60)
    mem.write(0x10000, struct.pack("<QHBBBBH", 0x20000, 30, 0, 0x08, 0, 0, 0))    # no EOP
    mem.write(0x10010, struct.pack("<QHBBBBH", 0x2001E, 30, 0, 0x0B, 0, 0, 0))    # EOP|RS
    mem.write(0x10020, struct.pack("<QHBBBBH", 1 << 40, 60, 0, 0x0B, 0, 0, 0))    # outside
    nic.write(TDT, 2)
    assert backend.sent == [b"A" * 60] and nic.read(TDH) == 2
    assert mem.read(0x1001C, 1)[0] & 1                    # DD written back
    assert irqs[-1] == 1
    assert nic.read(ICR) & 0x1 and irqs[-1] == 0          # reading ICR clears and lowers
    nic.write(TDT, 3)                                      # a hostile address: no crash
    assert len(backend.sent) == 1


def test_receive_fills_descriptors_and_filters():
    mem, nic, _, _ = make()
    nic.write(RDBAL, 0x30000)
    nic.write(RDLEN, 128)
    for i in range(8):
        mem.write(0x30000 + 16 * i, struct.pack("<Q", 0x40000 + 0x800 * i))
    nic.write(RDH, 0)
    nic.write(RDT, 7)
    nic.write(RCTL, (1 << 1) | (1 << 26))                 # EN, SECRC (no broadcast)
    assert nic.receive(MAC + b"\x02" * 6 + b"\x88\xb5" + b"hi")
    length, _, status = struct.unpack("<HHB", mem.read(0x30008, 5))
    assert length == 60 and status == 0x03                 # padded, DD | EOP
    assert mem.read(0x40000 + 14, 2) == b"hi"
    assert nic.receive(b"\xff" * 6 + bytes(54))            # broadcast: not accepted...
    assert nic.read(RDH) == 1                              # ...so nothing was used
    nic.write(RCTL, (1 << 1) | (1 << 26) | (1 << 15))      # BAM
    nic.receive(b"\xff" * 6 + bytes(54))
    assert nic.read(RDH) == 2
    nic.set_link(False)
    assert nic.receive(MAC + bytes(54)) and nic.read(RDH) == 2   # dropped while down
    assert nic.read(ICR) & 0x4                              # link status change


def test_checksum_offload_from_a_context_descriptor():
    """The context descriptor gives the ranges; the data descriptor's POPTS asks for
    the IP header and UDP checksums; the card fills them in."""
    mem, nic, backend, _ = make()
    nic.write(TDBAL, 0x10000)
    nic.write(TDLEN, 128)
    nic.write(TCTL, 2)
    ip = bytearray(bytes.fromhex("450000200000000040110000") + bytes([10, 0, 2, 15, 10, 0, 2, 2]))
    udp = bytearray(struct.pack(">HHHH", 1000, 7, 12, 0) + b"ping")
    frame = b"\xff" * 6 + MAC + b"\x08\x00" + bytes(ip) + bytes(udp)
    mem.write(0x20000, frame)
    # context: IPCSS 14, IPCSO 24, IPCSE 33, TUCSS 34, TUCSO 40, TUCSE 0 (to the end)
    mem.write(0x10000, struct.pack("<BBHBBHIBBH", 14, 24, 33, 34, 40, 0, 0x20 << 24, 0, 0, 0))
    mem.write(0x10010, struct.pack("<QIBBH", 0x20000, len(frame) | (1 << 20) | (0x29 << 24),
                                   0, 0x03, 0))          # data: EOP|DEXT, POPTS IXSM|TXSM
    nic.write(TDT, 2)
    [sent] = backend.sent
    header = sent[14:34]
    assert sum(struct.unpack(">10H", header)) % 0xFFFF == 0          # a valid IP checksum
    assert sent[40:42] != b"\0\0"
    data = sent[34:]
    assert sum(struct.unpack(f">{len(data) // 2}H", data)) % 0xFFFF == 0


def test_tso_contexts_that_do_not_fit_drop_the_frame():
    """A TSO context with no MSS, or a header longer than the frame, or checksum
    offsets past the header: the frame is dropped, nothing raises, the ring goes on."""
    mem, nic, backend, _ = make()
    nic.write(TDBAL, 0x10000)
    nic.write(TDLEN, 256)
    nic.write(TCTL, 2)
    mem.write(0x20000, bytes(200))
    slot = 0
    for mss, hdr_len, tucso in ((0, 54, 50), (100, 250, 50), (100, 54, 200)):
        # context: TUCMD TCP|IP|TSE|DEXT, HDRLEN, MSS
        mem.write(0x10000 + 16 * slot, struct.pack("<BBHBBHIBBH", 14, 24, 33, 34, tucso, 0,
                                                   146 | (0x27 << 24), 0, hdr_len, mss))
        mem.write(0x10010 + 16 * slot, struct.pack("<QIBBH", 0x20000, 200 | (1 << 20) |
                                                   (0x2D << 24), 0, 0x03, 0))   # EOP|TSE|RS
        slot += 2
    nic.write(TDT, slot)
    assert backend.sent == [] and nic.read(TDH) == slot


def test_phy_reset_and_autoneg_restart_bits_clear_themselves():
    """As QEMU's e1000 (and the PHY): a driver that polls for them finishes."""
    _, nic, _, _ = make()
    nic.write(0x20, (1 << 26) | (0 << 16) | 0x9340)       # MDIC write PHY_CTRL: reset, restart
    nic.write(0x20, (2 << 26) | (0 << 16))                 # MDIC read PHY_CTRL
    assert nic.read(0x20) & 0xFFFF == 0x1140     # autoneg, full duplex, 1000 Mb/s kept


def microwire_read(nic, first: int, count: int) -> list[int]:
    """Linux's e1000_read_eeprom on an 82540: the EECD pins, bit by bit. One READ
    command, then `count` words shifted in one after the other (sequential read)."""
    sk, cs, di, do = 1, 2, 4, 8
    eecd = nic.read(0x10) & ~(di | sk)
    nic.write(0x10, eecd | cs)
    eecd |= cs

    def clock(value: int) -> None:
        nic.write(0x10, value | sk)
        nic.write(0x10, value)

    for bit in [1, 1, 0] + [(first >> i) & 1 for i in range(5, -1, -1)]:
        eecd = eecd | di if bit else eecd & ~di
        nic.write(0x10, eecd)
        clock(eecd)
    eecd &= ~di
    words = []
    for _ in range(count):
        word = 0
        for _ in range(16):
            nic.write(0x10, eecd | sk)
            word = word << 1 | (1 if nic.read(0x10) & do else 0)
            nic.write(0x10, eecd)
        words.append(word)
    nic.write(0x10, eecd & ~cs)
    return words


def test_eeprom_through_the_microwire_pins():
    _, nic, _, _ = make()
    assert nic.read(0x10) & 0x180 == 0x180                  # present, granted
    assert b"".join(struct.pack("<H", w) for w in microwire_read(nic, 0, 3)) == MAC
    assert microwire_read(nic, 0x3E, 2) == [eeprom(nic, 0x3E), eeprom(nic, 0x3F)]
    assert sum(microwire_read(nic, 0, 64)) & 0xFFFF == 0xBABA
