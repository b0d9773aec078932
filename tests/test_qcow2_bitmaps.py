"""Persistent dirty bitmaps in qcow2 images, with QEMU 7.2's tools as the
reference: a bitmap qemu-img added and qemu-io marked is loaded and keeps
counting; bitmaps added with persistent=on are in the image after `quit`, where
qemu-img lists them, qemu-img check finds the image clean, and QEMU reads the
same bits (x-debug sha256); a VMM killed with the image open leaves them
in_use, which both VMMs then report as inconsistent."""

from __future__ import annotations

import json
import subprocess

import pytest
from guest import QEMU, kvmkit_command, start_with_qmp
from guest import QmpLine as Qmp

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]
VMMS = {"kvmkit": kvmkit_command, "qemu": lambda: [QEMU, "-accel", "kvm"]}


def image_with_a_bitmap(path) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "4M"], check=True)
    subprocess.run(["qemu-img", "bitmap", "--add", str(path), "b0"], check=True)
    subprocess.run(["qemu-io", "-c", "write 0 64k", str(path)], check=True,
                   capture_output=True)


def bitmaps_in(path) -> list[dict]:
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", str(path)],
                                     check=True, capture_output=True, text=True).stdout)
    return info["format-specific"]["data"].get("bitmaps", [])


def session(vmm: str, image, tmp_path, steps, kill: bool = False) -> list[dict]:
    sock = str(tmp_path / f"{vmm}.sock")
    proc = start_with_qmp(VMMS[vmm]() + ["-S", "-display", "none", "-nodefaults",
                                         "-drive", f"file={image},if=none,id=d0"], sock)
    try:
        qmp = Qmp(sock)
        replies = [qmp.execute(name, **args) for name, args in steps]
        if not kill:
            qmp.execute("quit")
            proc.wait(30)
        return replies
    finally:
        proc.kill()
        proc.wait()


def _bitmaps(reply: dict) -> list[dict]:
    return reply["return"][0]["inserted"].get("dirty-bitmaps", [])


def comparable(replies: list[dict]) -> list:
    """What two runs on two image files can share: query-block's bitmaps (in the
    node and in the image's format-specific data); other replies as they are."""
    out = []
    for reply in replies:
        if isinstance(reply.get("return"), list) and reply["return"] and \
                "inserted" in reply["return"][0]:
            inserted = reply["return"][0]["inserted"]
            out.append((_bitmaps(reply),
                        inserted["image"]["format-specific"]["data"].get("bitmaps")))
        else:
            out.append(reply)
    return out


def write(offset: str) -> tuple[str, dict]:
    return "human-monitor-command", {"command-line": f'qemu-io d0 "write {offset} 64k"'}


def test_bitmaps_are_kept_in_the_image_as_qemu_keeps_them(tmp_path):
    steps = [("query-block", {}),
             ("block-dirty-bitmap-add", {"node": "d0", "name": "p1", "persistent": True,
                                         "disabled": True}),
             ("block-dirty-bitmap-add", {"node": "d0", "name": "p2", "persistent": True,
                                         "granularity": 4096}),
             ("block-dirty-bitmap-add", {"node": "d0", "name": "gone", "persistent": True}),
             ("block-dirty-bitmap-add", {"node": "d0", "name": "t"}),
             write("1M"), write("3M"),
             ("block-dirty-bitmap-remove", {"node": "d0", "name": "gone"}),
             ("query-block", {}),
             ("x-debug-block-dirty-bitmap-sha256", {"node": "d0", "name": "p2"})]
    images, replies = {}, {}
    for vmm in VMMS:
        images[vmm] = tmp_path / f"{vmm}.qcow2"
        image_with_a_bitmap(images[vmm])
        replies[vmm] = session(vmm, images[vmm], tmp_path, steps)
    assert comparable(replies["kvmkit"]) == comparable(replies["qemu"])
    loaded = _bitmaps(replies["kvmkit"][0])
    assert loaded == [{"name": "b0", "recording": True, "persistent": True, "busy": False,
                       "granularity": 65536, "count": 65536}]
    counts = {b["name"]: b["count"] for b in _bitmaps(replies["kvmkit"][8])}
    assert counts == {"t": 131072, "p2": 131072, "p1": 0, "b0": 196608}
    assert bitmaps_in(images["kvmkit"]) == bitmaps_in(images["qemu"]) == [
        {"flags": ["auto"], "name": "b0", "granularity": 65536},
        {"flags": ["auto"], "name": "p2", "granularity": 4096},
        {"flags": [], "name": "p1", "granularity": 65536}]
    check = subprocess.run(["qemu-img", "check", str(images["kvmkit"])],
                           capture_output=True, text=True)
    assert check.returncode == 0 and "No errors were found" in check.stdout, check.stdout
    # QEMU reads what kvmkit stored: the same bitmaps, the same bits
    again = session("qemu", images["kvmkit"], tmp_path, [
        ("query-block", {}), ("x-debug-block-dirty-bitmap-sha256",
                              {"node": "d0", "name": "p2"})])
    kept = [b for b in _bitmaps(replies["kvmkit"][8]) if b["name"] != "t"]
    assert sorted(_bitmaps(again[0]), key=lambda b: b["name"]) == \
        sorted(kept, key=lambda b: b["name"])
    assert again[1] == replies["kvmkit"][9]


def test_a_killed_vmm_leaves_the_bitmaps_inconsistent(tmp_path):
    answers = {}
    for vmm in VMMS:
        image = tmp_path / f"{vmm}.qcow2"
        image_with_a_bitmap(image)
        session(vmm, image, tmp_path, [write("1M")], kill=True)
        assert bitmaps_in(image) == [{"flags": ["in-use", "auto"], "name": "b0",
                                      "granularity": 65536}]
        answers[vmm] = session(vmm, image, tmp_path, [
            ("query-block", {}), write("2M"), ("query-block", {}),
            ("block-dirty-bitmap-clear", {"node": "d0", "name": "b0"})])
    assert comparable(answers["kvmkit"]) == comparable(answers["qemu"])
    assert _bitmaps(answers["kvmkit"][0])[0].get("inconsistent") is True
