"""isa-debugcon on the probe guest, on kvmkit and on QEMU 7.2: bytes written to port
0xe9 reach the chardev, a read returns the readback value."""

from __future__ import annotations

import time

import pytest
from guest import machine_args

pytestmark = pytest.mark.kvm


@pytest.mark.parametrize("device,port,readback", [
    ("isa-debugcon,chardev=dbg,id=dc", 0xE9, 0xE9),
    ("isa-debugcon,chardev=dbg,iobase=0x6f0,readback=0x42", 0x6F0, 0x42)])
def test_bytes_reach_the_chardev_and_reads_return_readback(launch, vmm_kind, tmp_path,
                                                           device, port, readback):
    log = tmp_path / f"{vmm_kind}-debugcon.log"
    vm = launch(machine_args(extra=["-chardev", f"file,id=dbg,path={log}",
                                    "-device", device]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    for byte in b"ok\n":
        vm.command(f"outb {port:#x} {byte:#x}")
    assert int(vm.command(f"inb {port:#x}")["value"], 16) == readback
    deadline = time.monotonic() + 5
    while log.read_bytes() != b"ok\n" and time.monotonic() < deadline:
        time.sleep(0.05)
    assert log.read_bytes() == b"ok\n"
