"""kvmkit confined once set-up is done: -sandbox (a seccomp filter on every thread,
QEMU's deny list), -runas (down to another user) and -chroot. The guest and the
monitor go on working; what the filter denies is refused; a NIC is still hot-added
onto a tap fd passed with getfd after the privileges are gone."""

from __future__ import annotations

import array
import fcntl
import json
import os
import socket
import struct
import subprocess

import pytest
from guest import QEMU, kvmkit_command, machine_args
from guest import QmpLine as Qmp
from netns import in_netns, packet_socket

pytestmark = pytest.mark.kvm
LIBVIRT_SANDBOX = "on,obsolete=deny,elevateprivileges=deny,spawn=deny,resourcecontrol=deny"


def proc_status(pid: int, thread: str | None = None) -> dict[str, str]:
    with open(f"/proc/{pid}/task/{thread}/status" if thread else f"/proc/{pid}/status") as f:
        return dict(line.rstrip("\n").split(":\t", 1) for line in f if ":\t" in line)


def start(launch, tmp_path, *extra: str, preexec_fn=None):
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[*extra, "-qmp", f"unix:{sock},server=on,wait=off"]),
                "kvmkit", preexec_fn=preexec_fn)
    vm.wait_event("ready", timeout=60)
    return vm, Qmp(sock)


def migrate_to_command(qmp, target) -> dict:
    assert qmp.execute("migrate", uri=f"exec:cat > {target}") == {"return": {}}
    while (state := qmp.execute("query-migrate")["return"])["status"] in ("setup", "active"):
        pass
    return state


@pytest.mark.parametrize("sandbox", [None, LIBVIRT_SANDBOX])
def test_sandbox_refuses_spawning_while_the_guest_and_monitor_go_on(launch, tmp_path,
                                                                    sandbox):
    """With libvirt's -sandbox (spawn=deny, ...), every thread runs under the filter
    (/proc says Seccomp: 2, no_new_privs); `migrate exec:` must spawn a shell, which
    the filter refuses: the migration fails with EPERM and the guest and the
    monitor carry on. Without the sandbox the same migration completes."""
    vm, qmp = start(launch, tmp_path, *(["-sandbox", sandbox] if sandbox else []))
    status = proc_status(vm.proc.pid)
    threads = os.listdir(f"/proc/{vm.proc.pid}/task")
    if sandbox:
        assert status["Seccomp"] == "2" and status["NoNewPrivs"] == "1"
        for tid in threads:                       # TSYNC: the vCPU threads too
            assert proc_status(vm.proc.pid, tid)["Seccomp"] == "2"
    else:
        assert status["Seccomp"] == "0"
    state = migrate_to_command(qmp, tmp_path / "state.bin")
    if sandbox:
        assert state == {"status": "failed", "error-desc": "Operation not permitted"}
        assert not (tmp_path / "state.bin").exists()
    else:
        assert state["status"] == "completed"
        assert (tmp_path / "state.bin").read_bytes()[:4] == b"KVMK"     # kvmkit's stream
        assert qmp.execute("cont") == {"return": {}}
    assert qmp.hmp("info status") == "VM status: running\r\n"
    assert vm.command("touch 8 3")["errors"] == 0            # the guest still runs


@pytest.mark.parametrize("vmm", ["kvmkit", "qemu"])
@pytest.mark.parametrize("arg, message", [
    ("on,spawn=maybe", "invalid argument for spawn"),
    ("on,obsolete=children", "invalid argument for obsolete"),
    ("on,elevateprivileges=yes", "invalid argument for elevateprivileges"),
    ("on,resourcecontrol=1", "invalid argument for resourcecontrol"),
    ("on,bogus=1", "Invalid parameter 'bogus'")])
def test_sandbox_option_errors_are_qemus(vmm, arg, message):
    argv = (kvmkit_command() if vmm == "kvmkit" else [QEMU]) + [
        "-nodefaults", "-display", "none", "-S", "-sandbox", arg]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith(f"-sandbox {arg}: {message}")


def test_sandbox_is_listed_for_libvirt(tmp_path, launch):
    _vm, qmp = start(launch, tmp_path)
    options = qmp.execute("query-command-line-options", option="sandbox")["return"]
    assert [p["name"] for p in options[0]["parameters"]] == [
        "enable", "obsolete", "elevateprivileges", "spawn", "resourcecontrol"]


def test_runas_and_chroot_drop_privileges_and_hotplug_still_works(launch, tmp_path, netns):
    """-runas nobody -chroot EMPTYDIR: once running, the process is uid/gid 65534,
    its root is the empty directory, and it can reopen nothing; still the monitor
    answers (commands whose code was never run before included), and a NIC is
    hot-added onto a tap the test opens and passes with getfd, and carries frames."""
    from pyroute2 import netns as ns_tools

    jail = tmp_path / "jail"
    jail.mkdir()
    vm, qmp = start(launch, tmp_path, "-runas", "nobody", "-chroot", str(jail),
                    "-sandbox", LIBVIRT_SANDBOX, preexec_fn=in_netns(netns))
    status = proc_status(vm.proc.pid)
    assert status["Uid"].split() == ["65534"] * 4 and status["Gid"].split()[0] == "65534"
    assert os.readlink(f"/proc/{vm.proc.pid}/root") == str(jail)
    assert "dev: i440FX-pcihost" in qmp.hmp("info qtree")
    assert qmp.execute("query-qmp-schema")["return"]
    ns_tools.pushns(netns)
    try:
        tap_fd = os.open("/dev/net/tun", os.O_RDWR)
        fcntl.ioctl(tap_fd, 0x400454CA, struct.pack("16sH", b"kkrun0", 0x1002))
    finally:
        ns_tools.popns()
    qmp.sock.sendmsg([json.dumps({"execute": "getfd", "arguments": {"fdname": "tap"}})
                      .encode() + b"\n"],
                     [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [tap_fd]))])
    while "event" in (reply := json.loads(qmp.file.readline())):
        pass
    assert reply == {"return": {}}
    assert qmp.execute("netdev_add", type="tap", id="t0", fd="tap") == {"return": {}}
    assert qmp.execute("device_add", driver="virtio-net-pci", netdev="t0", id="nic0") == \
        {"return": {}}
    added = vm.wait_event("pci-added", timeout=30)
    assert (added["vendor"], added["device"]) == ("1af4", "1000")
    host = packet_socket(netns, "kkrun0")
    assert vm.command("netsend ffffffffffff 0x88b5 after-runas")["sent"] == 60
    assert host.recv(2048)[14:25] == b"after-runas"
    host.close()
    os.close(tap_fd)
    # what needs the privileges given up is refused, with an error, not a crash
    reply = qmp.execute("netdev_add", type="tap", id="t1", ifname="kkrun1")
    assert reply["error"]["class"] == "GenericError", reply


def test_runas_errors():
    result = subprocess.run(kvmkit_command() + ["-nodefaults", "-display", "none", "-S",
                                                "-runas", "no-such-user-here"],
                            capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.strip().endswith(
        "-runas no-such-user-here: User \"no-such-user-here\" doesn't exist")
