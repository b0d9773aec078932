"""The PIIX3 IDE function (8086:7010) and what sits on its two channels: ATA
disks (ide-hd; their commands in vmm/devices/ata.py) and ATAPI CD-ROMs (ide-cd;
the packet commands in vmm/devices/atapi.py).

Each channel has the legacy task file (0x1F0-0x1F7 and 0x3F6 for ide.0,
0x170-0x177 and 0x376 for ide.1), ISA IRQ 14 or 15, and a bus master (BMDMA)
in the function's BAR4: command, status and the PRD table's address. Register
writes reach both units of a channel, as on a real cable; the selected unit
answers reads and runs commands. Data moves by PIO through the data port, a
block of sectors per DRQ, or by DMA through the PRD table. The drive's I/O runs
on the channel's I/O engine with BSY set, never on the vCPU thread; its
completion (under the machine lock) updates the registers and raises the IRQ.
The behaviour follows QEMU 7.2's model, which guests were tested against:
IDENTIFY's words, the signature after reset, aborting what a unit does not
support, and the state after errors. A migration carries all of it, a PIO block
half moved and a DMA command not yet started included.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable

from vmm import savestate
from vmm.block.drive import Drive
from vmm.block.engine import IoEngine
from vmm.block.geometry import guess_geometry
from vmm.memory import GuestMemory, GuestMemoryError
from vmm.pci import PciDevice
from vmm.qdev import (
    DeviceError,
    DeviceType,
    Prop,
    attach_drive,
    block_props,
    bootindex,
    declare,
    drive_named,
    fixed,
)

log = logging.getLogger(__name__)

SECTOR = 512
MAX_MULT_SECTORS = 16               # READ/WRITE MULTIPLE's block, as QEMU's
CD_SECTOR = 2048
CHANNELS = ((0x1F0, 0x3F6, 14), (0x170, 0x376, 15))   # command block, control, ISA IRQ
HW_VERSION = "2.5+"                 # QEMU's qemu_hw_version(): IDENTIFY's firmware revision
INVALID = "invalid"                 # a request's result when the guest's request was bad

# status and error bits
BSY, DRDY, DSC, DRQ, ERR = 0x80, 0x40, 0x10, 0x08, 0x01
ABRT = 0x04
# device/head register
DEV_ALWAYS_ON, DEV_LBA, DEV_SELECT, DEV_HEAD = 0xA0, 0x40, 0x10, 0x0F
# device control register
CTRL_HOB, CTRL_SRST, CTRL_NIEN = 0x80, 0x04, 0x02
# bus master
BM_START = 0x01                           # command: start (bit 3: the direction)
BM_ACTIVE, BM_INT = 0x01, 0x04            # status: active, interrupt
BM_PRD_TABLE_LIMIT = 4096                 # a PRD table never crosses a page, QEMU's fail-safe


# What runs when a PIO block has moved through the data port, and what carries out
# a DMA command, by name (so a migration can carry them): ata.py and atapi.py add
# theirs.
CONTINUATIONS: dict[str, Callable[[Unit], None]] = {"stop": lambda unit: unit.transfer_stop()}
DMA_RUNNERS: dict[str, Callable[[Unit], None]] = {}


class Unit:
    """One device position (master or slave) on a channel: its copy of the task
    file, and the disk or CD-ROM there, if any."""

    def __init__(self, channel: Channel, index: int, serial_number: int) -> None:
        self.channel = channel
        self.index = index
        self.kind: str | None = None         # "hd", "cd" or None (nothing there)
        self.drive: Drive | None = None
        self.serial = f"QM{serial_number:05d}"
        self.model = ""
        self.version = HW_VERSION
        self.wwn = 0
        self.rotation_rate = 0
        self.cylinders = self.heads = self.sectors = 0
        self.drive_heads = self.drive_sectors = 0
        self.identify_words: list[int] | None = None
        self.cd = None                       # the ATAPI state (atapi.Cdrom) of an ide-cd
        self.data = bytearray(4)
        self.reset_reverts = False           # SET FEATURES: a reset restores CHS
        self.reset()

    # -- what the unit is ---------------------------------------------------------
    def attach(self, kind: str, drive: Drive, serial: str, model: str, version: str,
               geometry: tuple[int, int, int], wwn: int = 0, rotation_rate: int = 0) -> None:
        self.kind, self.drive = kind, drive
        self.serial = serial or self.serial
        self.model = model or ("QEMU DVD-ROM" if kind == "cd" else "QEMU HARDDISK")
        self.version = version or HW_VERSION
        self.wwn, self.rotation_rate = wwn, rotation_rate
        self.cylinders, self.heads, self.sectors = geometry
        self.drive_heads, self.drive_sectors = self.heads, self.sectors
        self.identify_words = None
        self.cd = atapi.Cdrom(self) if kind == "cd" else None
        self.reset()

    def detach(self) -> None:
        self.kind = self.drive = self.cd = None
        self.identify_words = None
        self.reset()

    @property
    def present(self) -> bool:
        return self.kind is not None

    @property
    def total_sectors(self) -> int:
        """512-byte sectors of the medium (0 with none)."""
        return self.drive.size // SECTOR if self.drive is not None else 0

    def reset(self) -> None:
        if self.reset_reverts:
            self.heads, self.sectors = self.drive_heads, self.drive_sectors
        self.reset_reverts = False
        self.mult_sectors = MAX_MULT_SECTORS
        self.feature = self.error = self.nsector = self.sector = self.lcyl = self.hcyl = 0
        self.hob_feature = self.hob_nsector = self.hob_sector = self.hob_lcyl = 0
        self.hob_hcyl = 0
        self.select = DEV_ALWAYS_ON
        self.status = DRDY | DSC
        self.lba48 = False
        self.req_sectors = 0
        if self.cd is not None:
            self.cd.reset()
        self.set_signature()
        self._idle_transfer()

    def set_signature(self) -> None:
        """What a reset leaves in the registers: 1, 1 and 0/0 for a disk, 14h/EBh for
        a packet device (how a driver tells them apart), FFh/FFh for no device."""
        self.select &= ~DEV_HEAD
        self.nsector = self.sector = 1
        if self.kind == "cd":
            self.lcyl, self.hcyl = 0x14, 0xEB
        elif self.kind == "hd":
            self.lcyl = self.hcyl = 0
        else:
            self.lcyl = self.hcyl = 0xFF

    # -- PIO transfers ----------------------------------------------------------------
    def _idle_transfer(self) -> None:
        self.data = bytearray(b"\xff" * 4)
        self.pos = self.end = 0
        self.to_host = True
        self.then = "stop"

    def transfer_start(self, data: bytearray, to_host: bool, then: str) -> None:
        """The guest moves ``data`` through the data port (DRQ set); the continuation
        named ``then`` runs once it has all gone."""
        self.data, self.pos, self.end = data, 0, len(data)
        self.to_host, self.then = to_host, then
        if not self.status & ERR:
            self.status |= DRQ

    def transfer_stop(self) -> None:
        self.data, self.pos, self.end = bytearray(), 0, 0
        self.then = "stop"
        self.status &= ~DRQ

    def data_read(self, size: int) -> int:
        if not self.status & DRQ or not self.to_host or self.pos + size > self.end:
            return 0
        value = int.from_bytes(self.data[self.pos:self.pos + size], "little")
        self._advance(size)
        return value

    def data_write(self, size: int, value: int) -> None:
        if not self.status & DRQ or self.to_host or self.pos + size > self.end:
            return
        self.data[self.pos:self.pos + size] = value.to_bytes(size, "little")
        self._advance(size)

    def _advance(self, size: int) -> None:
        self.pos += size
        if self.pos >= self.end:
            self.status &= ~DRQ
            CONTINUATIONS[self.then](self)

    # -- addressing ---------------------------------------------------------------------
    def lba(self) -> int:
        """The sector the registers address: LBA48, LBA28 or CHS."""
        if self.select & DEV_LBA:
            if self.lba48:
                return (self.hob_hcyl << 40 | self.hob_lcyl << 32 | self.hob_sector << 24
                        | self.hcyl << 16 | self.lcyl << 8 | self.sector)
            return (self.select & DEV_HEAD) << 24 | self.hcyl << 16 | self.lcyl << 8 | \
                self.sector
        return (((self.hcyl << 8) | self.lcyl) * self.heads * self.sectors
                + (self.select & DEV_HEAD) * self.sectors + self.sector - 1)

    def set_lba(self, lba: int) -> None:
        """The registers after a transfer point past it, as a disk leaves them."""
        if self.select & DEV_LBA:
            if self.lba48:
                self.sector, self.lcyl, self.hcyl = lba & 0xFF, lba >> 8 & 0xFF, lba >> 16 & 0xFF
                self.hob_sector, self.hob_lcyl = lba >> 24 & 0xFF, lba >> 32 & 0xFF
                self.hob_hcyl = lba >> 40 & 0xFF
            else:
                self.select = (self.select & ~DEV_HEAD) | (lba >> 24 & DEV_HEAD)
                self.hcyl, self.lcyl, self.sector = lba >> 16 & 0xFF, lba >> 8 & 0xFF, lba & 0xFF
        elif self.heads and self.sectors:
            cylinder, rest = divmod(lba, self.heads * self.sectors)
            self.hcyl, self.lcyl = cylinder >> 8 & 0xFF, cylinder & 0xFF
            self.select = (self.select & ~DEV_HEAD) | ((rest // self.sectors) & DEV_HEAD)
            self.sector = rest % self.sectors + 1

    def lba48_count(self, lba48: bool) -> None:
        """The sector count for the command: 0 means 256 (65536 with LBA48)."""
        self.lba48 = lba48
        if not lba48:
            self.nsector = self.nsector or 256
        else:
            self.nsector = (self.hob_nsector << 8 | self.nsector) or 65536

    def range_ok(self, lba: int, count: int) -> bool:
        total = self.total_sectors
        return lba <= total and count <= total - lba

    # -- completions ----------------------------------------------------------------------
    def abort(self) -> None:
        self.transfer_stop()
        self.status = DRDY | ERR
        self.error = ABRT

    def identify(self) -> bytearray:
        """IDENTIFY DEVICE's 256 words, as QEMU's (built once, as it keeps them)."""
        if self.identify_words is None:
            self.identify_words = (_cd_identify if self.kind == "cd" else _hd_identify)(self)
        if self.kind == "hd":
            _identify_size(self.identify_words, self.total_sectors)
        return bytearray(struct.pack("<256H", *self.identify_words))

    # -- migration --------------------------------------------------------------------------
    STATE = ("feature", "error", "nsector", "sector", "lcyl", "hcyl", "select", "status",
             "hob_feature", "hob_nsector", "hob_sector", "hob_lcyl", "hob_hcyl", "lba48",
             "mult_sectors", "req_sectors", "heads", "sectors", "reset_reverts",
             "pos", "end", "to_host", "then")

    def save_state(self) -> dict:
        state = savestate.save_fields(self, self.STATE)
        state["data"] = bytes(self.data)                # a PIO block half moved, too
        state["identify"] = list(self.identify_words) if self.identify_words else None
        if self.cd is not None:
            state["cd"] = self.cd.save_state()
        return state

    def load_state(self, state: dict) -> None:
        savestate.check_fields(self, self.STATE, state, "ide")
        identify = state.get("identify")
        if identify is not None and (not isinstance(identify, list) or len(identify) != 256):
            raise savestate.StateError("ide.identify: saved value does not fit this device")
        data = state.get("data")
        if not isinstance(data, bytes) or state["then"] not in CONTINUATIONS or \
                not 0 <= state["pos"] <= state["end"] <= len(data):
            raise savestate.StateError("ide.data: saved value does not fit this device")
        if self.cd is not None:
            self.cd.load_state(state.get("cd"))
        savestate.set_fields(self, self.STATE, state)
        self.data = bytearray(data)
        self.identify_words = list(identify) if identify is not None else None
        self.status &= ~BSY            # the I/O in flight was drained before the save


def _padded(text: str, length: int) -> bytes:
    return text.encode()[:length].ljust(length, b" ")


def _ata_string(text: str, length: int) -> list[int]:
    """An IDENTIFY string: space-padded, each word's two characters swapped."""
    raw = _padded(text, length)
    return [raw[i] << 8 | raw[i + 1] for i in range(0, length, 2)]


