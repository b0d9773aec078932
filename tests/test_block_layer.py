"""The block layer end to end, with the probe guest on kvmkit and on QEMU 7.2: a
qcow2 overlay over a backing file, -blockdev as libvirt writes it, the node and
stats queries, throttling held to its limit, blockdev-add with hotplug, and
writes that survive kill -9."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import time

import pytest
from guest import QmpLine as Qmp
from guest import machine_args

pytestmark = pytest.mark.kvm


def start(launch, tmp_path, vmm_kind, *args: str):
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[*args, "-qmp", f"unix:{sock},server=on,wait=off"]),
                vmm_kind)
    vm.wait_event("ready", timeout=60)
    return vm, Qmp(sock)


def qemu_img(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["qemu-img", *args], capture_output=True, text=True, timeout=60)


def guest_view(image, fmt: str = "qcow2") -> bytes:
    """What a guest reads from an image (qemu-img's reading of it, backing included)."""
    raw = f"{image}.raw"
    assert qemu_img("convert", "-U", "-f", fmt, "-O", "raw", str(image), raw).returncode == 0
    with open(raw, "rb") as f:
        return f.read()


def overlay_over_base(tmp_path):
    base = bytearray(4 << 20)
    base[3 * 512:3 * 512 + 13] = b"from-the-base"
    (tmp_path / "base.raw").write_bytes(bytes(base))
    assert qemu_img("create", "-q", "-f", "qcow2", "-b", "base.raw", "-F", "raw",
                    str(tmp_path / "top.qcow2")).returncode == 0


def test_qcow2_overlay_over_a_backing_file(launch, tmp_path, vmm_kind):
    """The guest reads the backing file through the overlay, its writes land in the
    overlay only, and what is left passes qemu-img check."""
    overlay_over_base(tmp_path)
    vm, qmp = start(launch, tmp_path, vmm_kind, "-drive",
                    f"file={tmp_path / 'top.qcow2'},format=qcow2,if=none,id=d0",
                    "-device", "virtio-blk-pci,drive=d0,id=disk0")
    assert vm.command("blk")["sectors"] == 8192
    assert vm.command("blk read 3") == {"status": 0, "text": "from-the-base"}
    assert vm.command("blk write 3 over-it") == {"status": 0}
    assert vm.command("blk write 5000 far-away") == {"status": 0}
    assert vm.command("blk read 3") == {"status": 0, "text": "over-it"}
    assert vm.command("blk flush") == {"status": 0}
    inserted = qmp.execute("query-block")["return"][0]["inserted"]
    assert (inserted["drv"], inserted["backing_file"], inserted["backing_file_depth"]) == \
        ("qcow2", str(tmp_path / "base.raw"), 1)
    assert inserted["image"]["backing-image"]["format"] == "raw"
    qmp.execute("quit")
    vm.proc.wait(20)
    check = json.loads(qemu_img("check", "--output=json", str(tmp_path / "top.qcow2")).stdout)
    assert check.get("corruptions", 0) == 0 and check.get("leaks", 0) == 0
    data = guest_view(tmp_path / "top.qcow2")
    assert data[3 * 512:3 * 512 + 8] == b"over-it\0"
    assert data[5000 * 512:5000 * 512 + 8] == b"far-away"
    assert (tmp_path / "base.raw").read_bytes()[3 * 512:3 * 512 + 13] == b"from-the-base"


LIBVIRT_BLOCKDEVS = [
    '{"driver":"file","filename":"%s","node-name":"libvirt-1-storage",'
    '"auto-read-only":true,"discard":"unmap"}',
    '{"node-name":"libvirt-1-format","read-only":false,"discard":"unmap","driver":"qcow2",'
    '"file":"libvirt-1-storage","backing":null}']


def _normalized(value):
    """Generated node names and times differ from run to run."""
    text = json.dumps(value, sort_keys=True)
    text = re.sub(r"#block\d+", "#block", text)
    text = re.sub(r'"(idle_time_ns|actual-size|[a-z]+_total_time_ns)": \d+', r'"\1": 0', text)
    return json.loads(text)


@pytest.mark.qemu
def test_blockdev_as_libvirt_writes_it_queries_as_qemu(launch, tmp_path):
    """-blockdev file and qcow2 nodes and a device on the format node: query-block,
    query-named-block-nodes and query-blockstats as QEMU 7.2 answers them."""
    answers = {}
    for kind in ("kvmkit", "qemu"):
        image = tmp_path / f"{kind}.qcow2"
        assert qemu_img("create", "-q", "-f", "qcow2", str(image), "8M").returncode == 0
        blockdevs = [arg % image if "%s" in arg else arg for arg in LIBVIRT_BLOCKDEVS]
        (tmp_path / kind).mkdir()
        vm, qmp = start(launch, tmp_path / kind, kind,
                        "-blockdev", blockdevs[0], "-blockdev", blockdevs[1],
                        "-device", '{"driver":"virtio-blk-pci","drive":"libvirt-1-format",'
                                   '"id":"virtio-disk0","write-cache":"on"}')
        assert vm.command("blk write 9 libvirt") == {"status": 0}
        assert vm.command("blk read 9") == {"status": 0, "text": "libvirt"}
        replies = {name: qmp.execute(name)["return"] for name in (
            "query-block", "query-named-block-nodes", "query-blockstats")}
        replies["info block"] = qmp.hmp("info block")
        replies["info block -n"] = qmp.hmp("info block -n")
        replies["nodes stats"] = qmp.execute("query-blockstats", **{"query-nodes": True})
        answers[kind] = json.loads(json.dumps(replies).replace(str(image), "IMAGE"))
        qmp.execute("quit")
        vm.proc.wait(20)
    ours, theirs = _normalized(answers["kvmkit"]), _normalized(answers["qemu"])
    # QEMU's SeaBIOS read the disk before the guest did: compare counts the guest made
    for reply in (ours, theirs):
        for entry in reply["query-blockstats"]:
            for key in ("rd_operations", "rd_bytes"):
                entry["stats"][key] = 0
    for name in theirs:
        assert ours[name] == theirs[name], (name, json.dumps(ours[name], sort_keys=True),
                                            json.dumps(theirs[name], sort_keys=True))


def test_throttling_holds_the_guest_to_its_limit(launch, tmp_path, vmm_kind):
    """throttling.iops-total on -drive, then block_set_io_throttle's bps: the guest's
    measured rate is within 10% of each limit, and query-block shows them."""
    (tmp_path / "disk.img").write_bytes(bytes(16 << 20))
    vm, qmp = start(launch, tmp_path, vmm_kind, "-drive",
                    f"file={tmp_path / 'disk.img'},format=raw,if=none,id=d0,"
                    "throttling.iops-total=200", "-device", "virtio-blk-pci,drive=d0")
    result = vm.command("blk bench r rand 4096 4 500", timeout=60)
    iops = result["ops"] / result["us"] * 1e6
    assert result["status"] == 0 and 180 <= iops <= 220, result
    limits = {"bps": 4 << 20, "bps_rd": 0, "bps_wr": 0, "iops": 0, "iops_rd": 0, "iops_wr": 0}
    assert qmp.execute("block_set_io_throttle", device="d0", **limits) == {"return": {}}
    result = vm.command("blk bench w seq 65536 2 192", timeout=60)       # 12 MiB
    rate = result["ops"] * 65536 / result["us"] * 1e6
    assert result["status"] == 0 and 0.9 * (4 << 20) <= rate <= 1.1 * (4 << 20), result
    inserted = qmp.execute("query-block")["return"][0]["inserted"]
    assert (inserted["bps"], inserted["iops"], inserted["group"]) == (4 << 20, 0, "d0")
    bad = qmp.execute("block_set_io_throttle", device="d0", **{**limits, "bps_rd": 5})
    assert bad["error"]["desc"] == ("bps/iops/max total values and read/write values cannot "
                                    "be used at the same time")
    zero = dict.fromkeys(limits, 0)
    assert qmp.execute("block_set_io_throttle", device="d0", **zero) == {"return": {}}
    assert "group" not in qmp.execute("query-block")["return"][0]["inserted"]


def test_blockdev_add_and_hotplug(launch, tmp_path, vmm_kind):
    """blockdev-add a qcow2 node, device_add a virtio-blk on it, the guest finds and
    uses it; device_del, then blockdev-del; QEMU's errors on the way."""
    image = tmp_path / "hot.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(image), "2M").returncode == 0
    vm, qmp = start(launch, tmp_path, vmm_kind)
    assert vm.command("blk") == {"present": False}
    node = {"driver": "qcow2", "node-name": "hot",
            "file": {"driver": "file", "filename": str(image)}}
    assert qmp.execute("blockdev-add", **node) == {"return": {}}
    assert qmp.execute("blockdev-add", **node)["error"]["desc"] == \
        "Duplicate nodes with node-name='hot'"
    assert qmp.execute("blockdev-add", driver="qcow2", file="nosuch")["error"]["desc"] == \
        "'node-name' must be specified for the root node"
    assert qmp.execute("blockdev-add", driver="qcow2", **{"node-name": "x"}, file="nosuch")[
        "error"]["desc"] == "Cannot find device='nosuch' nor node-name='nosuch'"
    assert qmp.execute("device_add", driver="virtio-blk-pci", drive="hot", id="hotdisk") == \
        {"return": {}}
    assert qmp.execute("blockdev-del", **{"node-name": "hot"})["error"]["desc"] == \
        "Node hot is in use"
    vm.wait_event("pci-added", timeout=10)
    assert vm.command("blk")["sectors"] == 4096
    assert vm.command("blk write 100 hotplugged") == {"status": 0}
    assert vm.command("blk read 100") == {"status": 0, "text": "hotplugged"}
    assert qmp.execute("device_del", id="hotdisk") == {"return": {}}
    vm.wait_event("pci-ejected", timeout=10)
    deadline = time.monotonic() + 10
    while not any(e["data"].get("device") == "hotdisk" for e in qmp.events
                  if e["event"] == "DEVICE_DELETED") and time.monotonic() < deadline:
        time.sleep(0.1)
        qmp.execute("query-status")           # reading a reply collects the events
    assert qmp.execute("blockdev-del", **{"node-name": "hot"}) == {"return": {}}
    assert qmp.execute("query-named-block-nodes")["return"] == []
    assert guest_view(image)[51200:51210] == b"hotplugged"


@pytest.mark.parametrize("cache", ["writethrough", "directsync"])
def test_completed_writes_survive_kill_9(launch, tmp_path, vmm_kind, cache):
    """Every write the guest saw complete is in the image after kill -9, qcow2
    metadata included (the image then passes qemu-img check)."""
    image = tmp_path / "durable.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", str(image), "16M").returncode == 0
    vm, _qmp = start(launch, tmp_path, vmm_kind, "-drive",
                     f"file={image},format=qcow2,if=none,id=d0,cache={cache}",
                     "-device", "virtio-blk-pci,drive=d0")
    for sector in range(0, 32768, 4099):
        assert vm.command(f"blk write {sector} durable-{sector}") == {"status": 0}
    vm.proc.send_signal(signal.SIGKILL)
    vm.proc.wait(10)
    check = json.loads(qemu_img("check", "--output=json", str(image)).stdout)
    assert check.get("corruptions", 0) == 0
    data = guest_view(image)
    for sector in range(0, 32768, 4099):
        text = f"durable-{sector}".encode()
        assert data[sector * 512:sector * 512 + len(text)] == text, sector


