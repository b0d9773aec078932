"""Live migration of the probe guest, kvmkit to kvmkit and QEMU 7.2 to QEMU 7.2 (the
reference): the guest keeps rewriting 512 MiB while its RAM moves, with a virtio
NIC on a tap, an inflated balloon and a virtio-blk disk, and carries on at the
destination; a cut stream leaves the source running; a corrupt one is refused;
save to a file and restore, as libvirt's `virsh save` does it."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import time

import pytest
from guest import GuestError, QmpLine, kvmkit_command, machine_args, start_kvmkit, start_qemu
from netns import ETH_TYPE, in_netns, packet_socket

pytestmark = pytest.mark.kvm
MiB = 1 << 20
GUEST_MAC = "52:54:00:12:34:56"


# QEMU 7.2's migration capabilities, as `info migrate_capabilities` lists them
QEMU_CAPABILITIES = (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
    "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
    "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt")


def settled(qmp, status: str, timeout: float = 10) -> None:
    """The run state reaches ``status`` (QEMU reports a migration completed a moment
    before its run state leaves finish-migrate)."""
    deadline = time.monotonic() + timeout
    while (now := qmp_status(qmp)) != status:
        assert time.monotonic() < deadline, now
        time.sleep(0.05)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start(kind: str, args: list[str], cwd: str, preexec_fn=None):
    return (start_kvmkit if kind == "kvmkit" else start_qemu)(args, cwd=cwd,
                                                             preexec_fn=preexec_fn)


def wait_for_socket(vm, path: str) -> QmpLine:
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        if vm.proc.poll() is not None or time.monotonic() > deadline:
            raise GuestError(f"no QMP socket: rc={vm.proc.poll()} stderr={vm.stderr}")
        time.sleep(0.05)
    return QmpLine(path)


def wait_migration(qmp: QmpLine, timeout: float = 120) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        info = qmp.execute("query-migrate")["return"]
        if info.get("status") in ("completed", "failed", "cancelled"):
            return info
        time.sleep(0.1)
    raise GuestError(f"migration did not end: {info}")


def qmp_status(qmp: QmpLine) -> str:
    return qmp.execute("query-status")["return"]["status"]


def touched_guest(kind: str, tmp_path, memory_mib: int, touch: str):
    """The probe guest with a QMP socket, ready, after `touch` (MIB SEED)."""
    sock = str(tmp_path / "src.sock")
    vm = start(kind, machine_args(memory_mib=memory_mib, extra=[
        "-qmp", f"unix:{sock},server=on,wait=off"]), str(tmp_path))
    vm.wait_event("ready", timeout=60)
    assert vm.command(f"touch {touch}", timeout=60)["errors"] == 0
    return vm, QmpLine(sock)


def test_live_migration_with_nic_balloon_and_disk(tmp_path, vmm_kind, netns):
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 * MiB))
    src_qmp, dst_qmp = str(tmp_path / "src.sock"), str(tmp_path / "dst.sock")
    port = free_port()

    def args(tap: str, qmp: str) -> list[str]:
        return machine_args(memory_mib=768, extra=[
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", "virtio-net-pci,netdev=n0,id=net0",
            "-device", "virtio-balloon-pci,id=balloon0",
            "-drive", f"file={image},format=raw,if=none,id=d0",
            "-device", "virtio-blk-pci,drive=d0,id=blk0",
            "-qmp", f"unix:{qmp},server=on,wait=off"])

    from pyroute2 import NetNS

    with NetNS(netns) as ns:                    # the stream goes over the namespace's lo
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    src = start(vmm_kind, args("kk0", src_qmp), str(tmp_path), in_netns(netns))
    dst = None
    try:
        src.wait_event("ready", timeout=60)
        source = QmpLine(src_qmp)
        source.execute("balloon", value=700 * MiB)
        assert src.wait_event("balloon", timeout=60)["actual_pages"] == 68 * 256
        balloon = source.hmp("info balloon")
        assert balloon == "balloon: actual=700\r\n"
        assert src.command("touch 512 9", timeout=120)["errors"] == 0     # above the balloon
        before = src.command("sum 512", timeout=60)["sum"]
        assert src.command("blk write 5 written-before-migration") == {"status": 0}

        dst = start(vmm_kind, args("kk1", dst_qmp) + ["-incoming", f"tcp:127.0.0.1:{port}"],
                    str(tmp_path), in_netns(netns))
        destination = wait_for_socket(dst, dst_qmp)
        assert qmp_status(destination) == "inmigrate"
        for qmp in (source, destination):
            assert qmp.execute("migrate-set-capabilities", capabilities=[
                {"capability": "events", "state": True}]) == {"return": {}}
        source.execute("migrate-set-parameters", **{"max-bandwidth": 4 << 30})

        rarp = packet_socket(netns, "kk1", proto=0x8035)     # the destination announces
        rarp.settimeout(10)
        # The guest rewrites its 512 MiB 12 times over (ending as before) while it moves.
        src.send("churn 512 9")
        time.sleep(0.3)
        assert source.execute("migrate", uri=f"tcp:127.0.0.1:{port}") == {"return": {}}
        info = wait_migration(source)
        assert info["status"] == "completed", info
        assert info["ram"]["total"] >= 768 * MiB and info["ram"]["normal"] > 512 * 256
        assert info["downtime"] <= info["total-time"]
        settled(source, "postmigrate")       # QEMU says completed just before it stops
        events = [e["event"] for e in source.events]
        assert "STOP" in events and "MIGRATION_PASS" in events
        statuses = [e["data"]["status"] for e in source.events if e["event"] == "MIGRATION"]
        assert statuses[0] == "setup" and statuses[-1] == "completed"

        # The churn kept the pages dirty until it ended (its answer came from one side
        # or the other): the migration converged only then.
        try:
            answer = src.read_json(timeout=1)
        except GuestError:
            answer = dst.read_json(timeout=120)
        assert answer == {"mib": 512, "seed": 9}
        assert dst.command("check 512 9", timeout=120)["errors"] == 0
        assert dst.command("sum 512", timeout=60)["sum"] == before
        assert qmp_status(destination) == "running"
        announced = rarp.recv(2048)
        assert announced[:14] == b"\xff" * 6 + bytes.fromhex("525400123456") + b"\x80\x35"
        assert announced[14:22] == bytes.fromhex("0001080006040003")     # a RARP request
        assert destination.hmp("info balloon") == balloon
        assert dst.command("blk read 5") == {"status": 0, "text": "written-before-migration"}

        host = packet_socket(netns, "kk1")
        host_mac, guest_mac = bytes.fromhex("020000000001"), bytes.fromhex("525400123456")
        assert dst.command("netsend 020000000001 0x88b5 after-migration") == {"sent": 60}
        data = host.recv(2048)
        assert data[6:12] == guest_mac and data[14:29] == b"after-migration"
        host.send((guest_mac + host_mac + ETH_TYPE.to_bytes(2, "big") + b"to-the-guest")
                  .ljust(60, b"\0"))
        for _ in range(20):
            got = dst.command("netrecv 1000", timeout=10)
            if got.get("payload") == "to-the-guest":
                break
        else:
            pytest.fail("the destination's NIC did not receive")
    finally:
        src.close()
        if dst is not None:
            dst.close()


@pytest.mark.parametrize("model", ["e1000", "rtl8139"])
def test_emulated_nics_work_after_migration(tmp_path, vmm_kind, netns, model):
    """The emulated NICs' registers and rings move with the guest: the driver the
    probe set up at the source sends and receives at the destination."""
    from pyroute2 import NetNS

    with NetNS(netns) as ns:
        ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
    stream = str(tmp_path / "stream.sock")

    def args(tap: str, qmp: str) -> list[str]:
        return machine_args(memory_mib=128, extra=[
            "-netdev", f"tap,id=n0,ifname={tap},script=no,downscript=no",
            "-device", f"{model},netdev=n0,id=net0",
            "-qmp", f"unix:{qmp},server=on,wait=off"])
    src = start(vmm_kind, args("kk0", str(tmp_path / "src.sock")), str(tmp_path),
                in_netns(netns))
    dst = None
    try:
        src.wait_event("ready", timeout=60)
        source = QmpLine(str(tmp_path / "src.sock"))
        assert src.command("net")["model"] == model
        if model == "rtl8139":
            src.command("netcplus")               # C+ mode: descriptor rings to carry
        dst = start(vmm_kind, args("kk1", str(tmp_path / "dst.sock")) +
                    ["-incoming", f"unix:{stream}"], str(tmp_path), in_netns(netns))
        wait_for_socket(dst, str(tmp_path / "dst.sock"))
        assert source.execute("migrate", uri=f"unix:{stream}") == {"return": {}}
        assert wait_migration(source)["status"] == "completed"
        host = packet_socket(netns, "kk1")
        guest_mac = bytes.fromhex(GUEST_MAC.replace(":", ""))
        rarp = packet_socket(netns, "kk1", proto=0x8035)
        rarp.settimeout(10)
        destination = QmpLine(str(tmp_path / "dst.sock"))
        assert destination.execute("announce-self", initial=10, max=50, rounds=2,
                                   step=10, interfaces=["net0"]) == {"return": {}}
        assert rarp.recv(2048)[6:14] == guest_mac + b"\x80\x35"
        for round_ in range(3):                   # several frames: the rings go round
            text = f"moved-{round_}"
            assert dst.command(f"netsend 020000000001 0x88b5 {text}")["sent"] >= 60
            assert host.recv(2048)[14:14 + len(text)] == text.encode()
            host.send((guest_mac + bytes.fromhex("020000000001") +
                       ETH_TYPE.to_bytes(2, "big") + f"back-{round_}".encode()).ljust(60, b"\0"))
            for _ in range(20):
                if dst.command("netrecv 1000", timeout=10).get("payload") == f"back-{round_}":
                    break
            else:
                pytest.fail(f"{model} at the destination did not receive")
    finally:
        src.close()
        if dst is not None:
            dst.close()


def test_two_vcpus_and_more_devices_migrate(tmp_path, vmm_kind):
    """Two vCPUs, virtio-rng, a virtconsole on a socket and the PIIX3 USB controller:
    each works the same at the destination."""
    stream = str(tmp_path / "stream.sock")

    def args(name: str) -> list[str]:
        console = str(tmp_path / f"{name}-console.sock")
        return machine_args(memory_mib=128, cpus=2, extra=[
            "-usb", "-device", "virtio-rng-pci",
            "-chardev", f"socket,id=c0,path={console},server=on,wait=off",
            "-device", "virtio-serial-pci,id=vs0", "-device", "virtconsole,chardev=c0",
            "-qmp", f"unix:{tmp_path}/{name}.sock,server=on,wait=off"])
    src = start(vmm_kind, args("src"), str(tmp_path))
    dst = None
    try:
        ready = src.wait_event("ready", timeout=60)
        assert ready["cpus"] == 2
        source = QmpLine(str(tmp_path / "src.sock"))
        assert src.command("rng 64")["bytes"] == 64
        dst = start(vmm_kind, args("dst") + ["-incoming", f"unix:{stream}"], str(tmp_path))
        wait_for_socket(dst, str(tmp_path / "dst.sock"))
        assert source.execute("migrate", uri=f"unix:{stream}") == {"return": {}}
        assert wait_migration(source)["status"] == "completed"
        info = dst.command("info")
        assert info["cpus"] == 2
        assert dst.command("rng 64")["bytes"] == 64
        host = socket.socket(socket.AF_UNIX)
        host.connect(str(tmp_path / "dst-console.sock"))
        host.settimeout(10)
        time.sleep(0.3)
        assert dst.command("console write after-move") == {"written": 11}
        assert host.recv(100) == b"after-move\n"
        host.close()
    finally:
        src.close()
        if dst is not None:
            dst.close()


def test_cut_migration_leaves_the_source_running(tmp_path, vmm_kind):
    """The destination dies mid-stream: the source fails the migration and runs on."""
    src, source = touched_guest(vmm_kind, tmp_path, 512, "256 3")
    try:
        source.execute("migrate-set-parameters", **{"max-bandwidth": 32 * MiB})
        listener = socket.socket()
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        assert source.execute("migrate", uri=f"tcp:127.0.0.1:{port}") == {"return": {}}
        conn, _ = listener.accept()
        conn.recv(1 << 20)                      # some of the stream, then the cut
        conn.close()
        listener.close()
        info = wait_migration(source)
        assert info["status"] == "failed" and info.get("error-desc"), info
        assert qmp_status(source) == "running"
        assert src.command("check 256 3", timeout=60)["errors"] == 0
        info_text = source.hmp("info migrate")
        assert "Migration status: failed (" in info_text
    finally:
        src.close()


def test_cancel_and_a_corrupt_stream(tmp_path):
    """migrate_cancel during a slow migration puts the source back; a destination
    given a stream with a bad byte refuses it and exits 1 (kvmkit's own stream)."""
    src, source = touched_guest("kvmkit", tmp_path, 256, "128 5")
    try:
        source.execute("migrate-set-capabilities",
                       capabilities=[{"capability": "events", "state": True}])
        source.execute("migrate-set-parameters", **{"max-bandwidth": 8 * MiB})
        saved = tmp_path / "vm.state"
        assert source.execute("migrate", uri=f"exec:cat > {saved}") == {"return": {}}
        time.sleep(1)
        assert source.execute("migrate", uri="exec:cat > /dev/null")["error"]["desc"] == \
            "There's a migration process in progress"
        source.execute("migrate_cancel")
        assert wait_migration(source)["status"] == "cancelled"
        assert qmp_status(source) == "running"
        statuses = [e["data"]["status"] for e in source.events if e["event"] == "MIGRATION"]
        assert statuses[-2:] == ["cancelling", "cancelled"]

        # A whole stream, then one bad byte in its machine state.
        source.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 30})
        source.execute("stop")
        assert source.execute("migrate", uri=f"exec:cat > {saved}") == {"return": {}}
        assert wait_migration(source)["status"] == "completed"
        good = saved.read_bytes()
        at = good.rindex(b'"vcpus"')
        broken = good[:at + 1] + b"X" + good[at + 2:]         # not JSON any more
        newer = good.replace(b'"type":"isa-serial","version":1',
                             b'"type":"isa-serial","version":9')
        assert newer != good
        for bad, reason in ((broken, "the saved vCPUs do not match"),
                            (newer, "section version 9 is not 1")):
            path = tmp_path / "bad.state"
            path.write_bytes(bad)
            dst = start_kvmkit(machine_args(memory_mib=256, extra=[
                "-incoming", f"exec:cat {path}"]), cwd=str(tmp_path))
            assert dst.wait_exit(60) == 1
            assert "load of migration failed" in dst.stderr and reason in dst.stderr
    finally:
        src.close()


