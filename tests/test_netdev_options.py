"""No -netdev option is taken in silence: every member QEMU 7.2's schema lists for
the back ends kvmkit has (user, tap, bridge) is walked here, and each one either
shows its effect (on the guest, the host's links and sockets, or the monitor) or
is refused with a clear error. The option tables are QEMU's own, checked against
the schema QEMU 7.2 answers (the reference capture); the back-end types kvmkit
lacks are refused by name."""

from __future__ import annotations

import fcntl
import json
import os
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest import QmpLine as Qmp
from guest import kvmkit_command, machine_args
from netns import in_netns

from vmm.net.netdev_options import MEMBERS, NETDEV_TYPES, QEMU_ONLY_TYPES

pytestmark = pytest.mark.kvm
REFERENCE = Path(__file__).resolve().parents[2] / "shared/reference/qemu-7.2"
TUNSETIFF, TUNGETSNDBUF = 0x400454CA, 0x800454D3
IFF_TAP, IFF_NO_PI, IFF_VNET_HDR, IFF_MULTI_QUEUE = 0x2, 0x1000, 0x4000, 0x100


def qemu_schema() -> list[dict]:
    path = REFERENCE / "03b_query_qmp_schema.json"
    if not path.exists():
        pytest.skip("the QEMU 7.2 reference captures are not beside the project")
    return json.loads(json.loads(path.read_text())[0]["recv"][0])["return"]


def qemu_netdev_members() -> tuple[dict[str, set[str]], set[str]]:
    """netdev_add's union as QEMU 7.2 describes it: members by type, and the types."""
    schema = qemu_schema()
    by_name = {entity["name"]: entity for entity in schema}
    union = by_name[by_name["netdev_add"]["arg-type"]]
    members = {variant["case"]: {m["name"] for m in by_name[variant["type"]]["members"]}
               for variant in union["variants"]}
    return members, set(members)


def test_the_option_tables_are_qemus():
    members, types = qemu_netdev_members()
    for kind in NETDEV_TYPES:
        assert set(MEMBERS[kind]) == members[kind], kind
    assert set(NETDEV_TYPES) | set(QEMU_ONLY_TYPES) == types - {"nic", "none"}


@pytest.mark.parametrize("kind", QEMU_ONLY_TYPES)
def test_back_ends_kvmkit_lacks_are_refused_by_name(kind):
    assert startup(f"{kind},id=n0").endswith(
        f"-netdev {kind},id=n0: network backend '{kind}' is not supported by kvmkit")


def startup(netdev: str, preexec_fn=None) -> str:
    """kvmkit's stderr when it refuses to start with this -netdev."""
    result = subprocess.run(kvmkit_command() + ["-nodefaults", "-display", "none", "-S",
                                                "-m", "64", "-netdev", netdev],
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL, preexec_fn=preexec_fn)
    assert result.returncode == 1, (netdev, result.stderr)
    return result.stderr.strip()


def guest(launch, netdev: str, model: str = "e1000", preexec_fn=None):
    vm = launch(machine_args(extra=["-netdev", netdev, "-device", f"{model},netdev=u0"]),
                "kvmkit", preexec_fn=preexec_fn)
    vm.wait_event("ready", timeout=60)
    return vm


def dhcp(launch, options: str) -> dict:
    return guest(launch, f"user,id=u0,{options}").command("dhcp", timeout=30)


def ndp(launch, options: str, *then: str) -> list[dict]:
    vm = guest(launch, f"user,id=u0,{options}")
    return [vm.command("ip6 ndp 3000", timeout=30)] + [vm.command(c, timeout=30) for c in then]


