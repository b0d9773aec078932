"""Intel 82540EM gigabit Ethernet ("e1000"), as QEMU presents it and Linux's e1000
driver uses it (Intel's "PCI/PCI-X Family of Gigabit Ethernet Controllers
Software Developer's Manual").

BAR0 (128 KiB) holds the registers; BAR1 (64 bytes of I/O) reaches them through
IOADDR/IODATA. The MAC comes from a 64-word EEPROM (read through EERD, or
bit by bit through EECD's Microwire pins as Linux does on this chip) whose
checksum makes the words sum to 0xBABA. Transmit and
receive use descriptor rings in guest memory (legacy descriptors, and the
extended data descriptors a driver uses with a context descriptor, whose IP and
TCP/UDP checksum offloads are computed, and TCP segmentation: a frame sent with
TSE is cut into MSS-sized segments, each with its own IP length and id, TCP
sequence number and checksums, as Linux's e1000 driver expects).
Interrupt causes accumulate in ICR, masked by IMS, on INTx; reading ICR clears
it. All guest-given ring addresses go through GuestMemory, so a hostile ring
can only fail its own frames.
"""

from __future__ import annotations

import logging
import struct

from vmm import savestate
from vmm.memory import GuestMemory, GuestMemoryError
from vmm.net.backend import NetBackend
from vmm.net.network import MAC_DESCRIPTION, NETDEV_DESCRIPTION, emulated_nic, unrealize_nic
from vmm.net.offload import put_checksum, tcp_segments
from vmm.pci import PciDevice
from vmm.qdev import DeviceType, Prop, bootindex, declare, on_off

log = logging.getLogger(__name__)

# Registers (byte offsets in BAR0)
CTRL, STATUS, EECD, EERD, CTRL_EXT, MDIC = 0x00, 0x08, 0x10, 0x14, 0x18, 0x20
ICR, ITR, ICS, IMS, IMC = 0xC0, 0xC4, 0xC8, 0xD0, 0xD8
RCTL, TCTL = 0x100, 0x400
RDBAL, RDBAH, RDLEN, RDH, RDT = 0x2800, 0x2804, 0x2808, 0x2810, 0x2818
TDBAL, TDBAH, TDLEN, TDH, TDT = 0x3800, 0x3804, 0x3808, 0x3810, 0x3818
MTA, RA = 0x5200, 0x5400
STATS_START, STATS_END = 0x4000, 0x4100        # statistics: clear on read

CTRL_RST, CTRL_SLU = 1 << 26, 1 << 6
STATUS_FD, STATUS_LU, STATUS_SPEED_1000 = 1, 2, 2 << 6
EERD_START, EERD_DONE = 1, 1 << 4
EECD_SK, EECD_CS, EECD_DI, EECD_DO = 0x01, 0x02, 0x04, 0x08   # Microwire pins
EECD_DRIVER_BITS = 0x77              # SK, CS, DI, FWE, REQ: what the driver sets
EECD_GNT, EECD_PRES = 0x80, 0x100
MICROWIRE_READ = 0b110
MDIC_READ, MDIC_READY = 2 << 26, 1 << 28
PHY_CTRL_RESET, PHY_CTRL_RESTART_AUTONEG = 0x8000, 0x0200
ICR_TXDW, ICR_TXQE, ICR_LSC, ICR_RXDMT0, ICR_RXO, ICR_RXT0 = 0x1, 0x2, 0x4, 0x10, 0x40, 0x80
ICR_INT_ASSERTED = 1 << 31
RCTL_EN, RCTL_UPE, RCTL_MPE, RCTL_BAM, RCTL_SECRC = 1 << 1, 1 << 3, 1 << 4, 1 << 15, 1 << 26
RCTL_MO_SHIFT = 12
TCTL_EN = 1 << 1
TXD_EOP, TXD_IFCS, TXD_IC, TXD_TSE, TXD_RS, TXD_DEXT = 0x01, 0x02, 0x04, 0x04, 0x08, 0x20
TUCMD_TCP, TUCMD_IP = 0x01, 0x02           # a context's TCP (else UDP) and IPv4 (else IPv6)
TXD_POPTS_IXSM, TXD_POPTS_TXSM = 0x01, 0x02
DESC_DD, RXD_EOP = 0x01, 0x02
RAH_AV = 1 << 31
MAX_FRAME = 16384
MAX_TSO_FRAME = 0x40000                    # a TSO frame before segmentation

