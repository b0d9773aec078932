"""USB input behind the PIIX3's UHCI: the probe's own UHCI driver enumerates
usb-tablet and usb-kbd and reads their HID reports, on kvmkit and on QEMU 7.2."""

from __future__ import annotations

import time

import pytest
from guest import QmpLine, machine_args

pytestmark = pytest.mark.kvm


def usb_session(launch, kind: str, tmp_path, device: str) -> dict:
    sock = str(tmp_path / f"{kind}-{device}.sock")
    vm = launch(machine_args(extra=["-device", "piix3-usb-uhci,id=usb", "-device",
                                    f"{device},id=d0", "-qmp",
                                    f"unix:{sock},server=on,wait=off"]), kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    seen = {"scan": vm.command("usb scan", timeout=60), "idle": vm.command("usb poll 1 100")}
    if device == "usb-tablet":
        qmp.execute("input-send-event", events=[
            {"type": "abs", "data": {"axis": "x", "value": 1000}},
            {"type": "abs", "data": {"axis": "y", "value": 20000}}])
        seen["moved"] = vm.command("usb poll 1 300")
        qmp.execute("input-send-event", events=[
            {"type": "btn", "data": {"button": "left", "down": True}}])
        seen["pressed"] = vm.command("usb poll 1 300")
        seen["mice"] = qmp.execute("query-mice")["return"]     # the tablet, once read
    else:
        qmp.execute("send-key", keys=[{"type": "qcode", "data": "shift"},
                                      {"type": "qcode", "data": "a"}], **{"hold-time": 100})
        seen["typed"] = vm.command("usb poll 1 400")
        seen["ps2"] = vm.command("ps2 read 100")                # the USB keyboard took it
    seen["info usb"] = qmp.hmp("info usb")
    return seen


@pytest.mark.qemu
@pytest.mark.parametrize("device", ["usb-tablet", "usb-kbd"])
def test_guest_enumerates_and_reads_usb_hid_as_on_qemu(launch, tmp_path, device):
    ours = usb_session(launch, "kvmkit", tmp_path, device)
    theirs = usb_session(launch, "qemu", tmp_path, device)
    assert ours == theirs
    found = ours["scan"]["devices"][0]
    assert found["vendor"] == 0x0627 and found["address"] == 1
    if device == "usb-tablet":
        assert found["name"] == "QEMU USB Tablet"
        assert ours["moved"]["reports"] == [[0, 0xE8, 0x03, 0x20, 0x4E, 0]]   # x 1000, y 20000
        assert ours["mice"][-1] == {"index": 3, "name": "QEMU HID Tablet", "current": True,
                                    "absolute": True}
    else:
        assert found["protocol"] == 1                                       # boot keyboard
        # a report per key event: shift, a, a up, shift up
        assert ours["typed"]["reports"] == [[2, 0, 0, 0, 0, 0, 0, 0], [2, 0, 4, 0, 0, 0, 0, 0],
                                            [2, 0, 0, 0, 0, 0, 0, 0], [0] * 8]
        assert ours["ps2"] == {"kbd": [], "aux": []}


@pytest.mark.qemu
def test_usb_monitor_texts_are_qemus(tmp_path):
    from guest import QEMU, kvmkit_command, qmp_answers

    devices = ["-device", "piix3-usb-uhci,id=usb", "-device", "usb-tablet,id=t0",
               "-device", "usb-kbd,port=2", "-device", "VGA,id=v0"]
    commands = [("human-monitor-command", {"command-line": "info usb"}),
                ("human-monitor-command", {"command-line": "info mice"}),
                ("query-mice", {}),
                ("input-send-event", {"device": "t0", "events": []}),
                ("device-list-properties", {"typename": "usb-tablet"}),
                ("device-list-properties", {"typename": "usb-kbd"})]
    ours = qmp_answers(kvmkit_command() + devices, str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm"] + devices, str(tmp_path / "q.sock"), commands)
    assert ours[:4] == theirs[:4]
    for mine, qemu in zip(ours[4:], theirs[4:]):
        assert sorted(mine["return"], key=lambda p: p["name"]) == \
            sorted(qemu["return"], key=lambda p: p["name"])
    assert ours[0]["return"] == ("  Device 0.0, Port 1, Speed 12 Mb/s, Product QEMU USB Tablet,"
                                 " ID: t0\r\n  Device 0.0, Port 2, Speed 12 Mb/s, Product QEMU "
                                 "USB Keyboard\r\n")


def test_a_third_device_finds_no_free_port(tmp_path):
    from guest import kvmkit_command, qmp_answers

    devices = ["-device", "piix3-usb-uhci,id=usb", "-device", "usb-tablet",
               "-device", "usb-kbd"]
    reply = qmp_answers(kvmkit_command() + devices, str(tmp_path / "k.sock"),
                        [("device_add", {"driver": "usb-mouse", "id": "m0"})])[0]
    assert reply["error"]["class"] == "GenericError" and "no free USB ports" in \
        reply["error"]["desc"]


@pytest.mark.qemu
def test_usb_devices_hotplug_and_unplug_as_on_qemu(launch, tmp_path):
    def session(kind: str) -> list:
        sock = str(tmp_path / f"{kind}-hp.sock")
        vm = launch(machine_args(extra=["-device", "piix3-usb-uhci,id=usb", "-qmp",
                                        f"unix:{sock},server=on,wait=off"]), kind)
        vm.wait_event("ready", timeout=60)
        qmp = QmpLine(sock)
        seen = [vm.command("usb scan", timeout=60),
                qmp.execute("device_add", driver="usb-tablet", id="t1"),
                vm.command("usb scan", timeout=60),
                qmp.execute("device_del", id="t1")]
        seen.append(vm.command("usb scan", timeout=60))
        deadline = time.monotonic() + 10             # QEMU's event comes a moment later
        while not qmp.events and time.monotonic() < deadline:
            time.sleep(0.1)
            qmp.execute("query-status")
        seen.append([e["data"] for e in qmp.events if e["event"] == "DEVICE_DELETED"])
        return seen

    ours, theirs = session("kvmkit"), session("qemu")
    assert ours == theirs
    assert ours[0] == {"devices": []} and ours[2]["devices"][0]["name"] == "QEMU USB Tablet"
    assert ours[4] == {"devices": []}
    assert ours[5] == [{"device": "t1", "path": "/machine/peripheral/t1"}]
