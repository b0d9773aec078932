"""virtio-serial-pci with a virtconsole on a chardev, driven by the probe guest,
on QEMU 7.2 and kvmkit: what the guest writes reaches the chardev's socket, what
the host sends there reaches the guest."""

from __future__ import annotations

import socket
import time

import pytest
from guest import machine_args

pytestmark = pytest.mark.kvm


def test_console_port_both_ways(launch, tmp_path, vmm_kind):
    path = str(tmp_path / "console.sock")
    vm = launch(machine_args(extra=[
        "-chardev", f"socket,id=c0,path={path},server=on,wait=off",
        "-device", "virtio-serial-pci,id=vs0", "-device", "virtconsole,chardev=c0,id=con0"]),
        vmm_kind)
    vm.wait_event("ready", timeout=60)
    host = socket.socket(socket.AF_UNIX)
    host.connect(path)
    host.settimeout(5)
    time.sleep(0.3)                      # the VMM has taken the connection
    assert vm.command("console")["max_ports"] == 31
    assert vm.command("console write hello-host") == {"written": 11}
    assert host.recv(100) == b"hello-host\n"
    host.sendall(b"hello-guest")
    assert vm.command("console read 5000") == {"text": "hello-guest"}
    host.close()
