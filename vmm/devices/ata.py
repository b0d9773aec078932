"""The ATA command set of an IDE unit (vmm/devices/ide.py): what a command
written to the command register does, for a disk (ide-hd) and for the few ATA
commands a packet device (ide-cd) takes. Reads and writes go by PIO (a sector,
or READ/WRITE MULTIPLE's block, per DRQ) or by DMA through the bus master;
LBA28, LBA48 and CHS addressing; DATA SET MANAGEMENT's TRIM ranges come by DMA
too. A request past the end of the disk is aborted as QEMU's are; so is a command
a unit does not take (ERR, ABRT).
"""

from __future__ import annotations

import errno
import struct
from collections.abc import Callable

from vmm.devices.ide import (
    BSY,
    CONTINUATIONS,
    DEV_ALWAYS_ON,
    DEV_HEAD,
    DMA_RUNNERS,
    DRDY,
    DRQ,
    DSC,
    INVALID,
    MAX_MULT_SECTORS,
    SECTOR,
    Channel,
    Unit,
)
from vmm.memory import GuestMemoryError

HD, CD = "hd", "cd"
SET_DSC = "dsc"                    # a command that also reports its seek complete


def execute(channel: Channel, command: int) -> None:
    """The command register was written (its IRQ already lowered)."""
    unit = channel.active
    if unit.index == 1 and not unit.present:
        return                                # nobody is there to take it
    if unit.status & (BSY | DRQ) and not (command == 0x08 and unit.kind == CD):
        return                                # only DEVICE RESET interrupts a packet device
    entry = COMMANDS.get(command)
    if entry is None or (unit.kind or HD) not in entry[1]:
        unit.abort()
        channel.raise_irq()
        return
    handler, flags = entry
    unit.status = DRDY | BSY
    unit.error = 0
    if handler(unit, command):                # done now (no data phase, no I/O)
        unit.status &= ~BSY
        if SET_DSC in flags and not unit.error:
            unit.status |= DSC
        channel.raise_irq()


# -- the commands: each returns True when it completed at once ------------------------------
def nop(unit: Unit, command: int) -> bool:
    return True


def device_reset(unit: Unit, command: int) -> bool:
    unit.channel.generation += 1
    unit.reset()
    unit.status = 0
    return False


def identify(unit: Unit, command: int) -> bool:
    if unit.kind == HD:
        unit.status = DRDY | DSC
        unit.transfer_start(unit.identify(), True, "stop")
        unit.channel.raise_irq()
        return False
    if unit.kind == CD:
        unit.set_signature()                  # how a driver finds a packet device
    unit.abort()
    return True


def identify_packet(unit: Unit, command: int) -> bool:
    unit.status = DRDY | DSC
    unit.transfer_start(unit.identify(), True, "stop")
    unit.channel.raise_irq()
    return False


def diagnose(unit: Unit, command: int) -> bool:
    unit.select = DEV_ALWAYS_ON
    unit.set_signature()
    unit.error = 0x01                         # device 0 passed (not an error)
    if unit.kind == CD:
        unit.status = 0
    else:
        unit.status = DRDY | DSC
        unit.channel.raise_irq()
    return False


def _begin(unit: Unit, lba48: bool, block: int = 1) -> bool:
    """A transfer command's start: aborted without a medium (or, for MULTIPLE, with
    multiple mode off); else the count is read as the command's addressing says."""
    if unit.drive is None or not block:
        unit.abort()
        return False
    unit.lba48_count(lba48)
    unit.req_sectors = block
    return True


def read_pio(unit: Unit, command: int) -> bool:
    if unit.kind == CD:
        unit.set_signature()                  # ATA-4 8.27.5.2, as QEMU
        unit.abort()
        return True
    if not _begin(unit, command == 0x24):
        return True
    _sector_read(unit)
    return False


def read_multiple(unit: Unit, command: int) -> bool:
    if not _begin(unit, command == 0x29, unit.mult_sectors):
        return True
    _sector_read(unit)
    return False


def write_pio(unit: Unit, command: int) -> bool:
    if not _begin(unit, command == 0x34):
        return True
    unit.status = DSC | DRDY
    unit.transfer_start(bytearray(SECTOR), False, "write")
    return False


