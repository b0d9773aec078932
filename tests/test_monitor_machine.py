"""Machine-wide monitor commands, on the probe guest under kvmkit and QEMU 7.2: NMIs,
memory saved to files, ring-buffer chardevs, chardevs added and removed at run
time, yank; and their error texts against QEMU's."""

from __future__ import annotations

import os
import socket
import subprocess
import time

import pytest
from guest import (
    QEMU,
    QmpLine,
    kvmkit_command,
    machine_args,
    probe_elf,
    qmp_answers,
    start_kvmkit,
    start_qemu,
)

pytestmark = pytest.mark.kvm


@pytest.fixture(params=["kvmkit", "qemu"])
def probe(request, tmp_path):
    """(vm, qmp): the probe guest on COM1 (stdio) with QMP on a socket."""
    sock = str(tmp_path / "qmp.sock")
    start = start_kvmkit if request.param == "kvmkit" else start_qemu
    vm = start(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off"]))
    try:
        assert vm.read_json(60)["event"] == "ready"
        yield vm, QmpLine(sock)
    finally:
        vm.close()


def elf_segments(path: str) -> list[tuple[int, bytes]]:
    """(physical address, file bytes) of each PT_LOAD of an ELF64."""
    import struct
    data = open(path, "rb").read()
    phoff, = struct.unpack_from("<Q", data, 32)
    phentsize, phnum = struct.unpack_from("<HH", data, 54)
    out = []
    for i in range(phnum):
        p_type, _flags, offset, _vaddr, paddr, filesz = struct.unpack_from(
            "<IIQQQQ", data, phoff + i * phentsize)
        if p_type == 1 and filesz:
            out.append((paddr, data[offset:offset + filesz]))
    return out


def test_inject_nmi_reaches_the_guest(probe):
    vm, qmp = probe
    assert "2" not in vm.command("irqs")["counts"]
    assert qmp.execute("inject-nmi") == {"return": {}}
    assert qmp.execute("human-monitor-command", **{"command-line": "nmi"}) == {"return": ""}
    deadline = time.monotonic() + 10
    while vm.command("irqs")["counts"].get("2", 0) < 2:
        assert time.monotonic() < deadline, vm.command("irqs")
        time.sleep(0.1)
    assert vm.command("echo after") == {"echo": "after"}


def test_memsave_and_pmemsave_write_guest_memory(probe, tmp_path):
    """pmemsave of the probe's code is its ELF's bytes; memsave of the same range
    through the guest's page tables (identity-mapped there) is too."""
    vm, qmp = probe
    paddr, code = elf_segments(probe_elf())[0]
    size = min(len(code), 8192)
    for command in ("pmemsave", "memsave"):
        target = tmp_path / f"{command}.bin"
        assert qmp.execute(command, val=paddr, size=size, filename=str(target)) == {"return": {}}
        assert target.read_bytes() == code[:size], command
    checksum = 0
    for byte in code[:size]:                     # BSD sum(1), as QEMU's `sum` computes it
        checksum = (((checksum >> 1) | ((checksum & 1) << 15)) + byte) & 0xFFFF
    hmp = qmp.execute("human-monitor-command", **{"command-line": f"sum {paddr} {size}"})
    assert hmp == {"return": f"{checksum:05d}\r\n"}


def test_memory_command_errors_as_qemu(tmp_path):
    commands = [
        ("memsave", {"val": 0, "size": 16, "filename": str(tmp_path / "a"), "cpu-index": 5}),
        ("memsave", {"val": 0, "size": 16, "filename": "/nonexistent/x"}),
        ("memsave", {"val": -1, "size": 16, "filename": str(tmp_path / "b")}),
        ("memsave", {"val": 0, "size": 0, "filename": str(tmp_path / "c")}),
        ("pmemsave", {"val": 0, "size": 16, "filename": "/nonexistent/x"}),
        ("pmemsave", {"val": 1 << 42, "size": 16, "filename": str(tmp_path / "d")}),
        ("query-memory-devices", {}), ("query-acpi-ospm-status", {}),
        ("query-current-machine", {}), ("set-action", {"reboot": "shutdown"}),
        ("watchdog-set-action", {"action": "bogus"}), ("watchdog-set-action", {"action": "pause"}),
        ("rtc-reset-reinjection", {}), ("x-exit-preconfig", {}),
        ("set-numa-node", {"type": "node"}), ("set-numa-node", {"type": "dist", "src": 70000}),
        ("dumpdtb", {"filename": str(tmp_path / "x.dtb")}), ("x-query-numa", {}),
        ("x-query-irq", {}), ("inject-nmi", {"x": 1}),
        ("calc-dirty-rate", {"calc-time": 0}), ("calc-dirty-rate", {"calc-time": 61}),
        ("calc-dirty-rate", {"calc-time": 1, "sample-pages": 10}),
        ("calc-dirty-rate", {"calc-time": 1, "mode": "dirty-ring"}),
        ("calc-dirty-rate", {"calc-time": 1, "mode": "dirty-ring", "sample-pages": 256}),
        ("query-dirty-rate", {}), ("set-vcpu-dirty-limit", {"dirty-rate": 1}),
        ("cancel-vcpu-dirty-limit", {"cpu-index": 9}), ("query-vcpu-dirty-limit", {}),
    ] + [("human-monitor-command", {"command-line": line}) for line in (
        "info dirty_rate", "info vcpu_dirty_limit", "calc_dirty_rate -r -b 1",
        "set_vcpu_dirty_limit 10", "cancel_vcpu_dirty_limit", "watchdog_action bogus",
        "watchdog_action pause", "sum 0x2000000 4096", "info memory-devices", "info numa",
        "gva2gpa 0x1000", "p 1+2", "p /d -1", "print /o 8", "i /b 0x1234", "i /w 0x1234",
        "o /b 0x1234 5", "info irq",
        "chardev-remove nosuch", "ringbuf_read nosuch 1", "nmi")]
    ours = qmp_answers(kvmkit_command() + ["-m", "256"], str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm", "-m", "256"], str(tmp_path / "q.sock"),
                         commands)
    assert ours == theirs
    assert (tmp_path / "d").read_bytes() == bytes(16)


def test_query_memdev_as_qemu(tmp_path):
    extra = ["-m", "256", "-object", "memory-backend-ram,id=mem1,size=64M,merge=off,dump=off"]
    ours = qmp_answers(kvmkit_command() + extra, str(tmp_path / "k.sock"), [("query-memdev", {})])
    theirs = qmp_answers([QEMU, "-accel", "kvm"] + extra, str(tmp_path / "q.sock"),
                         [("query-memdev", {})])
    assert ours == theirs


def test_ringbuf_chardev_holds_the_guests_console(tmp_path):
    """The probe's COM1 on a ring buffer: ringbuf-read returns what the guest printed;
    ringbuf-write adds to the ring, as QEMU's does; the texts match QEMU's."""
    answers = {}
    for name, argv in (("kvmkit", kvmkit_command()), ("qemu", [QEMU, "-accel", "kvm"])):
        sock = str(tmp_path / f"{name}.sock")
        proc = subprocess.Popen(argv + [
            "-m", "256", "-nodefaults", "-display", "none", "-kernel", probe_elf(),
            "-chardev", "ringbuf,id=con,size=1024", "-serial", "chardev:con",
            "-qmp", f"unix:{sock},server=on,wait=off"], stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL)
        try:
            deadline = time.monotonic() + 30
            while not os.path.exists(sock):
                assert time.monotonic() < deadline
                time.sleep(0.05)
            qmp = QmpLine(sock)
            text = ""
            while "ready" not in text or "\n" not in text[text.index("ready"):]:
                assert time.monotonic() < deadline + 30, text
                text += qmp.execute("ringbuf-read", device="con", size=4096)["return"]
                time.sleep(0.1)
            replies = [qmp.execute(c, **a) for c, a in (
                ("ringbuf-write", {"device": "con", "data": "aGVsbG8=", "format": "base64"}),
                ("ringbuf-read", {"device": "con", "size": 3}),
                ("ringbuf-read", {"device": "con", "size": 100, "format": "base64"}),
                ("ringbuf-read", {"device": "con", "size": 0}),
                ("ringbuf-read", {"device": "nosuch", "size": 1}),
                ("ringbuf-write", {"device": "con", "data": "!", "format": "base64"}),
                ("chardev-add", {"id": "small", "backend": {"type": "ringbuf",
                                                            "data": {"size": 100}}}),
                ("chardev-add", {"id": "r8", "backend": {"type": "ringbuf",
                                                         "data": {"size": 8}}}),
                ("ringbuf-write", {"device": "r8", "data": "0123456789"}),
                ("ringbuf-read", {"device": "r8", "size": 100}),
                ("ringbuf-write", {"device": f"{'compat_monitor0'}", "data": "x"}))]
            answers[name] = (text[:text.index("\n")], replies)
        finally:
            proc.kill()
            proc.wait()
    assert answers["kvmkit"][1] == answers["qemu"][1]
    assert answers["kvmkit"][1][1] == {"return": "hel"}
    assert answers["kvmkit"][1][9] == {"return": "23456789"}
    for name in answers:
        assert answers[name][0].startswith('{"event": "ready"'), answers[name][0]


def test_chardevs_added_and_removed_at_run_time(tmp_path):
    sock_path = str(tmp_path / "c5.sock")
    commands = [
        ("chardev-add", {"id": "c1", "backend": {"type": "null", "data": {}}}),
        ("chardev-add", {"id": "c1", "backend": {"type": "null", "data": {}}}),
        ("chardev-add", {"id": "c4", "backend": {"type": "file",
                                                 "data": {"out": str(tmp_path / "c4.out")}}}),
        ("chardev-add", {"id": "c5", "backend": {"type": "socket", "data": {
            "addr": {"type": "unix", "data": {"path": sock_path}}, "server": True,
            "wait": False}}}),
        ("chardev-add", {"id": "c8", "backend": {"type": "file",
                                                 "data": {"out": "/nonexistent/x"}}}),
        ("chardev-add", {"id": "c9", "backend": {"type": "nosuch", "data": {}}}),
        ("chardev-remove", {"id": "c1"}), ("chardev-remove", {"id": "c1"}),
        ("chardev-remove", {"id": "compat_monitor0"}),
        ("chardev-send-break", {"id": "c4"}), ("chardev-send-break", {"id": "nosuch"}),
        ("chardev-change", {"id": "c4", "backend": {"type": "null", "data": {}}}),
        ("chardev-change", {"id": "nosuch", "backend": {"type": "null", "data": {}}}),
        ("query-yank", {}),
        ("yank", {"instances": [{"type": "chardev", "id": "nosuch"}]}),
        ("yank", {"instances": [{"type": "migration"}]}),
        ("yank", {"instances": []}),
    ]
    answers = {}
    for name, argv in (("kvmkit", kvmkit_command()), ("qemu", [QEMU, "-accel", "kvm"])):
        answers[name] = qmp_answers(argv + ["-m", "256"], str(tmp_path / f"{name}.sock"),
                                    commands)
        assert (tmp_path / "c4.out").exists()
        os.unlink(tmp_path / "c4.out")
    # the yank instances name each side's own monitor socket chardev and c5
    assert answers["kvmkit"] == answers["qemu"]


def test_yank_drops_a_socket_chardevs_client(tmp_path):
    sock = str(tmp_path / "k.sock")
    path = str(tmp_path / "s.sock")
    from guest import start_with_qmp
    proc = start_with_qmp(kvmkit_command() + ["-m", "256", "-S", "-display", "none",
                                              "-chardev", f"socket,id=s,path={path},"
                                              "server=on,wait=off"], sock)
    try:
        qmp = QmpLine(sock)
        client = socket.socket(socket.AF_UNIX)
        client.connect(path)
        deadline = time.monotonic() + 10
        while not qmp.execute("query-chardev")["return"][0]["filename"].startswith("unix:"):
            assert time.monotonic() < deadline
            time.sleep(0.05)
        assert {"type": "chardev", "id": "s"} in qmp.execute("query-yank")["return"]
        assert qmp.execute("yank", instances=[{"type": "chardev", "id": "s"}]) == {"return": {}}
        client.settimeout(10)
        assert client.recv(10) == b""              # the connection is gone
    finally:
        proc.kill()
        proc.wait()


def test_serial_break_sets_the_line_status():
    from vmm.devices.serial import LSR_BI, Serial16550
    levels = []
    uart = Serial16550(lambda data: None, levels.append)
    uart.bus_write(1, 1, 0x04)                  # IER: receiver line status interrupts
    uart.receive_break()
    assert levels[-1] == 1
    assert uart.bus_read(2, 1) & 0x0F == 0x06   # IIR: receiver line status
    assert uart.bus_read(5, 1) & LSR_BI
    assert not uart.bus_read(5, 1) & LSR_BI     # reading LSR clears it
    assert uart.bus_read(0, 1) == 0             # the break's zero byte


@pytest.mark.parametrize("mode", ["page-sampling", "dirty-bitmap"])
def test_dirty_rate_of_a_guest_writing_memory(probe, mode):
    """While the probe rewrites 64 MiB over and over, calc-dirty-rate measures tens
    of MB/s (each page counts once a period); an idle guest's is near nothing."""
    vm, qmp = probe
    vm.send("churn 64 400")
    time.sleep(0.3)
    assert qmp.execute("calc-dirty-rate", **{"calc-time": 1, "mode": mode}) == {"return": {}}
    deadline = time.monotonic() + 30
    while (info := qmp.execute("query-dirty-rate")["return"])["status"] != "measured":
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert info["mode"] == mode and info["calc-time"] == 1
    assert info["dirty-rate"] >= 16, info
    assert vm.read_json(120) == {"mib": 64, "seed": 400}
    text = qmp.execute("human-monitor-command", **{"command-line": "info dirty_rate"})
    assert f"Mode: {mode}\r\nDirty rate: {info['dirty-rate']} (MB/s)\r\n" in text["return"]


HMP_LINES_AS_QEMU = [
    "object_add iothread,id=io1", "object_add iothread,id=io1", "object_del io1",
    "object_del io1", "announce_self", "getfd x", "closefd x", "exit_preconfig", "cpu 0",
    "cpu 5", "cpu", "boot_set c", "boot_set x", "boot_set abcd", "boot_set cc", "boot_set e",
    "singlestep", "singlestep off", "singlestep maybe", "log", "log help", "log nosuch",
    "log none", "log int,guest_errors", "logfile /nonexistent/x", "mce 0 0 0 0 0 0",
    "mce 0 99 0x8000000000000000 0 0 0", "info mem", "info tlb", "info jit", "info opcount",
    "info profile", "info replay", "info rdma", "info history", "info memdev", "info numa",
    "info memory-devices", "info dump", "dump-guest-memory -z -l x", "help mce",
    "help dump-guest-memory", "help calc_dirty_rate", "help info stats", "help log",
    "info jit", "info rdma", "info vm-generation-id", "info tpm", "info sev", "info sgx",
    "info rocker x", "info rocker-of-dpa-groups x 1", "info usbhost", "info capture",
    "replay_break 5", "replay_delete_break", "replay_seek 5", "x_colo_lost_heartbeat",
    "help x_colo_lost_heartbeat", "block_job_cancel -f x", "block_job_set_speed x 1",
    "help block_job_cancel", "info block-jobs", "migrate_continue pre-switchover",
    "migrate_recover tcp:1", "migrate_start_postcopy", "migrate_pause", "info usb",
    "screendump x.ppm", "screendump x.png -f png",
    "set_password vnc x", "expire_password vnc now", "client_migrate_info spice h",
    "info trace-events kvm_run*", "trace-event kvm_run_exit on", "trace-event nosuch on",
    "info trace-events kvm_run_exit", "help trace-event", "mouse_move 1 1", "mouse_button 1",
    "mouse_set 5", "pcie_aer_inject_error x 0", "wavcapture w.wav x", "stopcapture 0",
    "help pcie_aer_inject_error", "help wavcapture", "help info qdm", "info virtio",
    "info virtio-status /machine/nosuch", "dumpdtb x.dtb", "help dumpdtb"]


# QMP commands whose answers on a machine without a display, VNC, SPICE, block jobs
# or postcopy are QEMU's (issue #19 brings the display and VNC)
QMP_AS_QEMU = [
    ("migrate-continue", {"state": "pre-switchover"}), ("migrate-recover", {"uri": "tcp:1"}),
    ("migrate-start-postcopy", {}), ("query-display-options", {}),
    ("set_password", {"protocol": "vnc", "password": "x"}),
    ("set_password", {"protocol": "spice", "password": "x"}),
    ("expire_password", {"protocol": "vnc", "time": "now"}),
    ("add_client", {"protocol": "vnc", "fdname": "x"}),
    ("client_migrate_info", {"protocol": "vnc", "hostname": "h"}),
    ("screendump", {"filename": "x.ppm"}), ("screendump", {"filename": "x", "device": "no"}),
    ("query-block-jobs", {}), ("block-job-cancel", {"device": "x"}),
    ("block-job-dismiss", {"id": "x"}), ("job-cancel", {"id": "x"}),
    ("job-complete", {"id": "x"}), ("job-pause", {"id": "x"}), ("x-query-usb", {}),
    ("trace-event-get-state", {"name": "nosuch"}),
    ("trace-event-set-state", {"name": "nosuch*", "enable": True}),
    ("xen-save-devices-state", {"filename": "/nonexistent/x"}),
    ("xen-load-devices-state", {"filename": "/nonexistent/x"}),
    ("nbd-server-stop", {}), ("nbd-server-add", {"device": "x"}),
    ("nbd-server-remove", {"name": "x"}), ("block-export-del", {"id": "x"}),
    ("query-block-exports", {}), ("block-export-add", {"type": "nbd", "id": "e",
                                                       "node-name": "x"}),
    ("human-monitor-command", {"command-line": "nbd_server_remove -f x"}),
    ("human-monitor-command", {"command-line": "nbd_server_add -w x"}),
] + [("trace-event-get-state", {"name": name}) for name in (
    "kvm_run_exit", "virtio_set_status", "virtio_queue_notify", "pci_cfg_write",
    "monitor_qmp_cmd_in_band")]


def test_qmp_answers_without_the_feature_as_qemu(tmp_path):
    ours = qmp_answers(kvmkit_command() + ["-m", "128"], str(tmp_path / "k.sock"), QMP_AS_QEMU)
    theirs = qmp_answers([QEMU, "-accel", "kvm", "-m", "128"], str(tmp_path / "q.sock"),
                         QMP_AS_QEMU)
    for (command, args), mine, qemus in zip(QMP_AS_QEMU, ours, theirs):
        assert mine == qemus, (command, args)


def test_hmp_texts_as_qemu(tmp_path):
    commands = [("human-monitor-command", {"command-line": line}) for line in HMP_LINES_AS_QEMU]
    ours = qmp_answers(kvmkit_command() + ["-m", "128"], str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm", "-m", "128"], str(tmp_path / "q.sock"),
                         commands)
    for line, mine, qemus in zip(HMP_LINES_AS_QEMU, ours, theirs):
        assert mine == qemus, line


def test_page_tables_and_stats_print_as_on_qemu(tmp_path):
    """The probe's own page tables: `info mem` and `info tlb` are the same text on
    both VMMs; `info stats` has QEMU's lines, numbers aside."""
    import re
    texts = {}
    for name, start in (("kvmkit", start_kvmkit), ("qemu", start_qemu)):
        sock = str(tmp_path / f"{name}.sock")
        vm = start(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off"]))
        try:
            assert vm.read_json(60)["event"] == "ready"
            qmp = QmpLine(sock)
            texts[name] = [qmp.hmp(line) for line in (
                "info mem", "info tlb", "info stats vcpu", "info stats vm exits",
                "gva2gpa 0x101000", "gva2gpa 0x7fffffffffff", "info lapic", "info pic")]
        finally:
            vm.close()
    ours, theirs = texts["kvmkit"], texts["qemu"]
    assert ours[0] == theirs[0]                                       # info mem
    no_accessed_dirty = lambda t: re.sub(r" (...)..(....)\r", r" \1..\2\r", t)  # noqa
    assert no_accessed_dirty(ours[1]) == no_accessed_dirty(theirs[1])  # info tlb
    numbers = lambda t: re.sub(r"(: |=)(\d+|yes|no)\b", r"\1N", t)    # noqa: E731
    assert [numbers(t) for t in ours[2:4]] == [numbers(t) for t in theirs[2:4]]
    assert ours[4:6] == theirs[4:6] == ["gpa: 0x101000\r\n", "Unmapped\r\n"]
    # the local APIC and the IOAPIC as the probe programmed them; what moves (the
    # timer's count and its pending vector, the last IPI, the PICs' request bits) aside
    moving = lambda t: re.sub(r"current_count = \d+|ICR.*|IRR\t.*|irr=..", "", t)  # noqa: E731
    assert moving(ours[6]) == moving(theirs[6])
    assert moving(ours[7]) == moving(theirs[7])
    assert "LVTT\t 0x00020060 active-hi edge                 periodic     Fixed  (vec 96)" \
        in ours[6]
    assert texts["kvmkit"][0].startswith("0000000000000000-")
    assert "halt_wait_hist (log2-histogram, ns): [1]=" in texts["kvmkit"][2]


def test_trace_events_write_lines_as_qemus_log_backend(tmp_path):
    """-trace and trace-event-set-state turn kvmkit's events on; each passing writes
    PID@TIME:name fields to stderr (QEMU's log back end); the states read back."""
    sock = str(tmp_path / "q.sock")
    vm = start_kvmkit(machine_args(extra=["-trace", "enable=virtio_set_status",
                                          "-device", "virtio-rng-pci",
                                          "-qmp", f"unix:{sock},server=on,wait=off"]))
    try:
        assert vm.read_json(60)["event"] == "ready"
        qmp = QmpLine(sock)
        assert qmp.execute("trace-event-get-state", name="virtio_*")["return"] == [
            {"name": "virtio_set_status", "state": "enabled", "vcpu": False},
            {"name": "virtio_queue_notify", "state": "disabled", "vcpu": False}]
        assert qmp.execute("trace-event-set-state", name="virtio_queue_notify",
                           enable=True) == {"return": {}}
        assert "bytes" in vm.command("rng 16")
        deadline = time.monotonic() + 10
        while "virtio_queue_notify vdev VirtioRng n 0" not in vm.stderr:
            assert time.monotonic() < deadline, vm.stderr
            time.sleep(0.1)
        import re
        assert re.search(rf"^{vm.proc.pid}@\d+\.\d{{6}}:virtio_set_status vdev VirtioRng val "
                         r"\d+$", vm.stderr, re.M), vm.stderr
        assert qmp.hmp("trace-event virtio_* off") == ""
        assert qmp.hmp("info trace-events virtio_*") == (
            "virtio_set_status : state 0\r\nvirtio_queue_notify : state 0\r\n")
    finally:
        vm.close()


def test_virtio_queries_as_qemu(tmp_path):
    """The probe drives a balloon: x-query-virtio lists the devices, and a queue's
    state, its next element and the device's status read as on QEMU (QEMU offers
    two legacy layout features kvmkit does not, which are taken out)."""
    import re
    path = "/machine/peripheral/b0/virtio-backend"
    answers = {}
    for name, start in (("kvmkit", start_kvmkit), ("qemu", start_qemu)):
        sock = str(tmp_path / f"{name}.sock")
        vm = start(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off",
                                       "-device", "virtio-balloon-pci,id=b0",
                                       "-device", "virtio-rng-pci,id=r0"]))
        try:
            assert vm.read_json(60)["event"] == "ready"
            qmp = QmpLine(sock)
            answers[name] = [qmp.execute(c, **a) for c, a in (
                ("x-query-virtio", {}), ("x-query-virtio-queue-status", {"path": path,
                                                                          "queue": 0}),
                ("x-query-virtio-queue-status", {"path": path, "queue": 9}),
                ("x-query-virtio-queue-element", {"path": path, "queue": 0}),
                ("x-query-virtio-vhost-queue-status", {"path": path, "queue": 0}),
                ("x-query-virtio-status", {"path": "/machine/peripheral/b0"}))]
            answers[name].append(qmp.hmp(f"info virtio-status {path}"))
            answers[name].append(qmp.hmp(f"info virtio-queue-status {path} 1"))
        finally:
            vm.close()
    legacy = r",\r\n\tVIRTIO_F_ANY_LAYOUT[^\r]*\r\n\tVIRTIO_F_NOTIFY_ON_EMPTY[^\r]*"
    answers["qemu"][6] = re.sub(legacy, "", answers["qemu"][6]).replace(
        "0x0000010040000000", "0x0000010000000000")
    assert answers["kvmkit"] == answers["qemu"]
    assert answers["kvmkit"][1]["return"]["vring-num"] == 64


def test_device_state_saved_and_loaded_without_ram(tmp_path):
    """xen-save-devices-state writes the machine's state without its RAM (a few KiB,
    not 256 MiB); loaded back into the stopped VM, the guest runs on from it."""
    sock = str(tmp_path / "q.sock")
    state = tmp_path / "devices.state"
    vm = start_kvmkit(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off"]))
    try:
        assert vm.read_json(60)["event"] == "ready"
        qmp = QmpLine(sock)
        assert qmp.execute("xen-save-devices-state", filename=str(state)) == {"return": {}}
        assert 0 < state.stat().st_size < 1 << 20
        assert qmp.execute("xen-load-devices-state", filename=str(state))["error"]["desc"] \
            == "The VM must be stopped to load its device state"
        assert qmp.execute("stop") == {"return": {}}
        assert qmp.execute("xen-load-devices-state", filename=str(state)) == {"return": {}}
        assert qmp.execute("xen-load-devices-state", filename="/etc/hostname")["error"]
        assert qmp.execute("cont") == {"return": {}}
        assert vm.command("echo after") == {"echo": "after"}
    finally:
        vm.close()
