"""An ATAPI CD-ROM (ide-cd) on an IDE unit (vmm/devices/ide.py): the packet
commands (MMC) a guest's CD driver sends, its tray and medium lock, and the
media-change conditions it reports.

A PACKET command takes 12 bytes through the data port, then answers by PIO (in
blocks no larger than the byte count limit the guest put in the cylinder
registers, an IRQ each) or by DMA through the bus master. A medium changed
from the monitor shows as "not ready" once, then as a unit attention, as QEMU's
drive does, and as a new-media event to GET EVENT STATUS NOTIFICATION. The
tray opens and closes from the monitor or by START STOP UNIT; PREVENT ALLOW
MEDIUM REMOVAL locks it, so the monitor's eject asks the guest instead (an
eject-request event) unless forced.
"""

from __future__ import annotations

import struct
from collections.abc import Callable

from vmm import savestate
from vmm.devices.ide import (
    BSY,
    CD_SECTOR,
    CONTINUATIONS,
    DMA_RUNNERS,
    DRDY,
    DRQ,
    DSC,
    ERR,
    SECTOR,
    Unit,
)
from vmm.memory import GuestMemoryError

PACKET_SIZE = 12
CD_MAX_SECTORS = 80 * 60 * 75 * CD_SECTOR // SECTOR   # beyond this, a medium is a DVD
READ_BLOCK = 128 * CD_SECTOR                          # a DMA read's piece of the medium
# interrupt reason (in the sector count register)
REASON_COD, REASON_IO = 0x01, 0x02
# sense keys and additional sense codes
NO_SENSE, NOT_READY, ILLEGAL_REQUEST, UNIT_ATTENTION = 0x00, 0x02, 0x05, 0x06
ASC_ILLEGAL_OPCODE, ASC_LBA_OUT_OF_RANGE, ASC_INVALID_FIELD = 0x20, 0x21, 0x24
ASC_MEDIUM_MAY_HAVE_CHANGED, ASC_INCOMPATIBLE_FORMAT = 0x28, 0x30
ASC_SAVING_NOT_SUPPORTED, ASC_MEDIUM_NOT_PRESENT = 0x39, 0x3A
ASC_DATA_PHASE_ERROR, ASC_REMOVAL_PREVENTED = 0x4B, 0x53
MEDIA_CHANGED_ERROR = 0x20
PROFILE_DVD_ROM, PROFILE_CD_ROM = 0x0010, 0x0008
# command flags
ALLOW_UA, CHECK_READY, NONDATA, CONDDATA = 1, 2, 4, 8


