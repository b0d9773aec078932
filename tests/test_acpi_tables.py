"""Generated ACPI tables: checksums, layout, and a clean `iasl -d` of each one."""

from __future__ import annotations

import os
import shutil
import struct
import subprocess

import pytest

from vmm.boot import aml
from vmm.boot.acpi import build_tables


@pytest.fixture
def iasl():
    """iasl is installed by the test set-up: missing, it is a skip locally, a failure in CI."""
    if shutil.which("iasl") is None:
        if os.environ.get("KVMKIT_REQUIRE_KVM") == "1":
            pytest.fail("iasl (acpica-tools) is missing")
        pytest.skip("acpica-tools missing")


@pytest.fixture(scope="module")
def tables():
    return build_tables(cpus=4, low_ram_end=0x40000000).tables


def test_checksums_and_lengths(tables):
    for sig, (addr, data) in tables.items():
        if sig == "RSDP":
            assert sum(data[:20]) % 256 == 0 and sum(data) % 256 == 0
            assert data[:8] == b"RSD PTR " and data[15] == 2
        elif sig == "FACS":
            assert struct.unpack_from("<I", data, 4)[0] == len(data) == 64
            assert addr % 64 == 0
        else:
            assert data[:4] == sig.encode()
            assert struct.unpack_from("<I", data, 4)[0] == len(data)
            assert sum(data) % 256 == 0, sig


def test_rsdp_xsdt_fadt_chain(tables):
    rsdp = tables["RSDP"][1]
    xsdt_addr = struct.unpack_from("<Q", rsdp, 24)[0]
    assert xsdt_addr == tables["XSDT"][0]
    xsdt = tables["XSDT"][1]
    pointers = struct.unpack_from("<2Q", xsdt, 36)
    assert pointers == (tables["FACP"][0], tables["APIC"][0])
    fadt = tables["FACP"][1]
    assert struct.unpack_from("<Q", fadt, 140)[0] == tables["DSDT"][0]
    assert struct.unpack_from("<Q", fadt, 132)[0] == tables["FACS"][0]


def test_madt_has_one_enabled_lapic_per_cpu(tables):
    madt = tables["APIC"][1]
    pos, lapics, isos = 44, [], {}
    while pos < len(madt):
        kind, length = madt[pos], madt[pos + 1]
        if kind == 0:
            lapics.append((madt[pos + 2], madt[pos + 3], madt[pos + 4] & 1))
        elif kind == 2:
            isos[madt[pos + 3]] = struct.unpack_from("<IH", madt, pos + 4)
        pos += length
    assert lapics == [(i, i, 1) for i in range(4)]
    assert isos[0] == (2, 0)
    assert isos[9] == (9, 0x000D)


@pytest.mark.parametrize("sig", ["DSDT", "FACP", "APIC", "XSDT", "FACS"])
def test_iasl_disassembles_cleanly(iasl, tables, tmp_path, sig):
    path = tmp_path / f"{sig.lower()}.dat"
    path.write_bytes(tables[sig][1])
    result = subprocess.run(["iasl", "-d", str(path)], capture_output=True, text=True,
                            cwd=tmp_path)
    output = result.stdout + result.stderr
    assert result.returncode == 0, output
    assert "Error" not in output and "Warning" not in output, output
    dsl = (tmp_path / f"{sig.lower()}.dsl").read_text()
    if sig == "DSDT":
        assert 'EisaId ("PNP0A03")' in dsl and "Name (\\_S5, Package (0x04)" in dsl
        assert "Device (COM1)" in dsl
    if sig == "FACP":
        assert "PM1A Event Block Address : 00000600" in dsl


def test_aml_pkg_length_encodings():
    assert aml.pkg_length(10) == bytes([11])
    assert aml.pkg_length(62) == bytes([63])
    assert aml.pkg_length(63) == bytes([0x40 | 1, 4])        # 65 with two length bytes
    assert aml.pkg_length(4093) == bytes([0x40 | 15, 0xFF])
    assert aml.pkg_length(4094) == bytes([0x80 | 1, 0, 1])


def test_aml_names_integers_and_eisa_id():
    assert aml.name_string("\\_SB.PCI0") == b"\\" + bytes([0x2E]) + b"_SB_PCI0"
    assert aml.name_string("^FOO") == b"^FOO_"
    assert aml.integer(0) == b"\x00" and aml.integer(1) == b"\x01"
    assert aml.integer(0x1234) == b"\x0b\x34\x12"
    assert aml.integer(1 << 40)[:1] == b"\x0e"
    assert aml.eisa_id("PNP0A03") == b"\x0c\x41\xd0\x0a\x03"
    with pytest.raises(ValueError):
        aml.name_string("lower")


HOTPLUG_TEST_SSDT = r"""
DefinitionBlock ("", "SSDT", 2, "KVMKIT", "PCIHPTST", 1)
{
    External (\_SB.PCI0.PCIU, FieldUnitObj)
    External (\_SB.PCI0.PCID, FieldUnitObj)
    Method (\TSET, 2, NotSerialized)
    {
        \_SB.PCI0.PCIU = Arg0
        \_SB.PCI0.PCID = Arg1
    }
}
"""


def test_acpiexec_runs_the_pci_hotplug_methods(iasl, tables, tmp_path):
    """acpiexec (acpica-tools) loads the DSDT and a test SSDT that sets the up/down
    registers (its simulated I/O space keeps what is written): the GPE handler
    notifies Device Check for the up slot and Eject Request for the down slot, and
    _EJ0 writes the slot's bit to B0EJ, as QEMU's hotplug AML does."""
    dsdt = tmp_path / "dsdt.aml"
    dsdt.write_bytes(tables["DSDT"][1])
    (tmp_path / "tset.asl").write_text(HOTPLUG_TEST_SSDT)
    subprocess.run(["iasl", "tset.asl"], cwd=tmp_path, check=True, capture_output=True,
                   timeout=60)
    commands = ("evaluate \\TSET 0x4 0x20; evaluate \\_GPE._E01; "
                "evaluate \\_SB.PCI0.S28._SUN; evaluate \\_SB.PCI0.S18._EJ0 1; "
                "evaluate \\_SB.PCI0.B0EJ")
    result = subprocess.run(["acpiexec", "-b", commands, "dsdt.aml", "tset.aml"],
                            cwd=tmp_path, capture_output=True, text=True, timeout=60)
    out = result.stdout
    assert result.returncode == 0, out + result.stderr
    assert "System Notify on [S10_]" in out and "Value 0x01 (Device Check)" in out
    assert "System Notify on [S28_]" in out and "Value 0x03 (Eject Request)" in out
    assert out.count("System Notify") == 2
    values = [line.split("=")[1].strip() for line in out.splitlines() if "[Integer] =" in line]
    assert values == ["0000000000000005", "0000000000000008"]   # _SUN of S28, B0EJ = 1 << 3
