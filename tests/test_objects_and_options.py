"""-object and object-add, guest RAM from a memory backend, fd sets, -machine none,
-usb and the options libvirt passes: each as QEMU 7.2 does it (the same
command line or QMP run on both, their errors compared), and the host-visible
effect where there is one (guest RAM really in the file or memfd)."""

from __future__ import annotations

import os
import signal
import subprocess
import time

import pytest
from guest import QEMU, kvmkit_command, machine_args, probe_elf, qmp_answers

pytestmark = pytest.mark.qemu
TOUCH_START = 16 << 20                     # where the probe's `touch` starts writing


def _pattern(address: int, seed: int) -> int:
    """The value the probe's `touch` writes at each 8 bytes (vmm/probe/src/main.c)."""
    return ((address * 0x9E3779B97F4A7C15) & (2**64 - 1)) ^ seed


def _refusal(argv: list[str]) -> tuple[int, str]:
    proc = subprocess.run(argv + ["-nodefaults", "-display", "none", "-S"],
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    lines = [ln for ln in proc.stderr.splitlines() if "CPUID" not in ln]
    return proc.returncode, "\n".join(ln.split(": ", 1)[-1] for ln in lines)


BAD_OBJECTS = [
    ["-object", "foo,id=x"], ["-object", "memory-backend-ram,id=m"],
    ["-object", "memory-backend-ram,size=1M"], ["-object", "memory-backend-file,id=m,size=1M"],
    ["-object", "memory-backend-ram,id=m,size=x"], ["-object", "memory-backend-ram,id=m,size=0"],
    ["-object", "memory-backend-ram,id=m,size=1M,share=maybe"],
    ["-object", "memory-backend-ram,id=m,size=1M,bogus=1"],
    ["-object", "memory-backend-ram,id=1m,size=1M"],
    ["-object", "memory-backend-file,id=m,size=1M,mem-path=/nonexistent/ram"],
    ["-object", '{"qom-type":"memory-backend-ram","id":"m","size":"x"}'],
    ["-object", '{"qom-type":"memory-backend-ram","id":"m","size":1048576,"share":1}'],
    ["-object", '{"id":"m"}'], ["-object", '{"qom-type":"secret","id":"s","data":5}'],
    ["-object", "secret,id=s"], ["-object", "secret,id=s,file=/nonexistent"],
    ["-object", "iothread,id=i,poll-max-ns=x"], ["-object", "iothread,id=i,poll-max-ns=-1"],
    ["-object", '{"qom-type":"iothread","id":"i","poll-max-ns":"3"}'],
    ["-object", "rng-random,id=r,filename=/nonexistent"], ["-object", "rng-builtin,id=r,foo=1"],
    ["-object", "throttle-group,id=g,x-iops-total=-5"],
    ["-object", "memory-backend-ram,id=m,size=128M", "-object", "memory-backend-ram,id=m,size=1M"],
    ["-machine", "memory-backend=nope"],
    ["-object", "memory-backend-ram,id=m,size=128M", "-machine", "memory-backend=m", "-m", "256"],
    ["-device", "virtio-rng-pci,rng=nope"],
    ["-object", "secret,id=s,data=x", "-device", "virtio-rng-pci,rng=s"],
    ["-object", "memory-backend-ram,id=pc.ram,size=128M"],
]


@pytest.mark.parametrize("options", BAD_OBJECTS, ids=lambda o: " ".join(o))
def test_bad_objects_are_refused_as_qemu(options):
    ours = _refusal(kvmkit_command() + options)
    theirs = _refusal([QEMU, "-accel", "kvm"] + options)
    assert ours[0] == theirs[0] == 1
    assert ours[1] == theirs[1]


def test_object_add_and_del_answer_as_qemu(tmp_path):
    questions = [
        ("object-add", {"qom-type": "memory-backend-ram", "id": "m0", "size": 1 << 20}),
        ("object-add", {"qom-type": "memory-backend-ram", "id": "m0", "size": 1 << 20}),
        ("object-add", {"qom-type": "secret", "id": "s0", "data": "aGk=", "format": "base64"}),
        ("object-add", {"qom-type": "rng-random", "id": "r0", "filename": "/dev/urandom"}),
        ("object-add", {"qom-type": "iothread", "id": "io0"}),
        ("object-add", {"qom-type": "nosuch", "id": "x"}),
        ("qom-get", {"path": "/objects/m0", "property": "size"}),
        ("qom-get", {"path": "/objects/r0", "property": "filename"}),
        ("object-del", {"id": "m0"}), ("object-del", {"id": "m0"}),
        ("qom-list-types", {"implements": "memory-backend"}),
        ("qom-list-types", {"implements": "rng-backend"}),
        ("query-command-line-options", {"option": "nosuch"}),
        ("device-list-properties", {"typename": "nosuch"}),
        ("query-pci", {}),
    ]
    ours = qmp_answers(kvmkit_command() + ["-machine", "none"], str(tmp_path / "k.sock"),
                       questions)
    theirs = qmp_answers([QEMU, "-machine", "none,accel=kvm"], str(tmp_path / "q.sock"),
                         questions)
    for (name, _args), mine, qemus in zip(questions, ours, theirs):
        if name == "qom-list-types":       # QEMU's has every backend; each of ours is QEMU's
            assert {t["name"] for t in mine["return"]} <= \
                {t["name"] for t in qemus["return"]}, mine
            continue
        assert mine == qemus, name
    iothreads = qmp_answers(kvmkit_command() + ["-object", "iothread,id=io0"],
                            str(tmp_path / "i.sock"), [("query-iothreads", {})])[0]["return"]
    assert [t["id"] for t in iothreads] == ["io0"]
    assert os.path.exists("/proc/self/task") and iothreads[0]["thread-id"] > 0


def _touch_and_read(argv: list[str], read_ram) -> tuple[dict, bytes]:
    """Boots the probe with argv, has it write its pattern over 1 MiB from 16 MiB,
    and returns its answer and what read_ram(process) sees at 16 MiB then."""
    from guest import Vmm

    vm = Vmm(argv)
    try:
        vm.wait_event("ready", timeout=60)
        answer = vm.command("touch 1 7")
        return answer, read_ram(vm.proc)
    finally:
        vm.close()


@pytest.mark.parametrize("share", ["on", "off"])
def test_ram_comes_from_a_file_backend(tmp_path, share):
    """memory-backend-file: the guest's RAM is that file (share=on: the guest's writes
    reach it; share=off: a private copy, the file stays as it was)."""
    ram_file = tmp_path / "guest.ram"
    argv = kvmkit_command() + machine_args(memory_mib=256, extra=[
        "-object", f"memory-backend-file,id=pc.ram,size=256M,mem-path={ram_file},share={share}",
        "-machine", "memory-backend=pc.ram"])

    def read_file(_proc):
        with open(ram_file, "rb") as f:
            f.seek(TOUCH_START)
            return f.read(8)

    answer, seen = _touch_and_read(argv, read_file)
    assert answer["errors"] == 0
    assert ram_file.stat().st_size == 256 << 20
    expected = _pattern(TOUCH_START, 7).to_bytes(8, "little") if share == "on" else bytes(8)
    assert seen == expected


def test_ram_comes_from_a_memfd_backend():
    """memory-backend-memfd (shared by default): the memfd the VMM holds is the RAM."""
    argv = kvmkit_command() + machine_args(memory_mib=256, extra=[
        "-object", "memory-backend-memfd,id=pc.ram,size=256M",
        "-machine", "memory-backend=pc.ram"])

    def read_memfd(proc):
        fd_dir = f"/proc/{proc.pid}/fd"
        for name in os.listdir(fd_dir):
            if os.readlink(f"{fd_dir}/{name}").startswith("/memfd:memory-backend-memfd"):
                with open(f"{fd_dir}/{name}", "rb") as f:
                    f.seek(TOUCH_START)
                    return f.read(8)
        raise AssertionError("kvmkit holds no memfd")

    answer, seen = _touch_and_read(argv, read_memfd)
    assert answer["errors"] == 0
    assert seen == _pattern(TOUCH_START, 7).to_bytes(8, "little")


@pytest.mark.parametrize("vmm", ["kvmkit", "qemu"])
def test_a_chardev_opens_its_file_from_an_fd_set(tmp_path, vmm):
    """-add-fd hands over a file libvirt opened; -chardev file,path=/dev/fdset/N
    writes the guest's console into it."""
    log = tmp_path / "console.log"
    fd = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    base = kvmkit_command() if vmm == "kvmkit" else [QEMU, "-accel", "kvm"]
    argv = base + ["-m", "256", "-nodefaults", "-display", "none", "-kernel", probe_elf(),
                   "-add-fd", f"set=3,fd={fd},opaque=console",
                   "-chardev", "file,id=c0,path=/dev/fdset/3,append=on", "-serial", "chardev:c0"]
    proc = subprocess.Popen(argv, pass_fds=(fd,), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    os.close(fd)
    try:
        deadline = time.monotonic() + 60
        while b'"ready"' not in log.read_bytes():
            assert proc.poll() is None and time.monotonic() < deadline
            time.sleep(0.1)
    finally:
        proc.kill()
        proc.wait()


def test_machine_none_and_usb_as_qemu(tmp_path):
    none = [("query-pci", {}), ("query-cpus-fast", {}), ("query-status", {}),
            ("query-kvm", {}), ("system_reset", {}), ("system_powerdown", {})] + [
        ("human-monitor-command", {"command-line": line}) for line in (
            "info pci", "info qtree", "info mtree", "info irq", "info registers",
            "x /4x 0", "xp /4x 0", "gpa2hva 0")]
    def spaces_in_any_order(replies):       # QEMU's mtree lists its address spaces
        return [sorted(r["return"].split("\r\n\r\n")) if "address-space" in
                str(r.get("return")) else r for r in replies]    # in no fixed order
    assert spaces_in_any_order(qmp_answers(kvmkit_command() + ["-machine", "none,accel=kvm:tcg"],
                                           str(tmp_path / "k.sock"), none)) == \
        spaces_in_any_order(qmp_answers([QEMU, "-machine", "none,accel=kvm:tcg"],
                                        str(tmp_path / "q.sock"), none))
    usb = [("human-monitor-command", {"command-line": "info pci"}),
           ("device-list-properties", {"typename": "piix3-usb-uhci"})]
    ours = qmp_answers(kvmkit_command() + ["-usb"], str(tmp_path / "k2.sock"), usb)
    theirs = qmp_answers([QEMU, "-accel", "kvm", "-usb"], str(tmp_path / "q2.sock"), usb)
    assert "USB controller: PCI device 8086:7020" in ours[0]["return"]
    assert ours[0] == theirs[0]

    def by_name(reply):
        return sorted(reply["return"], key=lambda p: p["name"])
    assert by_name(ours[1]) == by_name(theirs[1])


def test_no_command_fails_inside_on_machine_none(tmp_path):
    """Every QMP command, bare, on the empty machine: an answer or a user error."""
    from guest import QmpLine, start_with_qmp

    sock = str(tmp_path / "k.sock")
    proc = start_with_qmp(kvmkit_command() + ["-machine", "none", "-S", "-nodefaults",
                                              "-display", "none"], sock)
    try:
        qmp = QmpLine(sock)
        names = [c["name"] for c in qmp.execute("query-commands")["return"]]
        for name in names:
            if name != "quit":
                reply = qmp.execute(name)
                assert "internal error" not in reply.get("error", {}).get("desc", ""), name
    finally:
        proc.kill()
        proc.wait()


def test_libvirts_start_options_are_taken():
    """The options libvirt 9.0 writes for a pc guest, as it writes them."""
    argv = kvmkit_command() + [
        "-name", "guest=g,debug-threads=on", "-S",
        "-object", '{"qom-type":"memory-backend-ram","id":"pc.ram","size":268435456}',
        "-machine", "pc-i440fx-7.2,usb=off,dump-guest-core=off,memory-backend=pc.ram",
        "-accel", "kvm", "-cpu", "qemu64", "-m", "256", "-overcommit", "mem-lock=off",
        "-smp", "1,sockets=1,cores=1,threads=1", "-display", "none", "-no-user-config",
        "-nodefaults", "-rtc", "base=utc", "-no-shutdown", "-boot", "strict=on",
        "-device", '{"driver":"piix3-usb-uhci","id":"usb","bus":"pci.0","addr":"0x1.0x2"}',
        "-audiodev", '{"id":"audio1","driver":"none"}', "-msg", "timestamp=on"]
    proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)
    time.sleep(3)
    assert proc.poll() is None, proc.stderr.read()
    # the sender stays alive a while, so its name can be read (QEMU reads it too)
    killer = subprocess.Popen(["sh", "-c", f"kill -TERM {proc.pid}; sleep 3"])
    err = proc.communicate(timeout=30)[1]
    killer.kill()
    killer.wait()
    # QEMU's words, with -msg timestamp=on's stamp, naming who sent the signal
    assert any(line.endswith(f"kvmkit: terminating on signal {int(signal.SIGTERM)} from pid "
                             f"{killer.pid} (sh)") and line[:4].isdigit()
               for line in err.splitlines()), err


@pytest.mark.parametrize("drive_limits", ["", ",throttling.iops-total=50"])
def test_drives_and_a_throttle_group_object(tmp_path, drive_limits):
    """-object throttle-group makes a group; a -drive naming it joins it (with the
    drive's limits) only when it sets limits, as QEMU's -drive does."""
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    options = ["-object", "throttle-group,id=g0,x-iops-total=100,x-bps-read=4096",
               "-drive", f"file={disk},format=raw,if=none,id=d0,throttling.group=g0,"
                         f"readonly=on{drive_limits}",
               "-device", "virtio-blk-pci,drive=d0"]
    question = [("query-block", {})]

    def limits(reply):
        info = reply[0]["return"][0]["inserted"]
        return {k: info.get(k) for k in ("group", "iops", "bps_rd", "bps")}
    ours = limits(qmp_answers(kvmkit_command() + options, str(tmp_path / "k.sock"), question))
    theirs = limits(qmp_answers([QEMU, "-accel", "kvm"] + options, str(tmp_path / "q.sock"),
                                question))
    assert ours == theirs
    assert ours["iops"] == (50 if drive_limits else 0)


def test_uhci_registers_run_halt_and_count_frames():
    """The piix3-usb-uhci registers as a guest's uhci-hcd sees them (UHCI 1.1, 2.1)."""
    from vmm.devices.uhci import (
        CMD_HCRESET,
        CMD_RS,
        FRNUM,
        PORTSC1,
        PORTSC2,
        STS_HCHALTED,
        USBCMD,
        USBSTS,
        PiixUhci,
    )

    uhci = PiixUhci()
    assert uhci.bus_read(USBSTS, 2) & STS_HCHALTED
    assert uhci.bus_read(PORTSC1, 2) == uhci.bus_read(PORTSC2, 2) == 0x80   # empty ports
    assert uhci.bus_read(PORTSC2 + 2, 2) & 0x80 == 0                       # two ports only
    uhci.bus_write(FRNUM, 2, 100)
    uhci.bus_write(USBCMD, 2, CMD_RS)
    assert not uhci.bus_read(USBSTS, 2) & STS_HCHALTED
    time.sleep(0.05)
    assert uhci.bus_read(FRNUM, 2) >= 140                  # one frame per millisecond
    uhci.bus_write(USBCMD, 2, 0)
    halted_at = uhci.bus_read(FRNUM, 2)
    time.sleep(0.01)
    assert uhci.bus_read(FRNUM, 2) == halted_at and uhci.bus_read(USBSTS, 2) & STS_HCHALTED
    uhci.bus_write(USBCMD, 2, CMD_HCRESET)
    assert uhci.bus_read(USBCMD, 2) == 0 and uhci.bus_read(FRNUM, 2) == 0
    assert uhci.config[0x60] == 0x10 and uhci.config[0xC0:0xC2] == b"\x00\x20"


def test_no_acpi_is_qemus(tmp_path):
    """-no-acpi: no PIIX4 power management (so no 00:01.3), no PCI hotplug, a power
    button that only reports POWERDOWN; the probe guest still boots."""
    questions = [("device_add", {"driver": "virtio-rng-pci", "id": "r1"}),
                 ("human-monitor-command", {"command-line": "info pci"}),
                 ("system_powerdown", {}), ("query-status", {})]
    argv = ["-no-acpi", "-m", "256", "-kernel", probe_elf()]
    ours = qmp_answers(kvmkit_command() + argv, str(tmp_path / "k.sock"), questions)
    theirs = qmp_answers([QEMU, "-accel", "kvm"] + argv, str(tmp_path / "q.sock"), questions)
    assert ours == theirs
    assert "device   1, function 3" not in ours[1]["return"]
    from guest import Vmm

    vm = Vmm(kvmkit_command() + machine_args(extra=["-no-acpi"]))
    try:
        assert vm.wait_event("ready", timeout=60)["memory_mib"] >= 255
    finally:
        vm.close()


def test_virtio_rng_reads_its_rng_random_file(tmp_path):
    """virtio-rng-pci,rng=ID gives the guest the bytes of the rng-random's file, and
    keeps them after object-del (the device holds its own descriptor, as QEMU's link
    holds the object)."""
    from guest import QmpLine, Vmm

    source = tmp_path / "entropy"
    source.write_bytes(b"\xAB" * (1 << 20))
    sock = str(tmp_path / "qmp.sock")
    vm = Vmm(kvmkit_command() + machine_args(extra=[
        "-object", f"rng-random,id=r0,filename={source}",
        "-device", "virtio-rng-pci,rng=r0", "-qmp", f"unix:{sock},server=on,wait=off"]))
    try:
        vm.wait_event("ready", timeout=60)
        first = vm.command("rng 64")
        assert QmpLine(sock).execute("object-del", id="r0") == {"return": {}}
        second = vm.command("rng 64")
    finally:
        vm.close()
    for reply in (first, second):
        assert (reply["bytes"], reply["distinct"]) == (64, 1), reply   # all 0xAB
        assert reply["head"].lower().startswith("abab"), reply


def test_bad_object_add_arguments_leave_nothing_behind(tmp_path):
    """Refused object-add calls answer with QEMU's errors and add no object. (QEMU 7.2
    itself dies on a memory-backend-ram of size -1, so that one is kvmkit's alone.)"""
    shared = [("object-add", {"qom-type": "throttle-group", "id": "g",
                              "limits": {"iops-total": -5}}),
              ("object-add", {"qom-type": "throttle-group", "id": "g",
                              "limits": {"bps-total": 10, "bps-read": 5}}),
              ("object-add", {"qom-type": "throttle-group", "id": "g", "x-iops-total": -5}),
              ("qom-list", {"path": "/objects"})]
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "k.sock"), shared + [
        ("object-add", {"qom-type": "memory-backend-ram", "id": "m", "size": -1})])
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "q.sock"), shared)
    assert ours[:len(shared)] == theirs
    assert ours[-1] == {"error": {"class": "GenericError", "desc":   # -1 is 2^64 - 1 bytes
                                  "cannot set up guest memory 'm': Cannot allocate memory"}}


