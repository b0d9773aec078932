"""Ballooning through the monitor with the probe guest's virtio-balloon driver,
on QEMU 7.2 (where the driver was proven first) and on kvmkit."""

from __future__ import annotations

import time

import pytest
from guest import QmpLine as Qmp
from guest import machine_args

pytestmark = pytest.mark.kvm
MiB = 1 << 20


def rss_mib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    raise AssertionError("no VmRSS")


def test_balloon_gives_touched_memory_back_and_takes_it_again(launch, tmp_path, vmm_kind):
    balloon_vmm = vmm_kind
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(memory_mib=1024, extra=[
        "-device", "virtio-balloon-pci,id=balloon0",
        "-qmp", f"unix:{sock},server=on,wait=off"]), balloon_vmm)
    vm.wait_event("ready", timeout=60)
    assert vm.command("balloon")["present"] is True
    assert vm.command("touch 800 5")["errors"] == 0
    touched = rss_mib(vm.proc.pid)
    qmp = Qmp(sock)
    assert qmp.execute("human-monitor-command", **{"command-line": "balloon 300"}) == \
        {"return": ""}
    event = vm.wait_event("balloon", timeout=60)
    assert event["actual_pages"] == (1024 - 300) * MiB // 4096
    time.sleep(0.5)
    assert qmp.execute("query-balloon") == {"return": {"actual": 300 * MiB}}
    assert qmp.execute("human-monitor-command", **{"command-line": "info balloon"}) == \
        {"return": "balloon: actual=300\r\n"}
    assert touched - rss_mib(vm.proc.pid) >= 600, "the host did not get the memory back"
    assert any(e["event"] == "BALLOON_CHANGE" for e in qmp.events)
    qmp.execute("balloon", value=1024 * MiB)
    assert vm.wait_event("balloon", timeout=60)["actual_pages"] == 0
    assert vm.command("touch 800 6")["errors"] == 0