@pytest.fixture
def small_tmpfs(tmp_path):
    """A 256 KiB tmpfs (writes past it fail with ENOSPC), grown by calling it."""
    mount = tmp_path / "small"
    mount.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(mount)],
                      capture_output=True).returncode != 0:
        pytest.skip("cannot mount a tmpfs here (needs root)")

    def grow() -> None:
        subprocess.run(["mount", "-o", "remount,size=4m", str(mount)], check=True)

    yield mount, grow
    subprocess.run(["umount", "-l", str(mount)], capture_output=True)


def wait_for(qmp, name: str, timeout: float = 20) -> dict:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        found = [e for e in qmp.events if e["event"] == name]
        if found:
            return found[0]
        time.sleep(0.1)
        qmp.execute("query-status")           # reading a reply collects the events
    raise AssertionError(f"no {name} event: {qmp.events}")


def test_a_full_disk_stops_the_vm_until_cont(launch, small_tmpfs, vmm_kind):
    """werror=enospc (the default): a write the host has no room for pauses the VM
    in io-error with BLOCK_IO_ERROR, query-block says nospace; once there is room,
    `cont` retries it and the guest never sees an error."""
    mount, grow = small_tmpfs
    image = mount / "disk.img"
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    vm, qmp = start(launch, mount.parent, vmm_kind, "-drive",
                    f"file={image},format=raw,if=none,id=d0", "-device", "virtio-blk-pci,drive=d0")
    vm.send("blk bench w seq 65536 1 16")             # 1 MiB, into 256 KiB
    error = wait_for(qmp, "BLOCK_IO_ERROR")["data"]
    error.pop("node-name")
    assert error == {"device": "d0", "operation": "write", "action": "stop", "nospace": True,
                     "reason": "No space left on device"}
    wait_for(qmp, "STOP")
    assert qmp.execute("query-status")["return"]["status"] == "io-error"
    assert qmp.execute("query-block")["return"][0]["io-status"] == "nospace"
    grow()
    assert qmp.execute("cont") == {"return": {}}
    result = vm.read_json(30)
    assert result["status"] == 0 and result["ops"] == 16
    assert qmp.execute("query-status")["return"]["status"] == "running"
    assert qmp.execute("query-block")["return"][0]["io-status"] == "ok"


