"""QEMU's own Python harness, QEMUMachine, drives kvmkit as it drives QEMU.

Two QEMUMachines, each fetched from Debian's QEMU sources (tests/qemu_python.py):
7.2's, which listens on a socket path for the VMM's QMP and console, and the
newest trixie one's, which by default hands the VMM one end of a socketpair
(``-chardev socket,id=mon,fd=N``, connected, not listening) and can still listen
on a path. Each launches the probe guest with a console, reads it, runs QMP
commands, waits for a STOP/RESUME pair and shuts the VMM down with 'quit'.
The same runs on QEMU 7.2, the reference."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest
from conftest import REQUIRE_KVM, require_kvm, require_qemu
from guest import QEMU, kvmkit_command, probe_elf

DRIVER = Path(__file__).with_name("qemu_machine_driver.py")
HARNESSES = [("bookworm", "default"), ("trixie", "default"), ("trixie", "path")]


def _harness(suite: str) -> Path:
    from qemu_python import machine_package

    try:
        return machine_package(suite)
    except OSError as e:
        if REQUIRE_KVM:
            raise
        pytest.skip(f"QEMU's Python harness could not be fetched: {e}")


@pytest.mark.parametrize("vmm", ["kvmkit", "qemu"])
@pytest.mark.parametrize(("suite", "wiring"), HARNESSES)
def test_qemu_machine_drives_the_vmm(tmp_path, suite, wiring, vmm):
    if vmm == "qemu":
        require_qemu()
        binary, accel = QEMU, ["-accel", "kvm"]
    else:
        require_kvm()
        binary, accel = kvmkit_command()[0], []
    harness = _harness(suite)
    env = {**os.environ, "PYTHONPATH": str(harness)}
    with tempfile.TemporaryDirectory(prefix="qm-", dir="/tmp") as sockets:  # sun_path is short
        proc = subprocess.run(
            [sys.executable, str(DRIVER), binary, wiring, sockets, *accel,
             "-m", "256", "-nodefaults", "-kernel", probe_elf()],
            capture_output=True, text=True, timeout=120, env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout.splitlines()[-1])

    args = " ".join(report["command_line"])
    if wiring == "default" and suite == "trixie":     # a connected socket, not a path
        assert "-chardev socket,id=mon,fd=" in args and "server" not in args
    else:
        assert "-chardev socket,id=mon,path=" in args
    assert '"ready"' in report["console"]             # the guest's console reached it
    assert report["status"]["return"]["status"] == "running"
    assert report["bad_command"]["error"] == {
        "class": "CommandNotFound", "desc": "The command no-such-command has not been found"}
    assert report["hmp"] == {"return": "VM status: running\r\n"}
    assert report["stop_event"]["event"] == "STOP"
    assert report["paused"]["return"]["status"] == "paused"
    assert report["resume_event"]["event"] == "RESUME"
    assert report["exitcode"] == 0                    # 'quit', not a kill
