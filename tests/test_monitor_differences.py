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


ABSENT = [(name, {}) for name in (
    "query-sev", "query-sev-capabilities", "query-sev-launch-measure", "query-sgx",
    "query-sgx-capabilities", "query-tpm", "query-colo-status", "x-colo-lost-heartbeat",
    "query-xen-replication-status",
    "xen-colo-do-checkpoint", "query-replay", "replay-delete-break",
    "query-vm-generation-id", "query-pr-managers", "x-query-jit", "x-query-opcount",
    "x-query-profile", "x-query-rdma")] + [
    ("query-sev-attestation-report", {"mnonce": "x"}),
    ("sev-inject-launch-secret", {"packet-header": "a", "secret": "b", "gpa": 5}),
    ("xen-set-replication", {"enable": True, "primary": True}),
    ("xen-set-replication", {"enable": True, "primary": True, "failover": True}),
    ("xen-set-global-dirty-log", {"enable": True}),
    ("replay-break", {"icount": 5}), ("replay-seek", {"icount": 5}),
    ("query-rocker", {"name": "r"}), ("query-rocker-ports", {"name": "r"}),
    ("query-rocker-of-dpa-flows", {"name": "r", "tbl-id": 1}),
    ("query-rocker-of-dpa-groups", {"name": "r", "type": 1})]


def test_features_the_machine_lacks_answer_as_qemu(tmp_path):
    """SEV, SGX, TPM, Xen and COLO replication, record/replay, rocker, PR managers, the
    VM generation ID, TCG's counters: QEMU 7.2's answers on this KVM host, to the letter."""
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "kvmkit.sock"), ABSENT)
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "qemu.sock"), ABSENT)
    assert [(c, a, r) for (c, a), r in zip(ABSENT, ours)] == \
        [(c, a, r) for (c, a), r in zip(ABSENT, theirs)]


def test_no_tpm_is_offered(tmp_path):
    """QEMU lists the TPM models and back ends it was built with; kvmkit has none."""
    asked = [("query-tpm-models", {}), ("query-tpm-types", {})]
    assert qmp_answers(kvmkit_command(), str(tmp_path / "k.sock"), asked) == [
        {"return": []}, {"return": []}]