def _identify_size(words: list[int], total: int) -> None:
    lba28 = min(total, (1 << 28) - 1)
    words[60:62] = [lba28 & 0xFFFF, lba28 >> 16 & 0xFFFF]
    words[100:104] = [total >> shift & 0xFFFF for shift in (0, 16, 32, 48)]


def _hd_identify(unit: Unit) -> list[int]:
    w = [0] * 256
    c, h, s = unit.cylinders, unit.heads, unit.sectors
    w[0] = 0x0040
    w[1], w[3], w[4], w[5], w[6] = c, h, (512 * s) & 0xFFFF, 512, s
    w[10:20] = _ata_string(unit.serial, 20)
    w[20], w[21], w[22] = 3, 512, 4
    w[23:27] = _ata_string(unit.version, 8)
    w[27:47] = _ata_string(unit.model, 40)
    w[47] = 0x8000 | MAX_MULT_SECTORS
    w[48] = 1                                  # dword I/O
    w[49] = 1 << 11 | 1 << 9 | 1 << 8          # IORDY, LBA, DMA
    w[51] = w[52] = 0x200
    w[53] = 7                                  # words 54-58, 64-70 and 88 valid
    w[54], w[55], w[56] = c, h, s
    capacity = (c * h * s) & 0xFFFFFFFF
    w[57], w[58] = capacity & 0xFFFF, capacity >> 16
    if unit.mult_sectors:
        w[59] = 0x100 | unit.mult_sectors
    w[62] = w[63] = 0x07                       # single- and multiword DMA 0-2
    w[64] = 0x03                               # PIO 3-4
    w[65] = w[66] = w[67] = w[68] = 120
    w[69] = 1 << 14                            # deterministic TRIM (discard_granularity)
    w[80], w[81] = 0xF0, 0x16                  # ATA-4 to ATA-7
    w[82] = 1 << 14 | 1 << 5 | 1               # NOP, write cache, SMART
    w[83] = 1 << 14 | 1 << 13 | 1 << 12 | 1 << 10   # FLUSH CACHE (EXT), LBA48
    w[84] = 1 << 14 | (1 << 8 if unit.wwn else 0)
    writeback = unit.drive is not None and unit.drive.writeback
    w[85] = 1 << 14 | (1 << 5 if writeback else 0) | 1
    w[86] = 1 << 13 | 1 << 12 | 1 << 10
    w[87] = 1 << 14 | (1 << 8 if unit.wwn else 0)
    w[88] = 0x3F | 1 << 13                     # UDMA 0-5
    w[93] = 1 | 1 << 14 | 0x2000
    w[106] = 0x6000                            # one logical sector per physical one
    if unit.wwn:
        w[108:112] = [unit.wwn >> shift & 0xFFFF for shift in (48, 32, 16, 0)]
    w[169] = 1                                 # TRIM
    w[217] = unit.rotation_rate
    return w