def write_multiple(unit: Unit, command: int) -> bool:
    if not _begin(unit, command == 0x39, unit.mult_sectors):
        return True
    unit.status = DSC | DRDY
    count = min(unit.nsector, unit.req_sectors)
    unit.transfer_start(bytearray(SECTOR * count), False, "write")
    return False


def read_dma(unit: Unit, command: int) -> bool:
    if not _begin(unit, command == 0x25):
        return True
    _start_dma(unit, READ)
    return False


def write_dma(unit: Unit, command: int) -> bool:
    if not _begin(unit, command == 0x35):
        return True
    _start_dma(unit, WRITE)
    return False


def verify(unit: Unit, command: int) -> bool:
    unit.lba48_count(command == 0x42)
    return True


def set_multiple(unit: Unit, command: int) -> bool:
    count = unit.nsector & 0xFF
    if count and (count > MAX_MULT_SECTORS or count & (count - 1)):
        unit.abort()
    else:
        unit.mult_sectors = count
    return True


def read_native_max(unit: Unit, command: int) -> bool:
    if not unit.total_sectors:
        unit.abort()
        return True
    unit.lba48_count(command == 0x27)
    unit.set_lba(unit.total_sectors - 1)
    return True


def check_power_mode(unit: Unit, command: int) -> bool:
    unit.nsector = 0xFF                       # active or idle
    return True


def specify(unit: Unit, command: int) -> bool:
    """INITIALIZE DEVICE PARAMETERS: the CHS translation the BIOS uses."""
    if unit.drive is not None and unit.kind == HD:
        unit.heads = (unit.select & DEV_HEAD) + 1
        unit.sectors = unit.nsector & 0xFF
        unit.channel.raise_irq()
    else:
        unit.abort()
    return True


def flush_cache(unit: Unit, command: int) -> bool:
    _flush(unit)
    return False


def set_features(unit: Unit, command: int) -> bool:
    if unit.drive is None:
        unit.abort()
        return True
    feature = unit.feature
    if feature in (0x02, 0x82):               # write cache on / off (off flushes)
        unit.drive.writeback = feature == 0x02
        if unit.identify_words is not None:
            unit.identify_words[85] = 1 << 14 | (1 << 5 if feature == 0x02 else 0) | 1
        if feature == 0x82:
            _flush(unit)
            return False
        return True
    if feature in (0xCC, 0x66):               # reverting to power-on defaults on / off
        unit.reset_reverts = feature == 0xCC
        return True
    if feature in (0xAA, 0x55, 0x05, 0x85, 0x69, 0x67, 0x96, 0x9A, 0x42, 0xC2):
        return True                           # look-ahead, power and acoustics: accepted
    if feature == 0x03:                       # transfer mode, shown in IDENTIFY
        mode, value = unit.nsector >> 3 & 0x1F, unit.nsector & 7
        words = {0: (0x07, 0x07, 0x3F), 1: (0x07, 0x07, 0x3F),
                 2: (0x07 | 1 << (value + 8), 0x07, 0x3F),
                 4: (0x07, 0x07 | 1 << (value + 8), 0x3F),
                 8: (0x07, 0x07, 0x3F | 1 << (value + 8))}.get(mode)
        if words is not None:
            if unit.identify_words is None:
                unit.identify()
            unit.identify_words[62], unit.identify_words[63], unit.identify_words[88] = words
            return True
    unit.abort()
    return True


def data_set_management(unit: Unit, command: int) -> bool:
    """TRIM (feature 1): its ranges come by DMA, nsector blocks of them."""
    if unit.feature == 0x01 and unit.drive is not None:
        _start_dma(unit, TRIM)
        return False
    unit.abort()
    return True


def packet(unit: Unit, command: int) -> bool:
    if unit.feature & 0x02:                   # overlapped commands: not supported
        unit.abort()
        return True
    unit.cd.packet_phase()
    return False