def lba_to_msf(lba: int) -> bytes:
    lba += 150
    return bytes(((lba // 75) // 60, (lba // 75) % 60, lba % 75))


def raw_sector(lba: int, data: bytes) -> bytes:
    """A 2352-byte mode 1 sector around 2048 bytes of data (sync, header, no ECC)."""
    return b"\x00" + b"\xff" * 10 + b"\x00" + lba_to_msf(lba) + b"\x01" + data + bytes(288)


class Cdrom:
    """The packet-command side of an ide-cd unit."""

    def __init__(self, unit: Unit) -> None:
        self.unit = unit
        self.tray_open = False
        self.locked = False
        # Tell the monitor the guest moved the tray: DEVICE_TRAY_MOVED and its data.
        self.on_tray_moved: Callable[[bool], None] = lambda is_open: None
        self.tray_event: Callable[[bool], dict] = lambda is_open: {}
        self.reset()

    def reset(self) -> None:
        self.sense_key = self.asc = 0
        self.changed = 0                 # 1: say "no medium" next, 2: then a unit attention
        self.new_media = self.eject_requested = False
        self.dma = False
        self.tray_open = self.locked = False
        self.remaining = 0               # bytes of the reply still to go
        self.reply = b""                 # a reply built in memory (not a read)
        self.read_lba = -1               # a read: the first sector, and its sector size
        self.sector_size = CD_SECTOR
        self.sent = 0

    # -- the medium, as the monitor changes it ---------------------------------------------
    @property
    def inserted(self) -> bool:
        return self.unit.drive is not None and self.unit.drive.root is not None

    @property
    def sectors(self) -> int:
        """2048-byte sectors of the medium (0 with none)."""
        return self.unit.total_sectors // 4

    def media_present(self) -> bool:
        return not self.tray_open and self.unit.total_sectors > 0

    def change_media(self, load: bool) -> None:
        """The tray closes (``load``) or opens, from the monitor."""
        self.tray_open = not load
        self.changed = 1
        self.new_media = True
        self.eject_requested = False
        self.unit.channel.raise_irq()

    def eject_request(self, force: bool) -> None:
        """The monitor asks to eject a locked tray: the guest sees an eject request
        (and, forced, the lock is gone)."""
        self.eject_requested = True
        if force:
            self.locked = False
        self.unit.channel.raise_irq()

    # -- the packet -------------------------------------------------------------------------
    def packet_phase(self) -> None:
        unit = self.unit
        unit.status = DRDY | DSC
        self.dma = bool(unit.feature & 1)
        unit.nsector = REASON_COD
        unit.transfer_start(bytearray(PACKET_SIZE), False, "packet")

    def run(self) -> None:
        packet = bytes(self.unit.data[:PACKET_SIZE])
        handler, flags = COMMANDS.get(packet[0], (None, 0))
        if self.sense_key == UNIT_ATTENTION and not flags & ALLOW_UA:
            self._check_condition()
            return
        if not flags & ALLOW_UA and not self.tray_open and self.inserted and self.changed:
            # A changed medium: first "no medium", then "it may have changed".
            if self.changed == 1:
                self.error(NOT_READY, ASC_MEDIUM_NOT_PRESENT)
                self.changed = 2
            else:
                self.error(UNIT_ATTENTION, ASC_MEDIUM_MAY_HAVE_CHANGED)
                self.changed = 0
            return
        if flags & CHECK_READY and (not self.media_present() or not self.inserted):
            self.error(NOT_READY, ASC_MEDIUM_NOT_PRESENT)
            return
        if handler is not None and not flags & (NONDATA | CONDDATA) and not self._bcl_ok():
            return
        if handler is None:
            self.error(ILLEGAL_REQUEST, ASC_ILLEGAL_OPCODE)
            return
        handler(self, packet)

    def _bcl_ok(self) -> bool:
        if self.dma or self._byte_count_limit():
            return True
        self.unit.abort()
        self.unit.channel.raise_irq()
        return False

    def _byte_count_limit(self) -> int:
        limit = self.unit.lcyl | self.unit.hcyl << 8
        return 0xFFFE if limit == 0xFFFF else limit

    def _check_condition(self) -> None:
        unit = self.unit
        unit.error = MEDIA_CHANGED_ERROR | UNIT_ATTENTION << 4
        unit.status = ERR
        unit.nsector = 0
        unit.channel.raise_irq()

    # -- endings -----------------------------------------------------------------------------
    def ok(self) -> None:
        unit = self.unit
        unit.error = 0
        unit.status = DRDY | DSC
        unit.nsector = (unit.nsector & ~7) | REASON_IO | REASON_COD
        unit.transfer_stop()
        unit.channel.raise_irq()

    def error(self, sense_key: int, asc: int) -> None:
        unit = self.unit
        unit.error = sense_key << 4
        unit.status = DRDY | ERR
        unit.nsector = (unit.nsector & ~7) | REASON_IO | REASON_COD
        self.sense_key, self.asc = sense_key, asc
        unit.transfer_stop()
        unit.channel.raise_irq()

    def io_error(self, error: OSError) -> None:
        if error.errno == 123:                          # ENOMEDIUM
            self.error(NOT_READY, ASC_MEDIUM_NOT_PRESENT)
        else:
            self.error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)

    # -- replies ------------------------------------------------------------------------------
    def send(self, data: bytes, max_len: int) -> None:
        """A reply built in memory, cut to what the guest allowed."""
        self.reply = bytes(data[:max_len])
        self.read_lba = -1
        self.remaining = len(self.reply)
        self.sent = 0
        self._start()

    def read(self, lba: int, count: int, sector_size: int) -> None:
        """A READ of ``count`` sectors from ``lba`` (2048 bytes each, or 2352 raw)."""
        self.read_lba, self.sector_size = lba, sector_size
        self.remaining = count * sector_size
        self.sent = 0
        self._start()

    def _start(self) -> None:
        if self.dma:
            self.unit.status = DRDY | DSC | DRQ | (BSY if self.read_lba >= 0 else 0)
            self.unit.channel.bm.request(self.unit, "atapi")
        else:
            self.unit.status = DRDY | DSC
            self.next_block()

    def next_block(self) -> None:
        """The next PIO block: at most the byte count limit, with an IRQ."""
        unit = self.unit
        if self.remaining <= 0:
            self.ok()
            return
        limit = self._byte_count_limit()
        size = self.remaining
        if size > limit:
            size = limit & ~1
        start = self.sent

        def deliver(data: bytes) -> None:
            unit.status &= ~BSY
            unit.nsector = (unit.nsector & ~7) | REASON_IO
            unit.lcyl, unit.hcyl = size & 0xFF, size >> 8 & 0xFF
            self.remaining -= size
            self.sent += size
            unit.transfer_start(bytearray(data), True, "reply")
            unit.channel.raise_irq()

        if self.read_lba < 0:
            deliver(self.reply[start:start + size])
            return
        unit.status |= BSY
        self._fetch(start, size, deliver)

    def _fetch(self, start: int, size: int, then: Callable[[bytes], None]) -> None:
        """Bytes [start, start + size) of the read's data, read on the I/O engine."""
        unit, sector_size, first_lba = self.unit, self.sector_size, self.read_lba
        drive = unit.drive

        def work() -> bytes:
            first, last = start // sector_size, (start + size - 1) // sector_size
            raw = bytearray((last - first + 1) * CD_SECTOR)
            drive.read_into((first_lba + first) * CD_SECTOR, [memoryview(raw)])
            if sector_size == CD_SECTOR:
                sectors = bytes(raw)
            else:
                sectors = b"".join(raw_sector(first_lba + first + n,
                                              bytes(raw[n * CD_SECTOR:(n + 1) * CD_SECTOR]))
                                   for n in range(last - first + 1))
            offset = start - first * sector_size
            return sectors[offset:offset + size]

        def done(result) -> None:
            if isinstance(result, OSError):
                unit.status &= ~BSY
                self.io_error(result)
                return
            then(result if result is not None else bytes(size))

        unit.channel.submit(unit, work, done, False, lambda: self._fetch(start, size, then))

    def run_dma(self) -> None:
        """The whole reply, or the read's data, into the PRD table's memory."""
        unit = self.unit
        channel = unit.channel
        needed = self.remaining
        try:
            regions, described = channel.bm.prds(channel.memory, needed)
        except GuestMemoryError:              # the table is not in RAM
            self.error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
            channel.bm.finished(False)
            return
        fits = sum(length for _, length in regions)

        def store(data: bytes) -> None:
            offset = 0
            try:
                for address, length in regions:
                    channel.memory.write(address, data[offset:offset + length])
                    offset += length
            except GuestMemoryError:            # PRDs outside RAM: the command fails
                self.error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
                channel.bm.finished(False)
                return
            self.remaining = 0
            unit.status = DRDY | DSC
            if fits < needed:              # the PRDs ran out: the bus master stops there
                channel.bm.finished(False)
                return
            unit.nsector = (unit.nsector & ~7) | REASON_IO | REASON_COD
            channel.raise_irq()
            channel.bm.finished(described > needed)

        if self.read_lba < 0:
            store(self.reply[:fits])
        elif fits:
            self._fetch(0, fits, store)
        else:
            store(b"")

    # -- migration ------------------------------------------------------------------------------
    STATE = ("tray_open", "locked", "sense_key", "asc", "changed", "new_media",
             "eject_requested", "dma", "remaining", "reply", "read_lba", "sector_size",
             "sent")

    def save_state(self) -> dict:
        return savestate.save_fields(self, self.STATE)

    def load_state(self, state) -> None:
        savestate.check_fields(self, self.STATE, state, "ide-cd")
        if state["sector_size"] not in (CD_SECTOR, 2352):
            raise savestate.StateError("ide-cd.sector_size: saved value does not fit")
        savestate.set_fields(self, self.STATE, state)


# -- the packet commands ----------------------------------------------------------------------
def _u16(packet: bytes, at: int) -> int:
    return packet[at] << 8 | packet[at + 1]


def _u32(packet: bytes, at: int) -> int:
    return int.from_bytes(packet[at:at + 4], "big")


def test_unit_ready(cd: Cdrom, packet: bytes) -> None:
    cd.ok()                              # not-ready conditions were checked before


def request_sense(cd: Cdrom, packet: bytes) -> None:
    sense = bytearray(18)
    sense[0], sense[2], sense[7], sense[12] = 0xF0, cd.sense_key, 10, cd.asc
    if cd.sense_key == UNIT_ATTENTION:
        cd.sense_key = NO_SENSE
    cd.send(sense, packet[4])


def _padded(text: str, length: int) -> bytes:
    return text.encode()[:length].ljust(length, b" ")


def inquiry(cd: Cdrom, packet: bytes) -> None:
    max_len, page = packet[4], packet[2]
    unit = cd.unit
    if not packet[1] & 1:
        data = (bytes((0x05, 0x80, 0x00, 0x21, 31, 0, 0, 0)) + _padded("QEMU", 8)
                + _padded("QEMU DVD-ROM", 16) + _padded(unit.version, 4))
        cd.send(data, max_len)
        return
    body = bytearray()
    if page == 0x00:
        body += b"\x00\x83"                      # supported: this list, device identification
    elif page == 0x83:
        if 4 + 24 > max_len:
            cd.error(ILLEGAL_REQUEST, ASC_DATA_PHASE_ERROR)
            return
        body += b"\x02\x00\x00\x14" + _padded(unit.serial, 20)
        if 4 + len(body) + 72 <= max_len:
            body += b"\x02\x01\x00\x44" + _padded("ATA", 8) + _padded(unit.model, 40) + \
                _padded(unit.serial, 20)
            if unit.wwn and 4 + len(body) + 12 <= max_len:
                body += b"\x01\x03\x00\x08" + unit.wwn.to_bytes(8, "big")
    else:
        cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
        return
    cd.send(bytes((0x05, page, 0, len(body))) + body, max_len)


def start_stop_unit(cd: Cdrom, packet: bytes) -> None:
    start, load_eject, power = packet[4] & 1, packet[4] & 2, packet[4] & 0xF0
    if power:
        cd.ok()
        return
    if load_eject:
        if not start and not cd.tray_open and cd.locked:
            cd.error(NOT_READY if cd.inserted else ILLEGAL_REQUEST, ASC_REMOVAL_PREVENTED)
            return
        if cd.tray_open != (not start):
            cd.tray_open = not start
            cd.on_tray_moved(cd.tray_open)
    cd.ok()


def prevent_allow_removal(cd: Cdrom, packet: bytes) -> None:
    cd.locked = bool(packet[4] & 1)
    cd.ok()


def read_capacity(cd: Cdrom, packet: bytes) -> None:
    cd.send(struct.pack(">II", (cd.sectors - 1) & 0xFFFFFFFF, CD_SECTOR), 8)


def _read_range(cd: Cdrom, lba: int, count: int) -> bool:
    """Whether a read goes on: a count of 0 ends it at once, a range past the medium
    is refused."""
    if count == 0:
        cd.ok()
        return False
    if lba >= cd.sectors or lba + count - 1 >= cd.sectors:
        cd.error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
        return False
    return True


def read_10_12(cd: Cdrom, packet: bytes) -> None:
    count = _u16(packet, 7) if packet[0] == 0x28 else _u32(packet, 6)
    lba = _u32(packet, 2)
    if _read_range(cd, lba, count):
        cd.read(lba, count, CD_SECTOR)


def read_cd(cd: Cdrom, packet: bytes) -> None:
    count, lba = packet[6] << 16 | packet[7] << 8 | packet[8], _u32(packet, 2)
    if not _read_range(cd, lba, count):
        return
    wanted = packet[9] & 0xF8
    if wanted == 0:
        cd.ok()
        return
    if not cd._bcl_ok():
        return
    if wanted == 0x10:
        cd.read(lba, count, CD_SECTOR)
    elif wanted == 0xF8:
        cd.read(lba, count, 2352)
    else:
        cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)


def seek(cd: Cdrom, packet: bytes) -> None:
    if _u32(packet, 2) >= cd.sectors:
        cd.error(ILLEGAL_REQUEST, ASC_LBA_OUT_OF_RANGE)
        return
    cd.ok()


def _toc(sectors: int, msf: bool, start_track: int) -> bytes | None:
    if start_track > 1 and start_track != 0xAA:
        return None
    body = bytearray((1, 1))                     # first and last track
    if start_track <= 1:
        body += b"\x00\x14\x01\x00" + (b"\x00" + lba_to_msf(0) if msf else bytes(4))
    body += b"\x00\x16\xaa\x00" + (b"\x00" + lba_to_msf(sectors) if msf
                                   else sectors.to_bytes(4, "big"))
    return struct.pack(">H", len(body)) + body


def _raw_toc(sectors: int, msf: bool) -> bytes:
    """The full TOC (format 2): the lead-in points A0h and A1h, the lead-out A2h,
    and track 1, all in session 1."""
    def address(lba: int) -> bytes:
        return b"\x00" + lba_to_msf(lba) if msf else lba.to_bytes(4, "big")

    body = bytearray((1, 1))                     # first and last session
    body += bytes((1, 0x14, 0, 0xA0, 0, 0, 0, 0, 1, 0, 0))      # first track: 1
    body += bytes((1, 0x14, 0, 0xA1, 0, 0, 0, 0, 1, 0, 0))      # last track: 1
    body += bytes((1, 0x14, 0, 0xA2, 0, 0, 0)) + address(sectors)
    body += bytes((1, 0x14, 0, 1, 0, 0, 0)) + (address(0) if msf else bytes(4))
    return struct.pack(">H", len(body)) + body


def read_toc(cd: Cdrom, packet: bytes) -> None:
    max_len, kind = _u16(packet, 7), packet[9] >> 6
    msf, start_track = bool(packet[1] >> 1 & 1), packet[6]
    if kind == 0:
        toc = _toc(cd.sectors, msf, start_track)
        if toc is not None:
            cd.send(toc, max_len)
            return
    elif kind == 1:                              # sessions: just the one
        cd.send(bytes((0, 0x0A, 1, 1)) + bytes(8), max_len)
        return
    elif kind == 2:
        cd.send(_raw_toc(cd.sectors, msf), max_len)
        return
    cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)


