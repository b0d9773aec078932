"""virtio-rng-pci driven by the probe guest, on QEMU 7.2 and kvmkit."""

from __future__ import annotations

import pytest
from guest import machine_args

pytestmark = pytest.mark.kvm


def test_guest_gets_random_bytes(launch, vmm_kind):
    vm = launch(machine_args(extra=["-device", "virtio-rng-pci,id=rng0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    first = vm.command("rng 1024")
    second = vm.command("rng 1024")
    assert first["present"] and first["bytes"] == second["bytes"] == 1024
    assert first["distinct"] > 200 and second["distinct"] > 200   # 1 KiB of noise
    assert first["head"] != second["head"]


def test_max_bytes_limits_what_one_period_gives(launch, vmm_kind):
    """max-bytes per period: the second request gets only what is left of it."""
    vm = launch(machine_args(extra=["-device", "virtio-rng-pci,max-bytes=100,period=60000"]),
                vmm_kind)
    vm.wait_event("ready", timeout=60)
    assert vm.command("rng 64")["bytes"] == 64
    assert vm.command("rng 64")["bytes"] == 36


@pytest.mark.parametrize("model", ["virtio-rng-pci-transitional",
                                   "virtio-rng-pci-non-transitional",
                                   "virtio-rng-pci,ioeventfd=off"])
def test_transitional_and_modern_only_models(launch, vmm_kind, model):
    """QEMU's -transitional (legacy and modern) and -non-transitional (modern only)
    models of the same device, and doorbells without an ioeventfd: the guest's
    driver finds and uses each."""
    vm = launch(machine_args(extra=["-device", f"{model},id=rng0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    assert vm.command("rng 64")["bytes"] == 64
