"""-vnc: a standard VNC client library (vncdotool) reads the guest's screen and types
and points into it, on kvmkit and on QEMU 7.2; password authentication; the
monitor's VNC commands and events."""

from __future__ import annotations

import json
import socket
import struct
import time

import pytest
from guest import QmpLine, free_vnc_display, machine_args
from test_display import screen_text, write_screen

from vmm import des

pytestmark = pytest.mark.kvm


def session(launch, vnc_connect, kind: str, tmp_path, extra=()) -> dict:
    """The probe's text screen as a VNC client sees it, and what the guest reads of
    keys typed and a mouse moved through the client."""
    display = free_vnc_display()
    sock = str(tmp_path / f"{kind}-vnc.sock")
    vm = launch(machine_args(extra=["-vga", "std", "-vnc", f"127.0.0.1:{display}",
                                    "-qmp", f"unix:{sock},server=on,wait=off", *extra]), kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    write_screen(vm)
    vm.command("ps2 cmd 0xa8")
    vm.command("ps2 aux 0xf4")
    vm.command("ps2 read 100")
    client = vnc_connect(f"127.0.0.1::{5900 + display}")
    try:
        client.refreshScreen()
        seen = {"size": client.screen.size, "pixels": client.screen.convert("RGB").tobytes()}
        client.keyPress("a")
        client.keyPress("B")
        client.keyPress("enter")
        time.sleep(0.3)
        seen["keys"] = vm.command("ps2 read 300")
        client.mouseMove(100, 50)
        client.mouseMove(110, 45)
        client.mousePress(1)
        time.sleep(0.3)
        seen["mouse"] = vm.command("ps2 read 300")
        assert vm.command("vga text 5 0 7 after an update")["chars"] == 15
        client.refreshScreen(incremental=True)
        seen["updated"] = client.screen.convert("RGB").tobytes()
    finally:
        client.disconnect()
    time.sleep(0.3)
    qmp.execute("query-status")
    seen["events"] = [(e["event"], sorted(e["data"]["client"])) for e in qmp.events]
    return seen


@pytest.mark.qemu
def test_a_vnc_client_sees_and_drives_the_guest_as_on_qemu(launch, vnc_connect, tmp_path):
    ours = session(launch, vnc_connect, "kvmkit", tmp_path)
    theirs = session(launch, vnc_connect, "qemu", tmp_path)
    assert ours == theirs
    assert ours["size"] == (720, 400)
    lines = screen_text(720, ours["updated"])
    assert lines[3][10:24] == "yellow on blue" and lines[5].startswith("after an update")
    # "B" with no shift: caps lock goes first, as QEMU keeps the lock keys in step
    assert ours["keys"]["kbd"] == [0x1E, 0x9E, 0x3A, 0xBA, 0x30, 0xB0, 0x1C, 0x9C]
    assert ours["mouse"]["aux"] == [0x08, 10, 5, 0x09, 0, 0, 0x08, 0, 0]   # move, click
    assert [e for e, _ in ours["events"]] == ["VNC_CONNECTED", "VNC_INITIALIZED",
                                               "VNC_DISCONNECTED"]


def rfb_password_login(port: int, password: str) -> int:
    """A VNC 3.8 login with password authentication; the server's SecurityResult."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
        assert s.recv(12) == b"RFB 003.008\n"
        s.sendall(b"RFB 003.008\n")
        assert s.recv(2) == b"\x01\x02"                 # one type: VNC authentication
        s.sendall(b"\x02")
        challenge = b""
        while len(challenge) < 16:
            challenge += s.recv(16 - len(challenge))
        s.sendall(des.vnc_response(password, challenge))
        return struct.unpack(">I", s.recv(4))[0]


@pytest.mark.qemu
@pytest.mark.parametrize("kind", ["kvmkit", "qemu"])
def test_vnc_password_authentication(launch, tmp_path, kind):
    """A client answering the DES challenge with the password set over QMP gets in
    (QEMU's server agreeing proves kvmkit's DES); a wrong or expired one does not."""
    display = free_vnc_display()
    sock = str(tmp_path / "vnc.sock")
    vm = launch(machine_args(extra=["-vnc", f"127.0.0.1:{display},password=on",
                                    "-qmp", f"unix:{sock},server=on,wait=off"]), kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    port = 5900 + display
    assert rfb_password_login(port, "secret") == 1            # no password set yet
    assert qmp.execute("set_password", protocol="vnc", password="secret") == {"return": {}}
    assert rfb_password_login(port, "secret") == 0
    assert rfb_password_login(port, "wrong") == 1
    assert qmp.execute("expire_password", protocol="vnc", time="now") == {"return": {}}
    assert rfb_password_login(port, "secret") == 1


@pytest.mark.qemu
@pytest.mark.parametrize("option", [[], ["-vnc", "127.0.0.1:{d},password=on"],
                                    ["-vnc", "unix:{tmp}/v.sock"], ["-vnc", "none"],
                                    ["-vnc", ":{d}"]])
def test_vnc_monitor_commands_answer_as_qemu(tmp_path, option):
    from guest import QEMU, kvmkit_command, qmp_answers

    ports = []

    def args(name: str) -> list[str]:                 # each VMM on a port of its own
        ports.append(str(5900 + free_vnc_display()))
        return [o.format(d=int(ports[-1]) - 5900, tmp=tmp_path / name) for o in option]
    (tmp_path / "k").mkdir()
    (tmp_path / "q").mkdir()
    commands = [
        ("query-vnc", {}), ("query-vnc-servers", {}),
        ("human-monitor-command", {"command-line": "info vnc"}),
        ("set_password", {"protocol": "vnc", "password": "secret"}),
        ("expire_password", {"protocol": "vnc", "time": "+60"}),
        ("change-vnc-password", {"password": "abc"}),
        ("set_password", {"protocol": "vnc", "password": "x", "connected": "fail"}),
        ("human-monitor-command", {"command-line": "set_password vnc foo"}),
        ("human-monitor-command", {"command-line": "expire_password vnc now"})]
    ours = qmp_answers(kvmkit_command() + args("k"), str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm"] + args("q"), str(tmp_path / "q.sock"),
                         commands)
    mine = json.dumps(ours).replace(ports[0], "PORT").replace(f"{tmp_path}/k", "DIR")
    qemu = json.dumps(theirs).replace(ports[1], "PORT").replace(f"{tmp_path}/q", "DIR")
    assert mine.split("}, {") == qemu.split("}, {")


def test_keysyms_cover_the_us_layout():
    from vmm.vnc import KEYSYMS

    assert {KEYSYMS[ord(c)] for c in "aA"} == {"a"}
    assert KEYSYMS[ord("!")] == "1" and KEYSYMS[ord("?")] == "slash"
    assert KEYSYMS[0xFF0D] == "ret" and KEYSYMS[0xFFC9] == "f12"
