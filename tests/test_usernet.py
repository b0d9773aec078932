"""-netdev user complete, as QEMU 7.2's (libslirp): the probe guest, on both VMMs,
reads a file from the TFTP server its DHCP lease names, talks TCP through guestfwd
rules (a command and a chardev), gets traffic through a hostfwd rule added at run
time, reaches the host over IPv6 after a router advertisement, and is cut off by
restrict=on; bad options get QEMU's errors, and `info usernet` QEMU's text."""

from __future__ import annotations

import re
import socket
import subprocess
import threading

import pytest
from guest import QEMU, kvmkit_command, machine_args
from guest import QmpLine as Qmp

pytestmark = pytest.mark.kvm
GUEST_MAC = "52:54:00:12:34:56"


def fnv1a(data: bytes) -> str:
    value = 0x811c9dc5
    for byte in data:
        value = ((value ^ byte) * 16777619) & 0xffffffff
    return f"{value:08x}"


def free_port(kind=socket.SOCK_DGRAM, family=socket.AF_INET, host="127.0.0.1") -> int:
    with socket.socket(family, kind) as probe:
        probe.bind((host, 0))
        return probe.getsockname()[1]


def start(launch, vmm_kind, netdev: str, *extra: str, model: str = "e1000"):
    vm = launch(machine_args(extra=["-netdev", netdev, "-device", f"{model},netdev=u0",
                                    *extra]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    return vm


def test_dhcp_names_the_boot_file_and_the_guest_reads_it_over_tftp(launch, vmm_kind,
                                                                    tmp_path):
    """tftp=, bootfile=, hostname=, domainname=, dnssearch= and tftp-server-name=:
    the lease carries them, and the file comes byte for byte from the TFTP server
    (blocks of 512, the last one short); a missing file is TFTP's error 1."""
    root = tmp_path / "tftp"
    root.mkdir()
    content = bytes((i * 7 + i // 512) & 0xff for i in range(3000))
    (root / "pxe.bin").write_bytes(content)
    vm = start(launch, vmm_kind, f"user,id=u0,tftp={root},bootfile=pxe.bin,"
               "hostname=probe-guest,domainname=example.test,dnssearch=lab.example.test,"
               "dnssearch=example.org,tftp-server-name=boot.example.test")
    assert vm.command("dhcp", timeout=30) == {
        "ip": "10.0.2.15", "server": "10.0.2.2", "router": "10.0.2.2", "dns": "10.0.2.3",
        "bootfile": "pxe.bin", "hostname": "probe-guest", "domain": "example.test",
        "tftp_server": "boot.example.test", "search": "lab.example.test,example.org",
        "next_server": "10.0.2.2"}
    fetched = vm.command("tftp 10.0.2.2 pxe.bin", timeout=30)
    assert fetched["size"] == len(content) and fetched["fnv"] == fnv1a(content)
    missing = vm.command("tftp 10.0.2.2 nothing-here.bin", timeout=30)
    assert missing["error_code"] == 1, missing
    assert "Traceback" not in vm.stderr          # libslirp's callbacks all went well


class Listener:
    """A host TCP server for one connection (a guestfwd chardev connects to it)."""

    def __init__(self) -> None:
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(1)
        self.port = self.sock.getsockname()[1]
        self.accepted: list[socket.socket] = []
        threading.Thread(target=lambda: self.accepted.append(self.sock.accept()[0]),
                         daemon=True).start()

    def connection(self) -> socket.socket:
        assert self.accepted, "the chardev did not connect when the netdev was made"
        self.accepted[0].settimeout(10)
        return self.accepted[0]

    def close(self) -> None:
        for conn in self.accepted:
            conn.close()
        self.sock.close()


def test_guestfwd_to_a_command_and_to_chardevs(launch, vmm_kind, tmp_path):
    """guestfwd=tcp:10.0.2.100:1234-cmd:cat echoes what the guest sends; a rule to a
    chardev in -serial's syntax (tcp:127.0.0.1:PORT, opened when the netdev is), or
    to a -chardev by id (chardev:ID), carries the guest's connection to the host's
    socket and the host's answer back."""
    by_spec, by_id = Listener(), Listener()
    vm = start(launch, vmm_kind, "user,id=u0,guestfwd=tcp:10.0.2.100:1234-cmd:cat,"
               f"guestfwd=tcp:10.0.2.101:4321-tcp:127.0.0.1:{by_spec.port},"
               "guestfwd=tcp:10.0.2.102:5000-chardev:gf",
               "-chardev", f"socket,id=gf,host=127.0.0.1,port={by_id.port}")
    assert vm.command("dhcp", timeout=30)["ip"] == "10.0.2.15"
    echoed = vm.command("tcp 10.0.2.100 1234 through-cat 8000", timeout=30)
    assert echoed["connected"] and echoed["data"] == "through-cat", echoed
    for listener, target in ((by_spec, "10.0.2.101 4321"), (by_id, "10.0.2.102 5000")):
        host = listener.connection()
        vm.send(f"tcp {target} guest-says-hello 8000\n")
        assert host.recv(100) == b"guest-says-hello"
        host.sendall(b"host-answers")
        answer = vm.read_json(timeout=20)
        assert answer["connected"] and answer["data"] == "host-answers", (target, answer)
        listener.close()


def normalised_usernet(text: str) -> str:
    """info usernet with its socket numbers (the process's own) blanked."""
    return re.sub(r"(\]) *\d+ ", r"\1 FD ", text)


def test_hostfwd_add_and_remove_at_run_time(launch, vmm_kind, tmp_path):
    """HMP hostfwd_add opens a port while the guest runs; traffic crosses it; info
    usernet lists it as QEMU's does; hostfwd_remove closes it; the monitor's
    answers are QEMU's."""
    port = free_port()
    sock = str(tmp_path / "qmp.sock")
    vm = start(launch, vmm_kind, "user,id=u0,hostfwd=tcp:127.0.0.1:0-:22",
               "-netdev", "user,id=u1", "-qmp", f"unix:{sock},server=on,wait=off")
    qmp = Qmp(sock)
    assert vm.command("dhcp", timeout=30)["ip"] == "10.0.2.15"
    assert qmp.hmp(f"hostfwd_add u0 udp:127.0.0.1:{port}-10.0.2.15:7") == ""
    assert qmp.hmp(f"hostfwd_add u0 udp:127.0.0.1:{port}-10.0.2.15:7") == \
        f"Could not set up host forwarding rule 'udp:127.0.0.1:{port}-10.0.2.15:7'\r\n"
    usernet = normalised_usernet(qmp.hmp("info usernet"))
    header = "  Protocol[State]    FD  Source Address  Port   Dest. Address  Port RecvQ SendQ\r\n"
    assert usernet.startswith("Hub -1 (u0):\r\n" + header), usernet
    assert f"  UDP[HOST_FORWARD] FD       127.0.0.1 {port:5d}       10.0.2.15     7     0     0" \
        "\r\n" in usernet, usernet
    assert usernet.endswith("Hub -1 (u1):\r\n" + header), usernet
    vm.send("udpecho 7 10000\n")
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.settimeout(5)
    host.sendto(b"added-at-run-time", ("127.0.0.1", port))
    assert host.recvfrom(2048)[0] == b"added-at-run-time"
    assert vm.read_json(timeout=10)["data"] == "added-at-run-time"
    assert qmp.hmp(f"hostfwd_remove u0 udp:127.0.0.1:{port}") == \
        f"host forwarding rule for udp:127.0.0.1:{port} removed\r\n"
    assert qmp.hmp(f"hostfwd_remove u0 udp:127.0.0.1:{port}") == \
        f"host forwarding rule for udp:127.0.0.1:{port} not found\r\n"
    vm.send("udpecho 7 1500\n")
    host.sendto(b"after-removal", ("127.0.0.1", port))
    assert vm.read_json(timeout=10) == {"datagram": None}
    host.close()
    for line, answer in [
            ("hostfwd_add nosuch tcp::1-:2", "unrecognized netdev id 'nosuch'\r\n"),
            ("hostfwd_add u1 tcp::1-:0",
             "Invalid host forwarding rule 'tcp::1-:0' (Bad guest port)\r\n"),
            ("hostfwd_add xx", "Invalid host forwarding rule 'xx' (No : separators)\r\n"),
            ("hostfwd_remove x:y", "invalid format\r\n"),
            ("hostfwd_remove", 'hostfwd_remove: string expected\r\n'
                               'Try "help hostfwd_remove" for more information\r\n')]:
        assert qmp.hmp(line) == answer, line


def test_ipv6_router_advertisement_and_udp_with_the_host(launch, vmm_kind):
    """IPv6 is on by default, as QEMU's: the guest's router solicitation is answered
    with the prefix and DNS server; over its SLAAC address it reaches the host's
    loopback through the gateway (fec0::2) with a UDP datagram, and the answer
    comes back. ipv6-net=, ipv6-host= and ipv6-dns= move all of it."""
    host = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    host.bind(("::1", 0))
    host.settimeout(10)
    port = host.getsockname()[1]
    vm = start(launch, vmm_kind, "user,id=u0")
    assert vm.command("ip6 ndp", timeout=30) == {
        "router": "fe80::2", "router_mac": "52:56:00:00:00:02", "prefix": "fec0::",
        "prefix_len": 64, "addr": "fec0::5054:ff:fe12:3456"}
    assert vm.command("ip6 ns fec0::3", timeout=30) == {"mac": "52:56:00:00:00:03"}
    vm.send(f"ip6 udp fec0::2 {port} over-ipv6 10000\n")
    data, peer = host.recvfrom(100)
    assert data == b"over-ipv6"
    host.sendto(b"ipv6-answer", peer)
    assert vm.read_json(timeout=15) == {"from": "fec0::2", "port": port, "data": "ipv6-answer"}
    host.close()


def test_ipv6_network_options(launch, vmm_kind):
    """ipv6-net= (the prefix advertised, and so the guest's address), ipv6-host= and
    ipv6-dns= (the addresses libslirp answers neighbour solicitations for)."""
    vm = start(launch, vmm_kind, "user,id=u0,ipv6-net=fd00:1:2::/48,ipv6-host=fd00:1:2::1,"
                                 "ipv6-dns=fd00:1:2::53")
    answer = vm.command("ip6 ndp", timeout=30)
    assert (answer["prefix"], answer["prefix_len"], answer["addr"]) == \
        ("fd00:1:2::", 48, "fd00:1:2:0:5054:ff:fe12:3456")
    assert vm.command("ip6 ns fd00:1:2::53")["mac"] is not None
    assert vm.command("ip6 ns fd00:1:2::1")["mac"] is not None
    assert vm.command("ip6 ns fd00:1:2::2", timeout=30) == {"mac": None}


@pytest.mark.parametrize("restrict", ["off", "on"])
def test_restrict_cuts_the_guest_off_but_keeps_forwarding(launch, vmm_kind, restrict):
    """restrict=on: the guest's connection to the host (10.0.2.2 is the host's
    loopback) never arrives, and its UDP answers are dropped, while hostfwd still
    brings traffic in; with restrict=off both go through."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(0.5)
    port = listener.getsockname()[1]
    udp_port = free_port()
    vm = start(launch, vmm_kind,
               f"user,id=u0,restrict={restrict},hostfwd=udp:127.0.0.1:{udp_port}-:7")
    assert vm.command("dhcp", timeout=30)["ip"] == "10.0.2.15"
    answer = vm.command(f"tcp 10.0.2.2 {port} knock 3000", timeout=30)
    assert answer["connected"] is (restrict == "off"), answer
    try:
        listener.accept()[0].close()
        arrived = True
    except TimeoutError:
        arrived = False
    assert arrived is (restrict == "off")
    vm.send("udpecho 7 10000\n")
    host = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    host.settimeout(3)
    host.sendto(b"still-forwarded", ("127.0.0.1", udp_port))
    assert vm.read_json(timeout=10)["data"] == "still-forwarded"
    try:            # the guest's answer is its own traffic out: restrict=on drops it
        echoed = host.recvfrom(100)[0] == b"still-forwarded"
    except TimeoutError:
        echoed = False
    assert echoed is (restrict == "off")
    host.close()
    listener.close()


def startup_error(vmm_kind: str, netdev: str) -> str:
    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-nodefaults", "-display", "none", "-S", "-m", "64", "-netdev", netdev]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1, result.stderr
    return result.stderr.strip().splitlines()[-1].split(f"-netdev {netdev}: ", 1)[1]


@pytest.mark.parametrize("netdev, message", [
    ("user,id=u,net=10.0.2.0/33", "Invalid netmask provided (must be in range 4-32)"),
    ("user,id=u,net=nonsense", "Failed to parse netmask"),
    ("user,id=u,host=10.0.3.2", "Host doesn't belong to network"),
    ("user,id=u,dns=10.0.2.2", "DNS must be different from host"),
    ("user,id=u,dhcpstart=10.0.2.3", "DHCP must be different from host and DNS"),
    ("user,id=u,ipv4=off,ipv6=off", "IPv4 and IPv6 disabled"),
    ("user,id=u,ipv6=on,net=10.1.0.0/16", "IPv4 disabled but netmask/host/dns provided"),
    ("user,id=u,ipv4=on,ipv6-host=fec0::9", "IPv6 disabled but prefix/host6/dns6 provided"),
    ("user,id=u,ipv6-prefixlen=127",
     "Invalid IPv6 prefix provided (IPv6 prefix length must be between 0 and 126)"),
    ("user,id=u,ipv6-host=fd00::2", "IPv6 Host doesn't belong to network"),
    ("user,id=u,domainname=", "'domainname' parameter cannot be empty"),
    ("user,id=u,hostfwd=tcp::99999-:22",
     "Invalid host forwarding rule 'tcp::99999-:22' (Bad host port)"),
    ("user,id=u,hostfwd=icmp::1-:2", "Invalid host forwarding rule 'icmp::1-:2' "
                                     "(Bad protocol name)"),
    ("user,id=u,guestfwd=tcp:10.0.2.100:0-cmd:cat",
     "Invalid guest forwarding rule 'tcp:10.0.2.100:0-cmd:cat'"),
    ("user,id=u,smb=/nonexistent-dir", "Could not find '/usr/sbin/smbd', please install it"),
    ("user,id=u,ipv6-net=fd00::/x", "Parameter 'ipv6-prefixlen' expects a number"),
    ("user,id=u,bogus=1", "Invalid parameter 'bogus'"),
])
def test_bad_user_options_get_qemus_errors(vmm_kind, netdev, message):
    if "smb=" in netdev and __import__("os").path.exists("/usr/sbin/smbd"):
        pytest.skip("smbd is installed here")
    assert startup_error(vmm_kind, netdev) == message
