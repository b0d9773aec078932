"""virtio-net with a tap back end, driven by the probe guest, on QEMU 7.2 and kvmkit:
frames both ways between the guest and a tap inside a network namespace the
test makes (pyroute2), the link going down and up from the monitor, the MSI-X
configuration interrupt that tells the guest, and `info network`."""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import struct
import subprocess

import pytest
from guest import QEMU, kvmkit_command, machine_args, start_with_qmp
from guest import QmpLine as Qmp
from netns import ETH_TYPE, in_netns, packet_socket

pytestmark = pytest.mark.kvm
GUEST_MAC = "52:54:00:12:34:56"


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


@pytest.mark.parametrize("model", ["virtio-net-pci", "e1000", "rtl8139"])
def test_frames_cross_a_tap_both_ways_and_set_link_cuts_them(launch, tmp_path, vmm_kind,
                                                             netns, model):
    sock_path = str(tmp_path / "qmp.sock")
    args = machine_args(extra=[
        "-netdev", "tap,id=n0,ifname=kk0,script=no,downscript=no",
        "-device", f"{model},netdev=n0,id=net0",
        "-qmp", f"unix:{sock_path},server=on,wait=off"])
    vm = launch(args, vmm_kind, preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    qmp = Qmp(sock_path)
    assert qmp.hmp("info network") == (
        f"net0: index=0,type=nic,model={model},macaddr={GUEST_MAC}\r\n"
        " \\ n0: index=0,type=tap,ifname=kk0,script=no,downscript=no\r\n")
    nic = vm.command("net")
    assert nic["present"] and nic["mac"] == GUEST_MAC and nic["link"]
    virtio = model == "virtio-net-pci"
    if virtio:
        assert nic["model"] == "virtio-net" and nic["msix"] == 4
    elif model == "e1000":
        assert nic["model"] == "e1000" and nic["eeprom_sum"] == "0xbaba"
        assert nic["eeprom_sum_microwire"] == "0xbaba"        # as Linux reads an 82540
    else:
        assert nic["model"] == "rtl8139"
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
    assert event["up"] is False
    assert event["config_irqs"] >= 1 or not virtio          # virtio-net: told by MSI-X
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


def test_netdev_add_and_del_at_runtime_as_qemus(tmp_path, vmm_kind, netns):
    """netdev_add tap (by name, and from a getfd'd descriptor), info network,
    QEMU's errors, netdev_del; and the command-line errors for -netdev/-device."""
    from pyroute2 import netns as ns_tools

    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-nodefaults", "-display", "none", "-S", "-m", "64"]
    sock_path = str(tmp_path / "qmp.sock")
    proc = start_with_qmp(argv, sock_path, preexec_fn=in_netns(netns))
    try:
        qmp = Qmp(sock_path)
        assert qmp.execute("netdev_add", type="tap", id="t1", ifname="kkt1",
                           script="no", downscript="no") == {"return": {}}
        ns_tools.pushns(netns)
        try:                         # a tap made here, handed over as libvirt does
            tap_fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(tap_fd, 0x400454CA, struct.pack("16sH", b"kkt2", 0x1002))
        finally:
            ns_tools.popns()
        assert qmp.execute("netdev_add", type="tap", id="t1")["error"] == {
            "class": "GenericError", "desc": "Duplicate ID 't1'"}
        qmp.sock.sendmsg([json_line("getfd", fdname="tapfd")],
                         [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [tap_fd]))])
        assert json_reply(qmp) == {"return": {}}
        os.close(tap_fd)
        assert qmp.execute("netdev_add", type="tap", id="t2", fd="tapfd") == {"return": {}}
        text = qmp.hmp("info network").splitlines()
        assert text[0] == "t1: index=0,type=tap,ifname=kkt1,script=no,downscript=no"
        assert text[1].startswith("t2: index=0,type=tap,fd=")
        assert qmp.execute("netdev_del", id="t1") == {"return": {}}
        assert qmp.execute("netdev_del", id="t1")["error"] == {
            "class": "DeviceNotFound", "desc": "Device 't1' not found"}
        assert qmp.execute("netdev_add", type="tap", id="t3", fd="nosuch")["error"]["desc"] \
            == "File descriptor named 'nosuch' has not been found"
        qmp.execute("quit")
        proc.wait(10)
    finally:
        if proc.poll() is None:
            proc.kill()
    for args, message in [
            (["-netdev", "tap,id=n0,ifname=kk0,script=no,downscript=no",
              "-netdev", "tap,id=n0,ifname=kk1"],
             "-netdev tap,id=n0,ifname=kk1: Duplicate ID 'n0' for netdev"),
            (["-netdev", "foo,id=x"], "-netdev foo,id=x: Parameter 'type' does not accept "
                                      "value 'foo'"),
            (["-device", "virtio-net-pci,netdev=nope"], "-device virtio-net-pci,netdev=nope: "
             "Property 'virtio-net-device.netdev' can't find value 'nope'"),
            (["-netdev", "tap,id=n0,ifname=kk0,script=no,downscript=no",
              "-device", "virtio-net-pci,netdev=n0", "-device", "virtio-net-pci,netdev=n0"],
             "-device virtio-net-pci,netdev=n0: Property 'virtio-net-device.netdev' can't "
             "take value 'n0', it's in use"),
            (["-device", "virtio-net-pci,mac=zz"], "-device virtio-net-pci,mac=zz: Property "
             "'virtio-net-device.mac' doesn't take value 'zz'")]:
        result = subprocess.run(argv + args, capture_output=True, text=True, timeout=20,
                                preexec_fn=in_netns(netns))
        assert result.returncode == 1, (args, result.stderr)
        assert result.stderr.strip().splitlines()[-1].endswith(message), result.stderr