def _cd_identify(unit: Unit) -> list[int]:
    w = [0] * 256
    w[0] = 2 << 14 | 5 << 8 | 1 << 7 | 2 << 5  # ATAPI CD-ROM, removable, 12-byte packets
    w[10:20] = _ata_string(unit.serial, 20)
    w[20], w[21], w[22] = 3, 512, 4
    w[23:27] = _ata_string(unit.version, 8)
    w[27:47] = _ata_string(unit.model, 40)
    w[48] = 1
    w[49] = 1 << 9 | 1 << 8                    # LBA, DMA
    w[53] = 7
    w[62] = w[63] = 7
    w[64] = 3
    w[65] = w[66] = 0xB4
    w[67], w[68] = 0x12C, 0xB4
    w[71] = w[72] = 30
    w[80] = 0x1E                               # ATA/ATAPI-4
    if unit.wwn:
        w[84] = w[87] = 1 << 8
        w[108:112] = [unit.wwn >> shift & 0xFFFF for shift in (48, 32, 16, 0)]
    w[88] = 0x3F | 1 << 13
    return w


class BusMaster:
    """A channel's BMDMA registers: command (start, direction), status (active,
    error, interrupt, the BIOS's DMA-capable bits) and the PRD table's address."""

    def __init__(self, channel: Channel) -> None:
        self.channel = channel
        self.reset()

    def reset(self) -> None:
        self.cmd = self.status = self.prd_table = 0
        self.waiting: tuple[Unit, str] | None = None   # a DMA command awaiting START

    def request(self, unit: Unit, kind: str) -> None:
        """A unit's DMA command (of a DMA_RUNNERS kind): it runs once the guest sets
        START (now, if it has)."""
        self.waiting = (unit, kind)
        if self.status & BM_ACTIVE:
            self._run()

    def _run(self) -> None:
        waiting, self.waiting = self.waiting, None
        if waiting is not None:
            unit, kind = waiting
            DMA_RUNNERS[kind](unit)

    def finished(self, stay_active: bool) -> None:
        self.waiting = None
        if not stay_active:
            self.status &= ~BM_ACTIVE

    def write_cmd(self, value: int) -> None:
        if (value ^ self.cmd) & BM_START:
            if not value & BM_START:          # the guest stops it: what is in flight is lost
                self.channel.cancel_dma()
                self.status &= ~BM_ACTIVE
            elif not self.status & BM_ACTIVE:
                self.status |= BM_ACTIVE
                self._run()
        self.cmd = value & 0x09

    def prds(self, memory: GuestMemory, needed: int) -> tuple[list[tuple[int, int]], int]:
        """The PRD table's regions for ``needed`` bytes, and how many bytes the whole
        table describes (the table ends at its EOT entry, or at a page's worth)."""
        regions: list[tuple[int, int]] = []
        covered = described = 0
        entry = self.prd_table
        while entry - self.prd_table < BM_PRD_TABLE_LIMIT:
            address, count = struct.unpack("<II", memory.read(entry, 8))
            entry += 8
            length = (count & 0xFFFE) or 0x10000
            take = min(length, needed - covered)
            if take > 0:
                regions.append((address, take))
                covered += take
            described += length
            if count & 0x80000000:
                break
        return regions, described

    # BAR4 holds both channels' bus masters: ports 0-3 and 4-7 (address) each.
    def read(self, offset: int, size: int) -> int:
        if offset >= 4:
            return (self.prd_table >> (8 * (offset - 4))) & ((1 << (8 * size)) - 1)
        if size != 1:
            return (1 << (8 * size)) - 1
        return self.cmd if offset == 0 else self.status if offset == 2 else 0xFF

    def write(self, offset: int, size: int, value: int) -> None:
        if offset >= 4:
            shift, mask = 8 * (offset - 4), (1 << (8 * size)) - 1
            self.prd_table = (self.prd_table & ~(mask << shift) | (value & mask) << shift) \
                & 0xFFFFFFFC
        elif size == 1 and offset == 0:
            self.write_cmd(value)
        elif size == 1 and offset == 2:        # error and interrupt are write-one-to-clear
            self.status = (value & 0x60) | (self.status & 1) | (self.status & ~value & 0x06)