# -- user: each member's effect -------------------------------------------------------
def user_restrict(launch, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    port = listener.getsockname()[1]
    vm = guest(launch, "user,id=u0,restrict=on")
    vm.command("dhcp", timeout=30)
    assert vm.command(f"tcp 10.0.2.2 {port} x 2000", timeout=30)["connected"] is False
    listener.close()


def user_tftp(launch, tmp_path):
    (tmp_path / "f.txt").write_text("tftp-walk")
    vm = guest(launch, f"user,id=u0,tftp={tmp_path}")
    vm.command("dhcp", timeout=30)
    assert vm.command("tftp 10.0.2.2 f.txt", timeout=30)["head"] == "tftp-walk"


def user_hostfwd(launch, tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    guest(launch, f"user,id=u0,hostfwd=tcp:127.0.0.1:{port}-:22")
    with socket.create_connection(("127.0.0.1", port), timeout=5):
        pass                                  # the host side listens


def user_guestfwd(launch, tmp_path):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(1)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    vm = launch(machine_args(extra=[
        "-netdev", f"user,id=u0,guestfwd=tcp:10.0.2.100:80-tcp:127.0.0.1:{port}"]), "kvmkit")
    conn = listener.accept()[0]               # the chardev connects as the netdev is made
    vm.wait_event("ready", timeout=60)
    conn.close()
    listener.close()


def user_smb(launch, tmp_path):
    if os.path.exists("/usr/sbin/smbd"):
        guest(launch, f"user,id=u0,smb={tmp_path}")
        return
    assert startup(f"user,id=u0,smb={tmp_path}").endswith(
        "Could not find '/usr/sbin/smbd', please install it")


USER_PROOFS = {
    "hostname": lambda launch, _: dhcp(launch, "hostname=walk-host")["hostname"] == "walk-host",
    "restrict": user_restrict,
    "ipv4": lambda launch, _: dhcp(launch, "ipv4=off") == {"error": "no DHCPOFFER"},
    "ipv6": lambda launch, _: ndp(launch, "ipv6=off")[0] == {
        "error": "no router advertisement"},
    "ip": lambda launch, _: dhcp(launch, "ip=10.9.8.0")["ip"] == "10.9.8.15",
    "net": lambda launch, _: dhcp(launch, "net=10.7.0.0/16")["ip"] == "10.7.2.15",
    "host": lambda launch, _: dhcp(launch, "host=10.0.2.9")["server"] == "10.0.2.9",
    "tftp": user_tftp,
    "bootfile": lambda launch, _: dhcp(launch, "bootfile=walk.pxe")["bootfile"] == "walk.pxe",
    "dhcpstart": lambda launch, _: dhcp(launch, "dhcpstart=10.0.2.77")["ip"] == "10.0.2.77",
    "dns": lambda launch, _: dhcp(launch, "dns=10.0.2.53")["dns"] == "10.0.2.53",
    "dnssearch": lambda launch, _: dhcp(launch, "dnssearch=a.test,dnssearch=b.test")[
        "search"] == "a.test,b.test",
    "domainname": lambda launch, _: dhcp(launch, "domainname=walk.test")["domain"] ==
    "walk.test",
    "ipv6-prefix": lambda launch, _: ndp(launch, "ipv6-prefix=fd00:5::")[0]["prefix"] ==
    "fd00:5::",
    "ipv6-prefixlen": lambda launch, _: ndp(launch, "ipv6-prefixlen=56")[0][
        "prefix_len"] == 56,
    "ipv6-host": lambda launch, _: ndp(launch, "ipv6-host=fec0::99", "ip6 ns fec0::99")[1][
        "mac"] is not None,
    "ipv6-dns": lambda launch, _: ndp(launch, "ipv6-dns=fec0::53", "ip6 ns fec0::53")[1][
        "mac"] is not None,
    "smb": user_smb,
    "smbserver": lambda launch, _: startup("user,id=u0,smbserver=10.0.2.4").endswith(
        "smbserver= is used only with smb="),
    "hostfwd": user_hostfwd,
    "guestfwd": user_guestfwd,
    "tftp-server-name": lambda launch, _: dhcp(launch, "tftp-server-name=t.test")[
        "tftp_server"] == "t.test",
}


@pytest.mark.parametrize("member", sorted(MEMBERS["user"]))
def test_every_user_option_does_something(launch, tmp_path, member):
    result = USER_PROOFS[member](launch, tmp_path)
    assert result is None or result is True, member


# -- tap and bridge --------------------------------------------------------------------
def ns_run(ns: str, *argv: str) -> str:
    return subprocess.run(["ip", "netns", "exec", ns, *argv], capture_output=True, text=True,
                          timeout=20).stdout


def tun_flags(ns: str, ifname: str) -> int:
    return int(ns_run(ns, "cat", f"/sys/class/net/{ifname}/tun_flags").strip(), 16)


def open_tap(ns: str, ifname: str, multi_queue: bool = False) -> int:
    """A tap made by the test (as libvirt makes them), inheritable by the VMM."""
    from pyroute2 import netns as ns_tools
    ns_tools.pushns(ns)
    try:
        fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", ifname.encode(),
                                               IFF_TAP | IFF_NO_PI | IFF_VNET_HDR |
                                               (IFF_MULTI_QUEUE if multi_queue else 0)))
    finally:
        ns_tools.popns()
    os.set_inheritable(fd, True)
    return fd


