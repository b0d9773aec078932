"""qcow2 internal snapshots as kvmkit writes them, judged by QEMU's qemu-img: a
snapshot keeps the disk and a VM state as they were while the active image
moves on (copy on write), goto brings them back, delete frees what only the
snapshot used, and `qemu-img check` finds every refcount right throughout."""

from __future__ import annotations

import os
import shutil

import pytest
from test_qcow2 import open_chain, qemu_img_check, run

from vmm.block import qcow2_snapshots as snapshots

pytestmark = pytest.mark.skipif(shutil.which("qemu-img") is None, reason="needs qemu-img")
MiB = 1 << 20


def pattern(tag: bytes, length: int) -> bytes:
    return (tag * (length // len(tag) + 1))[:length]


def read(image, offset: int, length: int) -> bytes:
    buf = bytearray(length)
    image.read_into(offset, [memoryview(buf)])
    return bytes(buf)


def save_vm_state(image, data: bytes) -> int:
    writer = snapshots.VmStateWriter(image)
    writer.write(data)
    writer.flush()
    return writer.offset


def test_snapshot_goto_and_delete_keep_refcounts_right(tmp_path):
    path = str(tmp_path / "disk.qcow2")
    assert run("qemu-img", "create", "-f", "qcow2", path, "16M").returncode == 0
    image = open_chain(path)
    image.write(0, pattern(b"before", 3 * MiB))
    state = pattern(b"vm-state-one", 2 * MiB + 123)
    size = save_vm_state(image, state)
    one = snapshots.create(image, "one", size, 1_500_000_000)
    image.write(1 * MiB, pattern(b"after!", 64 * 1024 + 5))     # copies the shared clusters
    image.write(5 * MiB, pattern(b"new", MiB))
    two = snapshots.create(image, "two", 0, 0)
    image.flush()
    report = qemu_img_check(path)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report

    listing = run("qemu-img", "snapshot", "-l", path).stdout.splitlines()
    assert listing[0] == "Snapshot list:"
    assert listing[2].split()[:4] == ["1", "one", "2", "MiB"]
    assert listing[3].split()[:4] == ["2", "two", "0", "B"]
    assert listing[2].split()[-1] == "00:00:01.500"

    snapshots.goto(image, one)
    assert read(image, 0, 3 * MiB) == pattern(b"before", 3 * MiB)
    assert read(image, 5 * MiB, MiB) == bytes(MiB)
    assert bytes(read_state(image, size)) == state
    image.write(0, b"x" * 4096)                       # the restored disk is writable
    snapshots.delete(image, two)
    snapshots.delete(image, one)
    image.close()
    report = qemu_img_check(path)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report
    assert run("qemu-img", "snapshot", "-l", path).stdout == ""
    assert os.path.getsize(path) < 16 * MiB


def read_state(image, size: int) -> bytearray:
    reader = snapshots.VmStateReader(image, size)
    out = bytearray(size)
    view = memoryview(out)
    while view:
        view = view[reader.readinto(view):]
    return out


def test_qemu_img_snapshots_are_read_and_applied(tmp_path):
    """A snapshot qemu-img made is one kvmkit can go to and delete."""
    path = str(tmp_path / "disk.qcow2")
    assert run("qemu-img", "create", "-f", "qcow2", path, "8M").returncode == 0
    assert run("qemu-io", "-c", "write -P 0x11 0 1M", path).returncode == 0
    assert run("qemu-img", "snapshot", "-c", "base", path).returncode == 0
    assert run("qemu-io", "-c", "write -P 0x22 0 1M", path).returncode == 0
    image = open_chain(path)
    found = snapshots.find(image, "base")
    assert found is not None and found.vm_state_size == 0
    snapshots.goto(image, found)
    assert read(image, 0, MiB) == b"\x11" * MiB
    snapshots.delete(image, found)
    image.close()
    report = qemu_img_check(path)
    assert report.get("corruptions", 0) == 0 and report.get("leaks", 0) == 0, report


@pytest.mark.qemu
def test_one_devices_internal_snapshots_as_qemu(tmp_path):
    """blockdev-snapshot-internal-sync and -delete-internal-sync (and their HMP
    forms): the same answers and errors as QEMU 7.2, and an image qemu-img reads."""
    import json
    import re
    import subprocess

    from guest import QEMU, kvmkit_command, qmp_answers

    raw = tmp_path / "raw.img"
    raw.write_bytes(bytes(1 << 20))
    commands = [
        ("blockdev-snapshot-internal-sync", {"device": "d0", "name": "s1"}),
        ("blockdev-snapshot-internal-sync", {"device": "d0", "name": "s1"}),
        ("blockdev-snapshot-delete-internal-sync", {"device": "d0", "name": "s1"}),
        ("blockdev-snapshot-delete-internal-sync", {"device": "d0", "name": "s1"}),
        ("blockdev-snapshot-internal-sync", {"device": "nosuch", "name": "s1"}),
        ("blockdev-snapshot-delete-internal-sync", {"device": "d0"}),
        ("blockdev-snapshot-internal-sync", {"device": "r0", "name": "s1"}),
        ("blockdev-snapshot-delete-internal-sync", {"device": "r0", "name": "s1"}),
        ("blockdev-snapshot-delete-internal-sync", {"device": "d0", "id": "3"}),
        ("human-monitor-command", {"command-line": "snapshot_blkdev_internal d0 s2"}),
        ("human-monitor-command", {"command-line": "snapshot_blkdev_internal nosuch s2"}),
        ("human-monitor-command", {"command-line": "info snapshots"}),
        ("human-monitor-command", {"command-line": "snapshot_blkdev_internal d0 s3"}),
        ("human-monitor-command", {"command-line": "snapshot_delete_blkdev_internal d0 s2"})]
    replies = {}
    for name, argv in (("kvmkit", kvmkit_command()), ("qemu", [QEMU, "-accel", "kvm"])):
        image = tmp_path / f"{name}.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"],
                       check=True)
        answers = qmp_answers(argv + [
            "-drive", f"file={image},if=none,id=d0,format=qcow2",
            "-drive", f"file={raw},if=none,id=r0,format=raw"], str(tmp_path / f"{name}.sock"),
            commands)
        text = re.sub(r'"date-(n?sec)": \d+', r'"date-\1": 0', json.dumps(answers))
        replies[name] = re.sub(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", "DATE", text)
        listing = subprocess.run(["qemu-img", "snapshot", "-l", str(image)], check=True,
                                 capture_output=True, text=True).stdout
        assert " s3 " in listing and " s2 " not in listing
        qemu_img_check(image)
    assert replies["kvmkit"] == replies["qemu"]