class Channel:
    """One IDE channel (ide.0 or ide.1): two units, the device control register,
    the bus master, and an I/O engine for the drives' requests."""

    def __init__(self, name: str, memory: GuestMemory, set_irq: Callable[[int], None],
                 engine: IoEngine, first_serial: int,
                 report_error: Callable[[Drive, bool, OSError, str], None],
                 stop_vm: Callable[[], None]) -> None:
        self.name = name
        self.memory = memory
        self.set_irq = set_irq
        self.engine = engine
        self.report_error = report_error
        self.stop_vm = stop_vm
        self.units = [Unit(self, 0, first_serial), Unit(self, 1, first_serial + 1)]
        self.bm = BusMaster(self)
        self.selected = 0
        self.ctrl = 0
        self.generation = 0                  # bumped to forget completions (reset, DMA stop)
        self.held: Callable[[], None] | None = None   # a request an error stopped
        self.irq_level = 0

    @property
    def active(self) -> Unit:
        return self.units[self.selected]

    def reset(self) -> None:
        self.generation += 1
        self.engine.cancel()
        self.selected = 0
        self.ctrl = 0
        self.held = None
        for unit in self.units:
            unit.reset()
        self.bm.reset()
        self.lower_irq()

    def raise_irq(self) -> None:
        if not self.ctrl & CTRL_NIEN:
            self.bm.status |= BM_INT
            self.irq_level = 1
            self.set_irq(1)

    def lower_irq(self) -> None:
        self.irq_level = 0
        self.set_irq(0)

    # -- I/O on the engine -------------------------------------------------------------
    def submit(self, unit: Unit, work: Callable[[], object], done: Callable[[object], None],
               is_write: bool, retry: Callable[[], None]) -> None:
        """Runs ``work`` off the vCPU thread, then ``done(result)`` under the machine
        lock, unless a reset or DMA stop came first. An OSError goes through the
        drive's werror/rerror policy: report (``done`` gets it), ignore (``done``
        gets None), or stop the VM and ``retry`` on cont. A request the guest got
        wrong (DMA outside RAM) gives ``done`` INVALID."""
        generation = self.generation

        def complete(result: object) -> None:
            if generation != self.generation:
                return
            if isinstance(result, OSError):
                action = unit.drive.error_action(is_write, result) if unit.drive else "report"
                if unit.drive is not None:
                    self.report_error(unit.drive, is_write, result, action)
                if action == "stop":
                    self.held = retry
                    if unit.drive is not None:
                        unit.drive.io_status = "failed"
                    self.stop_vm()
                    return
                if action == "ignore":
                    result = None
            done(result)

        def run() -> object:
            try:
                return work()
            except OSError as e:
                return e
            except GuestMemoryError:          # the guest's PRDs point outside RAM:
                return INVALID                # the command fails, whatever werror says

        self.engine.submit(run, complete)

    def retry_held(self) -> None:
        """`cont` after an I/O error stopped the VM: the request runs again."""
        held, self.held = self.held, None
        if held is not None:
            for unit in self.units:
                if unit.drive is not None:
                    unit.drive.io_status = "ok"
            held()

    def cancel_dma(self) -> None:
        self.generation += 1
        self.bm.waiting = None

    # -- ports --------------------------------------------------------------------------
    def command_block_read(self, offset: int, size: int) -> int:
        unit = self.active
        if offset == 0:
            if size == 1:                     # a byte read still takes a word
                return unit.data_read(2) & 0xFF
            return unit.data_read(size)
        if size != 1:
            return (1 << (8 * size)) - 1
        any_present = self.units[0].present or self.units[1].present
        absent_slave = self.selected == 1 and not unit.present
        hob = self.ctrl & CTRL_HOB
        if offset == 7:
            self.lower_irq()
            return 0 if not any_present or absent_slave else unit.status
        if not any_present:
            return 0
        if offset == 1:
            return 0 if absent_slave else unit.hob_feature if hob else unit.error
        if offset == 2:
            return unit.hob_nsector if hob else unit.nsector & 0xFF
        if offset == 3:
            return unit.hob_sector if hob else unit.sector
        if offset == 4:
            return unit.hob_lcyl if hob else unit.lcyl
        if offset == 5:
            return unit.hob_hcyl if hob else unit.hcyl
        return unit.select

    def command_block_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0:
            if size in (2, 4):
                self.active.data_write(size, value)
            return
        if size != 1:
            return
        value &= 0xFF
        if offset != 7 and self.active.status & (BSY | DRQ):
            return                            # the task file is the running command's
        self.ctrl &= ~CTRL_HOB
        names = {1: "feature", 2: "nsector", 3: "sector", 4: "lcyl", 5: "hcyl"}
        if offset in names:
            for unit in self.units:           # the previous value becomes the HOB byte
                name = names[offset]
                setattr(unit, "hob_" + name, getattr(unit, name) & 0xFF)
                setattr(unit, name, value)
        elif offset == 6:
            for unit in self.units:
                unit.select = value | DEV_ALWAYS_ON
            self.selected = 1 if value & DEV_SELECT else 0
        elif offset == 7:
            self.lower_irq()
            ata.execute(self, value)

    def status_read(self) -> int:
        """The alternate status: the status without acknowledging the interrupt."""
        unit = self.active
        if not (self.units[0].present or self.units[1].present) or \
                (self.selected == 1 and not unit.present):
            return 0
        return unit.status

    def control_write(self, value: int) -> None:
        if not self.ctrl & CTRL_SRST and value & CTRL_SRST:
            self.software_reset()
        self.ctrl = value

    def software_reset(self) -> None:
        """SRST: both units reset and run their diagnostics; the signature is left."""
        self.generation += 1
        self.bm.waiting = None
        for unit in self.units:
            unit.reset()
            unit.select = DEV_ALWAYS_ON
            unit.set_signature()
            unit.error = 1
            unit.status = 0 if unit.kind == "cd" else DRDY | DSC

    # -- migration ------------------------------------------------------------------------
    def save_state(self) -> dict:
        waiting = self.bm.waiting
        return {"selected": self.selected, "ctrl": self.ctrl,
                "bm": {"cmd": self.bm.cmd, "status": self.bm.status,
                       "prd_table": self.bm.prd_table},
                "dma_waiting": [waiting[0].index, waiting[1]] if waiting else None,
                "units": [unit.save_state() for unit in self.units]}

    def load_state(self, state: dict) -> None:
        if not isinstance(state, dict) or not isinstance(state.get("units"), list) or \
                len(state["units"]) != 2 or not isinstance(state.get("bm"), dict):
            raise savestate.StateError(f"{self.name}: saved state does not fit this device")
        waiting = state.get("dma_waiting")
        if waiting is not None and (not isinstance(waiting, list) or len(waiting) != 2
                                    or waiting[0] not in (0, 1)
                                    or waiting[1] not in DMA_RUNNERS):
            raise savestate.StateError(f"{self.name}.dma_waiting: saved value does not fit")
        for unit, saved in zip(self.units, state["units"]):
            unit.load_state(saved)
        savestate.load_fields(self, ("selected", "ctrl"), state, self.name)
        savestate.load_fields(self.bm, ("cmd", "status", "prd_table"), state["bm"],
                              f"{self.name}.bm")
        # A DMA command the guest had not started yet waits for START again.
        self.bm.waiting = (self.units[waiting[0]], waiting[1]) if waiting else None