def get_configuration(cd: Cdrom, packet: bytes) -> None:
    if packet[2] or packet[3]:                   # only feature 0, the profile list
        cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
        return
    max_len = min(_u16(packet, 7), SECTOR)
    current = 0
    if cd.media_present():
        current = PROFILE_DVD_ROM if cd.unit.total_sectors > CD_MAX_SECTORS else PROFILE_CD_ROM
    profiles = b"".join(struct.pack(">HBB", profile, int(profile == current), 0)
                        for profile in (PROFILE_DVD_ROM, PROFILE_CD_ROM))
    feature = struct.pack(">HBB", 0, 0x03, len(profiles)) + profiles
    data = struct.pack(">IHH", 4 + len(feature), 0, current) + feature
    cd.send(data, max_len)


def event_status(cd: Cdrom, packet: bytes) -> None:
    if not packet[1] & 1:                        # asynchronous: not supported
        cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
        return
    max_len = _u16(packet, 7)
    if packet[4] & (1 << 4):                     # the media class
        status = 1 if cd.tray_open else 2 if cd.inserted else 0
        event = 0
        if status != 1:
            if cd.new_media:
                event, cd.new_media = 2, False
            elif cd.eject_requested:
                event, cd.eject_requested = 1, False
        cd.send(struct.pack(">HBB", 4, 4, 1 << 4) + bytes((event, status, 0, 0)), max_len)
    else:
        cd.send(struct.pack(">HBB", 0, 0x80, 1 << 4), max_len)


