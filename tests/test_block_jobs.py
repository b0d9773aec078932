"""Block jobs, external snapshots and dirty bitmaps (#20) with the probe guest
writing to its virtio-blk disk while they run, on kvmkit and on QEMU 7.2: the
same events, and the same data in the images afterwards (read back with
qemu-img, QEMU's own tool).

- block-stream pulls a backing chain into the top image; a drive-mirror then
  carries the disk to a new image while the guest writes, and block-job-complete
  switches the guest over: what it wrote before, during and after is where it
  belongs;
- drive-backup is a point-in-time copy: a sector the guest overwrites while the
  job runs keeps its old text in the backup;
- a dirty bitmap counts the guest's writes as QEMU's does (same count, same
  x-debug sha256), and an incremental backup copies just those clusters;
- blockdev-snapshot-sync puts an overlay under the guest's writes, and an active
  block-commit brings them back down and pivots to the base;
- a transaction with an abort action changes nothing.
"""

from __future__ import annotations

import json
import re
import subprocess
import time

import pytest
from conftest import require_qemu
from guest import QmpLine, machine_args

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]
SECTOR = 512


def qemu_io(image, *commands: str) -> None:
    args = ["qemu-io", "-f", "qcow2"]
    for command in commands:
        args += ["-c", command]
    subprocess.run(args + [str(image)], check=True, capture_output=True)


def chain(tmp_path):
    """base (0x11 in its first MiB) <- mid (0x22 in the second) <- top (0x33, 512 KiB)."""
    base, mid, top = (tmp_path / f"{n}.qcow2" for n in ("base", "mid", "top"))
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "4M"], check=True)
    qemu_io(base, "write -P 0x11 0 1M")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(mid)], check=True)
    qemu_io(mid, "write -P 0x22 1M 1M")
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(mid), "-F", "qcow2",
                    str(top)], check=True)
    qemu_io(top, "write -P 0x33 2M 512k")
    return base, mid, top


def contents(image) -> bytes:
    """What a guest reads from the image (its chain resolved), via qemu-img."""
    raw = image.with_suffix(".raw")
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)],
                   check=True)
    data = raw.read_bytes()
    raw.unlink()
    return data


def backing_of(image) -> str | None:
    info = json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(image)],
                                     check=True, capture_output=True, text=True).stdout)
    return info.get("backing-filename")


def text_at(data: bytes, sector: int) -> bytes:
    return data[sector * SECTOR:(sector + 1) * SECTOR].rstrip(b"\0")