def test_werror_report_gives_the_guest_the_error(launch, small_tmpfs, vmm_kind):
    mount, _grow = small_tmpfs
    image = mount / "disk.img"
    with open(image, "wb") as f:
        f.truncate(1 << 20)
    vm, qmp = start(launch, mount.parent, vmm_kind, "-drive",
                    f"file={image},format=raw,if=none,id=d0,werror=report",
                    "-device", "virtio-blk-pci,drive=d0")
    result = vm.command("blk bench w seq 65536 1 16", timeout=30)
    assert 0 < result["status"] < 16
    error = wait_for(qmp, "BLOCK_IO_ERROR")["data"]
    # (no io-status, and so no nospace, where an error cannot stop the VM: QEMU's rule)
    assert (error["action"], "nospace" in error) == ("report", False)
    assert "io-status" not in qmp.execute("query-block")["return"][0]
    assert qmp.execute("query-status")["return"]["status"] == "running"
    stats = qmp.execute("query-blockstats")["return"][0]["stats"]
    assert stats["failed_wr_operations"] == result["status"]


@pytest.mark.qemu
def test_hmp_drive_commands_as_qemu(launch, tmp_path):
    """drive_add, info block (-n), info blockstats, block_set_io_throttle and
    drive_del, with QEMU 7.2's text for each step and each error."""
    transcripts = {}
    for kind in ("kvmkit", "qemu"):
        where = tmp_path / kind
        where.mkdir()
        for name in ("a", "b"):
            assert qemu_img("create", "-q", "-f", "qcow2", str(where / f"{name}.qcow2"),
                            "1M").returncode == 0
        vm, qmp = start(launch, where, kind, "-drive",
                        f"file={where / 'a.qcow2'},if=none,id=d0,cache=writethrough",
                        "-device", "virtio-blk-pci,drive=d0,id=disk0")
        lines = []
        for line in (f"drive_add 0 if=none,file={where / 'b.qcow2'},id=d1",
                     f"drive_add 0 if=none,file={where / 'b.qcow2'},id=d1",
                     "drive_add 0 if=scsi,file=x,id=d2",
                     "info block", "info block -n", "info block d1", "info block -v d0",
                     "block_set_io_throttle d1 1000000 0 0 0 0 0",
                     "block_set_io_throttle d1 1000000 5 0 0 0 0",
                     "block_set_io_throttle nosuch 1 0 0 0 0 0",
                     "info block d1", "info blockstats",
                     "drive_del d1", "drive_del d1", "drive_del d0", "info block"):
            lines.append((line, qmp.hmp(line)))
        transcripts[kind] = re.sub(r"#block\d+", "#block",
                                   json.dumps(lines).replace(str(where), "DIR"))
        qmp.execute("quit")
        vm.proc.wait(20)
    ours, theirs = json.loads(transcripts["kvmkit"]), json.loads(transcripts["qemu"])
    for (line, mine), (_line, qemus) in zip(ours, theirs):
        if line == "info blockstats":         # SeaBIOS read the disk on QEMU
            mine, qemus = (re.sub(r"=\d+", "=N", text) for text in (mine, qemus))
        assert (line, mine) == (line, qemus)


