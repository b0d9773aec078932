"""Where boot structures live in low guest memory, and the e820 memory map."""

from __future__ import annotations

from dataclasses import dataclass

from vmm.memory import HIGH_RAM_START

E820_RAM = 1
E820_RESERVED = 2
E820_ACPI = 3

# Low-memory addresses of the structures the loaders build.
BOOT_GDT = 0x500
START_INFO = 0x6000          # PVH hvm_start_info, memmap and module list follow
ZERO_PAGE = 0x7000           # Linux boot_params
BOOT_STACK = 0x8000
PML4 = 0x9000                # identity page tables for the Linux 64-bit entry
PDPT = 0xA000
PD = 0xB000                  # four pages: the first 4 GiB in 2 MiB pages
CMDLINE = 0x20000
CMDLINE_MAX = 0x10000
EBDA_START = 0x9FC00
ACPI_START = 0xE0000         # RSDP here; Linux scans 0xE0000-0xFFFFF for it
ACPI_END = 0x100000
HIGH_MEMORY = 0x100000
# SeaBIOS keeps the top 128 KiB of RAM below 4 GiB for its own tables and reports it
# reserved; QEMU loads initrds below it. The guest sees the same here.
FIRMWARE_HIGH_TABLES = 0x20000


@dataclass(frozen=True)
class E820Entry:
    addr: int
    size: int
    type: int


def e820_map(below_4g: int, above_4g: int) -> list[E820Entry]:
    """The map the guest sees: ascending, non-overlapping."""
    entries = [
        E820Entry(0, EBDA_START, E820_RAM),
        E820Entry(EBDA_START, 0xA0000 - EBDA_START, E820_RESERVED),
        E820Entry(ACPI_START, ACPI_END - ACPI_START, E820_RESERVED),
    ]
    if below_4g > HIGH_MEMORY + FIRMWARE_HIGH_TABLES:
        top = below_4g - FIRMWARE_HIGH_TABLES
        entries.append(E820Entry(HIGH_MEMORY, top - HIGH_MEMORY, E820_RAM))
        entries.append(E820Entry(top, FIRMWARE_HIGH_TABLES, E820_RESERVED))
    elif below_4g > HIGH_MEMORY:
        entries.append(E820Entry(HIGH_MEMORY, below_4g - HIGH_MEMORY, E820_RAM))
    if above_4g:
        entries.append(E820Entry(HIGH_RAM_START, above_4g, E820_RAM))
    return entries
