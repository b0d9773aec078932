"""virtio-net with a tap back end, driven by the probe guest, on QEMU 7.2 and kvmkit:
frames both ways between the guest and a tap inside a network namespace the
test makes (pyroute2), the link going down and up from the monitor, the MSI-X
configuration interrupt that tells the guest, and `info network`."""

from __future__ import annotations

import os
import socket
import uuid

import pytest
from guest import QmpLine as Qmp
from guest import machine_args

pytestmark = pytest.mark.kvm
ETH_TYPE = 0x88B5                 # IEEE "local experimental": nothing else on the wire uses it
GUEST_MAC = "52:54:00:12:34:56"


@pytest.fixture
def netns():
    pyroute2 = pytest.importorskip("pyroute2")
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun for network namespaces and taps")
    name = f"kvmkit-{uuid.uuid4().hex[:8]}"
    pyroute2.netns.create(name)
    yield name
    pyroute2.netns.remove(name)


def in_netns(name):
    """A preexec_fn: the VMM starts inside the namespace, so its tap is made there."""
    def enter():
        from pyroute2 import netns
        netns.setns(name)
    return enter


def packet_socket(ns: str, ifname: str) -> socket.socket:
    """An AF_PACKET socket on the tap, opened from inside the namespace."""
    from pyroute2 import NetNS, netns

    with NetNS(ns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="up")
    netns.pushns(ns)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_TYPE))
        sock.bind((ifname, ETH_TYPE))
    finally:
        netns.popns()
    sock.settimeout(5)
    return sock


def frame(dst: bytes, src: bytes, text: str) -> bytes:
    return (dst + src + ETH_TYPE.to_bytes(2, "big") + text.encode()).ljust(60, b"\0")


def guest_receives(vm, text: str, tries: int = 20) -> dict | None:
    """The next frame of ours the guest gets (it also sees the host's own chatter)."""
    for _ in range(tries):
        got = vm.command("netrecv 1000", timeout=10)
        if got.get("frame", True) is None:
            return None
        if got["type"] == f"0x{ETH_TYPE:04x}" and got["payload"] == text:
            return got
    return None


def test_frames_cross_a_tap_both_ways_and_set_link_cuts_them(launch, tmp_path, vmm_kind,
                                                             netns):
    sock_path = str(tmp_path / "qmp.sock")
    args = machine_args(extra=[
        "-netdev", "tap,id=n0,ifname=kk0,script=no,downscript=no",
        "-device", "virtio-net-pci,netdev=n0,id=net0",
        "-qmp", f"unix:{sock_path},server=on,wait=off"])
    vm = launch(args, vmm_kind, preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    qmp = Qmp(sock_path)
    assert qmp.hmp("info network") == (
        f"net0: index=0,type=nic,model=virtio-net-pci,macaddr={GUEST_MAC}\r\n"
        " \\ n0: index=0,type=tap,ifname=kk0,script=no,downscript=no\r\n")
    nic = vm.command("net")
    assert nic["present"] and nic["mac"] == GUEST_MAC and nic["link"] and nic["msix"] == 4
    host = packet_socket(netns, "kk0")
    host_mac = bytes.fromhex("020000000001")
    guest_mac = bytes.fromhex(GUEST_MAC.replace(":", ""))

    assert vm.command("netsend 020000000001 0x88b5 hello-host") == {"sent": 60}
    data = host.recv(2048)
    assert data[:6] == host_mac and data[6:12] == guest_mac
    assert data[14:24] == b"hello-host"

    host.send(frame(guest_mac, host_mac, "hello-guest"))
    got = guest_receives(vm, "hello-guest")
    assert got is not None, "the guest never got the host's frame"
    assert got["src"] == "02:00:00:00:00:01" and got["dst"] == GUEST_MAC

    qmp.hmp("set_link net0 off")
    event = vm.wait_event("link", timeout=10)
    assert event["up"] is False and event["config_irqs"] >= 1   # told by MSI-X
    host.send(frame(guest_mac, host_mac, "while-down"))
    assert guest_receives(vm, "while-down", tries=2) is None
    vm.command("netsend 020000000001 0x88b5 lost")
    host.settimeout(1)
    with pytest.raises(TimeoutError):
        host.recv(2048)
    qmp.hmp("set_link n0 on")       # through the back end: its NIC peer follows
    assert vm.wait_event("link", timeout=10)["up"] is True
    host.send(frame(guest_mac, host_mac, "after-up"))
    assert guest_receives(vm, "after-up") is not None
    host.close()


def test_rx_filter_query_and_change_event_as_qemus(launch, tmp_path, vmm_kind):
    """query-rx-filter arms NIC_RX_FILTER_CHANGED; the guest's control-queue rx mode
    command fires it once; the next change is silent until the next query."""
    sock_path = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=["-device", "virtio-net-pci,id=net0",
                                    "-qmp", f"unix:{sock_path},server=on,wait=off"]),
                vmm_kind)
    vm.wait_event("ready", timeout=60)
    qmp = Qmp(sock_path)
    [info] = qmp.execute("query-rx-filter", name="net0")["return"]
    assert info["promiscuous"] is True and info["main-mac"] == GUEST_MAC
    assert info["vlan"] == "all" and info["unicast"] == "normal"
    assert qmp.execute("query-rx-filter", name="nope")["error"]["desc"] == \
        "invalid net client name: nope"
    assert vm.command("netrxmode promisc 0") == {"ack": 0}
    assert vm.command("netrxmode allmulti 1") == {"ack": 0}
    qmp.execute("query-status")
    changed = [e for e in qmp.events if e["event"] == "NIC_RX_FILTER_CHANGED"]
    assert [e["data"] for e in changed] == [
        {"name": "net0", "path": "/machine/peripheral/net0/virtio-backend"}]
    [info] = qmp.execute("query-rx-filter")["return"]
    assert info["promiscuous"] is False and info["multicast"] == "all"
    assert vm.command("netrxmode promisc 1") == {"ack": 0}
    qmp.execute("query-status")
    assert len([e for e in qmp.events if e["event"] == "NIC_RX_FILTER_CHANGED"]) == 2
