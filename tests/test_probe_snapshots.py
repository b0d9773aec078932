"""savevm/loadvm/delvm, the snapshot-* jobs and -loadvm with the probe guest on a
qcow2 disk, on kvmkit and on QEMU 7.2: after loadvm the guest sees its memory and
its disk as they were at savevm, qemu-img lists what was saved, and without a
qcow2 disk the commands fail with QEMU's words."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from guest import QmpLine, machine_args, start_kvmkit, start_qemu

pytestmark = pytest.mark.kvm
LINE = re.compile(r"--        (\S+) +[\d.]+ [KMG]iB \d{4}-\d\d-\d\d \d\d:\d\d:\d\d "
                  r"\d\d:\d\d:\d\d\.\d{3} {11}\r\n")


def start(kind: str, args: list[str], cwd: str):
    return (start_kvmkit if kind == "kvmkit" else start_qemu)(args, cwd=cwd)


def qcow2_args(path: str, sock: str) -> list[str]:
    return machine_args(memory_mib=256, extra=[
        "-blockdev", f"driver=file,filename={path},node-name=file0",
        "-blockdev", "driver=qcow2,file=file0,node-name=disk0",
        "-device", "virtio-blk-pci,drive=disk0,id=blk0",
        "-qmp", f"unix:{sock},server=on,wait=off"])


def wait_jobs(qmp: QmpLine) -> list[dict]:
    for _ in range(600):
        jobs = qmp.execute("query-jobs")["return"]
        if all(j["status"] == "concluded" for j in jobs):
            return jobs
        time.sleep(0.1)
    raise AssertionError(jobs)


def test_savevm_loadvm_restore_memory_and_disk(tmp_path, vmm_kind):
    disk = str(tmp_path / "disk.qcow2")
    subprocess.run(["qemu-img", "create", "-f", "qcow2", disk, "16M"], check=True,
                   capture_output=True)
    sock = str(tmp_path / "qmp.sock")
    vm = start(vmm_kind, qcow2_args(disk, sock), str(tmp_path))
    try:
        vm.wait_event("ready", timeout=60)
        qmp = QmpLine(sock)
        assert qmp.hmp("info snapshots") == "There is no snapshot available.\r\n"
        assert vm.command("touch 64 1", timeout=60)["errors"] == 0
        assert vm.command("blk write 5 at-savevm") == {"status": 0}
        assert qmp.hmp("savevm first") == ""
        assert qmp.execute("query-status")["return"]["status"] == "running"
        listing = qmp.hmp("info snapshots")
        assert listing.startswith("List of snapshots present on all disks:\r\n"
                                  "ID        TAG               VM SIZE                DATE"
                                  "     VM CLOCK     ICOUNT\r\n"), listing
        assert LINE.fullmatch(listing.split("\r\n", 2)[2]), listing

        assert vm.command("touch 64 2", timeout=60)["errors"] == 0      # then it moves on
        assert vm.command("blk write 5 after-savevm") == {"status": 0}
        assert qmp.hmp("loadvm nope") == \
            "Error: Snapshot 'nope' does not exist in one or more devices\r\n"
        assert qmp.execute("query-status")["return"]["status"] == "restore-vm"
        assert qmp.hmp("loadvm first") == ""           # stopped by the failure: stays so
        qmp.execute("cont")
        assert vm.command("check 64 1", timeout=60)["errors"] == 0
        assert vm.command("blk read 5") == {"status": 0, "text": "at-savevm"}

        # The QMP jobs, with QEMU's job events.
        qmp.events.clear()
        assert qmp.execute("snapshot-save", **{"job-id": "save1", "tag": "second",
                                               "vmstate": "disk0", "devices": ["disk0"]}) \
            == {"return": {}}
        jobs = wait_jobs(qmp)
        assert jobs == [{"current-progress": 1, "status": "concluded", "total-progress": 1,
                         "type": "snapshot-save", "id": "save1"}]
        qmp.execute("snapshot-save", **{"job-id": "save2", "tag": "second",
                                        "vmstate": "disk0", "devices": ["disk0"]})
        assert wait_jobs(qmp)[0]["error"] == \
            "Snapshot 'second' already exists in one or more devices"
        statuses = [e["data"]["status"] for e in qmp.events
                    if e["event"] == "JOB_STATUS_CHANGE" and e["data"]["id"] == "save1"]
        assert statuses == ["created", "running", "waiting", "pending", "concluded"]
        assert qmp.execute("job-dismiss", id="nope")["error"]["desc"] == "Job not found"
        for job in ("save1", "save2"):
            assert qmp.execute("job-dismiss", id=job) == {"return": {}}
        qmp.execute("snapshot-delete", **{"job-id": "del", "tag": "second",
                                          "devices": ["disk0"]})
        assert wait_jobs(qmp)[0]["status"] == "concluded"
        assert [m.group(1) for m in LINE.finditer(qmp.hmp("info snapshots"))] == ["first"]
        qmp.execute("quit")
        vm.wait_exit(30)
    finally:
        vm.close()
    listing = subprocess.run(["qemu-img", "snapshot", "-l", disk], capture_output=True,
                             text=True).stdout
    assert listing.splitlines()[0] == "Snapshot list:"
    assert listing.splitlines()[2].split()[1] == "first"
    check = subprocess.run(["qemu-img", "check", disk], capture_output=True, text=True)
    assert check.returncode == 0, check.stdout + check.stderr

    # -loadvm: a new VMM starts from the snapshot.
    again = str(tmp_path / "again.sock")
    vm = start(vmm_kind, qcow2_args(disk, again) + ["-loadvm", "first"], str(tmp_path))
    try:
        for _ in range(600):        # input sent before the snapshot is in would be lost
            if os.path.exists(again):
                status = QmpLine(again).execute("query-status")["return"]["status"]
                if status == "running":
                    break
            time.sleep(0.1)
        assert vm.command("check 64 1", timeout=60)["errors"] == 0
        assert vm.command("blk read 5") == {"status": 0, "text": "at-savevm"}
    finally:
        vm.close()


def test_snapshots_need_a_qcow2_disk(tmp_path, vmm_kind):
    raw = tmp_path / "disk.raw"
    raw.write_bytes(bytes(1 << 20))
    sock = str(tmp_path / "qmp.sock")
    vm = start(vmm_kind, machine_args(memory_mib=64, extra=[
        "-drive", f"file={raw},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0", "-qmp", f"unix:{sock},server=on,wait=off"]),
        str(tmp_path))
    try:
        vm.wait_event("ready", timeout=60)
        qmp = QmpLine(sock)
        assert qmp.hmp("savevm s1") == \
            "Error: Device 'd0' is writable but does not support snapshots\r\n"
        assert qmp.hmp("info snapshots") == \
            "no block device can store vmstate for snapshot\r\n"
        assert qmp.hmp("delvm s1") == \
            "Error: Device 'd0' is writable but does not support snapshots\r\n"
    finally:
        vm.close()
    vm = start(vmm_kind, machine_args(memory_mib=64, extra=["-loadvm", "s1"]), str(tmp_path))
    try:
        assert vm.wait_exit(30) == 1
        assert "no block device can store vmstate for snapshot" in vm.stderr
    finally:
        vm.close()
