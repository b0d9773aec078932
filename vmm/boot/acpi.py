"""ACPI tables for the `pc` machine: RSDP, XSDT, FADT (+FACS), DSDT, MADT.

Written to the BIOS area at 0xE0000, where Linux scans for the RSDP; PVH
guests also get the RSDP address in hvm_start_info, Linux in boot_params.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmm.boot import aml
from vmm.boot.layout import ACPI_END, ACPI_START
from vmm.devices.acpi_pcihp import PCIHP_BASE
from vmm.devices.acpi_pm import GPE0_BASE, GPE0_LEN, PM_BASE, SCI_IRQ
from vmm.devices.i440fx import FIRMWARE_PIRQ_IRQS, slot_pirq
from vmm.memory import GuestMemory

OEM_ID = b"KVMKIT"
OEM_TABLE_ID = b"KVMKITPC"
CREATOR_ID = b"KKIT"
IOAPIC_ADDRESS = 0xFEC00000
LAPIC_ADDRESS = 0xFEE00000
RESET_PORT = 0xCF9
RESET_VALUE = 0x06
LEVEL_HIGH = 0x000D   # MPS INTI flags: active high, level triggered


def checksum(data: bytes) -> int:
    return (-sum(data)) & 0xFF


def table(signature: bytes, revision: int, body: bytes) -> bytes:
    """A table with the standard 36-byte header and a correct checksum."""
    length = 36 + len(body)
    header = struct.pack("<4sIBB6s8sI4sI", signature, length, revision, 0, OEM_ID,
                         OEM_TABLE_ID, 1, CREATOR_ID, 1)
    raw = bytearray(header + body)
    raw[9] = checksum(raw)
    return bytes(raw)


def gas_io(port: int, width_bits: int, access_size: int = 0) -> bytes:
    """Generic Address Structure for a system I/O register."""
    return struct.pack("<BBBBQ", 1, width_bits, 0, access_size, port)


FACS_WAKING_VECTOR = 12     # Firmware_Waking_Vector: real-mode resume address (S3)


def facs() -> bytes:
    """Firmware ACPI Control Structure: no checksum, 64 bytes, version 1."""
    return struct.pack("<4sIIIIIQB3sI24s", b"FACS", 64, 0, 0, 0, 0, 0, 1, b"", 0, b"")


FADT_WBINVD = 1 << 0
FADT_PROC_C1 = 1 << 2
FADT_SLP_BUTTON = 1 << 5
FADT_RTC_S4 = 1 << 7
FADT_RESET_REG_SUP = 1 << 10
FADT_USE_PLATFORM_CLOCK = 1 << 15
IAPC_LEGACY_DEVICES = 1 << 0
IAPC_8042 = 1 << 1


def fadt(facs_addr: int, dsdt_addr: int) -> bytes:
    body = bytearray(244 - 36)

    def put(offset: int, fmt: str, *values) -> None:
        struct.pack_into(fmt, body, offset - 36, *values)

    put(36, "<II", facs_addr, dsdt_addr)
    put(45, "<BH", 0, SCI_IRQ)                # unspecified PM profile, SCI
    put(48, "<I", 0)                          # no SMI_CMD: always in ACPI mode
    put(56, "<I", PM_BASE)                    # PM1a_EVT_BLK
    put(64, "<I", PM_BASE + 4)                # PM1a_CNT_BLK
    put(76, "<I", PM_BASE + 8)                # PM_TMR_BLK
    put(80, "<I", GPE0_BASE)                  # GPE0_BLK
    put(88, "<BBBBBB", 4, 2, 0, 4, GPE0_LEN, 0)
    put(96, "<HH", 0xFFF, 0xFFF)              # C2/C3 not supported
    put(108, "<B", 0x32)                      # CMOS century register
    put(109, "<H", IAPC_LEGACY_DEVICES | IAPC_8042)
    put(112, "<I", FADT_WBINVD | FADT_PROC_C1 | FADT_SLP_BUTTON | FADT_RTC_S4
        | FADT_RESET_REG_SUP | FADT_USE_PLATFORM_CLOCK)
    body[116 - 36:128 - 36] = gas_io(RESET_PORT, 8, 1)
    put(128, "<B", RESET_VALUE)
    put(132, "<QQ", facs_addr, dsdt_addr)
    body[148 - 36:160 - 36] = gas_io(PM_BASE, 32, 2)
    body[172 - 36:184 - 36] = gas_io(PM_BASE + 4, 16, 2)
    body[208 - 36:220 - 36] = gas_io(PM_BASE + 8, 32, 3)
    body[220 - 36:232 - 36] = gas_io(GPE0_BASE, GPE0_LEN * 8, 1)
    return table(b"FACP", 3, bytes(body))


def madt(cpus: int) -> bytes:
    body = struct.pack("<II", LAPIC_ADDRESS, 1)          # PCAT_COMPAT: dual 8259s present
    for index in range(cpus):
        body += struct.pack("<BBBBI", 0, 8, index, index, 1)      # Processor Local APIC
    body += struct.pack("<BBBBII", 1, 12, 0, 0, IOAPIC_ADDRESS, 0)
    body += struct.pack("<BBBBIH", 2, 10, 0, 0, 2, 0)              # IRQ0 -> GSI2 (the PIT)
    for irq in sorted({SCI_IRQ, *FIRMWARE_PIRQ_IRQS, 5}):
        body += struct.pack("<BBBBIH", 2, 10, 0, irq, irq, LEVEL_HIGH)
    body += struct.pack("<BBBHB", 4, 6, 0xFF, 0, 1)                 # LINT1 is NMI on all
    return table(b"APIC", 1, body)


def pci_routing_table() -> bytes:
    """_PRT in APIC mode: each slot's INTA-D straight to the GSI the PIIX routes it to."""
    entries = []
    for slot in range(1, 32):
        for pin in range(4):
            gsi = FIRMWARE_PIRQ_IRQS[slot_pirq(slot, pin + 1)]
            entries.append(aml.package(aml.integer((slot << 16) | 0xFFFF), aml.integer(pin),
                                       aml.integer(0), aml.integer(gsi)))
    # More than 255 entries needs VarPackage; 124 fit in a Package.
    return aml.name("_PRT", aml.package(*entries))


