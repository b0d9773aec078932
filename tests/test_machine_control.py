"""Run control on a live machine, from the loop thread, as the monitor will drive it."""

from __future__ import annotations

import asyncio
import time

import pytest
from guest import probe_elf

from vmm.config import parse_args
from vmm.machine import Machine, RunStateError

pytestmark = pytest.mark.kvm


async def wait_for_text(path, text, timeout=30.0, after=0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        data = path.read_bytes()[after:] if path.exists() else b""
        if text in data:
            return
        await asyncio.sleep(0.05)
    raise AssertionError(f"{text!r} not seen in {path.read_bytes()!r}")


async def wait_runstate(machine, state, timeout=20.0):
    deadline = time.monotonic() + timeout
    while machine.runstate != state and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    assert machine.runstate == state


async def run_until_ready(machine, console) -> None:
    """Starts the machine on the running loop and waits for the probe's prompt."""
    machine.attach(asyncio.get_running_loop())
    machine.cont()
    await wait_for_text(console, b'"event": "ready"')


def make_machine(tmp_path, *extra):
    console = tmp_path / "console.log"
    cfg = parse_args(["-m", "128", "-smp", "2", "-nodefaults", "-kernel", probe_elf(),
                      "-serial", f"file:{console}", "-S", *extra])
    machine = Machine(cfg)
    events = []
    machine.listeners.append(lambda name, data: events.append((name, data)))
    return machine, events, console


def test_stop_cont_reset_powerdown_quit(tmp_path):
    machine, events, console = make_machine(tmp_path)

    async def scenario():
        machine.attach(asyncio.get_running_loop())
        assert machine.runstate == "prelaunch"
        assert all(tid > 0 for tid in machine.vcpu_thread_ids())
        assert len(set(machine.vcpu_thread_ids())) == 2
        machine.stop()                          # no event in prelaunch
        assert (machine.runstate, events) == ("prelaunch", [])
        machine.cont()
        assert (machine.runstate, events) == ("running", [("RESUME", None)])
        await wait_for_text(console, b'"event": "ready", "cpus": 2')
        machine.cont()                          # already running: nothing
        machine.stop()
        assert machine.runstate == "paused"
        assert all(r.parked for r in machine.vcpus)
        size = console.stat().st_size
        machine.system_reset()
        assert machine.runstate == "prelaunch"  # a reset while stopped, as QEMU's
        assert events[-1] == ("RESET", {"guest": False, "reason": "host-qmp-system-reset"})
        await asyncio.sleep(0.3)
        assert console.stat().st_size == size   # nothing ran while stopped
        machine.cont()
        await wait_for_text(console, b'"event": "ready"', after=size)
        size = console.stat().st_size
        machine.system_reset()                  # while running: it keeps running
        assert machine.runstate == "running"
        await wait_for_text(console, b'"event": "ready"', after=size)
        machine.system_powerdown()
        assert events[-1] == ("POWERDOWN", None)
        assert machine.pm.pm1_sts & 0x100
        machine.quit()
        assert events[-1] == ("SHUTDOWN", {"guest": False, "reason": "host-qmp-quit"})
        return await asyncio.wait_for(machine.exit_status, 5)

    try:
        assert asyncio.run(scenario()) == 0
        assert [name for name, _ in events] == ["RESUME", "STOP", "RESET", "RESUME", "RESET",
                                                "POWERDOWN", "SHUTDOWN"]
    finally:
        machine.close()


def test_emulation_failure_enters_internal_error(tmp_path):
    machine, events, console = make_machine(tmp_path)

    async def scenario():
        await run_until_ready(machine, console)
        machine.devices.find_type("isa-serial").obj.receive(b"crash\n")
        await wait_runstate(machine, "internal-error")
        assert events[-1] == ("STOP", None)
        with pytest.raises(RunStateError, match="Resetting the Virtual Machine is required"):
            machine.cont()
        machine.system_reset()
        assert machine.runstate == "prelaunch"
        size = console.stat().st_size
        machine.cont()
        await wait_for_text(console, b'"event": "ready"', after=size)

    try:
        asyncio.run(scenario())
    finally:
        machine.close()


def test_guest_power_off_with_no_shutdown_stops_in_shutdown_state(tmp_path):
    machine, events, console = make_machine(tmp_path, "-no-shutdown")

    async def scenario():
        await run_until_ready(machine, console)
        machine.devices.find_type("isa-serial").obj.receive(b"outw 0x604 0x2000\n")
        await wait_runstate(machine, "shutdown")
        assert events[-2:] == [("SHUTDOWN", {"guest": True, "reason": "guest-shutdown"}),
                               ("STOP", None)]
        assert not machine.exit_status.done()

    try:
        asyncio.run(scenario())
    finally:
        machine.close()


def test_virtio_doorbells_arrive_through_ioeventfds(tmp_path):
    """The guest's queue notifications reach the balloon as eventfd signals read on
    the loop, not as vCPU exits (KVM_IOEVENTFD on the notify addresses)."""
    machine, events, console = make_machine(tmp_path, "-device", "virtio-balloon-pci")
    signals = []
    original = machine.ioevents._signalled
    machine.ioevents._signalled = lambda fd, callback: (signals.append(fd),
                                                        original(fd, callback))
    notify_exits = []
    transport = machine.pci.find(2, 0)
    bar4 = transport.bars[4].device
    original_write = bar4.bus_write

    def bus_write(offset, size, value):
        if offset >= 0x3000:                 # the notify region
            notify_exits.append(offset)
        original_write(offset, size, value)
    bar4.bus_write = bus_write

    async def scenario():
        await run_until_ready(machine, console)
        assert [len(transport._doorbells[bar]) for bar in (0, 4)] == [3, 3]
        machine.balloon.set_target(100 << 20)
        deadline = time.monotonic() + 20
        while machine.balloon.actual != 28 << 8 and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert machine.balloon.actual == 28 << 8 and machine.balloon.discarded_pages == 28 << 8
        machine.quit()

    try:
        asyncio.run(scenario())
    finally:
        machine.close()
    assert signals, "no doorbell came through an eventfd"
    assert not notify_exits, "a doorbell took the vCPU exit path"


def test_reset_puts_msrs_back_as_qemu(tmp_path):
    """What a guest left in PAT, MISC_ENABLE, the syscall MSRs or the machine-check
    banks does not survive a reset: QEMU writes its reset values back."""
    machine, events, console = make_machine(tmp_path)
    try:
        vcpu = machine.vcpus[0].vcpu
        changed = {0x277: 0x0606060606060606, 0x1A0: 0x0, 0xC0000082: 0xFFFFFFFF81000000,
                   0x174: 0x10, 0x400: 0x0}
        assert vcpu.set_msrs(changed) == len(changed)
        assert vcpu.get_msrs(list(changed)) == changed
        machine.system_reset()
        assert vcpu.get_msrs(list(changed)) == {
            0x277: 0x0007040600070406, 0x1A0: 0x1, 0xC0000082: 0, 0x174: 0,
            0x400: 0xFFFFFFFFFFFFFFFF}                    # MC0_CTL: every error enabled
        mcg_cap = vcpu.get_msrs([0x179])[0x179]
        assert mcg_cap & 0xFF == 10 and mcg_cap & (1 << 8)    # 10 banks and MCG_CTL_P
    finally:
        machine.close()