EEPROM_WORDS = 64
EEPROM_CHECKSUM = 0xBABA
# QEMU's e1000 EEPROM template, words 3..0x3E (the MAC fills 0-2, the checksum 0x3F).
EEPROM_TEMPLATE = {0x03: 0x0000, 0x04: 0xFFFF, 0x05: 0xFFFF, 0x06: 0xFFFF, 0x07: 0xFFFF,
                   0x08: 0x3000, 0x09: 0x1000, 0x0A: 0x6403, 0x0B: 0x1100, 0x0C: 0x8086,
                   0x0D: 0x100E, 0x0E: 0x8086, 0x0F: 0x3040, 0x10: 0x0008, 0x11: 0x2000,
                   0x12: 0x7E14, 0x13: 0x0048, 0x14: 0x1000, 0x15: 0x00D8, 0x16: 0x0000,
                   0x17: 0x2700, 0x18: 0x6CC9, 0x19: 0x3150, 0x1A: 0x0722, 0x1B: 0x040B,
                   0x1C: 0x0984, 0x1D: 0x0000, 0x1E: 0xC000, 0x1F: 0x0706, 0x20: 0x1008,
                   0x21: 0x0000, 0x22: 0x0F04, 0x23: 0x7FFF, 0x24: 0x4D01, 0x25: 0xFFFF}
# PHY (Marvell 88E1011) registers Linux reads: control, status, ids, autoneg.
PHY_REGS = {0x00: 0x1140, 0x01: 0x796D, 0x02: 0x0141, 0x03: 0x0C20, 0x04: 0x0DE1,
            0x05: 0x41E1, 0x06: 0x0001, 0x09: 0x0E00, 0x0A: 0x3C00, 0x0F: 0x3000,
            0x10: 0x0360, 0x11: 0xAC00, 0x1B: 0x000A}


