"""The PCI bus model: type-0 config space, BARs, capabilities, INTx.

Config space writes go through per-byte masks: ``wmask`` (guest-writable
bits) and ``w1cmask`` (write-1-to-clear bits). BARs are sized the usual way
(write all-ones, read back the mask) and mapped into the machine's port or
MMIO bus only while their decode bit in COMMAND is set.
"""

from __future__ import annotations

import struct
from collections.abc import Callable
from dataclasses import dataclass

from vmm import savestate
from vmm.bus import Bus

VENDOR_ID = 0x00
DEVICE_ID = 0x02
COMMAND = 0x04
STATUS = 0x06
REVISION = 0x08
CLASS_PROG = 0x09
HEADER_TYPE = 0x0E
BAR0 = 0x10
SUBSYSTEM_VENDOR_ID = 0x2C
SUBSYSTEM_ID = 0x2E
ROM_ADDRESS = 0x30
CAPABILITY_LIST = 0x34
INTERRUPT_LINE = 0x3C
INTERRUPT_PIN = 0x3D

COMMAND_IO = 0x1
COMMAND_MEMORY = 0x2
COMMAND_MASTER = 0x4
COMMAND_INTX_DISABLE = 0x400
STATUS_INTERRUPT = 0x08
STATUS_CAP_LIST = 0x10

BAR_IO = 0x1
BAR_MEM64 = 0x4
BAR_PREFETCH = 0x8
UNMAPPED = 0xFFFFFFFFFFFFFFFF

CONFIG_SIZE = 256
QEMU_SUBSYSTEM_VENDOR = 0x1AF4
QEMU_SUBSYSTEM = 0x1100


@dataclass
class Bar:
    index: int
    size: int
    kind: str                      # "io", "mem32", "mem64" or "rom" (BAR6, at 0x30)
    prefetchable: bool
    device: object                 # bus device serving the BAR (bus_read/bus_write)
    mapped_at: int = UNMAPPED

    @property
    def config_offset(self) -> int:
        return ROM_ADDRESS if self.kind == "rom" else BAR0 + 4 * self.index

    @property
    def flags(self) -> int:
        if self.kind == "rom":
            return 0
        if self.kind == "io":
            return BAR_IO
        return (BAR_MEM64 if self.kind == "mem64" else 0) | (BAR_PREFETCH if self.prefetchable
                                                              else 0)