class Running:
    """kvmkit stopped (-S) with one -netdev in the test's namespace, and its QMP."""

    def __init__(self, tmp_path, ns: str, netdev: str, pass_fds=()) -> None:
        self.sock = str(tmp_path / f"qmp-{time.monotonic_ns()}.sock")
        argv = kvmkit_command() + ["-nodefaults", "-display", "none", "-S", "-m", "64",
                                   "-netdev", netdev]
        extra = ["-qmp", f"unix:{self.sock},server=on,wait=off"]
        self.proc = subprocess.Popen(argv + extra, stdin=subprocess.DEVNULL,
                                     stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                                     preexec_fn=in_netns(ns), pass_fds=pass_fds)
        deadline = time.monotonic() + 30
        while not os.path.exists(self.sock):
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        self.qmp = Qmp(self.sock)

    def network(self) -> str:
        return self.qmp.hmp("info network")

    def quit(self) -> str:
        self.qmp.execute("quit")
        self.proc.wait(20)
        return self.proc.stderr.read().decode()


FAKE_HELPER = """#!{python}
# QEMU's bridge-helper protocol, for the test: make a tap, send its fd, log argv
import array, fcntl, os, socket, struct, sys
open({log!r}, "a").write(" ".join(sys.argv[1:]) + "\\n")
fd_arg = [a for a in sys.argv if a.startswith("--fd=")][0]
tap = os.open("/dev/net/tun", os.O_RDWR)
fcntl.ioctl(tap, 0x400454CA, struct.pack("16sH", b"kkhelp0", 0x1002))
sock = socket.socket(fileno=int(fd_arg[5:]))
sock.sendmsg([b"x"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [tap]))])
"""


def fake_helper(tmp_path) -> tuple[str, Path]:
    log = tmp_path / "helper.log"
    path = tmp_path / "helper"
    path.write_text(FAKE_HELPER.format(python=sys.executable, log=str(log)))
    path.chmod(0o755)
    return str(path), log


def tap_ifname(tmp_path, ns):
    run = Running(tmp_path, ns, "tap,id=t0,ifname=kkwalk0,script=no,downscript=no")
    assert "ifname=kkwalk0" in run.network() and tun_flags(ns, "kkwalk0")
    run.quit()


def tap_fd(tmp_path, ns):
    fd = open_tap(ns, "kkfd0")
    run = Running(tmp_path, ns, f"tap,id=t0,fd={fd}", pass_fds=[fd])
    assert f"type=tap,fd={fd}" in run.network()
    run.quit()


def tap_fds(tmp_path, ns):
    fds = [open_tap(ns, "kkfds0", True), open_tap(ns, "kkfds0", True)]
    run = Running(tmp_path, ns, f"tap,id=t0,fds={fds[0]}:{fds[1]}", pass_fds=fds)
    network = run.network()
    assert f"fd={fds[0]}" in network and f"fd={fds[1]}" in network
    run.quit()


