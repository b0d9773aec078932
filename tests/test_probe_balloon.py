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


def start_balloon_guest(launch, tmp_path, vmm_kind, memory_mib):
    """The probe guest with virtio-balloon-pci id=balloon0 and a QMP socket, ready."""
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(memory_mib=memory_mib, extra=[
        "-device", "virtio-balloon-pci,id=balloon0",
        "-qmp", f"unix:{sock},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    return vm, Qmp(sock)


def test_balloon_gives_touched_memory_back_and_takes_it_again(launch, tmp_path, vmm_kind):
    vm, qmp = start_balloon_guest(launch, tmp_path, vmm_kind, 1024)
    assert vm.command("balloon")["present"] is True
    assert vm.command("touch 800 5")["errors"] == 0
    touched = rss_mib(vm.proc.pid)
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


def test_guest_stats_follow_the_polling_interval(launch, tmp_path, vmm_kind):
    vm, qmp = start_balloon_guest(launch, tmp_path, vmm_kind, 256)
    path = "/machine/peripheral/balloon0"

    def qom_get(prop):
        return qmp.execute("qom-get", path=path, property=prop)["return"]

    first = vm.command("stats")
    assert first["enabled"] is True and first["updates"] == 1
    stats = qom_get("guest-stats")   # the buffer the driver queued at start-up
    assert stats["last-update"] > 0
    assert stats["stats"]["stat-minor-faults"] == 1
    assert stats["stats"]["stat-total-memory"] == first["total"]
    assert stats["stats"]["stat-free-memory"] == first["free"]
    assert stats["stats"]["stat-htlb-pgalloc"] == (1 << 64) - 1    # never reported
    assert qom_get("guest-stats-polling-interval") == 0
    assert qmp.execute("qom-set", path=path, property="guest-stats-polling-interval",
                       value=-1)["error"]["desc"] == "timer value must be greater than zero"
    assert qmp.execute("qom-set", path=path, property="guest-stats-polling-interval",
                       value=1) == {"return": {}}
    assert qom_get("guest-stats-polling-interval") == 1
    time.sleep(3.3)                     # three periods: two refills at least
    before = vm.command("stats")["updates"]
    host = qom_get("guest-stats")["stats"]["stat-minor-faults"]
    after = vm.command("stats")["updates"]
    assert before >= 3 and before <= host <= after
    qmp.execute("qom-set", path=path, property="guest-stats-polling-interval", value=0)
    time.sleep(1.5)
    settled = vm.command("stats")["updates"]
    time.sleep(1.5)
    assert vm.command("stats")["updates"] == settled, "polling went on after interval 0"


def test_free_page_reporting_gives_memory_back(launch, vmm_kind):
    vm = launch(machine_args(memory_mib=1024, extra=[
        "-device", "virtio-balloon-pci,id=balloon0,free-page-reporting=on"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    assert vm.command("touch 800 3")["errors"] == 0
    touched = rss_mib(vm.proc.pid)
    assert vm.command("report 700", timeout=60) == {"reported_mib": 700}
    assert touched - rss_mib(vm.proc.pid) >= 600, "reported pages were not discarded"
    assert vm.command("touch 800 4")["errors"] == 0


def test_balloon_change_events_are_rate_limited_as_qemus(launch, tmp_path, vmm_kind):
    """Three size changes within a second: the first event at once, the last one at
    the end of the one-second period, the middle one never (QEMU's throttle)."""
    vm, qmp = start_balloon_guest(launch, tmp_path, vmm_kind, 256)
    seen = []
    for target in (200, 150, 100):
        qmp.hmp(f"balloon {target}")
        assert vm.wait_event("balloon")["actual_pages"] == (256 - target) * MiB // 4096
        seen.append(time.monotonic())
    time.sleep(2.5)
    qmp.execute("query-status")         # collects the events that came meanwhile
    changes = [e for e in qmp.events if e["event"] == "BALLOON_CHANGE"]
    actual = [e["data"]["actual"] for e in changes]
    assert actual[0] == 200 * MiB and actual[-1] == 100 * MiB
    if seen[-1] - seen[0] < 0.9:        # all three inside one period: the middle one is gone
        assert actual == [200 * MiB, 100 * MiB]
        stamp = [e["timestamp"]["seconds"] + e["timestamp"]["microseconds"] / 1e6
                 for e in changes]
        assert stamp[1] - stamp[0] < 1.0    # the delayed event keeps the time it happened
    else:                               # a slow machine: still never two in one period
        assert len(actual) <= 3


def test_legacy_interface_of_the_transitional_balloon(launch, tmp_path, vmm_kind):
    """The probe drives the balloon through the legacy (virtio 0.9.5) I/O BAR:
    features, a page-frame-number ring, num_pages from the legacy config, one
    page inflated and discarded, `actual` written back."""
    vm, qmp = start_balloon_guest(launch, tmp_path, vmm_kind, 256)
    qmp.hmp("balloon 200")
    vm.wait_event("balloon")
    got = vm.command("legacy")
    assert got["queue_size"] == 128 and got["used"] == 1
    assert got["num_pages"] == 56 * 256          # the target survives the device reset
    assert got["page_after"] == 0                # the inflated page was discarded
    # STATS_VQ, PAGE_POISON, the ring features, and the legacy-only bits 24, 27, 30
    assert got["host_features"] == "0x79000012"
    assert qmp.hmp("info balloon") == "balloon: actual=255\r\n"


def test_a_qemu_qmp_client_sees_balloon_change_and_guest_stats(launch, tmp_path, vmm_kind):
    """What a QEMU user's script does: qemu.qmp's QMPClient sets the balloon, gets
    BALLOON_CHANGE events, and reads guest-stats that match the guest's own numbers."""
    import asyncio

    from qemu.qmp import QMPClient

    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(memory_mib=256, extra=[
        "-device", "virtio-balloon-pci,id=balloon0,guest-stats-polling-interval=1",
        "-qmp", f"unix:{sock},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)

    async def scenario():
        client = QMPClient("balloon-test")
        await client.connect(sock)
        with client.listener("BALLOON_CHANGE") as listener:
            await client.execute("balloon", {"value": 192 * MiB})
            event = await asyncio.wait_for(listener.get(), 20)
        stats = await client.execute("qom-get", {"path": "/machine/peripheral/balloon0",
                                                 "property": "guest-stats"})
        await client.disconnect()
        return event, stats

    event, stats = asyncio.run(scenario())
    assert event["data"] == {"actual": 192 * MiB}
    guest = vm.command("stats")
    assert stats["stats"]["stat-total-memory"] == guest["total"]
    assert stats["last-update"] > 0


def test_config_change_arrives_as_intx_through_the_ioapic(launch, tmp_path, vmm_kind):
    """QEMU's balloon has no MSI-X: its config change raises INTx, level-triggered,
    through the PIIX PIRQ routing and the IOAPIC; the guest reads the ISR (which
    lowers the line), then EOIs, and the interrupt does not come back."""
    vm, qmp = start_balloon_guest(launch, tmp_path, vmm_kind, 256)
    routed = vm.command("balloon intx")
    assert routed["irq"] in (10, 11) and routed["vector"] == 0xE0
    qmp.hmp("balloon 200")
    event = vm.wait_event("balloon-intx", timeout=20)
    assert event["isr"] & 2                       # the configuration changed
    deadline = time.monotonic() + 20              # the driver follows the new target
    while vm.command("balloon")["actual"] != 56 * 256:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    time.sleep(0.5)
    counts = vm.command("irqs")["counts"]
    assert 1 <= counts[str(0xE0)] <= 20           # acknowledged: no storm (it was 10000+)