def read_disc_information(cd: Cdrom, packet: bytes) -> None:
    if packet[1] & 7:
        cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
        return
    data = bytearray(34)
    data[1:9] = bytes((32, 0x0E, 1, 1, 1, 1, 0x20, 0))
    cd.send(data, _u16(packet, 7))


def mode_sense(cd: Cdrom, packet: bytes) -> None:
    max_len, control, page = _u16(packet, 7), packet[2] >> 6, packet[2] & 0x3F
    if control == 3:
        cd.error(ILLEGAL_REQUEST, ASC_SAVING_NOT_SUPPORTED)
        return
    header = bytes((0x70, 0, 0, 0, 0, 0))
    if control != 0:
        body = None
    elif page == 0x01:                           # read error recovery
        body = bytes((0x01, 6, 0x00, 0x05, 0, 0, 0, 0))
    elif page == 0x0E:                           # audio control
        body = bytes((0x0E, 14)) + bytes(14)
    elif page == 0x2A:                           # capabilities
        caps = 1 | 1 << 3 | 1 << 5 | (1 << 1 if cd.locked else 0)
        body = bytes((0x2A, 20, 0x3B, 0x00, 0x71, 3 << 5, caps, 0x00)) + \
            struct.pack(">HHHH", 704, 2, 512, 704) + bytes(6)
    else:
        body = None
    if body is None:
        cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
        return
    data = struct.pack(">H", len(header) + len(body)) + header + body
    cd.send(data, max_len)


