"""dump-guest-memory: the running probe guest dumped as an ELF core, on kvmkit and
QEMU 7.2, read back with gdb (Debian's) and by its headers; errors as QEMU's."""

from __future__ import annotations

import shutil
import struct
import subprocess
import time

import pytest
from guest import (
    QEMU,
    QmpLine,
    kvmkit_command,
    machine_args,
    probe_elf,
    qmp_answers,
    start_kvmkit,
    start_qemu,
)

pytestmark = pytest.mark.kvm


def elf_summary(path) -> dict:
    """e_machine, the notes (owner, type) and the PT_LOADs (paddr, vaddr, size)."""
    data = open(path, "rb").read()
    machine, = struct.unpack_from("<H", data, 18)
    phoff, = struct.unpack_from("<Q", data, 32)
    phnum, = struct.unpack_from("<H", data, 56)
    notes, loads = [], []
    for i in range(phnum):
        kind, _f, offset, vaddr, paddr, filesz, _m, _a = struct.unpack_from(
            "<IIQQQQQQ", data, phoff + 56 * i)
        if kind == 4:
            pos = offset
            while pos < offset + filesz:
                namesz, descsz, ntype = struct.unpack_from("<III", data, pos)
                name = data[pos + 12:pos + 12 + namesz - 1].decode()
                notes.append((name, ntype, descsz))
                pos += 12 + (namesz + 3) // 4 * 4 + (descsz + 3) // 4 * 4
        elif kind == 1:
            loads.append((paddr, vaddr, filesz))
    return {"machine": machine, "notes": notes, "loads": loads}


@pytest.mark.parametrize("vmm", ["kvmkit", "qemu"])
def test_dump_of_the_running_guest_reads_back_in_gdb(vmm, tmp_path):
    sock = str(tmp_path / "qmp.sock")
    start = start_kvmkit if vmm == "kvmkit" else start_qemu
    vm = start(machine_args(memory_mib=64, cpus=2,
                            extra=["-qmp", f"unix:{sock},server=on,wait=off"]))
    try:
        assert vm.read_json(60)["event"] == "ready"
        qmp = QmpLine(sock)
        core = tmp_path / "core.elf"
        assert qmp.execute("dump-guest-memory", paging=False,
                           protocol=f"file:{core}") == {"return": {}}
        result = qmp.execute("query-dump")["return"]
        assert result["status"] == "completed" and result["completed"] == result["total"]
        assert vm.command("echo resumed") == {"echo": "resumed"}
        summary = elf_summary(core)
        assert summary["machine"] == 62                           # EM_X86_64: long mode
        assert [n[:2] for n in summary["notes"]] == [("CORE", 1)] * 2 + [("QEMU", 0)] * 2
        assert all(paddr == vaddr for paddr, vaddr, _size in summary["loads"])
        assert sum(size for paddr, _v, size in summary["loads"] if paddr < 64 << 20) \
            >= (64 << 20) - (1 << 20)
        if shutil.which("gdb"):
            out = subprocess.run(["gdb", "-q", "-nx", "-batch", probe_elf(), str(core),
                                  "-ex", "x/8xb probe_main", "-ex", "info registers rip"],
                                 capture_output=True, text=True, timeout=60).stdout
            elf = open(probe_elf(), "rb").read()
            code = bytes(int(b, 16) for b in out.split("<probe_main>:")[1].split("\n")[0]
                         .split())
            assert len(code) == 8 and code in elf, out
            assert "rip" in out, out
        # a filtered dump: only the page asked for
        part = tmp_path / "part.elf"
        assert qmp.execute("dump-guest-memory", paging=False, protocol=f"file:{part}",
                           begin=0x100000, length=4096) == {"return": {}}
        assert elf_summary(part)["loads"] == [(0x100000, 0x100000, 4096)]
    finally:
        vm.close()


def test_detached_dump_completes_with_an_event(tmp_path):
    sock = str(tmp_path / "qmp.sock")
    vm = start_kvmkit(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off"]))
    try:
        assert vm.read_json(60)["event"] == "ready"
        qmp = QmpLine(sock)
        assert qmp.execute("dump-guest-memory", paging=False, detach=True,
                           protocol=f"file:{tmp_path / 'core'}") == {"return": {}}
        deadline = time.monotonic() + 60
        while qmp.execute("query-dump")["return"]["status"] == "active":
            assert time.monotonic() < deadline
            time.sleep(0.1)
        qmp.execute("query-status")            # any event sent before its reply is kept
        event = next(e for e in qmp.events if e["event"] == "DUMP_COMPLETED")
        assert event["data"]["result"]["status"] == "completed"
        assert qmp.execute("query-status")["return"]["status"] == "running"
        hmp = qmp.execute("human-monitor-command", **{"command-line": "info dump"})
        assert hmp == {"return": "Status: completed\r\n"}
    finally:
        vm.close()


def test_dump_errors_as_qemu(tmp_path):
    commands = [
        ("dump-guest-memory", {"paging": False, "protocol": str(tmp_path / "x")}),
        ("dump-guest-memory", {"paging": False, "protocol": "file:/nonexistent/x"}),
        ("dump-guest-memory", {"paging": False, "protocol": f"file:{tmp_path}/a", "begin": 0}),
        ("dump-guest-memory", {"paging": False, "protocol": f"file:{tmp_path}/a",
                               "length": 4096}),
        ("dump-guest-memory", {"paging": False, "protocol": f"file:{tmp_path}/a",
                               "begin": 4096, "length": 0}),
        ("dump-guest-memory", {"paging": False, "protocol": f"file:{tmp_path}/a",
                               "begin": 1 << 40, "length": 4096}),
        ("query-dump", {}),
        ("dump-guest-memory", {"paging": True, "protocol": f"file:{tmp_path}/a",
                               "format": "kdump-zlib"}),
        ("dump-guest-memory", {"paging": False, "protocol": f"file:{tmp_path}/a",
                               "format": "kdump-lzo"}),
        ("dump-guest-memory", {"paging": False, "protocol": "fd:nosuch"}),
        ("dump-guest-memory", {"paging": False, "protocol": f"file:{tmp_path}/a",
                               "format": "win-dmp"}),
        ("human-monitor-command", {"command-line": "dump-guest-memory -z -l x"}),
        ("human-monitor-command", {"command-line": "info dump"}),
    ]
    ours = qmp_answers(kvmkit_command() + ["-m", "64"], str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm", "-m", "64"], str(tmp_path / "q.sock"),
                         commands)
    assert ours == theirs
