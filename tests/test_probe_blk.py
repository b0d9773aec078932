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
    common = ["-m", "256", "-nodefaults", "-display", "none", "-kernel", probe_elf(),
              "-drive", f"file={image},format=raw,if=none,id=d0",
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
