"""A guest on a macvtap link, as libvirt's <interface type='direct'> makes one:
kvmkit-macvtap (vmm/net/macvtap.py, pyroute2) puts a macvtap link with the
guest's MAC on one end of a veth pair inside a network namespace, opens its
/dev/tapN and runs the VMM with -netdev tap,fds=...; frames from the guest come
out of the other end of the pair, and frames to the guest's MAC go in. Both VMMs
are run through the same helper."""

from __future__ import annotations

import re
import sys
from pathlib import Path

import pytest
from guest import QEMU, Vmm, kvmkit_command, machine_args
from guest import QmpLine as Qmp
from netns import ETH_TYPE, packet_socket

pytestmark = pytest.mark.kvm
GUEST_MAC = "52:54:00:12:34:56"


def helper() -> str:
    return str(Path(sys.executable).with_name("kvmkit-macvtap"))


@pytest.fixture
def veth(netns):
    """A veth pair in the namespace: 'mvparent' for the macvtap link, 'mvpeer' for
    the test's packet socket."""
    from pyroute2 import NetNS

    with NetNS(netns) as ipr:
        ipr.link("add", ifname="mvparent", kind="veth", peer="mvpeer")
        for name in ("mvparent", "mvpeer"):
            ipr.link("set", index=ipr.link_lookup(ifname=name)[0], state="up")
    return netns


@pytest.mark.parametrize("model, queues", [("virtio-net-pci", 1), ("virtio-net-pci", 2),
                                           ("e1000", 1)])
def test_guest_frames_cross_a_macvtap_link(veth, vmm_kind, tmp_path, model, queues):
    sock = str(tmp_path / "qmp.sock")
    vmm = kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]
    device = f"{model},netdev=n0,mac={GUEST_MAC}" + \
        (f",mq=on,vectors={2 * queues + 2}" if queues > 1 else "")
    vm = Vmm(["ip", "netns", "exec", veth, helper(), "mvparent", "--name", "mvtap0",
              "--mac", GUEST_MAC, "--queues", str(queues), "--", *vmm,
              *machine_args(extra=["-netdev", "tap,id=n0,fds={fds}", "-device", device,
                                   "-qmp", f"unix:{sock},server=on,wait=off"])])
    try:
        vm.wait_event("ready", timeout=60)
        network = Qmp(sock).hmp("info network")
        assert re.search(r" \\ n0: index=0,type=tap,fd=\d+\r\n", network), network
        assert network.count("type=tap,fd=") == queues, network
        peer = packet_socket(veth, "mvpeer")
        assert vm.command("netsend ffffffffffff 0x88b5 out-via-macvtap") == {"sent": 60}
        got = peer.recv(2048)
        assert got[6:12] == bytes.fromhex(GUEST_MAC.replace(":", "")) and \
            got[14:29] == b"out-via-macvtap"
        frame = (bytes.fromhex(GUEST_MAC.replace(":", "")) + bytes.fromhex("020000aabbcc") +
                 ETH_TYPE.to_bytes(2, "big") + b"in-via-macvtap").ljust(60, b"\0")
        for _ in range(5):              # the guest may see the namespace's own chatter
            peer.send(frame)
            got = vm.command("netrecv 1000", timeout=10)
            if got.get("payload") == "in-via-macvtap":
                break
        assert got.get("payload") == "in-via-macvtap", got
        peer.close()
    finally:
        vm.close()
    # the helper removed its link when the VMM ended
    from pyroute2 import NetNS
    with NetNS(veth) as ipr:
        assert not ipr.link_lookup(ifname="mvtap0")


def test_helper_errors(netns):
    import subprocess

    result = subprocess.run(["ip", "netns", "exec", netns, helper(), "nosuchparent", "--",
                             "true"], capture_output=True, text=True, timeout=20)
    assert result.returncode == 1
    assert result.stderr == "kvmkit-macvtap: parent interface 'nosuchparent' does not exist\n"