HOTPLUG_SLOTS = range(2, 32)    # the root bus slots QEMU's i440fx lets you hot-plug


def slot_device_name(slot: int) -> str:
    return f"S{slot << 3:02X}"   # QEMU's names: S + devfn in hex (slot 2 is S10)


def pci_hotplug_aml() -> bytes:
    """What QEMU's DSDT has for ACPI PCI hotplug on the root bus: the register block
    (vmm/devices/acpi_pcihp.py), a device per slot with _SUN and _EJ0, PCNT to
    notify the OS of the up/down bitmaps, and the GPE handler _E01 that calls it."""
    dvnt = [aml.if_(aml.and_(aml.arg(0), aml.integer(1 << slot)),
                    aml.notify(slot_device_name(slot), aml.arg(1)))
            for slot in HOTPLUG_SLOTS]
    slots = [aml.device(slot_device_name(slot),
                        aml.name("_ADR", aml.integer(slot << 16)),
                        aml.name("_SUN", aml.integer(slot)),
                        aml.method("_EJ0", 1, aml.call("PCEJ", aml.ref("BSEL"),
                                                       aml.ref("_SUN"))))
             for slot in HOTPLUG_SLOTS]
    pci0 = aml.scope(
        "\\_SB.PCI0",
        aml.name("BSEL", aml.integer(0)),
        aml.operation_region("PCST", aml.SYSTEM_IO, PCIHP_BASE, 0x08),
        aml.field("PCST", aml.DWORD_ACC_WRITE_ZEROS, ("PCIU", 32), ("PCID", 32)),
        aml.operation_region("SEJ", aml.SYSTEM_IO, PCIHP_BASE + 0x08, 0x04),
        aml.field("SEJ", aml.DWORD_ACC_WRITE_ZEROS, ("B0EJ", 32)),
        aml.operation_region("BNMR", aml.SYSTEM_IO, PCIHP_BASE + 0x10, 0x04),
        aml.field("BNMR", aml.DWORD_ACC_WRITE_ZEROS, ("BNUM", 32)),
        aml.mutex("BLCK"),
        aml.method("PCEJ", 2,
                   aml.acquire("BLCK"),
                   aml.store(aml.arg(0), aml.ref("BNUM")),
                   aml.store(aml.shift_left(aml.integer(1), aml.arg(1)), aml.ref("B0EJ")),
                   aml.release("BLCK"),
                   aml.return_(aml.integer(0))),
        aml.method("DVNT", 2, *dvnt),
        aml.method("PCNT", 0,
                   aml.store(aml.integer(0), aml.ref("BNUM")),
                   aml.call("DVNT", aml.ref("PCIU"), aml.integer(1)),    # device check
                   aml.call("DVNT", aml.ref("PCID"), aml.integer(3))),   # eject request
        *slots)
    gpe = aml.scope("\\_GPE",
                    aml.name("_HID", aml.string("ACPI0006")),
                    aml.method("_E01", 0,
                               aml.acquire("\\_SB.PCI0.BLCK"),
                               aml.call("\\_SB.PCI0.PCNT"),
                               aml.release("\\_SB.PCI0.BLCK")))
    return pci0 + gpe


