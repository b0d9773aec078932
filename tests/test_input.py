"""Keyboard and mouse input: the i8042's PS/2 keyboard and mouse as the probe guest
reads them, fed by send-key, sendkey, mouse_move/mouse_button and input-send-event,
on kvmkit and on QEMU 7.2 (the same bytes, in the same order)."""

from __future__ import annotations

import pytest
from guest import QmpLine, machine_args

pytestmark = pytest.mark.kvm


def transcript(launch, kind: str, tmp_path) -> list[tuple[str, dict]]:
    """What the guest reads for each step (the probe polls the controller)."""
    sock = str(tmp_path / f"{kind}.sock")
    vm = launch(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off"]), kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    seen = []

    def hmp(line: str) -> None:
        assert qmp.execute("human-monitor-command", **{"command-line": line}) == \
            {"return": ""}

    def step(name: str, action, wait_ms: int = 200) -> None:
        action()
        seen.append((name, vm.command(f"ps2 read {wait_ms}")))

    step("boot state", lambda: vm.command("ps2 cmd 0x20"))
    step("send-key a", lambda: qmp.execute("send-key", keys=[{"type": "qcode", "data": "a"}],
                                           **{"hold-time": 50}), 300)
    step("sendkey ctrl-alt-f1", lambda: hmp("sendkey ctrl-alt-f1 20"))
    step("extended keys and numbers", lambda: qmp.execute("send-key", keys=[
        {"type": "qcode", "data": "up"}, {"type": "number", "data": 0x9C},
        {"type": "qcode", "data": "pause"}], **{"hold-time": 10}))
    for byte in (0xFF, 0xF2, 0xEE, 0xF0, 0x00, 0xED, 0x07, 0x99):
        step(f"keyboard {byte:#x}", lambda byte=byte: vm.command(f"ps2 kbd {byte}"), 100)
    step("enable aux", lambda: vm.command("ps2 cmd 0xa8"), 100)
    for byte in (0xFF, 0xF2, 0xF3, 200, 0xF3, 100, 0xF3, 80, 0xF2, 0xE9, 0xF4):
        step(f"mouse {byte:#x}", lambda byte=byte: vm.command(f"ps2 aux {byte}"), 100)
    for line in ("mouse_move 10 -5", "mouse_move 300 0", "mouse_button 1", "mouse_button 0",
                 "mouse_move 0 0 1", "mouse_button 2"):
        step(line, lambda line=line: hmp(line))
    step("input-send-event", lambda: qmp.execute("input-send-event", events=[
        {"type": "rel", "data": {"axis": "x", "value": -3}},
        {"type": "btn", "data": {"button": "right", "down": False}}]))
    return seen


@pytest.mark.qemu
def test_guest_reads_keys_and_mouse_packets_as_on_qemu(launch, tmp_path):
    ours = transcript(launch, "kvmkit", tmp_path)
    theirs = transcript(launch, "qemu", tmp_path)
    assert ours == theirs
    steps = dict(ours)
    assert steps["send-key a"]["kbd"] == [0x1E, 0x9E]                   # make, break
    assert steps["sendkey ctrl-alt-f1"]["kbd"] == [0x1D, 0x38, 0x3B, 0xBB, 0xB8, 0x9D]
    assert steps["mouse 0xf2"]["aux"] == [0xFA, 3]                      # IntelliMouse
    assert steps["mouse_move 10 -5"]["aux"] == [0x08, 10, 5, 0]


@pytest.mark.qemu
def test_input_commands_answer_as_qemu(tmp_path):
    from guest import QEMU, kvmkit_command, qmp_answers

    commands = [
        ("query-mice", {}),
        ("human-monitor-command", {"command-line": "info mice"}),
        ("send-key", {"keys": [{"type": "qcode", "data": "nosuch"}]}),
        ("send-key", {"keys": []}),
        ("human-monitor-command", {"command-line": "sendkey foo"}),
        ("human-monitor-command", {"command-line": "sendkey 0x1e 50"}),
        ("input-send-event", {"events": [{"type": "rel", "data": {"axis": "x", "value": 5}}]}),
        ("input-send-event", {"device": "nosuch", "events": []}),
        ("human-monitor-command", {"command-line": "mouse_set 3"}),
        ("human-monitor-command", {"command-line": "mouse_set 2"}),
        ("query-mice", {}),
    ]
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "q.sock"), commands)
    assert ours == theirs
    assert ours[0]["return"] == [{"index": 2, "name": "QEMU PS/2 Mouse", "current": True,
                                  "absolute": False}]


def every_key(launch, kind: str, tmp_path) -> dict:
    """What the guest reads for each QKeyCode, with the controller's translation on
    (set 1) and off (set 2), eight keys at a time."""
    import time

    from vmm.input import QKEYCODES

    sock = str(tmp_path / f"{kind}-keys.sock")
    vm = launch(machine_args(extra=["-qmp", f"unix:{sock},server=on,wait=off"]), kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    keys = [k for k in QKEYCODES if k != "unmapped"]
    seen = {}
    for mode, config in (("set 1", None), ("set 2", 0x21)):
        if config is not None:
            vm.command(f"ps2 config {config}")             # translation off
            vm.command("ps2 read 50")
        for at in range(0, len(keys), 8):
            for key in keys[at:at + 8]:
                qmp.execute("send-key", keys=[{"type": "qcode", "data": key}],
                            **{"hold-time": 1})
                time.sleep(0.02)                             # its release comes first
            seen[f"{mode}: {' '.join(keys[at:at + 8])}"] = vm.command("ps2 read 30")["kbd"]
    return seen


@pytest.mark.qemu
def test_every_key_gives_qemus_scancodes_in_both_sets(launch, tmp_path):
    ours = every_key(launch, "kvmkit", tmp_path)
    theirs = every_key(launch, "qemu", tmp_path)
    assert {k: v for k, v in ours.items() if theirs[k] != v} == {}
    assert ours["set 2: shift shift_r alt alt_r ctrl ctrl_r menu esc"][:3] == [0x12, 0xF0, 0x12]
