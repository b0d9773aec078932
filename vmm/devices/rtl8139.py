"""Realtek RTL8139 Fast Ethernet, in normal mode (as Linux's 8139too drives it)
and C+ mode (as 8139cp does), with QEMU's ids and BARs (RTL8139 and RTL8139C+
datasheets).

Registers are the same in BAR0 (256 bytes of I/O) and BAR1 (256 bytes of
memory). Normal mode: four transmit slots, each an address (TSAD) and a
status/size word (TSD); writing TSD with OWN clear sends TSAD's bytes. One
receive ring buffer at RBSTART (8, 16, 32 or 64 KiB plus slack when WRAP is
set); each frame is stored behind a 4-byte header (status, length with CRC)
and its CRC, 4-byte aligned; the driver moves CAPR behind what it has read.

C+ mode (CpCmd's CpRxOn/CpTxOn with the receiver/transmitter on): 16-byte
descriptors in guest rings at RDSAR (receive) and TNPDS (transmit), each
opts1 (OWN, EOR, first/last fragment, size) and a 64-bit buffer address;
TxPoll starts transmission, and the card can fill in IPv4, TCP and UDP
checksums and cut large sends into MSS-sized TCP segments. Receive filtering is
RCR's, with the exact 64-bit multicast hash (the big-endian CRC's top 6 bits).
Guest addresses go through GuestMemory; a hostile descriptor fails its frame.
"""

from __future__ import annotations

import logging
import struct
import zlib

from vmm import savestate
from vmm.memory import GuestMemory, GuestMemoryError
from vmm.net.backend import NetBackend
from vmm.net.network import MAC_DESCRIPTION, NETDEV_DESCRIPTION, emulated_nic, unrealize_nic
from vmm.net.offload import fill_ipv4_checksums, tcp_segments
from vmm.pci import PciDevice
from vmm.qdev import DeviceType, Prop, bootindex, declare

log = logging.getLogger(__name__)

IDR, MAR, TSD, TSAD, RBSTART = 0x00, 0x08, 0x10, 0x20, 0x30
CR, CAPR, CBR, IMR, ISR, TCR, RCR = 0x37, 0x38, 0x3A, 0x3C, 0x3E, 0x40, 0x44
MPC, CFG9346, CONFIG0, CONFIG1, MSR, CONFIG3, CONFIG4 = 0x4C, 0x50, 0x51, 0x52, 0x58, 0x59, 0x5A
BMCR, BMSR, ANAR, ANLPAR = 0x62, 0x64, 0x66, 0x68
TNPDS, TXPOLL, CPCMD, RDSAR = 0x20, 0xD9, 0xE0, 0xE4

CR_RST, CR_RE, CR_TE, CR_BUFE = 0x10, 0x08, 0x04, 0x01
ISR_ROK, ISR_TOK, ISR_RXOVW, ISR_LINK = 0x01, 0x04, 0x10, 0x20
TSD_OWN, TSD_TOK = 1 << 13, 1 << 15
RCR_AAP, RCR_APM, RCR_AM, RCR_AB, RCR_WRAP = 0x01, 0x02, 0x04, 0x08, 0x80
MSR_LINKB = 0x04                   # set when the link is DOWN
BMSR_LINK = 0x04
RX_OK, RX_BROADCAST, RX_PHYSICAL, RX_MULTICAST = 0x0001, 0x2000, 0x4000, 0x8000
TCR_VERSION = 0x7400_0000          # "RTL-8139C+" hardware revision, as QEMU reports
CP_TX_ON, CP_RX_ON = 0x01, 0x02     # CpCmd
CPCMD_READ_ONLY = 0xFF84           # bits QEMU keeps from the old CpCmd on a write
TXPOLL_NORMAL = 0x40
# C+ descriptor opts1
DESC_OWN, DESC_EOR, DESC_FS, DESC_LS = 1 << 31, 1 << 30, 1 << 29, 1 << 28
TX_LGSEN, TX_IPCS, TX_UDPCS, TX_TCPCS = 1 << 27, 1 << 18, 1 << 17, 1 << 16
RX_MAR, RX_PAM, RX_BAR = 1 << 26, 1 << 25, 1 << 24
CP_RX_SIZE_MASK, CP_TX_SIZE_MASK, CP_MSS_MASK = 0x1FFF, 0xFFFF, 0x7FF
CP_RING_MAX = 64                   # QEMU's ring length when no descriptor says EOR
CP_MAX_FRAME = 0x10000 + 256       # a large send before it is cut
RX_KIND_TO_CP = {RX_BROADCAST: RX_BAR, RX_PHYSICAL: RX_PAM, RX_MULTICAST: RX_MAR}