def json_line(command: str, **args) -> bytes:
    return json.dumps({"execute": command, "arguments": args}).encode() + b"\n"


def json_reply(qmp) -> dict:
    while "event" in (reply := json.loads(qmp.file.readline())):
        pass
    return reply


def test_bridge_back_end_enslaves_a_new_tap(launch, tmp_path, netns):
    """-netdev bridge: the tap is made, put on the bridge and brought up (pyroute2).
    kvmkit only: QEMU does this through its setuid helper, which needs an ACL in
    /etc/qemu/bridge.conf that a test should not write."""
    from pyroute2 import NetNS

    with NetNS(netns) as ipr:
        ipr.link("add", ifname="kkbr0", kind="bridge")
        ipr.link("set", index=ipr.link_lookup(ifname="kkbr0")[0], state="up")
    sock_path = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[
        "-netdev", "bridge,id=b0,br=kkbr0", "-device", "virtio-net-pci,netdev=b0,id=net0",
        "-qmp", f"unix:{sock_path},server=on,wait=off"]), "kvmkit",
        preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    qmp = Qmp(sock_path)
    lines = qmp.hmp("info network").splitlines()
    assert lines[1] == " \\ b0: index=0,type=tap,helper=/usr/lib/qemu/qemu-bridge-helper," \
                       "br=kkbr0"
    with NetNS(netns) as ipr:
        bridge = ipr.link_lookup(ifname="kkbr0")[0]
        ports = [link for link in ipr.get_links() if link.get_attr("IFLA_MASTER") == bridge]
    assert len(ports) == 1 and ports[0]["flags"] & 1      # enslaved and up
    host = packet_socket(netns, "kkbr0")
    assert vm.command("netsend ffffffffffff 0x88b5 via-bridge") == {"sent": 60}
    assert host.recv(2048)[14:24] == b"via-bridge"
    host.close()
    assert launch(machine_args(extra=["-netdev", "bridge,id=b1,br=nosuchbr"]), "kvmkit",
                  preexec_fn=in_netns(netns)).wait_exit(20) == 1


@pytest.mark.parametrize("nic, expected", [
    ("tap,ifname=kk9,script=no,downscript=no,model=virtio-net-pci",
     r"virtio-net-pci\.0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56\r\n"
     r" \\ #net0\d\d: index=0,type=tap,ifname=kk9,script=no,downscript=no\r\n"),
    ("tap,id=foo,ifname=kk9,script=no,downscript=no,mac=52:54:00:aa:bb:cc,model=rtl8139",
     r"rtl8139\.0: index=0,type=nic,model=rtl8139,macaddr=52:54:00:aa:bb:cc\r\n"
     r" \\ foo: index=0,type=tap,ifname=kk9,script=no,downscript=no\r\n"),
    ("tap,ifname=kk9,script=no,downscript=no",          # QEMU's pc default model: e1000
     r"e1000\.0: index=0,type=nic,model=e1000,macaddr=52:54:00:12:34:56\r\n"
     r" \\ #net0\d\d: index=0,type=tap,ifname=kk9,script=no,downscript=no\r\n"),
    (["-net", "nic,model=e1000", "-net", "tap,ifname=kk9,script=no,downscript=no"],
     r"hub 0\r\n \\ hub0port1: #net1\d\d: index=0,type=tap,ifname=kk9,script=no,"
     r"downscript=no\r\n \\ hub0port0: e1000\.0: index=0,type=nic,model=e1000,"
     r"macaddr=52:54:00:12:34:56\r\n")])
def test_nic_option_makes_a_back_end_and_its_nic(tmp_path, vmm_kind, netns, nic, expected):
    import re

    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-nodefaults", "-display", "none", "-S", "-m", "64",
        *(nic if isinstance(nic, list) else ["-nic", nic])]
    sock_path = str(tmp_path / "qmp.sock")
    proc = start_with_qmp(argv, sock_path, preexec_fn=in_netns(netns))
    try:
        assert re.fullmatch(expected, Qmp(sock_path).hmp("info network"))
    finally:
        proc.kill()
        proc.wait(10)