class Piix3Ide(PciDevice):
    """The PIIX3's IDE function: both channels at the legacy ports, BMDMA in BAR4."""

    saves_children = True                # the channels' state holds the units'

    def __init__(self, memory: GuestMemory, set_isa_irq: Callable[[int, int], None],
                 lock, report_error, stop_vm) -> None:
        super().__init__(0x8086, 0x7010, 0x010180)
        self.channels = [
            Channel(f"ide.{n}", memory, (lambda level, irq=irq: set_isa_irq(irq, level)),
                    IoEngine(lock, name=f"ide.{n}", workers=1), 1 + 2 * n,
                    report_error, stop_vm)
            for n, (_, _, irq) in enumerate(CHANNELS)]
        self.add_bar(4, 16, "io", BusMasterBar(self.channels))

    def reset(self) -> None:
        super().reset()
        for channel in self.channels:
            channel.reset()

    def retry_held(self) -> None:
        for channel in self.channels:
            channel.retry_held()

    def drain(self) -> None:
        for channel in self.channels:
            channel.engine.drain()

    def close(self) -> None:
        for channel in self.channels:
            channel.engine.close()

    def save_state(self) -> dict:
        return {**super().save_state(), "channels": [c.save_state() for c in self.channels]}

    def load_state(self, state: dict) -> None:
        channels = state.get("channels") if isinstance(state, dict) else None
        if not isinstance(channels, list) or len(channels) != 2:
            raise savestate.StateError("piix3-ide: saved state does not fit this device")
        super().load_state({k: v for k, v in state.items() if k != "channels"})
        for channel, saved in zip(self.channels, channels):
            channel.load_state(saved)