COMMANDS: dict[int, tuple[Callable[[Unit, int], bool], tuple[str, ...]]] = {
    0x06: (data_set_management, (HD,)),
    0x08: (device_reset, (CD,)),
    0x10: (nop, (HD, SET_DSC)),                                     # RECALIBRATE
    0x20: (read_pio, (HD, CD)), 0x21: (read_pio, (HD,)), 0x24: (read_pio, (HD,)),
    0x25: (read_dma, (HD,)),
    0x27: (read_native_max, (HD, SET_DSC)),
    0x29: (read_multiple, (HD,)),
    0x30: (write_pio, (HD,)), 0x31: (write_pio, (HD,)), 0x34: (write_pio, (HD,)),
    0x35: (write_dma, (HD,)),
    0x39: (write_multiple, (HD,)),
    0x3C: (write_pio, (HD,)),                                       # WRITE VERIFY
    0x40: (verify, (HD, SET_DSC)), 0x41: (verify, (HD, SET_DSC)),
    0x42: (verify, (HD, SET_DSC)),
    0x70: (nop, (HD, SET_DSC)),                                     # SEEK
    0x90: (diagnose, (HD, CD)),
    0x91: (specify, (HD, SET_DSC)),
    0x94: (nop, (HD,)), 0x95: (nop, (HD,)), 0x96: (nop, (HD,)), 0x97: (nop, (HD,)),
    0x98: (check_power_mode, (HD, SET_DSC)), 0x99: (nop, (HD,)),
    0xA0: (packet, (CD,)),
    0xA1: (identify_packet, (CD,)),
    0xC4: (read_multiple, (HD,)), 0xC5: (write_multiple, (HD,)),
    0xC6: (set_multiple, (HD, SET_DSC)),
    0xC8: (read_dma, (HD,)), 0xC9: (read_dma, (HD,)),
    0xCA: (write_dma, (HD,)), 0xCB: (write_dma, (HD,)),
    0xE0: (nop, (HD,)), 0xE1: (nop, (HD,)), 0xE2: (nop, (HD,)), 0xE3: (nop, (HD,)),
    0xE5: (check_power_mode, (HD, SET_DSC)), 0xE6: (nop, (HD,)),
    0xE7: (flush_cache, (HD, CD)), 0xEA: (flush_cache, (HD,)),
    0xEC: (identify, (HD, CD)),
    0xEF: (set_features, (HD, CD, SET_DSC)),
    0xF8: (read_native_max, (HD, SET_DSC)),
}


# -- PIO ------------------------------------------------------------------------------------
def _sector_read(unit: Unit) -> None:
    """The next block of a PIO read: read it, then hand it to the guest with an IRQ."""
    unit.status = DRDY | DSC
    unit.error = 0
    if unit.nsector == 0:
        unit.transfer_stop()
        return
    unit.status |= BSY
    lba, count = unit.lba(), min(unit.nsector, unit.req_sectors)
    buffer = bytearray(count * SECTOR)
    drive = unit.drive

    def finish() -> None:
        unit.set_lba(lba + count)
        unit.nsector -= count
        unit.transfer_start(buffer, True, "read")
        unit.channel.raise_irq()

    _pio_io(unit, False, lba, count,
            lambda: drive.read_into(lba * SECTOR, [memoryview(buffer)]), finish,
            lambda: _sector_read(unit))


def _sector_write(unit: Unit) -> None:
    """A PIO block came in: write it; then the next block's DRQ, or done, with an IRQ."""
    data = bytes(unit.data)
    unit.status = DRDY | DSC | BSY
    lba, count = unit.lba(), min(unit.nsector, unit.req_sectors)
    drive = unit.drive

    def finish() -> None:
        unit.nsector -= count
        unit.set_lba(lba + count)
        if unit.nsector == 0:
            unit.transfer_stop()
        else:
            following = min(unit.nsector, unit.req_sectors)
            unit.transfer_start(bytearray(following * SECTOR), False, "write")
        unit.channel.raise_irq()

    def retry() -> None:
        unit.data = bytearray(data)
        _sector_write(unit)

    _pio_io(unit, True, lba, count, lambda: drive.write(lba * SECTOR, data), finish, retry)