def read_dvd_structure(cd: Cdrom, packet: bytes) -> None:
    media, kind, max_len = packet[1], packet[7], _u16(packet, 8)
    if kind < 0xFF:
        if cd.media_present() and cd.unit.total_sectors <= CD_MAX_SECTORS:
            cd.error(ILLEGAL_REQUEST, ASC_INCOMPATIBLE_FORMAT)
            return
        if not cd.media_present():
            cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
            return
    if media != 0 or kind not in (0x00, 0x01, 0x04, 0xFF):
        cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
        return
    if kind == 0x00:                             # physical format, layer 0 only
        if packet[6] != 0:
            cd.error(ILLEGAL_REQUEST, ASC_INVALID_FIELD)
            return
        last = cd.sectors - 1
        data = struct.pack(">H2x", 2048 + 2) + bytes((1, 0x0F, 1, 0)) + \
            struct.pack(">III", 0, last, last)
        data = data.ljust(2048 + 4, b"\0")
    elif kind == 0x01:                           # copyright: none
        data = struct.pack(">H2x", 4 + 2) + bytes(4)
    elif kind == 0x04:                           # manufacturing information: empty
        data = struct.pack(">H2x", 2048 + 2).ljust(2048 + 4, b"\0")
    else:                                        # the list of the structures above
        data = struct.pack(">H2x", 16 + 2) + b"".join(
            struct.pack(">BBH", code, 0x40, length)
            for code, length in ((0x00, 2048 + 4), (0x01, 4 + 4), (0x03, 188 + 4),
                                 (0x04, 2048 + 4)))
    cd.send(data, max_len)


