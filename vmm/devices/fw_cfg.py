"""fw_cfg (ports 0x510-0x511): QEMU's firmware configuration interface, the
traditional (non-DMA) way in.

A 16-bit write to the selector port picks an item and rewinds it; each byte
read from the data port is the next byte of the item, and 0 past its end or
for an item that does not exist. Guests read the CPU count and RAM size here
(kvm-unit-tests, SeaBIOS), and the file directory names further items such as
``etc/e820``. Items are QEMU's numbers and encodings (little-endian integers).
"""

from __future__ import annotations

import struct
import uuid as uuidlib

from vmm import savestate
from vmm.boot.layout import E820Entry

BASE = 0x510
LENGTH = 2

SIGNATURE, ID, UUID, RAM_SIZE, NOGRAPHIC, NB_CPUS = 0x00, 0x01, 0x02, 0x03, 0x04, 0x05
MACHINE_ID, BOOT_MENU, MAX_CPUS, FILE_DIR = 0x06, 0x0E, 0x0F, 0x19
NUMA = 0x0D
FILE_FIRST = 0x20
ARCH_LOCAL = 0x8000
IRQ0_OVERRIDE = ARCH_LOCAL + 2
ENTRY_MASK = 0x3FFF | ARCH_LOCAL            # the write-channel bit does not pick an item
ID_TRADITIONAL = 1                          # no DMA interface


class FwCfg:
    def __init__(self, ram_size: int, cpus: int, uuid: str, e820: list[E820Entry],
                 nographic: bool = False) -> None:
        self.items: dict[int, bytes] = {
            SIGNATURE: b"QEMU",
            ID: struct.pack("<I", ID_TRADITIONAL),
            UUID: uuidlib.UUID(uuid).bytes,
            RAM_SIZE: struct.pack("<Q", ram_size),
            NOGRAPHIC: struct.pack("<H", int(nographic)),
            NB_CPUS: struct.pack("<H", cpus),
            MACHINE_ID: struct.pack("<I", 0),
            MAX_CPUS: struct.pack("<H", cpus),
            # no NUMA nodes: the node count, then a node per CPU (all 0)
            NUMA: struct.pack(f"<{1 + cpus}Q", *([0] * (1 + cpus))),
            BOOT_MENU: struct.pack("<H", 0),
            IRQ0_OVERRIDE: struct.pack("<I", 1),
        }
        self.files: list[tuple[str, int]] = []
        self.add_file("etc/e820", b"".join(struct.pack("<QQI", e.addr, e.size, e.type)
                                           for e in e820))
        self.selected = 0
        self.offset = 0

    def add_file(self, name: str, data: bytes) -> None:
        """A named item: the next free number, listed in the file directory (big-endian,
        sorted by name, as QEMU builds it)."""
        key = FILE_FIRST + len(self.files)
        self.items[key] = data
        self.files.append((name, key))
        entries = sorted(self.files)
        self.items[FILE_DIR] = struct.pack(">I", len(entries)) + b"".join(
            struct.pack(">IHH56s", len(self.items[k]), k, 0, n.encode()) for n, k in entries)

    STATE = ("selected", "offset")

    def save_state(self) -> dict:
        return savestate.save_fields(self, self.STATE)

    def load_state(self, state: dict) -> None:
        savestate.load_fields(self, self.STATE, state, "fw_cfg")

    def reset(self) -> None:
        self.selected = 0
        self.offset = 0

    def bus_read(self, offset: int, size: int) -> int:
        if offset != 1 or size != 1:
            return (1 << (8 * size)) - 1
        data = self.items.get(self.selected, b"")
        value = data[self.offset] if self.offset < len(data) else 0
        self.offset += 1
        return value

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 2:
            self.selected = value & ENTRY_MASK
            self.offset = 0
