"""Probe-guest scenarios, each run on QEMU 7.2 (the reference) and on kvmkit."""

from __future__ import annotations

import time

import pytest
from guest import machine_args

pytestmark = pytest.mark.kvm

PLATFORM_FUNCTIONS = {
    "00:00.0": ("8086", "1237", "060000"),   # i440FX host bridge
    "00:01.0": ("8086", "7000", "060100"),   # PIIX3 ISA bridge
    "00:01.1": ("8086", "7010", "010180"),   # PIIX3 IDE
    "00:01.3": ("8086", "7113", "068000"),   # PIIX4 ACPI
}


def boot(launch, vmm_kind, **kw):
    vm = launch(machine_args(**kw), vmm_kind)
    ready = vm.wait_event("ready", timeout=60)
    return vm, ready


def test_boots_and_reports_memory_and_cpus(launch, vmm_kind):
    vm, ready = boot(launch, vmm_kind, memory_mib=256)
    assert ready["cpus"] == 1
    info = vm.command("info")
    assert 254 <= info["memory_mib"] <= 256
    assert info["cpus"] == 1
    # the same RAM on both: QEMU's firmware keeps 128 KiB at the top of low RAM
    assert info["ram_regions"] == [["0x0", "0x9fc00"], ["0x100000", "0xffe0000"]]


def test_second_vcpu_reports_in(launch, vmm_kind):
    vm, ready = boot(launch, vmm_kind, cpus=2)
    assert ready["cpus"] == 2
    info = vm.command("info")
    assert info["cpus"] == 2 and info["madt_cpus"] == 2


def test_pci_lists_the_pc_platform_functions(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind)
    devices = {d["bdf"]: d for d in vm.command("pci")["devices"]}
    for bdf, (vendor, device, klass) in PLATFORM_FUNCTIONS.items():
        assert (devices[bdf]["vendor"], devices[bdf]["device"], devices[bdf]["class"]) == \
            (vendor, device, klass)
        assert (devices[bdf]["subsystem_vendor"], devices[bdf]["subsystem"]) == ("1af4", "1100")
    assert set(devices) == set(PLATFORM_FUNCTIONS)
    ide_bars = devices["00:01.1"]["bars"]
    assert [(b["index"], b["type"], b["size"]) for b in ide_bars] == [(4, "io", 16)]
    assert devices["00:01.3"]["irq_pin"] == 1 and devices["00:01.3"]["irq_line"] == 9


def test_acpi_tables_describe_the_machine(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind, cpus=2)
    acpi = vm.command("acpi")
    assert {"FACP", "APIC"} <= set(acpi["tables"])
    assert acpi["madt"] == {"cpus": 2, "lapic": "0xfee00000", "ioapic": "0xfec00000"}
    fadt = acpi["fadt"]
    assert (fadt["sci"], fadt["pm1a_evt"], fadt["pm1a_cnt"], fadt["pm_tmr"], fadt["gpe0"]) == \
        (9, "0x600", "0x604", "0x608", "0xafe0")


def test_pm_timer_counts_at_3_58_mhz(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind)
    first = int(vm.command("inl 0x608")["value"], 16)
    time.sleep(0.2)
    second = int(vm.command("inl 0x608")["value"], 16)
    elapsed_ticks = (second - first) & 0xFFFFFF
    assert 0.15 * 3579545 < elapsed_ticks < 1.0 * 3579545


def test_touch_and_verify_ram(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind, memory_mib=256)
    assert vm.command("touch 128 7") == {"mib": 128, "errors": 0, "first_error": "0x0"}
    assert vm.command("check 128 7")["errors"] == 0
    assert vm.command("check 128 8")["errors"] > 0  # the check can fail


def test_exit_status_through_isa_debug_exit(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind)
    vm.send("exit 5")
    assert vm.wait_exit() == (5 << 1) | 1


