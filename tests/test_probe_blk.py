"""virtio-blk-pci on a raw image (-drive if=none), driven by the probe guest, on
QEMU 7.2 and kvmkit: capacity, reading what the host wrote, writing what the
host then reads, flush, and a read past the end."""

from __future__ import annotations

import re
import time

import pytest
from guest import QEMU, kvmkit_command, machine_args, probe_elf, start_with_qmp
from guest import QmpLine as Qmp

pytestmark = pytest.mark.kvm


def test_guest_reads_and_writes_the_image(launch, tmp_path, vmm_kind):
    image = tmp_path / "disk.img"
    data = bytearray(1 << 20)
    data[5 * 512:5 * 512 + 15] = b"written-by-host"
    image.write_bytes(bytes(data))
    vm = launch(machine_args(extra=[
        "-drive", f"file={image},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,id=blk0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    info = vm.command("blk")
    assert info["present"] and info["sectors"] == 2048
    assert vm.command("blk read 5") == {"status": 0, "text": "written-by-host"}
    assert vm.command("blk write 7 written-by-guest") == {"status": 0}
    assert vm.command("blk flush") == {"status": 0}
    assert image.read_bytes()[7 * 512:7 * 512 + 16] == b"written-by-guest"
    assert vm.command("blk read 2048")["status"] == 1      # past the end: I/O error


@pytest.mark.qemu
def test_info_pci_shows_the_disk_as_qemu_does(tmp_path):
    """Class, ids and BARs (the legacy BAR's size follows the config size)."""
    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    # read-only: both VMMs use the image at once, which QEMU's locks allow readers
    common = ["-m", "256", "-nodefaults", "-display", "none", "-kernel", probe_elf(),
              "-drive", f"file={image},format=raw,if=none,id=d0,readonly=on",
              "-device", "virtio-blk-pci,drive=d0,id=blk0"]
    procs = [start_with_qmp([QEMU, "-accel", "kvm", *common], str(tmp_path / "q.sock")),
             start_with_qmp(kvmkit_command() + common, str(tmp_path / "k.sock"))]
    try:
        q, k = Qmp(str(tmp_path / "q.sock")), Qmp(str(tmp_path / "k.sock"))
        deadline = time.monotonic() + 20
        while "0xffffffffffffffff" in (theirs := q.hmp("info pci")):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert k.hmp("info pci") == theirs
        node = re.compile(r"#block\d+")           # a generated name with random digits
        assert node.sub("#block", k.hmp("info block")) == \
            node.sub("#block", q.hmp("info block"))
        ours_q, theirs_q = k.execute("query-block"), q.execute("query-block")
        for reply in (ours_q, theirs_q):
            reply["return"][0]["inserted"]["node-name"] = "#block"
        assert ours_q == theirs_q
    finally:
        for proc in procs:
            proc.kill()
            proc.wait(10)


def partitioned_image(path, end_head: int, end_sector: int, size: int = 64 << 20) -> None:
    """An image whose MBR's first partition ends at (end_head, end_sector)."""
    data = bytearray(size)
    data[0x1BE + 5], data[0x1BE + 6] = end_head, end_sector
    data[0x1BE + 12:0x1BE + 16] = (1000).to_bytes(4, "little")
    data[510:512] = b"\x55\xaa"
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("partitioned, geometry", [
    (False, "0200103f"),          # 2 cylinders (the least), 16 heads, 63 sectors
    (True, "00011020")])          # 256 cylinders of 16 heads, 32 sectors, from the MBR
def test_config_space_is_qemus(launch, tmp_path, vmm_kind, partitioned, geometry):
    """Byte for byte what QEMU 7.2 shows: capacity, seg_max, its geometry guess,
    block size, topology, writeback, one queue, discard and write-zeroes limits,
    and all ones past the end of the configuration."""
    image = tmp_path / "disk.img"
    if partitioned:
        partitioned_image(image, 15, 32)
    else:
        image.write_bytes(bytes(1 << 20))
    vm = launch(machine_args(extra=[
        "-drive", f"file={image},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    capacity = (image.stat().st_size // 512).to_bytes(8, "little").hex()
    assert vm.command("blk config") == {
        "offered": "0x10130006e54",
        "config": capacity + "00000000" + "fe000000" + geometry + "00020000" + "00" * 8
                  + "01000100" + "ffff3f00" + "01000000" * 2 + "ffff3f00" + "01000000"
                  + "01" + "ffffff"}


@pytest.mark.parametrize("discard", ["unmap", "ignore"])
def test_discard_and_write_zeroes(launch, tmp_path, vmm_kind, discard):
    """discard=unmap hands the guest's discards to the image (its blocks come back
    to the host); QEMU's default, ignore, keeps them. Write-zeroes zeroes either
    way; ranges past the end and unknown flags fail as in QEMU."""
    image = tmp_path / "disk.img"
    image.write_bytes(b"\xa5" * (1 << 20))
    vm = launch(machine_args(extra=[
        "-drive", f"file={image},format=raw,if=none,id=d0,discard={discard}",
        "-device", "virtio-blk-pci,drive=d0"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    before = image.stat().st_blocks
    assert vm.command("blk discard 512 1024") == {"status": 0}     # 512 KiB
    freed = (before - image.stat().st_blocks) * 512
    assert freed >= 256 << 10 if discard == "unmap" else freed == 0
    assert vm.command("blk zeroes 4 4") == {"status": 0}
    data = image.read_bytes()
    assert data[4 * 512:8 * 512] == bytes(2048) and data[3 * 512:4 * 512] == b"\xa5" * 512
    assert vm.command("blk zeroes 2040 16")["status"] == 1           # past the end
    assert vm.command("blk discard 0 1 unmap")["status"] == 2        # unmap: discard's not
    assert vm.command("blk zeroes 0 1 unmap") == {"status": 0}       # ... write-zeroes' is
    assert image.read_bytes()[:512] == bytes(512)


def start_with_disks(launch, tmp_path, vmm_kind, *args: str):
    """The probe guest with the given -drive/-device options and a QMP socket, once
    it is ready; each FILE in them names a 1 MiB image of zeroes made in tmp_path."""
    sock = str(tmp_path / "qmp.sock")
    extra = []
    for arg in args:
        for name in re.findall(r"file=([^,]+)", arg):
            (tmp_path / name).write_bytes(bytes(1 << 20))
        extra.append(re.sub(r"file=([^,]+)", lambda m: f"file={tmp_path / m.group(1)}", arg))
    vm = launch(machine_args(extra=[*extra, "-qmp", f"unix:{sock},server=on,wait=off"]),
                vmm_kind)
    vm.wait_event("ready", timeout=60)
    return vm, Qmp(sock)


def test_write_cache_follows_the_guest(launch, tmp_path, vmm_kind):
    """CONFIG_WCE: the guest turns the write cache off and on; query-block says so."""
    vm, qmp = start_with_disks(launch, tmp_path, vmm_kind,
                               "-drive", "file=disk.img,format=raw,if=none,id=d0",
                               "-device", "virtio-blk-pci,drive=d0")
    image = tmp_path / "disk.img"

    def writeback() -> bool:
        return qmp.execute("query-block")["return"][0]["inserted"]["cache"]["writeback"]

    assert vm.command("blk")["present"] and writeback() is True
    assert vm.command("blk wce 0") == {"writeback": 0} and writeback() is False
    assert vm.command("blk write 3 through") == {"status": 0}
    assert image.read_bytes()[3 * 512:3 * 512 + 7] == b"through"
    assert vm.command("blk wce 1") == {"writeback": 1} and writeback() is True


@pytest.mark.parametrize("drive_opts, device_opts, message", [
    (",discard=foo", "", "-drive {drive}: Invalid discard option"),
    (",cache=bogus", "", "-drive {drive}: invalid cache option"),
    ("", ",num-queues=0", "-device {device}: num-queues property must be larger than 0")])
def test_bad_options_are_refused_as_qemu(tmp_path, vmm_kind, drive_opts, device_opts,
                                         message):
    import subprocess

    image = tmp_path / "disk.img"
    image.write_bytes(bytes(1 << 20))
    drive = f"file={image},format=raw,if=none,id=d0{drive_opts}"
    device = f"virtio-blk-pci,drive=d0{device_opts}"
    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-nodefaults", "-display", "none", "-S", "-drive", drive, "-device", device]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=20,
                            stdin=subprocess.DEVNULL)
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1].endswith(
        message.format(drive=drive, device=device))


CACHE_MODES = {"writeback": (True, False, False), "writethrough": (False, False, False),
               "none": (True, True, False), "directsync": (False, True, False),
               "unsafe": (True, False, True)}


@pytest.mark.parametrize("mode", list(CACHE_MODES))
def test_cache_modes_as_qemus(launch, tmp_path, vmm_kind, mode):
    """-drive cache=: query-block's cache and `info block` as QEMU's; the guest sees
    the write cache the mode gives (WCE) and its writes reach the image, O_DIRECT
    included; a second disk from -drive if=virtio gets QEMU's id and device."""
    vm, qmp = start_with_disks(launch, tmp_path, vmm_kind,
                               "-drive", f"file=disk.img,format=raw,if=none,id=d0,cache={mode}",
                               "-device", "virtio-blk-pci,drive=d0,id=blk0",
                               "-drive", f"file=second.img,format=raw,if=virtio,cache={mode}")
    image = tmp_path / "disk.img"
    # after the guest's driver has reset the device (QEMU's SeaBIOS set up the disk
    # with features of its own before)
    assert vm.command("blk")["present"]
    blocks = qmp.execute("query-block")["return"]
    writeback, direct, no_flush = CACHE_MODES[mode]
    # (the second disk's write cache is what QEMU's SeaBIOS left, so it is not compared)
    assert [(b["device"], b["qdev"], b["inserted"]["cache"]["direct"],
             b["inserted"]["cache"]["no-flush"]) for b in blocks] == [
        ("d0", "/machine/peripheral/blk0/virtio-backend", direct, no_flush),
        ("virtio0", "/machine/peripheral-anon/device[1]/virtio-backend", direct, no_flush)]
    assert blocks[0]["inserted"]["cache"]["writeback"] is writeback
    text = re.sub(r"#block\d+", "#block", qmp.hmp("info block"))
    words = ("writeback" if writeback else "writethrough") + (", direct" if direct else "") + \
        (", ignore flushes" if no_flush else "")
    assert text.splitlines()[:3] == [
        f"d0 (#block): {image} (raw)", "    Attached to:      /machine/peripheral/blk0/"
        "virtio-backend", f"    Cache mode:       {words}"]
    config = bytes.fromhex(vm.command("blk config")["config"])
    assert config[32] == int(writeback)               # the write cache the guest sees
    assert vm.command("blk write 9 cached") == {"status": 0}
    assert vm.command("blk flush") == {"status": 0}
    assert image.read_bytes()[9 * 512:9 * 512 + 6] == b"cached"
    assert vm.command("blk read 9") == {"status": 0, "text": "cached"}


def test_block_resize_is_seen_by_the_guest(launch, tmp_path, vmm_kind):
    """block_resize (QMP and HMP) grows the image; the guest reads the new capacity
    from its config; QEMU's errors for a missing drive, a negative size and a
    read-only image."""
    vm, qmp = start_with_disks(launch, tmp_path, vmm_kind,
                               "-drive", "file=disk.img,format=raw,if=none,id=d0",
                               "-drive", "file=ro.img,format=raw,if=none,id=d1,readonly=on",
                               "-device", "virtio-blk-pci,drive=d0")
    image = tmp_path / "disk.img"
    assert vm.command("blk")["sectors"] == 2048
    assert qmp.execute("block_resize", device="d0", size=2 << 20) == {"return": {}}
    assert image.stat().st_size == 2 << 20
    assert vm.command("blk")["sectors"] == 4096
    assert qmp.hmp("block_resize d0 3M") == ""
    assert vm.command("blk")["sectors"] == 6144
    assert vm.command("blk write 6000 grown") == {"status": 0}
    assert image.read_bytes()[6000 * 512:6000 * 512 + 5] == b"grown"
    errors = [qmp.execute("block_resize", **args)["error"]["desc"] for args in (
        {"device": "nosuch", "size": 1 << 20}, {"node-name": "nosuch", "size": 1 << 20},
        {"device": "d0", "size": -1}, {"device": "d1", "size": 4 << 20})]
    assert errors == ["Cannot find device='nosuch' nor node-name=''",
                      "Cannot find device='' nor node-name='nosuch'",
                      "Parameter 'size' expects a >0 size", "Image is read-only"]


def test_write_threshold_event(launch, tmp_path, vmm_kind):
    """block-set-write-threshold on the format node: the guest's first write ending
    past it raises BLOCK_WRITE_THRESHOLD once, and the threshold is off again."""
    from guest import QmpLine

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[
        "-blockdev", f"driver=file,filename={disk},node-name=f0",
        "-blockdev", "driver=raw,file=f0,node-name=n0",
        "-device", "virtio-blk-pci,drive=n0,id=vd0",
        "-qmp", f"unix:{sock},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    assert qmp.execute("block-set-write-threshold", **{"node-name": "n0",
                                                        "write-threshold": 4000}) == \
        {"return": {}}
    assert qmp.execute("block-set-write-threshold", **{"node-name": "nosuch",
                                                        "write-threshold": 1}) == \
        {"error": {"class": "GenericError", "desc": "Device 'nosuch' not found"}}
    nodes = {n["node-name"]: n for n in qmp.execute("query-named-block-nodes")["return"]}
    assert nodes["n0"]["write_threshold"] == 4000 and nodes["f0"]["write_threshold"] == 0
    assert vm.command("blk write 2 below") == {"status": 0}         # bytes 1024-1535
    assert vm.command("blk write 9 above") == {"status": 0}         # 4608-5119
    assert vm.command("blk write 10 again") == {"status": 0}
    qmp.execute("query-status")
    events = [e["data"] for e in qmp.events if e["event"] == "BLOCK_WRITE_THRESHOLD"]
    assert events == [{"node-name": "n0", "amount-exceeded": 5120 - 4000,
                       "write-threshold": 4000}]
    nodes = {n["node-name"]: n for n in qmp.execute("query-named-block-nodes")["return"]}
    assert nodes["n0"]["write_threshold"] == 0


def test_latency_histograms_count_the_guests_requests(launch, tmp_path, vmm_kind):
    from guest import QmpLine

    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[
        "-drive", f"file={disk},if=none,id=d0,format=raw", "-device",
        "virtio-blk-pci,drive=d0,id=vd0", "-qmp", f"unix:{sock},server=on,wait=off"]),
        vmm_kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    backend = "/machine/peripheral/vd0/virtio-backend"
    # every request takes more than 1 ns and less than 1000 s
    assert qmp.execute("block-latency-histogram-set", id=backend,
                       boundaries=[1, 10**12], **{"boundaries-write": [10**12]}) == \
        {"return": {}}
    for sector in (1, 2, 3):
        assert vm.command(f"blk read {sector}")["status"] == 0
    assert vm.command("blk write 4 x") == {"status": 0}
    stats = qmp.execute("query-blockstats")["return"][0]["stats"]
    assert stats["rd_latency_histogram"] == {"boundaries": [1, 10**12], "bins": [0, 3, 0]}
    assert stats["wr_latency_histogram"] == {"boundaries": [10**12], "bins": [1, 0]}