def _pio_io(unit: Unit, is_write: bool, lba: int, count: int, work, finish, retry) -> None:
    """One PIO block's I/O (BSY set): refused past the end of the disk, or a write to
    a read-only one; else ``work`` on the I/O engine, then ``finish`` with BSY clear,
    or the command aborted if it failed."""
    if not unit.range_ok(lba, count) or (is_write and unit.drive.read_only):
        unit.drive.invalid_request("wr" if is_write else "rd")
        _rw_error(unit)
        return

    def done(result) -> None:
        unit.status &= ~BSY
        if isinstance(result, OSError):
            _rw_error(unit)
            return
        finish()

    unit.channel.submit(unit, work, done, is_write, retry)


def _rw_error(unit: Unit) -> None:
    unit.abort()
    unit.channel.raise_irq()


def _flush(unit: Unit) -> None:
    if unit.drive is None or unit.drive.root is None or unit.drive.read_only:
        unit.status = DRDY | DSC
        unit.channel.raise_irq()
        return
    unit.status |= BSY
    drive = unit.drive

    def done(result) -> None:
        if isinstance(result, OSError):
            _rw_error(unit)
            return
        unit.status = DRDY | DSC
        unit.channel.raise_irq()

    unit.channel.submit(unit, drive.flush, done, True, lambda: _flush(unit))


# -- DMA --------------------------------------------------------------------------------
READ, WRITE, TRIM = "read", "write", "trim"     # what a DMA command does with its data
TRIM_RANGE = struct.Struct("<Q")                # 48-bit LBA, 16-bit count


def _start_dma(unit: Unit, kind: str) -> None:
    """DRQ is up while the bus master moves the data; it starts once the guest sets
    START in the bus master's command register."""
    unit.status = DRDY | DSC | DRQ
    unit.channel.bm.request(unit, kind)


def _run_dma(unit: Unit, kind: str) -> None:
    channel = unit.channel
    lba, count = unit.lba(), unit.nsector
    needed = count * SECTOR
    try:
        regions, described = channel.bm.prds(channel.memory, needed)
    except GuestMemoryError:                  # the table is not in RAM
        _dma_error(unit)
        return
    if sum(length for _, length in regions) < needed:
        # PRDs shorter than the transfer: the bus master stops, with no interrupt.
        unit.status = DRDY | DSC
        channel.bm.finished(False)
        return
    if kind != TRIM and (not unit.range_ok(lba, count) or
                         (kind == WRITE and unit.drive.read_only)):
        unit.drive.invalid_request("wr" if kind == WRITE else "rd")
        _dma_error(unit)
        return
    drive, memory = unit.drive, channel.memory

    def work() -> str | None:
        views = [memory.view(address, length) for address, length in regions]
        if kind == WRITE:
            drive.write(lba * SECTOR, b"".join(views))
        elif kind == READ:
            drive.read_into(lba * SECTOR, views)
            for address, length in regions:
                memory.mark_dirty(address, length)
        else:
            return _trim(unit, b"".join(views))
        return None

    def done(result) -> None:
        if isinstance(result, OSError) or result == INVALID:
            _dma_error(unit)
            return
        unit.set_lba(lba + count)
        unit.nsector = 0
        unit.status = DRDY | DSC
        channel.raise_irq()
        channel.bm.finished(described > needed)

    channel.submit(unit, work, done, kind != READ, lambda: _run_dma(unit, kind))


def _trim(unit: Unit, ranges: bytes) -> str | None:
    """DATA SET MANAGEMENT's TRIM ranges, each discarded (on the I/O engine); a range
    past the end makes the command fail (INVALID)."""
    if unit.drive.read_only:
        raise OSError(errno.EPERM, "Operation not permitted")
    for (entry,) in TRIM_RANGE.iter_unpack(ranges):
        lba, count = entry & ((1 << 48) - 1), entry >> 48
        if not count:
            continue
        if not unit.range_ok(lba, count):
            unit.drive.invalid_request("unmap")
            return INVALID
        unit.drive.discard(lba * SECTOR, count * SECTOR)
    return None


def _dma_error(unit: Unit) -> None:
    unit.abort()
    unit.channel.bm.finished(False)
    unit.channel.raise_irq()


CONTINUATIONS.update(read=_sector_read, write=_sector_write)
DMA_RUNNERS.update({kind: (lambda unit, kind=kind: _run_dma(unit, kind))
                    for kind in (READ, WRITE, TRIM)})
