"""-nographic: serial and monitor multiplexed on the terminal, Ctrl-a keys as QEMU's."""

from __future__ import annotations

import time

import pexpect
import pytest
from guest import QEMU, kvmkit_command, probe_elf

pytestmark = pytest.mark.kvm

NET_NONE: list[str] = []
STEPS = [("\x01c", "switch to the monitor"), ("info status\r", "a monitor command"),
         ("\x01c", "back to the serial console"), ("echo hi\r", "the guest answers"),
         ("\x01h", "the key help"), ("\x01x", "exit")]


def transcript(argv: list[str]) -> tuple[list[bytes], int]:
    child = pexpect.spawn(argv[0], argv[1:] + ["-m", "128", "-nographic", *NET_NONE,
                                               "-kernel", probe_elf()], timeout=30)
    child.expect("ready")
    child.expect_exact("}\r\n")
    outputs = []
    for keys, _what in STEPS:
        child.send(keys)
        time.sleep(0.8)
        try:
            outputs.append(child.read_nonblocking(65536, timeout=2))
        except (pexpect.TIMEOUT, pexpect.EOF):
            outputs.append(b"")
    child.expect(pexpect.EOF)
    child.close()
    return outputs, child.exitstatus


def test_nographic_matches_qemu(vmm_kind):
    # QEMU's -nographic also adds a default NIC; -net none keeps the machines alike
    argv = kvmkit_command() if vmm_kind == "kvmkit" else [QEMU, "-accel", "kvm", "-net", "none"]
    outputs, status = transcript(argv)
    assert status == 0
    assert outputs[0] == (b"QEMU 7.2.22 monitor - type 'help' for more information\r\r\n"
                          b"(qemu) ")
    assert outputs[1].endswith(b"\r\r\nVM status: running\r\r\n(qemu) ")
    assert outputs[2] == b"\r\r\n"
    assert outputs[3] == b'{"echo": "hi"}\r\n'
    assert outputs[4].startswith(b"\r\n\rC-a h    print this help\r\n\rC-a x    exit emulator")
    assert outputs[5] == b"QEMU: Terminated\r\n\r"