class PciDevice:
    """A PCI function. Subclasses declare ids, BARs and capabilities in __init__."""

    def __init__(self, vendor_id: int, device_id: int, class_code: int, revision: int = 0,
                 subsystem_vendor_id: int = QEMU_SUBSYSTEM_VENDOR,
                 subsystem_id: int = QEMU_SUBSYSTEM, interrupt_pin: int = 0,
                 multifunction: bool = False) -> None:
        self.config = bytearray(CONFIG_SIZE)
        self.wmask = bytearray(CONFIG_SIZE)
        self.w1cmask = bytearray(CONFIG_SIZE)
        self.bars: dict[int, Bar] = {}
        self.bus: PciBus | None = None
        self.slot = -1
        self.function = 0
        self.qdev_id = ""
        self.intx_level = 0
        c = self.config
        struct.pack_into("<HH", c, VENDOR_ID, vendor_id, device_id)
        struct.pack_into("<I", c, REVISION, (class_code << 8) | revision)
        c[HEADER_TYPE] = 0x80 if multifunction else 0
        struct.pack_into("<HH", c, SUBSYSTEM_VENDOR_ID, subsystem_vendor_id, subsystem_id)
        c[INTERRUPT_PIN] = interrupt_pin
        self._set_wmask(COMMAND, 2, COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER | 0x40 | 0x100
                        | COMMAND_INTX_DISABLE)
        self._set_wmask(INTERRUPT_LINE, 1, 0xFF)
        self._set_w1cmask(STATUS, 2, 0xF900)  # error bits
        self._cap_end = 0x40

    # -- identity ----------------------------------------------------------
    @property
    def vendor_id(self) -> int:
        return struct.unpack_from("<H", self.config, VENDOR_ID)[0]

    @property
    def device_id(self) -> int:
        return struct.unpack_from("<H", self.config, DEVICE_ID)[0]

    @property
    def class_code(self) -> int:
        return struct.unpack_from("<I", self.config, REVISION)[0] >> 8

    @property
    def command(self) -> int:
        return struct.unpack_from("<H", self.config, COMMAND)[0]

    # -- declaration helpers ----------------------------------------------
    def _set_wmask(self, offset: int, size: int, mask: int) -> None:
        self.wmask[offset:offset + size] = mask.to_bytes(size, "little")

    def _set_w1cmask(self, offset: int, size: int, mask: int) -> None:
        self.w1cmask[offset:offset + size] = mask.to_bytes(size, "little")

    def add_bar(self, index: int, size: int, kind: str, device: object,
                prefetchable: bool = False) -> Bar:
        if size & (size - 1) or size < (4 if kind == "io" else 16):
            raise ValueError("BAR size must be a power of two (>= 4 for I/O, 16 for memory)")
        bar = Bar(index, size, kind, prefetchable, device)
        self.bars[index] = bar
        offset = bar.config_offset
        struct.pack_into("<I", self.config, offset, bar.flags)
        mask = ~(size - 1) & (0xFFFFFFFC if kind == "io" else 0xFFFFFFF0)
        if kind == "rom":
            mask = (~(size - 1) & 0xFFFFF800) | 1     # address and the enable bit
        self._set_wmask(offset, 4, mask & 0xFFFFFFFF)
        if kind == "mem64":
            self._set_wmask(offset + 4, 4, (~(size - 1) >> 32) & 0xFFFFFFFF)
        return bar

    def add_capability(self, cap_id: int, body: bytes, wmask: bytes | None = None) -> int:
        """Adds a capability (id, next, body) at the head of the list, as QEMU's
        pci_add_capability does, so `lspci` shows them in QEMU's order; returns its offset."""
        offset = self._cap_end
        length = 2 + len(body)
        if offset + length > CONFIG_SIZE:
            raise ValueError("config space is full")
        self.config[offset] = cap_id
        self.config[offset + 1] = self.config[CAPABILITY_LIST]
        self.config[offset + 2:offset + length] = body
        if wmask is not None:
            self.wmask[offset + 2:offset + 2 + len(wmask)] = wmask
        self.config[CAPABILITY_LIST] = offset
        self._cap_end = (offset + length + 3) & ~3
        struct.pack_into("<H", self.config, STATUS, self.status | STATUS_CAP_LIST)
        return offset

    @property
    def status(self) -> int:
        return struct.unpack_from("<H", self.config, STATUS)[0]

    def capabilities(self) -> list[tuple[int, int]]:
        """(offset, id) of each capability, following the list from 0x34."""
        caps, seen = [], set()
        offset = self.config[CAPABILITY_LIST] & 0xFC
        while offset and offset not in seen:
            seen.add(offset)
            caps.append((offset, self.config[offset]))
            offset = self.config[offset + 1] & 0xFC
        return caps

    # -- config space access ----------------------------------------------
    def config_read(self, offset: int, size: int) -> int:
        if offset + size > CONFIG_SIZE:
            return (1 << (8 * size)) - 1
        return int.from_bytes(self.config[offset:offset + size], "little")

    def config_write(self, offset: int, size: int, value: int) -> None:
        if offset + size > CONFIG_SIZE:
            return
        old_command = self.command
        for i in range(size):
            byte = (value >> (8 * i)) & 0xFF
            pos = offset + i
            w, c = self.wmask[pos], self.w1cmask[pos]
            self.config[pos] = ((self.config[pos] & ~w) | (byte & w)) & ~(byte & c) & 0xFF
        if offset < BAR0 + 24 and offset + size > COMMAND:
            touched_bars = offset + size > BAR0
            if touched_bars or self.command != old_command:
                self.update_mappings()
            if (self.command ^ old_command) & COMMAND_INTX_DISABLE:
                self._drive_intx()
        self.config_written(offset, size, value)

    def config_written(self, offset: int, size: int, value: int) -> None:
        """Hook for devices with side effects on config writes (capabilities)."""

    def bar_moved(self, bar: Bar, address: int) -> None:
        """Hook: a BAR was mapped at `address` (UNMAPPED: taken away)."""

    # -- BARs --------------------------------------------------------------
    def add_rom(self, size: int) -> Bar:
        """An expansion ROM BAR with no image: firmware places it, nobody enables it
        (as QEMU's option ROMs look to a guest booted without SeaBIOS running them)."""
        return self.add_bar(6, size, "rom", None)

    def bar_address(self, bar: Bar) -> int:
        offset = bar.config_offset
        low = struct.unpack_from("<I", self.config, offset)[0]
        if bar.kind == "rom":
            return low & 0xFFFFF800
        if bar.kind == "io":
            return low & 0xFFFFFFFC
        address = low & 0xFFFFFFF0
        if bar.kind == "mem64":
            address |= struct.unpack_from("<I", self.config, offset + 4)[0] << 32
        return address

    def set_bar_address(self, bar: Bar, address: int) -> None:
        offset = bar.config_offset
        struct.pack_into("<I", self.config, offset, (address & 0xFFFFFFFF) | bar.flags)
        if bar.kind == "mem64":
            struct.pack_into("<I", self.config, offset + 4, address >> 32)

    def update_mappings(self) -> None:
        """Maps each BAR where the guest put it, if its decode bit is on."""
        for bar in self.bars.values():
            if bar.kind == "rom":
                continue                 # no image to map
            enabled = self.command & (COMMAND_IO if bar.kind == "io" else COMMAND_MEMORY)
            address = self.bar_address(bar)
            limit = 0x10000 if bar.kind == "io" else 1 << 64
            wanted = address if enabled and 0 < address and address + bar.size <= limit \
                else UNMAPPED
            if wanted == bar.mapped_at:
                continue
            if self.bus is not None:
                self.bus.remap_bar(self, bar, wanted)
            bar.mapped_at = wanted

    # -- migration ---------------------------------------------------------
    STATE: tuple[str, ...] = ()      # the model's own registers, saved with its config

    def save_state(self) -> dict:
        return {"config": bytes(self.config), "intx": self.intx_level,
                **savestate.save_fields(self, self.STATE)}

    def load_state(self, state: dict) -> None:
        """Config space and the model's registers; read-only config bytes must be
        this function's own (another device's state is refused, as QEMU's is)."""
        where = type(self).__name__
        savestate.check_fields(self, ("config",) + self.STATE, state, where)
        intx = savestate.int_in(state.get("intx"), 0, 1, f"{where}.intx")
        config = state["config"]
        for i in range(CONFIG_SIZE):
            fixed = ~(self.wmask[i] | self.w1cmask[i]) & 0xFF
            if STATUS <= i < STATUS + 2:
                continue                          # the device's own status bits
            if (config[i] ^ self.config[i]) & fixed:
                raise savestate.StateError(
                    f"{where}: bad config data at 0x{i:x}: read 0x{config[i]:x}, "
                    f"device 0x{self.config[i]:x}")
        self.config[:] = config
        savestate.set_fields(self, self.STATE, state)
        self.update_mappings()
        self.set_intx(intx)
        self.state_loaded()

    def state_loaded(self) -> None:
        """Hook: registers were loaded; redo what they imply (interrupt lines...)."""

    # -- interrupts --------------------------------------------------------
    def set_intx(self, level: int) -> None:
        self.intx_level = 1 if level else 0
        status = self.status & ~STATUS_INTERRUPT
        if self.intx_level:
            status |= STATUS_INTERRUPT
        struct.pack_into("<H", self.config, STATUS, status)
        self._drive_intx()

    def _drive_intx(self) -> None:
        if self.bus is not None and self.config[INTERRUPT_PIN]:
            gated = self.command & COMMAND_INTX_DISABLE
            self.bus.set_intx(self, 0 if gated else self.intx_level)

    def reset(self) -> None:
        """Device reset: BARs unassigned and decode off, as before firmware runs."""
        struct.pack_into("<H", self.config, COMMAND, 0)
        for bar in self.bars.values():
            self.set_bar_address(bar, 0)
        self.config[INTERRUPT_LINE] = 0
        self.update_mappings()
        self.set_intx(0)

    def release(self) -> None:
        """The device left the bus for good: what it holds of the host's (MSI-X
        routes and their eventfds) goes back."""