KEY = "MTIzNDU2Nzg5MDEyMzQ1Njc4OTAxMjM0NTY3ODkwMTI="          # 32 bytes, base64
IV = "MTIzNDU2Nzg5MDEyMzQ1Ng=="                                # 16 bytes, base64


@pytest.mark.qemu
def test_encrypted_secrets_are_decrypted_as_qemu(tmp_path):
    """A secret encrypted with another (AES-256-CBC, as libvirt passes passwords):
    "hunter2" encrypted by openssl decrypts; every way of getting it wrong gets
    QEMU's error."""
    def secret(object_id: str, **props) -> tuple[str, dict]:
        return "object-add", {"qom-type": "secret", "id": object_id, **props}

    commands = [
        secret("k0", data=KEY, format="base64"),
        secret("ok", data="kllCQN0gTRKdrYxjsfxkkw==", format="base64", keyid="k0", iv=IV),
        ("qom-get", {"path": "/objects/ok", "property": "loaded"}),
        secret("s1", data="1:1", keyid="k0"),
        secret("s2", data="1:1", keyid="k0", iv=IV),
        secret("s3", data="abcdefghijklmnop", keyid="k0", iv=IV),
        secret("s4", data="1:1", keyid="nosuch"),
        secret("s5", data="1:1", keyid="ok"),
        secret("s6", data="1:1", keyid="k0", iv="QUJD"),
        secret("s7", data="1:1", keyid="k0", iv="!!"),
        secret("s8", data="QUJ", format="base64"),
        ("object-add", {"qom-type": "iothread", "id": "io9"}),
        secret("s9", data="1:1", keyid="io9")]
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "q.sock"), commands)
    assert ours == theirs
    assert ours[1] == {"return": {}} and ours[2] == {"return": True}
    assert ours[5]["error"]["desc"] == \
        "Incorrect number of padding bytes (59) found on decrypted data"