def test_snapshot_writes_go_to_a_temporary_overlay(launch, tmp_path, vmm_kind):
    """-snapshot: the guest reads and writes as usual, the image is untouched, and
    the overlay is gone after quit."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    before = image.read_bytes()
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=["-snapshot", "-drive", f"file={image},format=raw,if=none,"
                                    "id=d0", "-device", "virtio-blk-pci,drive=d0",
                                    "-qmp", f"unix:{sock},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    qmp = Qmp(sock)
    assert vm.command("blk write 4 in-the-overlay") == {"status": 0}
    assert vm.command("blk read 4") == {"status": 0, "text": "in-the-overlay"}
    inserted = qmp.execute("query-block")["return"][0]["inserted"]
    assert (inserted["drv"], inserted["backing_file_depth"]) == ("qcow2", 1)
    assert inserted["cache"]["no-flush"] is True
    overlay = inserted["image"]["filename"]
    qmp.execute("quit")
    vm.proc.wait(20)
    assert image.read_bytes() == before
    temporary = re.search(r'"file": \{"driver": "file", "filename": "([^"]+)"\}\}$', overlay)
    assert overlay.startswith("json:") and temporary, overlay
    assert not os.path.exists(temporary.group(1))


@pytest.mark.parametrize("args, message", [
    (["-drive", "file=z.img,format=raw,if=none,id=d0,werror=bogus"],
     "'bogus' invalid write error action"),
    (["-drive", "file=z.img,format=raw,if=none,id=d0,rerror=enospc"],
     "'enospc' invalid read error action"),
    (["-drive", "file=z.img,format=qcow2,if=none,id=d0"], "Image is not in qcow2 format"),
    (["-drive", "file=z.img,format=qcow3,if=none,id=d0"], "Unknown driver 'qcow3'"),
    (["-drive", "file=z.img,format=raw,if=none,id=d0,serial=abc"],
     "Block format 'raw' does not support the option 'serial'"),
    (["-drive", "file=z.img,format=raw,if=none,id=d0,aio=native"],
     "aio=native was specified, but it requires cache.direct=on, which was not specified."),
    (["-drive", "file=z.img,format=raw,if=none,id=d0,throttling.bps-total=10,"
      "throttling.bps-read=5"],
     "bps/iops/max total values and read/write values cannot be used at the same time"),
    (["-drive", "file=z.img,format=raw,if=none,id=d0,throttling.iops-size=512"],
     "iops size requires an iops value to be set"),
    (["-drive", "file=z.img,format=raw,if=none,id=d0,throttling.bps-total=10,"
      "throttling.bps-total-max-length=5"], "burst length set without burst rate"),
    (["-blockdev", '{"driver":"file","filename":1,"node-name":"x"}'],
     "Invalid parameter type for 'filename', expected: string"),
    (["-blockdev", '{"driver":"file","filename":"z.img"}'],
     "'node-name' must be specified for the root node"),
    (["-blockdev", "driver=file,filename=z.img,node-name=x,bogus=1"],
     "Parameter 'bogus' is unexpected"),
    (["-blockdev", "driver=qcow2,node-name=x,file.driver=file,file.filename=z.img"],
     "Image is not in qcow2 format"),
    (["-blockdev", "driver=file,node-name=x"], "Parameter 'filename' is missing"),
    (["-blockdev", "driver=file,filename=z.img,node-name=x,cache.direct=maybe"],
     "Parameter 'cache.direct' expects 'on' or 'off'"),
    (["-blockdev", "driver=file,filename=nosuch.img,node-name=x"],
     "Could not open 'nosuch.img': No such file or directory")],
    ids=lambda value: "" if isinstance(value, str) else "_".join(value)[:60])
def test_bad_block_options_are_refused_as_qemu(tmp_path, vmm_kind, args, message):
    """The same words as QEMU 7.2, after the option they belong to."""
    from guest import QEMU, kvmkit_command

    (tmp_path / "z.img").write_bytes(bytes(1 << 20))
    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-nodefaults", "-display", "none", "-S", *args]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL, cwd=tmp_path)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].split(": ", 1)[1] == \
        f"{args[0]} {args[1]}: {message}"


@pytest.mark.qemu
def test_two_writers_on_one_file_are_refused_as_qemu(launch, tmp_path):
    """QEMU's permission system, for what would corrupt an image: a second qcow2
    node on a file a writable qcow2 node uses, or a device on that file itself."""
    answers = {}
    for kind in ("kvmkit", "qemu"):
        where = tmp_path / kind
        where.mkdir()
        image = where / "one.qcow2"
        assert qemu_img("create", "-q", "-f", "qcow2", str(image), "8M").returncode == 0
        blockdevs = [arg % image if "%s" in arg else arg for arg in LIBVIRT_BLOCKDEVS]
        vm, qmp = start(launch, where, kind, "-blockdev", blockdevs[0],
                        "-blockdev", blockdevs[1])
        answers[kind] = [
            qmp.execute("blockdev-add", driver="qcow2", **{"node-name": "second"},
                        file="libvirt-1-storage"),
            qmp.execute("blockdev-add", driver="raw", **{"node-name": "passthrough"},
                        file="libvirt-1-storage"),
            qmp.execute("device_add", driver="virtio-blk-pci", drive="libvirt-1-storage",
                        id="direct"),
            qmp.execute("device_add", driver="virtio-blk-pci", drive="passthrough",
                        id="through-raw"),
            qmp.execute("device_add", driver="virtio-blk-pci", drive="libvirt-1-format",
                        id="fine")]
        qmp.execute("quit")
        vm.proc.wait(20)
    assert answers["kvmkit"] == answers["qemu"]
    assert answers["qemu"][-1] == {"return": {}}


@pytest.mark.parametrize("detect", ["off", "on"])
def test_detect_zeroes_turns_a_zero_write_into_zero_clusters(launch, tmp_path, vmm_kind,
                                                             detect):
    """detect-zeroes=on: a guest write of zeroes allocates nothing in a qcow2 image
    (the cluster is marked zero, as `qemu-img map` shows); off: it is data."""
    image = tmp_path / "z.qcow2"
    assert qemu_img("create", "-q", "-f", "qcow2", "-o", "cluster_size=512", str(image),
                    "1M").returncode == 0
    vm, qmp = start(launch, tmp_path, vmm_kind, "-drive",
                    f"file={image},format=qcow2,if=none,id=d0,detect-zeroes={detect}",
                    "-device", "virtio-blk-pci,drive=d0")
    assert vm.command("blk write 7") == {"status": 0}          # a sector of zeroes
    assert vm.command("blk write 9 not-zero") == {"status": 0}
    assert vm.command("blk flush") == {"status": 0}
    qmp.execute("quit")
    vm.proc.wait(20)
    mapped = json.loads(qemu_img("map", "--output=json", str(image)).stdout)

    def at(sector: int) -> dict:
        return next(m for m in mapped if m["start"] <= sector * 512 < m["start"] + m["length"])

    assert at(9)["data"] is True
    assert (at(7)["data"], at(7)["zero"]) == ((False, True) if detect == "on" else (True, False))