class E1000(PciDevice):
    """The 82540EM: a PCI function with its own register file (no virtio)."""

    name = "e1000"

    def __init__(self, memory: GuestMemory, mac: bytes) -> None:
        super().__init__(0x8086, 0x100E, 0x020000, revision=3, interrupt_pin=1)
        self.memory = memory
        self.mac = mac
        self.netdev: NetBackend | None = None
        self.link_up = True
        self.eeprom = self._eeprom(mac)
        self.add_bar(0, 0x20000, "mem32", _Registers(self))
        self.io_window = _IoWindow(self)
        self.add_bar(1, 0x40, "io", self.io_window)
        self.add_rom(0x40000)         # where QEMU has efi-e1000.rom
        self.reset_registers()

    @staticmethod
    def _eeprom(mac: bytes) -> list[int]:
        words = [0] * EEPROM_WORDS
        for i in range(3):
            words[i] = mac[2 * i] | (mac[2 * i + 1] << 8)
        for index, value in EEPROM_TEMPLATE.items():
            words[index] = value
        words[0x3F] = (EEPROM_CHECKSUM - sum(words[:0x3F])) & 0xFFFF
        return words

    def reset(self) -> None:
        super().reset()
        self.reset_registers()

    def reset_registers(self) -> None:
        self.regs: dict[int, int] = {}
        self.regs[CTRL] = 0x0000_0240 | CTRL_SLU
        self.eecd = 0                            # the pins the driver last set
        self._microwire_reset()
        self.regs[RA] = int.from_bytes(self.mac[:4], "little")
        self.regs[RA + 4] = int.from_bytes(self.mac[4:6], "little") | RAH_AV
        self.phy = dict(PHY_REGS)
        self.tx_frame = bytearray()      # a frame being gathered across descriptors
        self.tx_context = (0, 0, 0, 0, 0, 0)  # IPCSS, IPCSO, IPCSE, TUCSS, TUCSO, TUCSE
        self.tx_tso = (0, 0, 0)              # the context's TUCMD, HDRLEN, MSS
        self.tx_segment = False              # the frame being gathered uses TSO
        self.tx_offloads = (False, False)
        self.tx_legacy_sum: tuple[int, int] | None = None
        self._set_status_link()
        self._intx_from_icr()

    # -- migration -------------------------------------------------------------------
    STATE = ("eecd", "ee_in", "ee_bits_in", "ee_bit_out", "ee_reading", "tx_context",
             "tx_tso", "tx_segment", "tx_offloads")

    def save_state(self) -> dict:
        return {**super().save_state(), "regs": sorted(self.regs.items()),
                "tx_frame": bytes(self.tx_frame),
                "phy": sorted(self.phy.items()), "tx_legacy_sum": self.tx_legacy_sum,
                "io_address": self.io_window.address}

    def load_state(self, state: dict) -> None:
        try:
            regs = {int(k): int(v) & 0xFFFFFFFF for k, v in state["regs"]}
            phy = {int(k): int(v) & 0xFFFF for k, v in state["phy"]}
            legacy = state["tx_legacy_sum"]
            legacy = None if legacy is None else (int(legacy[0]), int(legacy[1]))
            io_address = int(state["io_address"])
            tx_frame = state["tx_frame"]
            if not isinstance(tx_frame, bytes):
                raise TypeError
        except (KeyError, TypeError, ValueError, IndexError):
            raise savestate.StateError("e1000: saved state does not fit this device") from None
        if not all(0 <= k < 0x20000 for k in regs) or not all(0 <= k < 32 for k in phy):
            raise savestate.StateError("e1000: register out of range")
        super().load_state(state)
        self.tx_frame = bytearray(tx_frame)
        self.regs, self.phy, self.tx_legacy_sum = regs, phy, legacy
        self.io_window.address = io_address & 0xFFFFFFFF
        self.tx_context, self.tx_tso = tuple(self.tx_context), tuple(self.tx_tso)
        self._intx_from_icr()
        if self.netdev is not None:      # receive buffers may be there: read the back end
            self.netdev.receive_ready()

    # -- the EEPROM's Microwire port (EECD), as Linux reads an 82540's ------------
    def _microwire_reset(self) -> None:
        self.ee_in = self.ee_bits_in = 0
        self.ee_bit_out = 0                      # which bit of the EEPROM DO shows
        self.ee_reading = False

    def _eecd_write(self, value: int) -> None:
        """CS rising starts a command; each SK rising edge shifts DI in; after the
        9-bit READ command (opcode 110, a 6-bit word address) each SK falling edge
        moves DO on to the next bit, word after word."""
        old, self.eecd = self.eecd, value & EECD_DRIVER_BITS
        if not value & EECD_CS:
            return
        if (value ^ old) & EECD_CS:
            self._microwire_reset()
        if not (value ^ old) & EECD_SK:
            return
        if not value & EECD_SK:
            self.ee_bit_out += 1
            return
        self.ee_in = (self.ee_in << 1 | (1 if value & EECD_DI else 0)) & 0xFFFF
        self.ee_bits_in += 1
        if self.ee_bits_in == 9 and not self.ee_reading:
            self.ee_bit_out = ((self.ee_in & 0x3F) << 4) - 1
            self.ee_reading = (self.ee_in >> 6) & 7 == MICROWIRE_READ

    def _eecd_read(self) -> int:
        bit = self.ee_bit_out
        word = self.eeprom[(bit >> 4) & (EEPROM_WORDS - 1)]
        data_out = not self.ee_reading or (word >> (15 - (bit & 15))) & 1
        return EECD_PRES | EECD_GNT | self.eecd | (EECD_DO if data_out else 0)

    def _set_status_link(self) -> None:
        """STATUS.LU and the PHY's link and autonegotiation-complete bits."""
        self.regs[STATUS] = STATUS_FD | STATUS_SPEED_1000 | (STATUS_LU if self.link_up else 0)
        status = self.phy[0x01]
        self.phy[0x01] = status | 0x0024 if self.link_up else status & ~0x0024

    # -- the monitor's side ----------------------------------------------------------
    def set_link(self, up: bool) -> None:
        if up != self.link_up:
            self.link_up = up
            self._set_status_link()
            self._interrupt(ICR_LSC)
            if up and self.netdev is not None:
                self.netdev.receive_ready()

    # -- registers -------------------------------------------------------------------
    def read(self, offset: int) -> int:
        offset &= ~3
        if offset == ICR:
            value = self.regs.get(ICR, 0)
            self.regs[ICR] = 0
            self._intx_from_icr()
            return value
        if offset == EERD:
            return self.regs.get(EERD, 0)
        if offset == EECD:
            return self._eecd_read()
        if offset in (IMC, ICS):
            return 0
        value = self.regs.get(offset, 0)
        if STATS_START <= offset < STATS_END:
            self.regs[offset] = 0
        return value

    def write(self, offset: int, value: int) -> None:
        offset &= ~3
        value &= 0xFFFFFFFF
        if offset == CTRL:
            if value & CTRL_RST:
                self.reset_registers()
                return
            self.regs[CTRL] = value
        elif offset == EECD:
            self._eecd_write(value)
        elif offset == EERD:
            address = (value >> 8) & 0xFF
            if value & EERD_START:
                word = self.eeprom[address] if address < EEPROM_WORDS else 0
                self.regs[EERD] = (word << 16) | (address << 8) | EERD_DONE
        elif offset == MDIC:
            reg = (value >> 16) & 0x1F
            if value & MDIC_READ:
                value = (value & ~0xFFFF) | self.phy.get(reg, 0)
            elif reg == 0x00:           # control: reset and restart-autoneg self-clear
                self.phy[reg] = value & ~(PHY_CTRL_RESET | PHY_CTRL_RESTART_AUTONEG | 0x3F) \
                    & 0xFFFF
            elif reg != 0x01:           # writes; status is read-only
                self.phy[reg] = value & 0xFFFF
            self.regs[MDIC] = value | MDIC_READY
        elif offset == ICS:
            self._interrupt(value)
        elif offset == IMS:
            self.regs[IMS] = self.regs.get(IMS, 0) | value
            self._intx_from_icr()
        elif offset == IMC:
            self.regs[IMS] = self.regs.get(IMS, 0) & ~value
            self._intx_from_icr()
        elif offset == ICR:            # write 1 to clear
            self.regs[ICR] = self.regs.get(ICR, 0) & ~value
            self._intx_from_icr()
        elif offset == STATUS:
            pass
        elif offset == TDT:
            self.regs[TDT] = value & 0xFFFF
            self._transmit()
        elif offset == RDT:
            self.regs[RDT] = value & 0xFFFF
            if self.netdev is not None:
                self.netdev.receive_ready()
        elif offset == RCTL:
            self.regs[RCTL] = value
            if value & RCTL_EN and self.netdev is not None:
                self.netdev.receive_ready()
        elif offset in (RDH, TDH, RDLEN, TDLEN):
            self.regs[offset] = value & (0xFFFF if offset in (RDH, TDH) else 0xFFF80)
        else:
            self.regs[offset] = value

    def _interrupt(self, cause: int) -> None:
        self.regs[ICR] = self.regs.get(ICR, 0) | cause
        self._intx_from_icr()

    def _intx_from_icr(self) -> None:
        pending = self.regs.get(ICR, 0) & self.regs.get(IMS, 0) & 0x1FFFF
        if pending:
            self.regs[ICR] = self.regs.get(ICR, 0) | ICR_INT_ASSERTED
        else:
            self.regs[ICR] = self.regs.get(ICR, 0) & ~ICR_INT_ASSERTED
        self.set_intx(1 if pending else 0)

    # -- rings -------------------------------------------------------------------------
    def _ring(self, base_lo: int, length_reg: int) -> tuple[int, int]:
        base = self.regs.get(base_lo, 0) | (self.regs.get(base_lo + 4, 0) << 32)
        return base, self.regs.get(length_reg, 0) // 16

    def _transmit(self) -> None:
        if not self.regs.get(TCTL, 0) & TCTL_EN:
            return
        base, count = self._ring(TDBAL, TDLEN)
        if count == 0:
            return
        head = self.regs.get(TDH, 0) % count
        tail = self.regs.get(TDT, 0) % count
        done = 0
        try:
            while head != tail and done < count:
                self._transmit_descriptor(self.memory.read(base + 16 * head, 16))
                if self.memory.read(base + 16 * head + 11, 1)[0] & TXD_RS:
                    status = self.memory.read(base + 16 * head + 12, 1)[0]
                    self.memory.write(base + 16 * head + 12, bytes([status | DESC_DD]))
                head = (head + 1) % count
                done += 1
        except GuestMemoryError as e:
            log.warning("e1000: transmit ring outside guest RAM: %s", e)
        self.regs[TDH] = head
        self._interrupt(ICR_TXDW | ICR_TXQE)

    def _transmit_descriptor(self, desc: bytes) -> None:
        """One descriptor: legacy, or extended context (checksum offsets) or data."""
        addr, length, cso, cmd, _status, css, _special = struct.unpack("<QHBBBBH", desc)
        typed = struct.unpack_from("<I", desc, 8)[0]
        if cmd & TXD_DEXT and (typed >> 20) & 0xF == 0:        # context descriptor
            self.tx_context = struct.unpack_from("<BBHBBH", desc, 0)
            self.tx_tso = (cmd, desc[13], struct.unpack_from("<H", desc, 14)[0])
            return
        if cmd & TXD_DEXT:                                     # data descriptor
            length = typed & 0xFFFFF
            popts = desc[13]
            self.tx_offloads = (popts & TXD_POPTS_IXSM, popts & TXD_POPTS_TXSM)
            self.tx_segment = bool(cmd & TXD_TSE)
        else:                                                  # legacy: CSO/CSS, IC
            self.tx_offloads = (False, False)
            self.tx_legacy_sum = (css, cso) if cmd & TXD_IC else None
            self.tx_segment = False
        limit = MAX_TSO_FRAME if self.tx_segment else MAX_FRAME
        if len(self.tx_frame) + length > limit:
            self.tx_frame.clear()                              # oversized: dropped
            return
        self.tx_frame += self.memory.read(addr, length)
        if cmd & TXD_EOP:
            frames = self._segments(self.tx_frame) if self.tx_segment else [self.tx_frame]
            for frame in frames:
                self._insert_checksums(frame, cmd & TXD_DEXT)
                self._send(bytes(frame))
            self.tx_frame = bytearray()

    def _segments(self, frame: bytearray) -> list[bytearray]:
        """TCP segmentation (datasheet 3.5) over the context's offsets; the driver's
        TCP/UDP sum has no length in it, so each segment's is added."""
        tucmd, hdr_len, mss = self.tx_tso
        ipcss, _, _, tucss, tucso, _ = self.tx_context
        segments = None if tucso + 2 > hdr_len else tcp_segments(
            frame, ipcss, tucss, hdr_len, mss, ipv4=bool(tucmd & TUCMD_IP),
            tcp=bool(tucmd & TUCMD_TCP))
        if segments is None:
            log.warning("e1000: TSO context does not fit the frame; dropped")
            return []
        for segment in segments:
            pseudo = int.from_bytes(segment[tucso:tucso + 2], "big") + len(segment) - tucss
            pseudo = (pseudo & 0xFFFF) + (pseudo >> 16)
            segment[tucso:tucso + 2] = pseudo.to_bytes(2, "big")
        return segments

    def _insert_checksums(self, frame: bytearray, extended: bool) -> None:
        """What the driver asked the card to compute: the IP header checksum (IXSM)
        and the TCP/UDP one (TXSM), over the context's ranges; the driver has put
        the pseudo-header sum in the TCP/UDP field already."""
        if not extended:
            if self.tx_legacy_sum is not None:
                start, where = self.tx_legacy_sum
                put_checksum(frame, start, len(frame) - 1, where)
            return
        ipcss, ipcso, ipcse, tucss, tucso, tucse = self.tx_context
        ip_sum, l4_sum = self.tx_offloads
        if ip_sum:
            put_checksum(frame, ipcss, ipcse or len(frame) - 1, ipcso)
        if l4_sum:
            put_checksum(frame, tucss, tucse or len(frame) - 1, tucso)

    def _send(self, frame: bytes) -> None:
        if frame and self.link_up and self.netdev is not None:
            self.netdev.send(frame)

    def can_receive(self) -> bool:
        if not self.link_up:
            return True                              # taken, to be dropped
        base, count = self._ring(RDBAL, RDLEN)
        return bool(self.regs.get(RCTL, 0) & RCTL_EN) and count > 0 and \
            self.regs.get(RDH, 0) % count != self.regs.get(RDT, 0) % count

    def receive(self, frame: bytes) -> bool:
        if not self.link_up or not self._accepts(frame):
            return True
        if not self.can_receive():
            return False
        base, count = self._ring(RDBAL, RDLEN)
        head = self.regs.get(RDH, 0) % count
        rctl = self.regs.get(RCTL, 0)
        buffer_size = _rx_buffer_size(rctl)
        data = frame if len(frame) >= 60 else frame.ljust(60, b"\0")   # pad short frames
        fcs = 0 if rctl & RCTL_SECRC else 4     # the CRC's length counts unless stripped
        try:
            # one frame per descriptor run: EOP on the last one
            offset = 0
            while True:
                addr = struct.unpack("<Q", self.memory.read(base + 16 * head, 8))[0]
                chunk = data[offset:offset + buffer_size]
                self.memory.write(addr, chunk)
                offset += len(chunk)
                last = offset >= len(data)
                length = len(chunk) + (fcs if last else 0)
                self.memory.write(base + 16 * head + 8, struct.pack(
                    "<HHBBH", length, 0, DESC_DD | (RXD_EOP if last else 0), 0, 0))
                head = (head + 1) % count
                if last or head == self.regs.get(RDT, 0) % count:
                    break
        except GuestMemoryError as e:
            log.warning("e1000: receive ring outside guest RAM: %s", e)
        self.regs[RDH] = head
        self._interrupt(ICR_RXT0)
        return True

    def _accepts(self, frame: bytes) -> bool:
        """Receive filtering of RCTL and the address/multicast tables."""
        if len(frame) < 6:
            return False
        rctl = self.regs.get(RCTL, 0)
        dest = frame[:6]
        if dest == b"\xff" * 6:
            return bool(rctl & RCTL_BAM)
        if dest[0] & 1:
            if rctl & RCTL_MPE:
                return True
            shift = (4, 3, 2, 0)[(rctl >> RCTL_MO_SHIFT) & 3]
            bit = ((dest[4] >> shift) | (dest[5] << (8 - shift))) & 0xFFF
            return bool(self.regs.get(MTA + 4 * (bit >> 5), 0) & (1 << (bit & 31)))
        if rctl & RCTL_UPE:
            return True
        for i in range(16):
            high = self.regs.get(RA + 8 * i + 4, 0)
            if high & RAH_AV and dest == (self.regs.get(RA + 8 * i, 0).to_bytes(4, "little")
                                          + (high & 0xFFFF).to_bytes(2, "little")):
                return True
        return False