def tap_scripts(tmp_path, ns):
    marker = tmp_path / "script.log"
    for name in ("up", "down"):
        script = tmp_path / name
        script.write_text(f"#!/bin/sh\necho {name} $1 >> {marker}\n")
        script.chmod(0o755)
    run = Running(tmp_path, ns, f"tap,id=t0,ifname=kksc0,script={tmp_path}/up,"
                                f"downscript={tmp_path}/down")
    assert marker.read_text() == "up kksc0\n"
    run.quit()
    assert marker.read_text() == "up kksc0\ndown kksc0\n"


def tap_sndbuf(tmp_path, ns):
    fd = open_tap(ns, "kksnd0")
    run = Running(tmp_path, ns, f"tap,id=t0,fd={fd},sndbuf=1048576", pass_fds=[fd])
    value = struct.unpack("i", fcntl.ioctl(fd, TUNGETSNDBUF, bytes(4)))[0]
    assert value == 1048576, value
    run.quit()


def tap_vnet_hdr(tmp_path, ns):
    run = Running(tmp_path, ns, "tap,id=t0,ifname=kkvh0,script=no,downscript=no,vnet_hdr=off")
    assert not tun_flags(ns, "kkvh0") & IFF_VNET_HDR
    run.quit()


def tap_queues(tmp_path, ns):
    run = Running(tmp_path, ns, "tap,id=t0,ifname=kkq0,script=no,downscript=no,queues=3")
    assert run.network().count("ifname=kkq0") == 3 and tun_flags(ns, "kkq0") & IFF_MULTI_QUEUE
    run.quit()


def tap_vhost(tmp_path, ns):
    run = Running(tmp_path, ns, "tap,id=t0,ifname=kkvo0,script=no,downscript=no,vhost=on")
    assert "vhost-net is not supported by kvmkit" in run.quit()


def tap_vhostfd(tmp_path, ns):
    fd = os.open("/dev/null", os.O_RDWR)
    os.set_inheritable(fd, True)
    assert startup(f"tap,id=t0,ifname=kkvf0,script=no,downscript=no,vhost=off,vhostfd={fd}",
                   in_netns(ns)).endswith("vhostfd(s)= is not valid without vhost")
    run = Running(tmp_path, ns, f"tap,id=t0,ifname=kkvf0,script=no,downscript=no,"
                                f"vhostfd={fd}", pass_fds=[fd])
    assert "vhost-net is not supported by kvmkit" in run.quit()
    os.close(fd)


def tap_helper(tmp_path, ns):
    helper, log = fake_helper(tmp_path)
    run = Running(tmp_path, ns, f"tap,id=t0,helper={helper},br=kkbrw0")
    assert f"type=tap,helper={helper}" in run.network()
    assert log.read_text().split()[0] == "--use-vnet" and "--br=kkbrw0" in log.read_text()
    run.quit()


TAP_PROOFS = {
    "ifname": tap_ifname,
    "fd": tap_fd,
    "fds": tap_fds,
    "script": tap_scripts,
    "downscript": tap_scripts,
    "br": lambda tmp_path, ns: (startup("tap,id=t0,br=br0").endswith(
        "br= is used only with helper= (QEMU ignores it otherwise; kvmkit does not)"),
        tap_helper(tmp_path, ns))[0],
    "helper": tap_helper,
    "sndbuf": tap_sndbuf,
    "vnet_hdr": tap_vnet_hdr,
    "vhost": tap_vhost,
    "vhostfd": tap_vhostfd,
    "vhostfds": lambda tmp_path, ns: startup("tap,id=t0,vhostfds=5").endswith(
        "vhostfds= is invalid if fds= wasn't specified"),
    "vhostforce": lambda tmp_path, ns: startup("tap,id=t0,vhostforce=on").endswith(
        "vhost-net requested but could not be initialized (kvmkit has no vhost-net)"),
    "queues": tap_queues,
    "poll-us": lambda tmp_path, ns: startup("tap,id=t0,poll-us=50").endswith(
        "poll-us= is not supported by kvmkit (it tunes vhost-net's busy polling, and "
        "kvmkit has no vhost-net)"),
}