def set_speed(cd: Cdrom, packet: bytes) -> None:
    cd.ok()


def mechanism_status(cd: Cdrom, packet: bytes) -> None:
    cd.send(bytes((0, 0, 0, 0, 0, 1, 0, 0)), _u16(packet, 8))


COMMANDS: dict[int, tuple[Callable[[Cdrom, bytes], None], int]] = {
    0x00: (test_unit_ready, CHECK_READY | NONDATA),
    0x03: (request_sense, ALLOW_UA),
    0x12: (inquiry, ALLOW_UA),
    0x1B: (start_stop_unit, NONDATA),
    0x1E: (prevent_allow_removal, NONDATA),
    0x25: (read_capacity, CHECK_READY),
    0x28: (read_10_12, CHECK_READY),
    0x2B: (seek, CHECK_READY | NONDATA),
    0x43: (read_toc, CHECK_READY),
    0x46: (get_configuration, ALLOW_UA),
    0x4A: (event_status, ALLOW_UA),
    0x51: (read_disc_information, CHECK_READY),
    0x5A: (mode_sense, 0),
    0xA8: (read_10_12, CHECK_READY),
    0xAD: (read_dvd_structure, CHECK_READY),
    0xBB: (set_speed, NONDATA),
    0xBD: (mechanism_status, 0),
    0xBE: (read_cd, CHECK_READY | CONDDATA),
}


CONTINUATIONS.update(packet=lambda unit: unit.cd.run(),
                     reply=lambda unit: unit.cd.next_block())
DMA_RUNNERS["atapi"] = lambda unit: unit.cd.run_dma()