@pytest.mark.parametrize("model", ["virtio-net-pci", "e1000"])
def test_user_networking_gives_dhcp_and_forwards_a_host_port(launch, tmp_path, vmm_kind,
                                                              model):
    """-netdev user (libslirp, as QEMU): the probe guest's DHCP client gets
    10.0.2.15, and a UDP hostfwd rule carries a datagram to the guest and its echo
    back to the host."""
    probe = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    probe.bind(("127.0.0.1", 0))
    port = probe.getsockname()[1]
    probe.close()
    sock_path = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[
        "-netdev", f"user,id=u0,hostfwd=udp:127.0.0.1:{port}-:7",
        "-device", f"{model},netdev=u0,id=net0",
        "-qmp", f"unix:{sock_path},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    assert Qmp(sock_path).hmp("info network") == (
        f"net0: index=0,type=nic,model={model},macaddr={GUEST_MAC}\r\n"
        " \\ u0: index=0,type=user,net=10.0.2.0,restrict=off\r\n")
    assert vm.command("dhcp", timeout=30) == {
        "ip": "10.0.2.15", "server": "10.0.2.2", "router": "10.0.2.2", "dns": "10.0.2.3"}
    vm.send("udpecho 7 10000\n")
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.settimeout(5)
    host.sendto(b"through-hostfwd", ("127.0.0.1", port))
    assert host.recvfrom(2048)[0] == b"through-hostfwd"
    answer = vm.read_json(timeout=10)
    assert answer["data"] == "through-hostfwd" and answer["from"] == "10.0.2.2"
    host.close()


def test_legacy_net_options_meet_on_hub_0(launch, vmm_kind):
    """-net nic and -net user without netdev= are joined by hub 0, as in QEMU: the
    guest's DHCP goes through the hub to libslirp."""
    vm = launch(machine_args(extra=["-net", "nic,model=rtl8139,macaddr=52:54:00:12:34:99",
                                    "-net", "user"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    assert vm.command("net")["mac"] == "52:54:00:12:34:99"
    assert vm.command("dhcp", timeout=30)["ip"] == "10.0.2.15"


@pytest.mark.parametrize("devices, message", [
    (["virtio-balloon-pci,addr=2", "e1000,addr=2,id=x"],
     "-device e1000,addr=2,id=x: PCI: slot 2 function 0 not available for e1000, in use by "
     "virtio-balloon-pci,id=(null)"),
    (["virtio-balloon-pci,addr=zz"],
     "-device virtio-balloon-pci,addr=zz: Property 'virtio-balloon-pci.addr' doesn't take "
     "value 'zz'"),
    (["virtio-balloon-pci,addr=0x20"],
     "-device virtio-balloon-pci,addr=0x20: Property 'virtio-balloon-pci.addr' doesn't take "
     "value '0x20'"),
    (["rtl8139,bus=pci.1"], "-device rtl8139,bus=pci.1: Bus 'pci.1' not found")])
def test_pci_placement_errors_as_qemus(vmm_kind, devices, message):
    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-nodefaults", "-display", "none", "-S", "-m", "64"]
    for device in devices:
        argv += ["-device", device]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    assert result.stderr.strip().splitlines()[-1].endswith(message)


def test_user_networking_options_set_the_guests_network(launch, vmm_kind):
    """net=, host=, dhcpstart= and dns= as QEMU's: the guest's DHCP lease says them,
    and info network shows the network."""
    vm = launch(machine_args(extra=[
        "-netdev", "user,id=u0,net=192.168.76.0/24,host=192.168.76.1,"
                   "dhcpstart=192.168.76.50,dns=192.168.76.53",
        "-device", "e1000,netdev=u0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    assert vm.command("dhcp", timeout=30) == {
        "ip": "192.168.76.50", "server": "192.168.76.1", "router": "192.168.76.1",
        "dns": "192.168.76.53"}


def test_inherited_multiqueue_tap_fds(vmm_kind, netns):
    """-netdev tap,fds=A:B, as libvirt hands over a multiqueue tap: a queue per fd,
    each shown by its fd in info network, as QEMU shows them."""
    from pyroute2 import netns as ns_tools

    ns_tools.pushns(netns)
    try:
        fds = []
        for _ in range(2):     # IFF_TAP | IFF_NO_PI | IFF_VNET_HDR | IFF_MULTI_QUEUE
            fd = os.open("/dev/net/tun", os.O_RDWR)
            fcntl.ioctl(fd, 0x400454CA, struct.pack("16sH", b"kkq0", 0x5102))
            fds.append(fd)
    finally:
        ns_tools.popns()
    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-nodefaults", "-display", "none", "-S", "-m", "64",
        "-netdev", f"tap,id=n0,fds={fds[0]}:{fds[1]}",
        "-device", "virtio-net-pci,netdev=n0,mq=on,id=net0", "-monitor", "stdio"]
    try:
        proc = subprocess.Popen(argv, pass_fds=fds, stdin=subprocess.PIPE,
                                stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
        out, _ = proc.communicate(b"info network\nquit\n", timeout=30)
    finally:
        for fd in fds:
            os.close(fd)
    lines = [line for line in out.decode(errors="replace").replace("\r", "").split("\n")
             if "index=" in line]
    assert lines == [
        "net0: index=0,type=nic,model=virtio-net-pci,macaddr=52:54:00:12:34:56",
        f" \\ n0: index=0,type=tap,fd={fds[0]}", "net0: index=1,type=nic,",
        f" \\ n0: index=1,type=tap,fd={fds[1]}"]