def test_unassigned_ports_read_all_ones_and_guest_keeps_running(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind)
    assert vm.command("inb 0x1234") == {"value": "0xff"}
    assert vm.command("inl 0x1234") == {"value": "0xffffffff"}
    assert vm.command("outb 0x1234 0x55") == {"ok": True}
    assert vm.command("writel 0xd0000000 5") == {"ok": True}
    value = vm.command("readl 0xd0000000")["value"]
    # kvmkit answers a master abort with all-ones, as hardware does; QEMU 7.2 reads 0 here.
    assert value == ("0xffffffff" if vmm_kind == "kvmkit" else "0x0")
    assert vm.command("echo still here") == {"echo": "still here"}


def test_emulation_failure_leaves_the_vmm_alive_and_reporting(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind)
    assert vm.command("crash") == {"crashing": True}
    deadline = time.monotonic() + 20
    while "KVM internal error. Suberror: 1" not in vm.stderr and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "KVM internal error. Suberror: 1" in vm.stderr
    assert "emulation failure" in vm.stderr
    time.sleep(0.5)
    assert vm.proc.poll() is None, "the VMM must stay up in the internal-error state"


def test_serial_input_wakes_an_idle_guest(launch, vmm_kind):
    """The guest sleeps in hlt between commands; only the UART interrupt wakes it."""
    vm, _ = boot(launch, vmm_kind)
    before = vm.command("irqs")["counts"].get("48", 0)
    for i in range(5):
        assert vm.command(f"echo {i}") == {"echo": str(i)}
    after = vm.command("irqs")["counts"]["48"]
    assert after > before


@pytest.mark.parametrize("port,value", [("0x64", "0xfe"), ("0xcf9", "0x6")],
                         ids=["i8042-pulse-reset", "piix-reset-control"])
def test_guest_reset_reboots_into_a_fresh_guest(launch, vmm_kind, port, value):
    vm, _ = boot(launch, vmm_kind)
    assert vm.command("touch 1 3")["errors"] == 0
    vm.send(f"outb {port} {value}")
    vm.wait_event("ready", timeout=60)
    assert vm.command("echo rebooted") == {"echo": "rebooted"}


def test_guest_reset_with_no_reboot_exits(launch, vmm_kind):
    vm = launch(machine_args(extra=["-no-reboot"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    vm.send("outb 0xcf9 0x6")
    assert vm.wait_exit() == 0


def test_acpi_power_off_exits_with_status_0(launch, vmm_kind):
    vm, _ = boot(launch, vmm_kind)
    vm.send("outw 0x604 0x2000")   # PM1a_CNT: SLP_TYP 0 (S5), SLP_EN
    assert vm.wait_exit() == 0


def test_virtio_devices_offer_qemus_feature_words(launch, tmp_path, vmm_kind):
    """What each modern virtio-pci device offers, its queue count and MSI-X table,
    as QEMU 7.2 shows them to the guest (RING_RESET, bit 40, included)."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    vm = launch(machine_args(extra=[
        "-device", "virtio-balloon-pci", "-device", "virtio-rng-pci",
        "-netdev", "user,id=u0", "-device", "virtio-net-pci,netdev=u0",
        "-device", "virtio-serial-pci",
        "-drive", f"file={image},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    found = {d["type"]: (d["features"], d["num_queues"], d["msix"])
             for d in vm.command("virtio")["devices"]}
    assert found == {1: ("0x10130bf8024", 3, 4), 2: ("0x10130006e54", 1, 2),
                     3: ("0x10130000006", 64, 2), 4: ("0x10130000000", 1, 2),
                     5: ("0x10130000012", 3, 0)}


def test_virtio_blk_has_a_request_queue_per_vcpu(launch, tmp_path, vmm_kind):
    """QEMU 7.2's num-queues default: one per vCPU, MQ offered when there are
    several, and an MSI-X vector for each queue and the configuration."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    vm = launch(machine_args(cpus=2, extra=[
        "-drive", f"file={image},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    [blk] = vm.command("virtio")["devices"]
    assert (blk["features"], blk["num_queues"], blk["msix"]) == ("0x10130007e54", 2, 3)
    assert vm.command("blk write 1 on-queue-0") == {"status": 0}
    assert vm.command("blk read 1") == {"status": 0, "text": "on-queue-0"}