class Rtl8139(PciDevice):
    name = "rtl8139"

    def __init__(self, memory: GuestMemory, mac: bytes) -> None:
        super().__init__(0x10EC, 0x8139, 0x020000, revision=0x20, interrupt_pin=1)
        self.memory = memory
        self.mac = mac
        self.netdev: NetBackend | None = None
        self.link_up = True
        self.add_bar(0, 0x100, "io", _Registers(self, "rtl8139"))
        # QEMU's memory BAR is an alias of the I/O region, and info mtree says so.
        self.add_bar(1, 0x100, "mem32", _Registers(
            self, "alias rtl8139-mem @rtl8139 0000000000000000-00000000000000ff"))
        self.add_rom(0x40000)            # where QEMU has efi-rtl8139.rom
        self.reset_registers()

    def reset(self) -> None:
        super().reset()
        self.reset_registers()

    def reset_registers(self) -> None:
        self.regs = bytearray(0x100)
        self.regs[IDR:IDR + 6] = self.mac
        self.regs[CR] = CR_BUFE
        struct.pack_into("<I", self.regs, TCR, TCR_VERSION)
        struct.pack_into("<H", self.regs, CAPR, 0xFFF0)
        for n in range(4):
            struct.pack_into("<I", self.regs, TSD + 4 * n, TSD_OWN)
        self.regs[CONFIG1] = 0x0C
        struct.pack_into("<H", self.regs, BMCR, 0x1000)        # autonegotiation on
        struct.pack_into("<H", self.regs, ANAR, 0x05E1)
        struct.pack_into("<H", self.regs, ANLPAR, 0x05E1)
        self.rx_offset = 0               # where the next frame goes in the ring
        self.cp_rx = self.cp_tx = 0      # C+: the next receive and transmit descriptor
        # C+: the frame being gathered over descriptors (None: one too long, dropped)
        self.cp_frame: bytearray | None = bytearray()
        self._set_link_registers()
        self._update_irq()

    STATE = ("regs", "rx_offset", "cp_rx", "cp_tx")

    def save_state(self) -> dict:
        frame = None if self.cp_frame is None else bytes(self.cp_frame)
        return {**super().save_state(), "cp_frame": frame}

    def load_state(self, state: dict) -> None:
        frame = state.get("cp_frame") if isinstance(state, dict) else None
        if frame is not None and not isinstance(frame, bytes):
            raise savestate.StateError("rtl8139: saved state does not fit this device")
        super().load_state(state)
        self.cp_frame = None if frame is None else bytearray(frame)

    def state_loaded(self) -> None:
        self._update_irq()
        if self.netdev is not None:      # receive buffers may be there: read the back end
            self.netdev.receive_ready()

    def _set_link_registers(self) -> None:
        self.regs[MSR] = 0 if self.link_up else MSR_LINKB
        struct.pack_into("<H", self.regs, BMSR, 0x782D if self.link_up else 0x7809)

    def _u16(self, offset: int) -> int:
        return struct.unpack_from("<H", self.regs, offset)[0]

    def _u32(self, offset: int) -> int:
        return struct.unpack_from("<I", self.regs, offset)[0]

    # -- the monitor's side ------------------------------------------------------------
    def set_link(self, up: bool) -> None:
        if up != self.link_up:
            self.link_up = up
            self._set_link_registers()
            self._interrupt(ISR_LINK)
            if up and self.netdev is not None:
                self.netdev.receive_ready()

    # -- register access ---------------------------------------------------------------
    def read(self, offset: int, size: int) -> int:
        if offset == CR:
            self._update_bufe()
        return int.from_bytes(self.regs[offset:offset + size], "little")

    def write(self, offset: int, size: int, value: int) -> None:
        data = value.to_bytes(size, "little")
        for i, byte in enumerate(data):
            self._write_byte(offset + i, byte)
        if TSD <= offset < TSD + 16 and offset % 4 + size == 4:
            self._transmit((offset - TSD) // 4)
        if offset <= ISR + 1 < offset + size or offset <= IMR + 1 < offset + size:
            self._update_irq()

    def _write_byte(self, offset: int, byte: int) -> None:
        if offset == CR:
            if byte & CR_RST:
                self.reset_registers()
                return
            self.regs[CR] = (byte & (CR_RE | CR_TE)) | (self.regs[CR] & CR_BUFE)
            if byte & CR_RE and self.netdev is not None:
                self.netdev.receive_ready()
        elif offset in (ISR, ISR + 1):         # write 1 to clear
            self.regs[offset] &= ~byte & 0xFF
        elif offset in (CAPR, CAPR + 1):
            self.regs[offset] = byte
            if offset == CAPR + 1 and self.netdev is not None:
                self.netdev.receive_ready()
        elif offset in (CBR, CBR + 1, MSR, BMSR, BMSR + 1) or MPC <= offset < MPC + 4:
            pass                                 # read-only
        elif offset in (CPCMD, CPCMD + 1):
            keep = CPCMD_READ_ONLY >> (8 * (offset - CPCMD)) & 0xFF
            self.regs[offset] = (self.regs[offset] & keep) | (byte & ~keep & 0xFF)
        elif offset == TXPOLL:
            if byte & TXPOLL_NORMAL:
                self._cp_transmit()
        elif TSD <= offset < TSD + 16:
            if offset % 4 == 1:                  # writing the size clears OWN and TOK
                byte &= ~((TSD_OWN | TSD_TOK) >> 8) & 0xFF
            self.regs[offset] = byte
        else:
            self.regs[offset] = byte

    def _interrupt(self, cause: int) -> None:
        struct.pack_into("<H", self.regs, ISR, self._u16(ISR) | cause)
        self._update_irq()

    def _update_irq(self) -> None:
        self.set_intx(1 if self._u16(ISR) & self._u16(IMR) else 0)

    # -- transmit ------------------------------------------------------------------------
    def _transmit(self, slot: int) -> None:
        status = self._u32(TSD + 4 * slot)
        if not self.regs[CR] & CR_TE or status & TSD_OWN or self._cplus(CP_TX_ON):
            return
        size = status & 0x1FFF
        try:
            frame = self.memory.read(self._u32(TSAD + 4 * slot), size)
        except GuestMemoryError as e:
            log.warning("rtl8139: transmit buffer outside guest RAM: %s", e)
            frame = b""
        self._send(frame)
        struct.pack_into("<I", self.regs, TSD + 4 * slot, status | TSD_OWN | TSD_TOK)
        self._interrupt(ISR_TOK)

    def _send(self, frame: bytes) -> None:
        if frame and self.link_up and self.netdev is not None:
            self.netdev.send(frame)

    # -- C+ transmit -----------------------------------------------------------------
    def _cplus(self, which: int) -> bool:
        """Whether C+ mode runs the transmitter (CP_TX_ON) or receiver (CP_RX_ON)."""
        enabled = CR_TE if which == CP_TX_ON else CR_RE
        return bool(self.regs[CR] & enabled and self._u16(CPCMD) & which)

    def _descriptor(self, base_reg: int, index: int) -> int:
        return struct.unpack_from("<Q", self.regs, base_reg)[0] + 16 * index

    @staticmethod
    def _next(index: int, opts1: int) -> int:
        return 0 if opts1 & DESC_EOR or index + 1 >= CP_RING_MAX else index + 1

    def _cp_transmit(self) -> None:
        """TxPoll: every descriptor the driver owns out, a frame per last fragment."""
        if not self._cplus(CP_TX_ON):
            return
        sent = 0
        try:
            for _ in range(CP_RING_MAX):
                at = self._descriptor(TNPDS, self.cp_tx)
                opts1 = self.memory.read_u32(at)
                if not opts1 & DESC_OWN:
                    break
                if opts1 & DESC_FS:
                    self.cp_frame = bytearray()
                size = opts1 & CP_TX_SIZE_MASK
                if self.cp_frame is not None and len(self.cp_frame) + size <= CP_MAX_FRAME:
                    self.cp_frame += self.memory.read(self.memory.read_u64(at + 8), size)
                else:
                    self.cp_frame = None          # too long: dropped up to its last fragment
                self.memory.write_u32(at, opts1 & ~DESC_OWN)
                self.cp_tx = self._next(self.cp_tx, opts1)
                if opts1 & DESC_LS:
                    if self.cp_frame is not None:
                        for frame in self._cp_offloads(self.cp_frame, opts1):
                            self._send(bytes(frame))
                    self.cp_frame = bytearray()
                    sent += 1
        except GuestMemoryError as e:
            log.warning("rtl8139: C+ transmit ring outside guest RAM: %s", e)
        if sent:
            self._interrupt(ISR_TOK)

    def _cp_offloads(self, frame: bytearray, opts1: int) -> list[bytearray]:
        """IPv4 only, as QEMU: large send cuts TCP at the MSS; otherwise the asked-for
        IP, TCP or UDP checksums. Anything else goes out as the driver built it."""
        if frame[12:14] != b"\x08\x00" or len(frame) < 34:
            return [frame]
        if opts1 & TX_LGSEN:
            mss = (opts1 >> 16) & CP_MSS_MASK
            l4 = 14 + (frame[14] & 0x0F) * 4
            if frame[23] != 6 or mss == 0 or len(frame) < l4 + 20:
                return [frame]
            segments = tcp_segments(frame, 14, l4, l4 + (frame[l4 + 12] >> 4) * 4, mss)
            if segments is None:
                return [frame]
            for segment in segments:
                fill_ipv4_checksums(segment, 14, ip_sum=True, l4_sum=True)
            return segments
        l4_sum = bool(opts1 & (TX_TCPCS if frame[23] == 6 else TX_UDPCS if frame[23] == 17
                               else 0))
        fill_ipv4_checksums(frame, 14, ip_sum=bool(opts1 & TX_IPCS), l4_sum=l4_sum)
        return [frame]

    # -- C+ receive ------------------------------------------------------------------
    def _cp_can_receive(self) -> bool:
        try:
            return bool(self.memory.read_u32(self._descriptor(RDSAR, self.cp_rx)) & DESC_OWN)
        except GuestMemoryError:
            return False

    def _cp_receive(self, data: bytes, kind: int) -> None:
        """Into the next receive descriptor, with its CRC; too long for the buffer: dropped
        with RxOverflow, as QEMU."""
        try:
            at = self._descriptor(RDSAR, self.cp_rx)
            opts1 = self.memory.read_u32(at)
            if len(data) + 4 > opts1 & CP_RX_SIZE_MASK:
                self._interrupt(ISR_RXOVW)
                return
            self.memory.write(self.memory.read_u64(at + 8),
                              data + struct.pack("<I", zlib.crc32(data)))
            self.memory.write_u32(at + 4, 0)                 # no VLAN tag
            self.memory.write_u32(at, (opts1 & DESC_EOR) | DESC_FS | DESC_LS |
                                  RX_KIND_TO_CP[kind] | (len(data) + 4))
        except GuestMemoryError as e:
            log.warning("rtl8139: C+ receive ring outside guest RAM: %s", e)
            return
        self.cp_rx = self._next(self.cp_rx, opts1)
        self._interrupt(ISR_ROK)

    # -- receive -------------------------------------------------------------------------
    def _ring_size(self) -> int:
        return 8192 << ((self._u32(RCR) >> 11) & 3)

    def _free_space(self) -> int:
        size = self._ring_size()
        read_at = (self._u16(CAPR) + 16) % 0x10000 % size
        if read_at == self.rx_offset:                # nothing unread: all of it
            return size
        return (read_at - self.rx_offset) % size

    def _update_bufe(self) -> None:
        size = self._ring_size()
        empty = (self._u16(CAPR) + 16) % 0x10000 % size == self.rx_offset
        self.regs[CR] = (self.regs[CR] & ~CR_BUFE) | (CR_BUFE if empty else 0)

    def can_receive(self) -> bool:
        if not self.link_up:
            return True                              # taken, to be dropped
        if self._cplus(CP_RX_ON):
            return self._cp_can_receive()
        return bool(self.regs[CR] & CR_RE) and self._free_space() > 1536 + 8

    def receive(self, frame: bytes) -> bool:
        if not self.link_up:
            return True
        kind = self._accepts(frame)
        if kind is None:
            return True
        if not self.can_receive():
            return False
        data = frame if len(frame) >= 60 else frame.ljust(60, b"\0")
        if self._cplus(CP_RX_ON):
            self._cp_receive(data, kind)
            return True
        body = data + struct.pack("<I", zlib.crc32(data))
        header = struct.pack("<HH", RX_OK | kind, len(body))
        self._ring_write(header + body)
        self.rx_offset = (self.rx_offset + len(header) + len(body) + 3) & ~3
        self.rx_offset %= self._ring_size()
        struct.pack_into("<H", self.regs, CBR, self.rx_offset)
        self._update_bufe()
        self._interrupt(ISR_ROK)
        return True

    def _ring_write(self, record: bytes) -> None:
        base, size = self._u32(RBSTART), self._ring_size()
        try:
            if self.regs[RCR] & RCR_WRAP or self.rx_offset + len(record) <= size:
                self.memory.write(base + self.rx_offset, record)   # WRAP: past the end
            else:
                first = size - self.rx_offset
                self.memory.write(base + self.rx_offset, record[:first])
                self.memory.write(base, record[first:])
        except GuestMemoryError as e:
            log.warning("rtl8139: receive buffer outside guest RAM: %s", e)

    def _accepts(self, frame: bytes) -> int | None:
        """The receive status bit for an accepted frame (RCR's filters), else None."""
        if len(frame) < 6:
            return None
        rcr = self._u32(RCR)
        dest = frame[:6]
        if dest == b"\xff" * 6:
            return RX_BROADCAST if rcr & (RCR_AB | RCR_AAP) else None
        if dest[0] & 1:
            bit = ether_crc(dest) >> 26
            if rcr & RCR_AAP or (rcr & RCR_AM and self.regs[MAR + (bit >> 3)] >> (bit & 7) & 1):
                return RX_MULTICAST
            return None
        if rcr & RCR_AAP or (rcr & RCR_APM and dest == bytes(self.regs[IDR:IDR + 6])):
            return RX_PHYSICAL
        return None


def ether_crc(data: bytes) -> int:
    """The big-endian (MSB-first) Ethernet CRC-32, as the multicast hash uses it
    (zlib's is the reflected one)."""
    crc = 0xFFFFFFFF
    for octet in data:
        for _ in range(8):
            carry = (crc >> 31) ^ (octet & 1)
            crc = (crc << 1) & 0xFFFFFFFF
            if carry:
                crc ^= 0x04C11DB7
            octet >>= 1
    return crc


class _Registers:
    """The register file, as BAR0 (I/O) and BAR1 (memory) both show it."""

    pci_bar = True

    def __init__(self, dev: Rtl8139, mtree_name: str) -> None:
        self.dev = dev
        self.mtree_name = mtree_name

    def bus_read(self, offset: int, size: int) -> int:
        return self.dev.read(offset, size)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        self.dev.write(offset, size, value)


# -- the model, as QEMU declares it ---------------------------------------
declare(DeviceType(
    "rtl8139", "pci-device", category="Network",
    realize=emulated_nic(Rtl8139, "efi-rtl8139.rom"), unrealize=unrealize_nic,
    props=(Prop("mac", "str", None, MAC_DESCRIPTION),
           Prop("netdev", "str", None, NETDEV_DESCRIPTION), bootindex())))