def getfd(qmp: QmpLine, name: str, fd: int) -> dict:
    """QMP getfd with the descriptor passed alongside (SCM_RIGHTS), as libvirt does."""
    message = json.dumps({"execute": "getfd", "arguments": {"fdname": name}}).encode()
    socket.send_fds(qmp.sock, [message + b"\n"], [fd])
    while True:
        reply = json.loads(qmp.file.readline())
        if "event" not in reply:
            return reply


def test_save_to_a_file_and_restore(tmp_path, vmm_kind):
    """As libvirt's `virsh save`: `stop`, getfd, migrate to fd:NAME, quit; then
    `virsh restore`: a new VMM with -incoming defer and migrate-incoming. The
    source was paused, so the guest is paused at the destination too (QEMU's
    global state), until cont."""
    dst_qmp, saved = str(tmp_path / "dst.sock"), tmp_path / "saved.vm"
    src, source = touched_guest(vmm_kind, tmp_path, 256, "64 4")
    try:
        source.execute("stop")
        fd = os.open(saved, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        assert getfd(source, "migrate", fd) == {"return": {}}
        os.close(fd)
        assert source.execute("migrate", uri="fd:migrate") == {"return": {}}
        assert wait_migration(source)["status"] == "completed"
        settled(source, "postmigrate")
        assert source.execute("migrate", uri="fd:migrate")["error"]["desc"] == \
            "Can't migrate the vm that was paused due to previous migration"
        source.execute("quit")
    finally:
        src.close()
    dst = start(vmm_kind, machine_args(memory_mib=256, extra=[
        "-incoming", "defer", "-qmp", f"unix:{dst_qmp},server=on,wait=off"]), str(tmp_path))
    try:
        destination = wait_for_socket(dst, dst_qmp)
        assert qmp_status(destination) == "inmigrate"
        if vmm_kind == "kvmkit":
            # Typed before the state came in: kvmkit holds it for the loaded guest
            # (QEMU's UART takes one byte, which the load then overwrites).
            dst.send("check 64 4")
        assert destination.execute("query-migrate") == {"return": {}}
        assert destination.execute("migrate-incoming", uri=f"exec:cat {saved}") == \
            {"return": {}}
        assert destination.execute("migrate-incoming", uri=f"exec:cat {saved}")["error"][
            "desc"] == "The incoming migration has already been started"
        while qmp_status(destination) == "inmigrate":
            time.sleep(0.1)
        assert qmp_status(destination) == "paused"
        assert destination.execute("query-migrate") == {"return": {"status": "completed"}}
        destination.execute("cont")
        if vmm_kind == "kvmkit":
            assert dst.read_json(timeout=60)["errors"] == 0
        else:
            assert dst.command("check 64 4", timeout=60)["errors"] == 0
        assert dst.command("sum 64")["mib"] == 64                 # and it goes on
    finally:
        dst.close()


def test_monitor_errors_and_text(tmp_path):
    """What QEMU 7.2 answers, from kvmkit, for the calls a client gets wrong."""
    sock = str(tmp_path / "qmp.sock")
    proc = subprocess.Popen(
        [*kvmkit_command(), *machine_args(memory_mib=64),
         "-qmp", f"unix:{sock},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        cwd=str(tmp_path))
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(sock) and time.monotonic() < deadline:
            time.sleep(0.05)
        qmp = QmpLine(sock)
        assert qmp.execute("query-migrate") == {"return": {}}

        def error(command: str, **args) -> str:
            return qmp.execute(command, **args)["error"]["desc"]
        assert error("migrate", uri="foo:bar") == \
            "Parameter 'uri' expects a valid migration protocol"
        assert error("migrate-incoming", uri="tcp:127.0.0.1:1") == \
            "'-incoming' was not specified on the command line"
        assert error("migrate", uri="fd:nope") == \
            "File descriptor named 'nope' has not been found"
        assert error("migrate-set-parameters", **{"downtime-limit": 2000001}) == \
            "Parameter 'downtime_limit' expects an integer in the range of 0 to " \
            "(2000 * 1000) ms"
        assert qmp.hmp("migrate_set_capability nosuch on") == \
            "Error: invalid parameter value: nosuch\r\n"
        assert qmp.hmp("migrate_set_parameter downtime-limit 500") == ""
        assert qmp.hmp("migrate_set_parameter max-bandwidth 64") == ""
        params = qmp.execute("query-migrate-parameters")["return"]
        assert params["downtime-limit"] == 500 and params["max-bandwidth"] == 64 * MiB
        text = qmp.hmp("info migrate_parameters")
        assert "max-bandwidth: 67108864 bytes/second\r\ndowntime-limit: 500 ms\r\n" in text
        assert qmp.hmp("info migrate_capabilities") == "".join(
            f"{name}: off\r\n" for name in QEMU_CAPABILITIES)
        assert qmp.hmp("migrate exec:cat>/dev/null") == \
            "terminal does not allow synchronous migration, continuing detached\r\n"
        assert wait_migration(qmp)["status"] == "completed"
        settled(qmp, "postmigrate")
        qmp.execute("cont")                        # the source may run on after all
        assert qmp_status(qmp) == "running"
        assert qmp.execute("migrate", uri="tcp:127.0.0.1:1") == {"return": {}}
        info = wait_migration(qmp)
        assert info == {"status": "failed", "error-desc":
                        "Failed to connect to '127.0.0.1:1': Connection refused"}
        assert qmp_status(qmp) == "running"
    finally:
        proc.kill()
        proc.wait()
