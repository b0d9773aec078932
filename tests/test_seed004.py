"""Seed 004: the command line OpenStack Nova (through libvirt) gives QEMU for every
instance, run as written on kvmkit and, with the three edits QEMU 7.2 needs, on
QEMU 7.2; the probe guest then shows, types and points the same on both.

Adapted as the issue allows: paths and fds are the test's own, the machine is
pc-i440fx-7.2 (not Ubuntu's trusty), the first serial port is stdio (the test
drives the probe there) and the VNC display is a free one. QEMU 7.2 also needs
-overcommit for -realtime, no +osxsave, and no vhost (this host has no vhost-net,
which QEMU 7.2 refuses; kvmkit warns and keeps the tap in user space)."""

from __future__ import annotations

import os
import re
import subprocess
import time

import pytest
from guest import QEMU, QmpLine, Vmm, free_vnc_display, kvmkit_command, probe_elf
from test_display import read_png, screen_text, write_screen

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

CPU = ("SandyBridge,+erms,+smep,+fsgsbase,+pdpe1gb,+rdrand,+f16c,+osxsave,+dca,+pcid,+pdcm,"
       "+xtpr,+tm2,+est,+smx,+vmx,+ds_cpl,+monitor,+dtes64,+pbe,+tm,+ht,+ss,+acpi,+ds,+vme")
UUID = "4a9b6a4c-3a6f-4b5e-9e49-0e7b4b8d7c11"


def seed_command_line(tmp, tap_fd: int, display: int) -> list[str]:
    return [
        "-name", "instance-00000001", "-S", "-machine", "pc-i440fx-7.2,accel=kvm,usb=off",
        "-cpu", CPU, "-m", "2048", "-realtime", "mlock=off",
        "-smp", "1,sockets=1,cores=1,threads=1", "-uuid", UUID,
        "-smbios", "type=1,manufacturer=OpenStack Foundation,product=OpenStack Nova,"
                   f"version=2014.1,serial=44454c4c-3000-1058-8031-b2c04f4d3532,uuid={UUID}",
        "-no-user-config", "-nodefaults",
        "-chardev", f"socket,id=charmonitor,path={tmp}/monitor.sock,server=on,wait=off",
        "-mon", "chardev=charmonitor,id=monitor,mode=control",
        "-rtc", "base=utc,driftfix=slew", "-global", "kvm-pit.lost_tick_policy=discard",
        "-no-hpet", "-no-shutdown", "-boot", "strict=on",
        "-device", "piix3-usb-uhci,id=usb,bus=pci.0,addr=0x1.0x2",
        "-drive", f"file={tmp}/disk,if=none,id=drive-virtio-disk0,format=qcow2,cache=none",
        "-device", "virtio-blk-pci,scsi=off,bus=pci.0,addr=0x4,drive=drive-virtio-disk0,"
                   "id=virtio-disk0,bootindex=1",
        "-netdev", f"tap,fd={tap_fd},id=hostnet0,vhost=on,vhostfd={tap_fd + 1000}",
        "-device", "virtio-net-pci,netdev=hostnet0,id=net0,mac=fa:16:3e:2d:4e:5f,bus=pci.0,"
                   "addr=0x3",
        "-chardev", "stdio,id=charserial0", "-device", "isa-serial,chardev=charserial0,id=serial0",
        "-chardev", "pty,id=charserial1", "-device", "isa-serial,chardev=charserial1,id=serial1",
        "-device", "usb-tablet,id=input0", "-vnc", f"127.0.0.1:{display}", "-k", "en-us",
        "-device", "cirrus-vga,id=video0,bus=pci.0,addr=0x2",
        "-device", "virtio-balloon-pci,id=balloon0,bus=pci.0,addr=0x5",
        "-kernel", probe_elf()]


def for_qemu(argv: list[str], tap_fd: int) -> list[str]:
    """The three edits QEMU 7.2 needs."""
    out = []
    for arg in argv:
        arg = arg.replace(",+osxsave", "").replace(f",vhost=on,vhostfd={tap_fd + 1000}", "")
        out.append("-overcommit" if arg == "-realtime" else
                   "mem-lock=off" if arg == "mlock=off" else arg)
    return out