def _rx_buffer_size(rctl: int) -> int:
    size = (2048, 1024, 512, 256)[(rctl >> 16) & 3]
    return size * 16 if rctl & (1 << 25) and size != 2048 else size


class _Registers:
    pci_bar = True
    mtree_name = "e1000-mmio"

    def __init__(self, dev: E1000) -> None:
        self.dev = dev

    def bus_read(self, offset: int, size: int) -> int:
        value = self.dev.read(offset)
        return (value >> (8 * (offset & 3))) & ((1 << (8 * size)) - 1)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if size != 4:                    # sub-dword writes: merge into the register
            old = self.dev.regs.get(offset & ~3, 0)
            shift = 8 * (offset & 3)
            mask = ((1 << (8 * size)) - 1) << shift
            value = (old & ~mask) | ((value << shift) & mask)
        self.dev.write(offset, value)


class _IoWindow:
    """BAR1: IOADDR at 0 picks a register, IODATA at 4 reads or writes it."""

    pci_bar = True
    mtree_name = "e1000-io"

    def __init__(self, dev: E1000) -> None:
        self.dev = dev
        self.address = 0

    def bus_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.address
        if offset == 4:
            return self.dev.read(self.address & 0x1FFFC)
        return 0

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            self.address = value
        elif offset == 4:
            self.dev.write(self.address & 0x1FFFC, value)


# -- the model, as QEMU declares it ---------------------------------------
declare(DeviceType(
    "e1000-base", "pci-device", abstract=True, props=(
        Prop("mac", "str", None, MAC_DESCRIPTION), Prop("netdev", "str", None, NETDEV_DESCRIPTION),
        on_off("autonegotiation", True, honoured=False), on_off("mitigation", True, honoured=False),
        on_off("extra_mac_registers", True, honoured=False),
        on_off("migrate_tso_props", True, honoured=False), on_off("init-vet", True, honoured=False),
        bootindex())))
declare(DeviceType("e1000", "e1000-base", category="Network", alias="e1000-82540em",
                   description="Intel Gigabit Ethernet",
                   realize=emulated_nic(E1000, "efi-e1000.rom"), unrealize=unrealize_nic))
