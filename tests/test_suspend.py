"""ACPI S3 through the monitor, on kvmkit and QEMU 7.2: SUSPEND, query-status
'suspended', system_wakeup and WAKEUP, and QEMU's error when not suspended."""

from __future__ import annotations

import pytest
from guest import QEMU, QmpLine, kvmkit_command, start_with_qmp
from tinyguests import pvh_serial_guest

pytestmark = pytest.mark.kvm

# mov dx, 0x604; mov ax, 0x2400; out dx, ax: PM1a_CNT SLP_TYP=1 (S3) | SLP_EN
ENTER_S3 = b"\x66\xba\x04\x06\x66\xb8\x00\x24\x66\xef"


def wait_event(qmp: QmpLine, name: str, timeout: float = 30.0) -> dict:
    import time
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for event in qmp.events:
            if event["event"] == name:
                qmp.events.remove(event)
                return event
        qmp.execute("query-status")          # reads whatever arrived meanwhile
        time.sleep(0.05)
    raise AssertionError(f"no {name} in {qmp.events}")


def test_s3_suspend_and_system_wakeup(tmp_path, vmm_kind):
    guest = tmp_path / "s3.elf"
    guest.write_bytes(pvh_serial_guest(b"boot\n", None, tail=ENTER_S3))
    console = tmp_path / "console.log"
    argv = (kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm"]) + [
        "-m", "128", "-nodefaults", "-display", "none", "-kernel", str(guest),
        "-serial", f"file:{console}", "-S"]
    sock = str(tmp_path / "qmp.sock")
    proc = start_with_qmp(argv, sock)
    try:
        qmp = QmpLine(sock)
        assert qmp.execute("system_wakeup")["error"] == {
            "class": "GenericError",
            "desc": "Unable to wake up: guest is not in suspended state"}
        qmp.execute("cont")
        wait_event(qmp, "SUSPEND")
        assert qmp.execute("query-status")["return"]["status"] == "suspended"
        assert qmp.execute("cont") == {"return": {}}                # cont does not wake it
        assert qmp.execute("query-status")["return"]["status"] == "suspended"
        assert qmp.execute("system_wakeup") == {"return": {}}
        wait_event(qmp, "WAKEUP")
        # no waking vector in the FACS: the firmware resets, the kernel boots again
        assert wait_event(qmp, "RESET")["data"] == {"guest": True, "reason": "guest-reset"}
        wait_event(qmp, "SUSPEND")
        assert console.read_text().count("boot\n") == 2
        assert qmp.hmp("system_wakeup") == ""
        wait_event(qmp, "WAKEUP")
    finally:
        proc.kill()
        proc.wait()