class BusMasterBar:
    """BAR4: the two bus masters, 8 ports each (named in info mtree as QEMU's)."""

    pci_bar = True
    mtree_name = "piix-bmdma-container"

    def __init__(self, channels: list[Channel]) -> None:
        self.channels = channels

    def mtree_children(self) -> list[tuple[int, int, str]]:
        return [(0, 4, "piix-bmdma"), (4, 4, "bmdma"), (8, 4, "piix-bmdma"), (12, 4, "bmdma")]

    def bus_read(self, offset: int, size: int) -> int:
        return self.channels[offset // 8 & 1].bm.read(offset % 8, size)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        self.channels[offset // 8 & 1].bm.write(offset % 8, size, value)


class CommandBlockPorts:
    """A channel's eight task file ports."""

    mtree_name = "ide"

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def bus_read(self, offset: int, size: int) -> int:
        return self.channel.command_block_read(offset, size)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        self.channel.command_block_write(offset, size, value)


class ControlPort:
    """A channel's alternate status (read) and device control (write) port."""

    mtree_name = "ide"

    def __init__(self, channel: Channel) -> None:
        self.channel = channel

    def bus_read(self, offset: int, size: int) -> int:
        return self.channel.status_read() if size == 1 else (1 << (8 * size)) - 1

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if size == 1:
            self.channel.control_write(value & 0xFF)


def disk_geometry(drive: Drive, props: dict) -> tuple[int, int, int, str]:
    """ide-hd's geometry: the cyls/heads/secs given, else QEMU's guess from the MBR."""
    mbr = memoryview(bytearray(SECTOR))
    if drive.size >= SECTOR:
        drive.root.image.read_into(0, [mbr])
    cylinders, heads, sectors, translation = guess_geometry(bytes(mbr), drive.size // SECTOR)
    if props.get("cyls") or props.get("heads") or props.get("secs"):
        cylinders, heads, sectors = props["cyls"], props["heads"], props["secs"]
        translation = "none" if cylinders <= 1024 and heads <= 16 and sectors <= 63 else "lba"
    if props.get("bios-chs-trans", "auto") != "auto":
        translation = props["bios-chs-trans"]
    return cylinders, heads, sectors, translation


# -- the models, as QEMU declares them -------------------------------------
UNSET_UNIT = 0xFFFFFFFF


def _realize_unit(board, device, kind: str):
    """ide-hd or ide-cd on one of piix3-ide's buses, at its unit (or the free one)."""
    props, driver = device.props, device.driver
    channel = device.parent.obj.channels[int(device.bus.rsplit(".", 1)[1])]
    index = props["unit"]
    if index == UNSET_UNIT:
        index = 1 if channel.units[0].present else 0
    if index >= len(channel.units):
        raise DeviceError(f"Can't create IDE unit {index}, bus supports only "
                          f"{len(channel.units)} units")
    unit = channel.units[index]
    if unit.present:
        raise DeviceError(f"IDE unit {index} is in use")
    name = props.get("drive") or ""
    if name:
        drive = drive_named(board, driver, name)
    elif kind == "cd":                      # an empty drive of its own
        drive = board.block.empty_drive()
    else:
        raise DeviceError("No drive specified")
    try:
        geometry = _check_unit_props(drive, props, kind)
    except DeviceError:
        if not drive.name:
            board.block.remove_drive(drive)
        raise
    path = board.devices.path(device)
    attach_drive(board, drive, props, path)
    drive.device_id = device.id or ""
    unit.attach(kind, drive, props.get("serial") or "", props.get("model") or "",
                props.get("ver") or "", geometry, props["wwn"], props.get("rotation_rate", 0))
    props["unit"] = index
    props["serial"], props["ver"] = unit.serial, unit.version
    if unit.cd is not None:
        cd = drive.media = unit.cd
        # DEVICE_TRAY_MOVED's data: the drive's name, the device's id (or QOM path)
        cd.tray_event = lambda is_open: {"device": drive.name, "id": device.id or path,
                                         "tray-open": is_open}
        cd.on_tray_moved = lambda is_open: board.emit_from_vcpu(
            "DEVICE_TRAY_MOVED", cd.tray_event(is_open))
    return unit


def _check_unit_props(drive: Drive, props: dict, kind: str) -> tuple[int, int, int]:
    if props["discard_granularity"] == 0xFFFFFFFF:
        props["discard_granularity"] = 512
    elif props["discard_granularity"] not in (0, 512):
        raise DeviceError("discard_granularity must be 512 for ide")
    for name in ("logical_block_size", "physical_block_size"):
        if props[name] not in (0, 512):
            raise DeviceError("logical_block_size must be 512 for IDE"
                              if name == "logical_block_size" else
                              "physical_block_size must be 512 for IDE")
        props[name] = 512
    if kind == "cd":
        return 0, 0, 0
    if drive.root is None:
        raise DeviceError("Device needs media, but drive is empty")
    if drive.read_only:
        raise DeviceError("Block node is read-only")
    cylinders, heads, sectors, translation = disk_geometry(drive, props)
    if not 1 <= heads <= 16 or not 1 <= sectors <= 255 or not 1 <= cylinders <= 65535:
        raise DeviceError("cyls must be between 1 and 65535" if not 1 <= cylinders <= 65535
                          else "heads must be between 1 and 16" if not 1 <= heads <= 16
                          else "secs must be between 1 and 255")
    props["cyls"], props["heads"], props["secs"] = cylinders, heads, sectors
    props["bios-chs-trans"] = translation
    return cylinders, heads, sectors


def _unrealize_unit(board, device) -> None:
    unit = device.obj
    drive = unit.drive
    unit.detach()
    if drive is not None:
        drive.media, drive.device_id = None, ""
        board.block.detach(drive)


_UNIT_PROPS = block_props(True) + (
    Prop("ver", "str"), Prop("wwn", "uint64", 0), Prop("serial", "str"), Prop("model", "str"))
declare(DeviceType("ide-device", "device", abstract=True, bus="IDE", category="Storage",
                   props=(Prop("unit", "uint32", UNSET_UNIT), bootindex())))
declare(DeviceType("ide-hd", "ide-device", description="virtual IDE disk", category="Storage",
                   realize=lambda board, device: _realize_unit(board, device, "hd"),
                   unrealize=_unrealize_unit, props=_UNIT_PROPS + (
                       Prop("cyls", "uint32", 0), Prop("heads", "uint32", 0),
                       Prop("secs", "uint32", 0), fixed("lcyls", "uint32", 0),
                       fixed("lheads", "uint32", 0), fixed("lsecs", "uint32", 0),
                       Prop("bios-chs-trans", "BiosAtaTranslation", "auto",
                            "Logical CHS translation algorithm, "
                            "auto/none/lba/large/rechs"),
                       Prop("rotation_rate", "uint16", 0))))
declare(DeviceType("ide-cd", "ide-device", description="virtual IDE CD-ROM",
                   category="Storage",
                   realize=lambda board, device: _realize_unit(board, device, "cd"),
                   unrealize=_unrealize_unit, props=_UNIT_PROPS))


# The command sets, which add their continuations and DMA runners (they use the
# names above, so they come after them).
from vmm.devices import ata, atapi  # noqa: E402