def run_instance(kind: str, tmp, vnc_connect) -> dict:
    from vmm.net.tap import open_tap

    tmp.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", f"{tmp}/disk", "64M"], check=True)
    tap_fd, _name = open_tap("", vnet_hdr=True)
    vhost_fd = os.open("/dev/null", os.O_RDWR)          # libvirt's vhost-net fd stands here
    os.dup2(vhost_fd, tap_fd + 1000)
    display = free_vnc_display()
    argv = seed_command_line(tmp, tap_fd, display)
    argv = kvmkit_command() + argv if kind == "kvmkit" else \
        [QEMU] + for_qemu(argv, tap_fd)
    vm = Vmm(argv, cwd=str(tmp), pass_fds=(tap_fd, tap_fd + 1000))
    seen: dict = {}
    try:
        deadline = time.monotonic() + 30
        while not os.path.exists(f"{tmp}/monitor.sock"):
            assert vm.proc.poll() is None and time.monotonic() < deadline, vm.stderr
            time.sleep(0.05)
        qmp = QmpLine(f"{tmp}/monitor.sock")
        assert qmp.execute("query-status")["return"]["status"] == "prelaunch"
        assert qmp.execute("cont") == {"return": {}}
        vm.wait_event("ready", timeout=90)
        # the VGA text screen, through screendump and through a VNC client
        write_screen(vm)
        assert qmp.execute("screendump", filename=f"{tmp}/screen.png", format="png") == \
            {"return": {}}
        seen["screendump"] = read_png(f"{tmp}/screen.png")
        client = vnc_connect(f"127.0.0.1::{5900 + display}")
        try:
            client.refreshScreen()
            seen["vnc screen"] = client.screen.convert("RGB").tobytes()
            vm.command("ps2 read 50")
            client.keyPress("k")
            time.sleep(0.3)
            seen["vnc keys"] = vm.command("ps2 read 300")
            seen["info vnc"] = re.sub(r"127\.0\.0\.1:\d+", "127.0.0.1:PORT",
                                      qmp.hmp("info vnc"))
        finally:
            client.disconnect()
        qmp.hmp("sendkey ctrl-alt-f2 20")
        seen["sendkey"] = vm.command("ps2 read 300")
        # the tablet, read over USB by the probe's UHCI driver
        seen["usb"] = vm.command("usb scan", timeout=60)
        qmp.execute("input-send-event", events=[
            {"type": "abs", "data": {"axis": "x", "value": 4096}},
            {"type": "abs", "data": {"axis": "y", "value": 8192}}])
        seen["tablet"] = vm.command("usb poll 1 300")
        seen["info usb"] = qmp.hmp("info usb")
        seen["info mice"] = qmp.hmp("info mice")
        seen["stderr"] = vm.stderr
    finally:
        vm.close()
        os.close(tap_fd)
        os.close(tap_fd + 1000)
        os.close(vhost_fd)
    return seen


def test_seed_004_runs_as_written_and_behaves_as_qemu(tmp_path, vnc_connect):
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun for the instance's tap")
    ours = run_instance("kvmkit", tmp_path / "kvmkit", vnc_connect)
    theirs = run_instance("qemu", tmp_path / "qemu", vnc_connect)
    assert "'-realtime mlock=...' is deprecated" in ours["stderr"]
    assert "vhost-net is not supported by kvmkit" in ours["stderr"]
    for key in ("screendump", "vnc screen", "vnc keys", "info vnc", "sendkey", "usb",
                "tablet", "info usb", "info mice"):
        assert ours[key] == theirs[key], key
    assert screen_text(720, ours["screendump"][2])[3][10:24] == "yellow on blue"
    assert ours["vnc screen"] == ours["screendump"][2]
    assert ours["vnc keys"]["kbd"] == [0x25, 0xA5]                     # k, made and broken
    assert ours["sendkey"]["kbd"] == [0x1D, 0x38, 0x3C, 0xBC, 0xB8, 0x9D]
    assert ours["tablet"]["reports"] == [[0, 0x00, 0x10, 0x00, 0x20, 0]]
    assert "Product QEMU USB Tablet, ID: input0" in ours["info usb"]