def start(launch, vmm_kind, tmp_path, image, extra=()):
    sock = str(tmp_path / f"{vmm_kind}.sock")
    vm = launch(machine_args(extra=[
        "-drive", f"file={image},format=qcow2,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,id=vd0", *extra,
        "-qmp", f"unix:{sock},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    return vm, QmpLine(sock)


def wait_for(qmp: QmpLine, event: str, timeout: float = 60) -> dict:
    deadline = time.monotonic() + timeout
    while True:
        for n, seen in enumerate(qmp.events):
            if seen["event"] == event:
                del qmp.events[:n + 1]
                return seen["data"]
        assert time.monotonic() < deadline, f"no {event}: {qmp.events}"
        time.sleep(0.05)
        qmp.execute("query-status")


def guest_write(vm, sector: int, text: str) -> None:
    assert vm.command(f"blk write {sector} {text}") == {"status": 0}


def test_stream_then_mirror_with_the_guest_writing(launch, tmp_path, vmm_kind):
    base, mid, top = chain(tmp_path)
    vm, qmp = start(launch, vmm_kind, tmp_path, top)
    guest_write(vm, 7, "before-stream")
    assert qmp.execute("block-stream", device="d0", base=str(base)) == {"return": {}}
    assert wait_for(qmp, "BLOCK_JOB_COMPLETED") == {
        "device": "d0", "len": 4 << 20, "offset": 4 << 20, "speed": 0, "type": "stream"}
    assert backing_of(top) == str(base)
    target = tmp_path / "copy.qcow2"
    assert qmp.execute("drive-mirror", device="d0", target=str(target), sync="full",
                       format="qcow2") == {"return": {}}
    ready = wait_for(qmp, "BLOCK_JOB_READY")
    assert ready["type"] == "mirror" and ready["len"] == ready["offset"] > 0
    guest_write(vm, 9, "during-mirror")
    assert qmp.execute("block-job-complete", device="d0") == {"return": {}}
    done = wait_for(qmp, "BLOCK_JOB_COMPLETED")
    assert done["type"] == "mirror" and "error" not in done
    assert qmp.execute("query-block-jobs") == {"return": []}
    guest_write(vm, 11, "after-pivot")
    assert vm.command("blk flush") == {"status": 0}
    assert qmp.execute("query-block")["return"][0]["inserted"]["file"] == str(target)
    copy, old = contents(target), contents(top)
    assert [text_at(copy, s) for s in (7, 9, 11)] == \
        [b"before-stream", b"during-mirror", b"after-pivot"]
    assert old[11 * SECTOR:12 * SECTOR] == b"\x11" * SECTOR  # the old image is left behind
    for at, byte in ((1 << 20, 0x22), (2 << 20, 0x33), (100, 0x11)):
        assert copy[at] == byte, at
    assert backing_of(target) is None                    # sync=full: a whole copy


def test_backup_keeps_the_disk_as_it_was(launch, tmp_path, vmm_kind):
    _base, _mid, top = chain(tmp_path)
    vm, qmp = start(launch, vmm_kind, tmp_path, top)
    last = (4 << 20) // SECTOR - 8                       # in the last chunk the job copies
    guest_write(vm, last, "old-text")
    target = tmp_path / "backup.qcow2"
    assert qmp.execute("drive-backup", device="d0", target=str(target), sync="full",
                       format="qcow2", speed=1 << 20) == {"return": {}}
    guest_write(vm, last, "new-text")                    # before the job reaches it
    job = qmp.execute("query-block-jobs")["return"]
    assert job and job[0]["offset"] < job[0]["len"] == 4 << 20
    done = wait_for(qmp, "BLOCK_JOB_COMPLETED")
    assert done == {"device": "d0", "len": 4 << 20, "offset": 4 << 20, "speed": 1 << 20,
                    "type": "backup"}
    assert text_at(contents(target), last) == b"old-text"
    assert vm.command(f"blk read {last}")["text"] == "new-text"


def bitmap_run(launch, tmp_path, vmm_kind) -> dict:
    _base, _mid, top = chain(tmp_path)
    vm, qmp = start(launch, vmm_kind, tmp_path, top)
    guest_write(vm, 3, "before-bitmap")
    assert qmp.execute("block-dirty-bitmap-add", node="d0", name="b0") == {"return": {}}
    guest_write(vm, 300, "dirty-one")
    guest_write(vm, 5000, "dirty-two")
    vm.command("blk flush")
    bitmaps = qmp.execute("query-block")["return"][0]["inserted"]["dirty-bitmaps"]
    digest = qmp.execute("x-debug-block-dirty-bitmap-sha256", node="d0", name="b0")
    target = tmp_path / f"inc-{vmm_kind}.qcow2"
    assert qmp.execute("drive-backup", device="d0", target=str(target), sync="incremental",
                       bitmap="b0", format="qcow2", mode="absolute-paths") == {"return": {}}
    done = wait_for(qmp, "BLOCK_JOB_COMPLETED")
    after = qmp.execute("query-block")["return"][0]["inserted"]["dirty-bitmaps"]
    data = contents(target)
    return {"bitmaps": bitmaps, "sha256": digest, "done": done, "after": after,
            "texts": [text_at(data, s) for s in (3, 300, 5000)]}


def test_incremental_backup_copies_what_the_bitmap_marks(launch, tmp_path):
    require_qemu()
    (tmp_path / "k").mkdir()
    (tmp_path / "q").mkdir()
    ours = bitmap_run(launch, tmp_path / "k", "kvmkit")
    theirs = bitmap_run(launch, tmp_path / "q", "qemu")
    assert ours == theirs
    assert ours["bitmaps"] == [{"name": "b0", "recording": True, "persistent": False,
                                "busy": False, "granularity": 65536, "count": 131072}]
    assert ours["texts"][1:] == [b"dirty-one", b"dirty-two"]
    assert ours["texts"][0] == b""           # not marked: not copied (no backing file)
    assert ours["after"][0]["count"] == 0   # what the backup took is no longer dirty


def test_external_snapshot_then_active_commit(launch, tmp_path, vmm_kind):
    base, _mid, top = chain(tmp_path)
    vm, qmp = start(launch, vmm_kind, tmp_path, top)
    overlay = tmp_path / "overlay.qcow2"
    assert qmp.execute("blockdev-snapshot-sync", **{
        "device": "d0", "snapshot-file": str(overlay), "snapshot-node-name": "ov"}) == \
        {"return": {}}
    guest_write(vm, 6000, "in-the-overlay")
    vm.command("blk flush")
    assert backing_of(overlay) == str(top)
    assert text_at(contents(overlay), 6000) == b"in-the-overlay"
    assert text_at(contents(top), 6000) == b""
    named = {n["node-name"]: n["ro"] for n in
             qmp.execute("query-named-block-nodes", flat=True)["return"]}
    assert named["ov"] is False and named[_top_name(qmp)] is True
    assert qmp.execute("block-commit", device="d0", **{"job-id": "c"}) == {"return": {}}
    assert wait_for(qmp, "BLOCK_JOB_READY")["type"] == "commit"
    assert qmp.execute("block-job-complete", device="c") == {"return": {}}
    assert "error" not in wait_for(qmp, "BLOCK_JOB_COMPLETED")
    guest_write(vm, 6100, "after-commit")
    vm.command("blk flush")
    assert qmp.execute("query-block")["return"][0]["inserted"]["file"] == str(base)
    data = contents(base)
    assert text_at(data, 6000) == b"in-the-overlay" and text_at(data, 6100) == b"after-commit"
    assert data[2 << 20] == 0x33                         # top's data came down too


def _top_name(qmp: QmpLine) -> str:
    block = qmp.execute("query-block")["return"][0]["inserted"]
    return next(n["node-name"] for n in qmp.execute("query-named-block-nodes",
                                                    flat=True)["return"]
                if n["file"] == block["backing_file"] and n["drv"] == "qcow2")


def test_transaction_with_an_abort_changes_nothing(launch, tmp_path, vmm_kind):
    _base, _mid, top = chain(tmp_path)
    _vm, qmp = start(launch, vmm_kind, tmp_path, top)
    before = qmp.execute("query-block")
    reply = qmp.execute("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "d0", "name": "t"}},
        {"type": "blockdev-snapshot-sync",
         "data": {"device": "d0", "snapshot-file": str(tmp_path / "t.qcow2")}},
        {"type": "abort", "data": {}}])
    assert reply == {"error": {"class": "GenericError",
                               "desc": "Transaction aborted using Abort action"}}
    assert qmp.execute("query-block") == before
    reply = qmp.execute("transaction", actions=[
        {"type": "block-dirty-bitmap-add", "data": {"node": "d0", "name": "t"}},
        {"type": "blockdev-snapshot-sync",
         "data": {"device": "d0", "snapshot-file": str(tmp_path / "t.qcow2")}}])
    assert reply == {"return": {}}
    inserted = qmp.execute("query-block")["return"][0]["inserted"]
    assert inserted["file"] == str(tmp_path / "t.qcow2")
    # the bitmap was added to the old top, which is now the overlay's backing image
    assert "dirty-bitmaps" not in inserted


def test_sync_profile_counts_the_machine_lock(launch, tmp_path):
    _base, _mid, top = chain(tmp_path)
    vm, qmp = start(launch, "kvmkit", tmp_path, top)
    assert qmp.hmp("sync-profile") == "sync-profile is off\r\n"
    assert qmp.hmp("sync-profile on") == ""
    for sector in range(10):
        guest_write(vm, sector, "profiled")
    report = qmp.hmp("info sync-profile 3")
    rows = [line for line in report.split("\r\n") if line.startswith("BQL mutex")]
    assert 1 <= len(rows) <= 3, report
    assert all(re.fullmatch(r"BQL mutex  +0x[0-9a-f]+  \S+:\d+ +\d+\.\d{5} +\d+ +\d+\.\d\d",
                            row) for row in rows), report
    assert qmp.hmp("sync-profile reset") == ""
    assert qmp.hmp("sync-profile off") == ""