@pytest.mark.parametrize("member", sorted(MEMBERS["tap"]))
def test_every_tap_option_does_something(tmp_path, netns, member):
    result = TAP_PROOFS[member](tmp_path, netns)
    assert result is None or result is True, member


def bridge_enslaves(tmp_path, ns, helper: str | None):
    from pyroute2 import NetNS

    with NetNS(ns) as ipr:
        ipr.link("add", ifname="kkbrw0", kind="bridge")
        bridge = ipr.link_lookup(ifname="kkbrw0")[0]
    extra = f",helper={helper}" if helper else ""
    run = Running(tmp_path, ns, f"bridge,id=b0,br=kkbrw0{extra}")
    if helper is None:             # kvmkit's own (pyroute2) put the tap on the bridge
        with NetNS(ns) as ipr:
            assert any(link.get_attr("IFLA_MASTER") == bridge for link in ipr.get_links())
    assert f"helper={helper or '/usr/lib/qemu/qemu-bridge-helper'},br=kkbrw0" in run.network()
    run.quit()


def bridge_helper(tmp_path, ns):
    helper, log = fake_helper(tmp_path)
    bridge_enslaves(tmp_path, ns, helper)
    assert "--br=kkbrw0" in log.read_text()


BRIDGE_PROOFS = {"br": lambda tmp_path, ns: bridge_enslaves(tmp_path, ns, None),
                 "helper": bridge_helper}


@pytest.mark.parametrize("member", sorted(MEMBERS["bridge"]))
def test_every_bridge_option_does_something(tmp_path, netns, member):
    result = BRIDGE_PROOFS[member](tmp_path, netns)
    assert result is None or result is True, member


def test_every_member_has_a_proof():
    """A member added to the tables must come with its proof here."""
    assert set(USER_PROOFS) == set(MEMBERS["user"])
    assert set(TAP_PROOFS) == set(MEMBERS["tap"])
    assert set(BRIDGE_PROOFS) == set(MEMBERS["bridge"])



def test_legacy_net_nic_options_do_something_or_are_refused():
    """-net nic's own members (QEMU's NetLegacyNicOptions): addr= places the card,
    vectors= sizes its MSI-X table, macaddr= and model= as their names say; any
    other member is refused as QEMU refuses it."""
    argv = kvmkit_command() + ["-nodefaults", "-display", "none", "-S", "-m", "64",
                               "-net", "nic,model=virtio-net-pci,addr=7,vectors=5,"
                                       "macaddr=52:54:00:00:00:77", "-net", "user",
                               "-monitor", "stdio"]
    out = subprocess.run(argv, input="info qtree\nquit\n", capture_output=True, text=True,
                         timeout=30).stdout
    card = out[out.index('dev: virtio-net-pci'):]
    assert 'addr = 07.0' in card and 'vectors = 5 ' in card and \
        'mac = "52:54:00:00:00:77"' in card, card[:2000]
    result = subprocess.run(kvmkit_command() + ["-nodefaults", "-display", "none", "-S",
                                                "-net", "nic,model=e1000,bogus=1"],
                            capture_output=True, text=True, timeout=30,
                            stdin=subprocess.DEVNULL)
    assert result.stderr.strip().endswith(
        "-net nic,model=e1000,bogus=1: Invalid parameter 'bogus'")


@pytest.mark.qemu
def test_a_tap_fd_that_is_no_tap_is_refused_as_qemu():
    """fd= naming something that is not a tap (here /dev/null) gets QEMU's error, not
    a crash once the event loop tries to poll it."""
    import subprocess

    from guest import QEMU, kvmkit_command

    def error(argv):
        fd = os.open("/dev/null", os.O_RDWR)
        try:
            run = subprocess.run(argv + ["-nodefaults", "-display", "none", "-S",
                                         "-netdev", f"tap,fd={fd},id=n"], pass_fds=(fd,),
                                 capture_output=True, text=True, timeout=30)
        finally:
            os.close(fd)
        return run.returncode, run.stderr.strip().split(": ", 1)[1]

    assert error(kvmkit_command()) == error([QEMU, "-accel", "kvm"])