def dsdt_body(low_ram_end: int) -> bytes:
    pci_crs = aml.resource_template(
        aml.word_bus_number(0x00, 0xFF),
        aml.io_port(0xCF8, 8),
        aml.word_io(0x0000, 0x0CF7),
        aml.word_io(0x0D00, 0xFFFF),
        aml.dword_memory(0x000A0000, 0x000BFFFF),
        aml.dword_memory(max(low_ram_end, 0xC0000000), 0xFEBFFFFF, cacheable=False),
        aml.qword_memory(0x8_0000_0000, 0xF_FFFF_FFFF, cacheable=False),
    )
    isa_devices = [
        aml.device("RTC", aml.name("_HID", aml.eisa_id("PNP0B00")),
                   aml.name("_CRS", aml.resource_template(aml.io_port(0x70, 8),
                                                          aml.irq_no_flags(8)))),
        aml.device("KBD", aml.name("_HID", aml.eisa_id("PNP0303")),
                   aml.method("_STA", 0, aml.return_(aml.integer(0x0F))),
                   aml.name("_CRS", aml.resource_template(aml.io_port(0x60, 1),
                                                          aml.io_port(0x64, 1),
                                                          aml.irq_no_flags(1)))),
        aml.device("COM1", aml.name("_HID", aml.eisa_id("PNP0501")),
                   aml.name("_UID", aml.integer(1)),
                   aml.method("_STA", 0, aml.return_(aml.integer(0x0F))),
                   aml.name("_CRS", aml.resource_template(aml.io_port(0x3F8, 8),
                                                          aml.irq_no_flags(4)))),
    ]
    return (
        aml.scope("\\_SB",
                  aml.device("PCI0",
                             aml.name("_HID", aml.eisa_id("PNP0A03")),
                             aml.name("_ADR", aml.integer(0)),
                             aml.name("_UID", aml.integer(0)),
                             aml.name("_CRS", pci_crs),
                             pci_routing_table(),
                             aml.device("ISA", aml.name("_ADR", aml.integer(0x00010000)),
                                        *isa_devices)))
        + pci_hotplug_aml()
        + b"".join(aml.name(f"\\_S{state}", aml.package(aml.integer(typ), aml.integer(typ),
                                                        aml.integer(0), aml.integer(0)))
                   for state, typ in ((3, 1), (4, 2), (5, 0)))   # QEMU's sleep types
    )


def dsdt(low_ram_end: int) -> bytes:
    return table(b"DSDT", 1, dsdt_body(low_ram_end))


def xsdt(entries: list[int]) -> bytes:
    return table(b"XSDT", 1, b"".join(struct.pack("<Q", a) for a in entries))


def rsdp(xsdt_addr: int) -> bytes:
    raw = bytearray(struct.pack("<8sB6sBIIQB3s", b"RSD PTR ", 0, OEM_ID, 2, 0, 36, xsdt_addr,
                                0, b"\0\0\0"))
    raw[8] = checksum(raw[:20])
    raw[32] = checksum(raw)
    return bytes(raw)


@dataclass(frozen=True)
class AcpiTables:
    rsdp_addr: int
    tables: dict[str, tuple[int, bytes]]   # signature -> (address, bytes)


def build_tables(cpus: int, low_ram_end: int) -> AcpiTables:
    """Lays out every table from ACPI_START; the RSDP comes first."""
    cursor = ACPI_START + 64
    placed: dict[str, tuple[int, bytes]] = {}

    def place(sig: str, data: bytes, align: int = 16) -> int:
        nonlocal cursor
        cursor = (cursor + align - 1) & ~(align - 1)
        addr = cursor
        placed[sig] = (addr, data)
        cursor += len(data)
        if cursor > ACPI_END:
            raise ValueError("ACPI tables do not fit below 1 MiB")
        return addr

    facs_addr = place("FACS", facs(), align=64)
    dsdt_addr = place("DSDT", dsdt(low_ram_end))
    fadt_addr = place("FACP", fadt(facs_addr, dsdt_addr))
    madt_addr = place("APIC", madt(cpus))
    xsdt_addr = place("XSDT", xsdt([fadt_addr, madt_addr]))
    placed["RSDP"] = (ACPI_START, rsdp(xsdt_addr))
    return AcpiTables(ACPI_START, placed)


def write_tables(mem: GuestMemory, cpus: int) -> AcpiTables:
    tables = build_tables(cpus, mem.below_4g)
    for addr, data in tables.tables.values():
        mem.write(addr, data)
    return tables
