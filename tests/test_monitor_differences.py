"""Monitor answers that once differed from QEMU 7.2's, asked of kvmkit and of a live
QEMU with the same machine: each must be QEMU's, class and text."""

from __future__ import annotations

import pytest
from guest import QEMU, kvmkit_command, qmp_answers

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

COMMANDS = [
    ("device-list-properties", {"typename": "nosuch"}),
    ("device-list-properties", {"typename": "container"}),
    ("human-monitor-command", {"command-line": "info status", "cpu-index": 5}),
    ("human-monitor-command", {"command-line": "info status", "cpu-index": -1}),
    ("human-monitor-command", {"command-line": "info status", "cpu-index": 0}),
    ("device_add", {"driver": "virtio-net-pci", "bus": "nosuchbus", "id": "n1"}),
    ("device_add", {"driver": "virtio-net-pci", "id": "bad id!"}),
    ("device_add", {"driver": "e1000", "id": "net0"}),
    ("device_del", {"id": "net0"}),
    ("device_del", {"id": "net0"}),              # pending since before the guest ran
]


def test_answers_are_qemus(tmp_path):
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "kvmkit.sock"), COMMANDS)
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "qemu.sock"), COMMANDS)
    for (name, args), mine, reference in zip(COMMANDS, ours, theirs):
        assert mine == reference, (name, args)
    assert theirs[0]["error"]["class"] == "DeviceNotFound"


def test_bad_id_on_the_command_line():
    import subprocess

    proc = subprocess.run(kvmkit_command() + ["-nodefaults", "-device", "e1000,id=9lives"],
                          capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-2:] == [
        "kvmkit: -device e1000,id=9lives: Parameter 'id' expects an identifier",
        "Identifiers consist of letters, digits, '-', '.', '_', starting with a letter."]
