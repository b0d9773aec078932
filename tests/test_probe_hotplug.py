"""PCI hotplug through ACPI, as on QEMU's i440fx: device_add of a NIC while the
probe guest runs (it assigns the BARs and drives the NIC), device_del that the
guest acknowledges by ejecting the slot, and one it never acknowledges, which
completes at the next reset. Each scenario runs on QEMU 7.2 and on kvmkit."""

from __future__ import annotations

import time

import pytest
from guest import QmpLine as Qmp
from guest import machine_args
from netns import in_netns, packet_socket

pytestmark = pytest.mark.kvm
TAP = "n1: index=0,type=tap,ifname=kk1,script=no,downscript=no"


def wait_for_events(qmp, name: str, count: int, timeout: float = 10) -> list[dict]:
    deadline = time.monotonic() + timeout
    while True:
        found = [e for e in qmp.events if e["event"] == name]
        if len(found) >= count or time.monotonic() > deadline:
            return found
        time.sleep(0.1)
        qmp.execute("query-status")          # reading a reply collects what came before


def start(launch, tmp_path, vmm_kind, netns):  # noqa: F811
    sock_path = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[
        "-netdev", "tap,id=n1,ifname=kk1,script=no,downscript=no",
        "-qmp", f"unix:{sock_path},server=on,wait=off"]), vmm_kind,
        preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    return vm, Qmp(sock_path)


@pytest.mark.parametrize("model", ["virtio-net-pci", "e1000", "rtl8139"])
def test_hot_added_nic_works_and_device_del_ends_in_device_deleted(
        launch, tmp_path, vmm_kind, netns, model):  # noqa: F811
    vm, qmp = start(launch, tmp_path, vmm_kind, netns)
    assert vm.command("net") == {"present": False}
    assert qmp.hmp("info network") == TAP + "\r\n"
    assert qmp.execute("device_add", driver=model, netdev="n1", id="hot0") == {"return": {}}
    added = vm.wait_event("pci-added", timeout=10)
    assert (added["vendor"], added["device"]) == {
        "virtio-net-pci": ("1af4", "1000"), "e1000": ("8086", "100e"),
        "rtl8139": ("10ec", "8139")}[model]
    nic = vm.command("net")
    assert nic["present"] and nic["mac"] == "52:54:00:12:34:56"
    assert qmp.hmp("info network") == (
        f"hot0: index=0,type=nic,model={model},macaddr=52:54:00:12:34:56\r\n"
        " \\ " + TAP + "\r\n")
    host = packet_socket(netns, "kk1")
    assert vm.command("netsend 020000000001 0x88b5 hot-plugged") == {"sent": 60}
    assert host.recv(2048)[14:25] == b"hot-plugged"
    host.close()

    assert qmp.execute("device_del", id="hot0") == {"return": {}}
    assert vm.wait_event("pci-removal-requested", timeout=10)["slot"] == added["slot"]
    assert vm.wait_event("pci-ejected", timeout=10)["slot"] == added["slot"]
    virtio_child = [{"path": "/machine/peripheral/hot0/virtio-backend"}] \
        if model == "virtio-net-pci" else []
    deleted = wait_for_events(qmp, "DEVICE_DELETED", len(virtio_child) + 1)
    assert [e["data"] for e in deleted] == virtio_child + [
        {"device": "hot0", "path": "/machine/peripheral/hot0"}]
    assert qmp.hmp("info network") == TAP + "\r\n"
    assert vm.command("net") == {"present": False}
    assert qmp.execute("device_del", id="hot0")["error"]["desc"] == "Device 'hot0' not found"


def test_unacknowledged_unplug_completes_at_reset(launch, tmp_path, vmm_kind, netns):  # noqa: F811
    vm, qmp = start(launch, tmp_path, vmm_kind, netns)
    assert vm.command("hotplug manual")["manual"] is True
    qmp.execute("device_add", driver="virtio-net-pci", netdev="n1", id="hot1")
    vm.wait_event("pci-added", timeout=10)
    assert qmp.execute("device_del", id="hot1") == {"return": {}}
    vm.wait_event("pci-removal-requested", timeout=10)
    time.sleep(0.5)
    assert wait_for_events(qmp, "DEVICE_DELETED", 1, timeout=1) == []
    assert "hot1" in qmp.hmp("info network")          # still there, unplug pending
    # asked again once the guest's clock moved on: QEMU asks the guest again
    assert qmp.execute("device_del", id="hot1") == {"return": {}}
    assert qmp.execute("system_reset") == {"return": {}}
    deleted = wait_for_events(qmp, "DEVICE_DELETED", 2)
    assert deleted[-1]["data"] == {"device": "hot1", "path": "/machine/peripheral/hot1"}
    assert qmp.hmp("info network") == TAP + "\r\n"