class NoFreeSlot(ValueError):
    """Every slot of the bus has a device."""


class PciBus:
    """Bus 0 of the i440FX: 32 slots of up to 8 functions."""

    def __init__(self, pio: Bus, mmio: Bus,
                 route_intx: Callable[[int, int], int | None],
                 set_irq: Callable[[int, int], None]) -> None:
        self.pio = pio
        self.mmio = mmio
        self.route_intx = route_intx    # (slot, pin 1-4) -> IRQ line or None
        self.set_irq = set_irq          # (irq, level)
        self.devices: dict[tuple[int, int], PciDevice] = {}
        self._irq_sources: dict[int, set[tuple[int, int]]] = {}

    def plug(self, device: PciDevice, slot: int | None = None, function: int = 0) -> None:
        if slot is None:
            slot = self.free_slot()
        if not 0 <= slot < 32 or not 0 <= function < 8:
            raise ValueError("PCI address out of range")
        if (slot, function) in self.devices:
            raise ValueError(f"PCI: slot {slot} function {function} not available")
        device.bus, device.slot, device.function = self, slot, function
        self.devices[(slot, function)] = device

    def unplug(self, device: PciDevice) -> None:
        device.reset()
        self.devices.pop((device.slot, device.function), None)
        device.bus = None
        device.release()

    def free_slot(self) -> int:
        for slot in range(32):
            if not any((slot, f) in self.devices for f in range(8)):
                return slot
        raise NoFreeSlot("PCI: no slot available")

    def find(self, slot: int, function: int) -> PciDevice | None:
        return self.devices.get((slot, function))

    def sorted_devices(self) -> list[PciDevice]:
        return [self.devices[k] for k in sorted(self.devices)]

    def remap_bar(self, device: PciDevice, bar: Bar, address: int) -> None:
        bus = self.pio if bar.kind == "io" else self.mmio
        if bar.mapped_at != UNMAPPED:
            bus.unmap(bar.mapped_at)
        if address != UNMAPPED:
            bus.map(address, bar.size, bar.device)
        device.bar_moved(bar, address)

    def set_intx(self, device: PciDevice, level: int) -> None:
        irq = self.route_intx(device.slot, device.config[INTERRUPT_PIN])
        if irq is None:
            return
        sources = self._irq_sources.setdefault(irq, set())
        key = (device.slot, device.function)
        before = bool(sources)
        if level:
            sources.add(key)
        else:
            sources.discard(key)
        if bool(sources) != before:
            self.set_irq(irq, 1 if sources else 0)

    # -- what firmware would do --------------------------------------------
    def assign_resources(self, io_base: int = 0xC000, mem_end: int = 0xFEC0_0000,
                         mem64_base: int = 0x8_0000_0000) -> None:
        """Places every BAR and sets the interrupt line, as SeaBIOS does: per kind,
        largest first; I/O up from 0xC000, the two 32-bit memory regions packed
        down from 0xFEC00000 (the better aligned one on top); only BARs too big for
        the 32-bit window go high."""
        kinds: dict[str, list[tuple[PciDevice, Bar]]] = {"io": [], "mem": [], "prefmem": [],
                                                         "high": []}
        for device in self.sorted_devices():
            for bar in device.bars.values():
                if bar.kind == "io":
                    kinds["io"].append((device, bar))
                elif bar.kind == "mem64" and bar.size >= 1 << 30:
                    kinds["high"].append((device, bar))
                else:
                    kinds["prefmem" if bar.prefetchable else "mem"].append((device, bar))
        for entries in kinds.values():
            entries.sort(key=lambda entry: -entry[1].size)

        def total(kind: str) -> int:
            return sum(bar.size for _, bar in kinds[kind])

        def align(kind: str) -> int:
            return kinds[kind][0][1].size if kinds[kind] else 1

        # SeaBIOS's pci_bios_init_root_regions_mem: prefetchable on top, unless the
        # plain region needs less alignment.
        top, bottom = ("mem", "prefmem") if align("mem") < align("prefmem") else \
            ("prefmem", "mem")
        top_base = (mem_end - total(top)) & ~(align(top) - 1)
        bases = {"io": io_base, top: top_base,
                 bottom: (top_base - total(bottom)) & ~(align(bottom) - 1),
                 "high": mem64_base}
        for kind, entries in kinds.items():
            address = bases[kind]
            for device, bar in entries:
                address = (address + bar.size - 1) & ~(bar.size - 1)
                device.set_bar_address(bar, address)
                address += bar.size
        for device in self.sorted_devices():
            if device.config[INTERRUPT_PIN]:
                irq = self.route_intx(device.slot, device.config[INTERRUPT_PIN])
                device.config[INTERRUPT_LINE] = irq if irq is not None else 0xFF
            if device.bars:
                command = device.command | COMMAND_IO | COMMAND_MEMORY | COMMAND_MASTER
                device.config_write(COMMAND, 2, command)
