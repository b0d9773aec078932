"""query-stats and query-stats-schemas: KVM's own counters, as QEMU 7.2 reports them
(libvirt's domstats shows them as vcpu.N.* and vm.*)."""

from __future__ import annotations

import pytest
from guest import QEMU, QmpLine, kvmkit_command, machine_args, qmp_answers

pytestmark = pytest.mark.qemu
VCPU0 = "/machine/unattached/device[0]"
QUESTIONS = [
    ("query-stats-schemas", {}), ("query-stats-schemas", {"provider": "kvm"}),
    ("query-stats", {"target": "vm"}), ("query-stats", {"target": "vcpu"}),
    ("query-stats", {"target": "vcpu", "vcpus": [VCPU0],
                     "providers": [{"provider": "kvm", "names": ["exits", "halt_wait_hist"]}]}),
    ("query-stats", {"target": "vcpu", "vcpus": ["/machine/nosuch"]}),
    ("query-stats", {"target": "cryptodev"}),
]


def _shape(reply: dict) -> object:
    """The reply with each statistic's value reduced to its JSON type and length."""
    if "error" in reply:
        return reply
    out = []
    for entry in reply["return"]:
        stats = [{**s, "value": (type(s["value"]).__name__, len(s["value"])
                                 if isinstance(s["value"], list) else 1)}
                 if "value" in s else s for s in entry["stats"]]
        out.append({**entry, "stats": stats})
    return out


def test_kvm_statistics_are_qemus(tmp_path):
    args = ["-smp", "2"]
    ours = qmp_answers(kvmkit_command() + args, str(tmp_path / "k.sock"), QUESTIONS)
    theirs = qmp_answers([QEMU, "-accel", "kvm"] + args, str(tmp_path / "q.sock"), QUESTIONS)
    for (name, arguments), mine, qemus in zip(QUESTIONS, ours, theirs):
        assert _shape(mine) == _shape(qemus), (name, arguments)
    assert [r["qom-path"] for r in ours[3]["return"]] == ["/machine/unattached/device[2]", VCPU0]


@pytest.mark.parametrize("vmm", ["kvmkit", "qemu"])
def test_exit_counters_move_while_the_guest_runs(launch, tmp_path, vmm):
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off"]), vmm)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)

    def exits() -> int:
        reply = qmp.execute("query-stats", target="vcpu", providers=[
            {"provider": "kvm", "names": ["exits"]}])
        return reply["return"][0]["stats"][0]["value"]
    before = exits()
    for _ in range(20):                   # each command is serial port I/O: exits
        assert vm.command("info")
    assert exits() > before


def test_a_vcpu_halted_for_good_still_answers(tmp_path):
    """A guest that disabled interrupts and halted never leaves KVM_RUN, and a vCPU
    ioctl waits for that: query-stats must not ask the vCPU fd then (found by the
    QMP oracle fuzzer, where it hung the monitor)."""
    import time

    from guest import start_with_qmp
    from tinyguests import pvh_serial_guest

    guest = tmp_path / "halt.elf"
    guest.write_bytes(pvh_serial_guest(b"halting\n", None, tail=b"\xfa"))     # cli
    sock = str(tmp_path / "k.sock")
    proc = start_with_qmp(kvmkit_command() + ["-m", "64", "-nodefaults", "-display", "none",
                                              "-kernel", str(guest)], sock)
    try:
        qmp = QmpLine(sock)
        qmp.sock.settimeout(10)
        time.sleep(1)                                     # it has halted by now
        reply = qmp.execute("query-stats", target="vcpu")
        assert reply["return"][0]["qom-path"] == VCPU0
        assert qmp.execute("query-stats-schemas")["return"][0]["target"] == "vcpu"
    finally:
        proc.kill()
        proc.wait()
