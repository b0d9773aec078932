"""SMBIOS tables (-smbios) as a guest finds them, and seed 004's other old options
(-realtime, -overcommit mem-lock)."""

from __future__ import annotations

import struct
import subprocess
import time

import pytest

from vmm.boot import smbios

pytestmark = pytest.mark.kvm

SMBIOS_ARGS = [
    "-m", "5G", "-smp", "4,sockets=2,cores=2", "-uuid", "4a9b6a4c-3a6f-4b5e-9e49-0e7b4b8d7c11",
    "-smbios", "type=0,vendor=Foo,version=1.2,date=01/02/2003,release=3.4",
    "-smbios", "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,"
               "version=2014.1,serial=44454c4c-3000-1058-8031-b2c04f4d3532",
    "-smbios", "type=2,manufacturer=Board", "-smbios", "type=3,manufacturer=Acme,serial=S1,"
    "asset=A1,sku=K1", "-smbios", "type=4,manufacturer=Intel,version=V,max-speed=3000",
    "-smbios", "type=11,value=hello", "-smbios", "type=17,manufacturer=Sam,loc_pfx=Slot"]


def structures(low: bytes, base: int = 0xE0000) -> list[tuple[int, int, bytes, list[bytes]]]:
    """(type, handle, formatted area, strings) of each structure, found as a guest
    finds them: the "_SM_" anchor on a 16-byte boundary in 0xF0000-0xFFFFF."""
    anchor = next(o for o in range(0xF0000 - base, 0x100000 - base, 16)
                  if low[o:o + 4] == b"_SM_")
    assert sum(low[anchor:anchor + 31]) & 0xFF == 0                 # checksums hold
    assert sum(low[anchor + 16:anchor + 31]) & 0xFF == 0
    length, address, count = struct.unpack_from("<HIH", low, anchor + 0x16)
    table, out, pos = low[address - base:address - base + length], [], 0
    while pos < len(table):
        kind, size, handle = struct.unpack_from("<BBH", table, pos)
        end = table.index(b"\0\0", pos + size)
        strings = table[pos + size:end].split(b"\0") if end > pos + size else []
        out.append((kind, handle, table[pos + 4:pos + size], strings))
        pos = end + 2
    assert len(out) == count and out[-1][0] == 127
    return out


def guest_low_memory(argv: list[str], sock: str, settle: float) -> bytes:
    from guest import QmpLine, start_with_qmp

    proc = start_with_qmp(argv + ["-nodefaults", "-display", "none"], sock)
    try:
        qmp = QmpLine(sock)
        time.sleep(settle)               # QEMU's SeaBIOS writes the tables as it boots
        path = sock + ".mem"
        assert qmp.execute("pmemsave", val=0xE0000, size=0x20000, filename=path) == \
            {"return": {}}
        with open(path, "rb") as f:
            return f.read()
    finally:
        proc.kill()
        proc.wait()


@pytest.mark.qemu
def test_smbios_tables_are_qemus(tmp_path):
    """Every structure QEMU 7.2 (through SeaBIOS) gives this guest, byte for byte,
    -smbios fields included; type 0 also, since -smbios type=0 sets it."""
    from guest import QEMU, kvmkit_command, probe_elf

    args = SMBIOS_ARGS + ["-kernel", probe_elf()]
    ours = structures(guest_low_memory(kvmkit_command() + args, str(tmp_path / "k"), 0.5))
    theirs = structures(guest_low_memory([QEMU, "-accel", "kvm"] + args,
                                         str(tmp_path / "q"), 4))
    assert [s[0] for s in ours] == [0, 1, 2, 3, 4, 4, 11, 16, 17, 19, 19, 32, 127]
    assert ours == theirs
    system = next(s for s in ours if s[0] == 1)
    assert system[3] == [b"OpenStack Foundation", b"OpenStack Nova", b"2014.1",
                         b"44454c4c-3000-1058-8031-b2c04f4d3532"]


def test_default_tables_name_the_machine():
    board = smbios.Board("pc-i440fx-7.2", "Standard PC (i440FX + PIIX, 1996)", None, 1, 2, 1,
                         0x60FB1, 0x078BFBFD, 256 << 20, 0)
    low = bytearray(0x20000)
    for addr, data in smbios.tables(smbios.SmbiosConfig(), board):
        low[addr - 0xE0000:addr - 0xE0000 + len(data)] = data
    found = structures(bytes(low))
    by_type = {s[0]: s for s in found}
    assert by_type[1][3] == [b"QEMU", b"Standard PC (i440FX + PIIX, 1996)", b"pc-i440fx-7.2"]
    assert by_type[1][2][4:20] == bytes(16)                      # no -uuid: zeros
    assert by_type[4][3] == [b"CPU 0", b"QEMU", b"pc-i440fx-7.2"]
    assert by_type[4][2][4:12] == struct.pack("<II", 0x60FB1, 0x078BFBFD)
    assert by_type[0][3][0] == b"kvmkit"


@pytest.mark.qemu
@pytest.mark.parametrize("arg", [
    "type=1,foo=bar", "type=9", "type=1,uuid=xyz", "type=0,release=abc", "type=x",
    "file=/nonexistent", "type=11,value=x,path=/nonexistent", "type=4,max-speed=99999999"])
def test_bad_smbios_options_get_qemus_errors(arg):
    from guest import QEMU, kvmkit_command

    def first_line(argv):
        run = subprocess.run(argv + ["-nodefaults", "-display", "none", "-S", "-smbios", arg],
                             capture_output=True, text=True, timeout=30)
        return run.returncode, run.stderr.splitlines()[0].split(": ", 1)[1]

    assert first_line(kvmkit_command()) == first_line([QEMU, "-accel", "kvm"])


def test_realtime_mlock_is_the_old_mem_lock(tmp_path):
    """-realtime mlock=on (QEMU before 7.2) warns and locks guest RAM, as
    -overcommit mem-lock=on does: the whole 64 MiB is resident and locked."""
    import os

    from guest import QmpLine, kvmkit_command

    def locked_kib(option: list[str], sock: str) -> int:
        proc = subprocess.Popen(kvmkit_command() + [
            "-m", "64", "-nodefaults", "-display", "none", "-S", *option,
            "-qmp", f"unix:{sock},server=on,wait=off"],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock) and time.monotonic() < deadline:
                time.sleep(0.05)
            QmpLine(sock).execute("query-status")
            with open(f"/proc/{proc.pid}/status") as f:
                status = dict(line.split(":", 1) for line in f)
            return int(status["VmLck"].split()[0])
        finally:
            proc.kill()
            proc.communicate()
    assert locked_kib([], str(tmp_path / "a")) == 0
    assert locked_kib(["-overcommit", "mem-lock=on"], str(tmp_path / "b")) >= 64 << 10
    assert locked_kib(["-realtime", "mlock=on"], str(tmp_path / "c")) >= 64 << 10
    assert locked_kib(["-realtime", "mlock=off"], str(tmp_path / "d")) == 0
    run = subprocess.run(kvmkit_command() + ["-nodefaults", "-display", "none", "-S",
                                             "-realtime", "mlock=off", "-monitor", "stdio"],
                         input="quit\n", capture_output=True, text=True, timeout=30)
    assert "warning: '-realtime mlock=...' is deprecated, please use " \
        "'-overcommit mem-lock=...'" in run.stderr
