"""Guest-driven register fuzzing: the probe guest's `fuzz SEED STEPS SLOT` throws
seeded random reads and writes of every width at a device's BARs, its
configuration space (and an IDE function's legacy ports), while the test asks
the monitor for its status over and over. kvmkit must come through: the process
alive, no Python exception anywhere (a device that raised would print a
traceback and stop its vCPU), the monitor answering throughout, and afterwards a
system_reset that boots the guest again. A guest that its own broken device
killed (random DMA addresses can land on its code) is fine; the VMM is what is
tested. Each run is replayed by its seed: KVMKIT_FUZZ_SEED and KVMKIT_FUZZ_STEPS
change them, and KVMKIT_FUZZ_MINUTES runs seed after seed (from SEED up) for
that long on each device: the long campaign."""

from __future__ import annotations

import os
import threading
import time

import pytest
from guest import GuestError, machine_args
from guest import QmpLine as Qmp

pytestmark = pytest.mark.kvm
SEED = int(os.environ.get("KVMKIT_FUZZ_SEED", "20261207"))
STEPS = int(os.environ.get("KVMKIT_FUZZ_STEPS", "40000"))
MINUTES = float(os.environ.get("KVMKIT_FUZZ_MINUTES", "0"))    # a campaign: seed after seed
SLOT = 5
DEVICES = {
    "virtio-net-pci": ["-netdev", "user,id=u0", "-device",
                       f"virtio-net-pci,netdev=u0,addr={SLOT}"],
    "e1000": ["-netdev", "user,id=u0", "-device", f"e1000,netdev=u0,addr={SLOT}"],
    "rtl8139": ["-netdev", "user,id=u0", "-device", f"rtl8139,netdev=u0,addr={SLOT}"],
    "virtio-blk-pci": ["-drive", "if=none,id=d0,file={disk},format=raw",
                       "-device", f"virtio-blk-pci,drive=d0,addr={SLOT}"],
    "virtio-balloon-pci": ["-device", f"virtio-balloon-pci,addr={SLOT}"],
    "virtio-rng-pci": ["-device", f"virtio-rng-pci,addr={SLOT}"],
    "virtio-serial-pci": ["-device", f"virtio-serial-pci,addr={SLOT}"],
    "piix3-ide": ["-drive", "if=ide,file={disk},format=raw"],
}
TARGETS = {"piix3-ide": "1.1"}
# Valid driver work before each run: the device is live (its queues set up) when the
# fuzzing starts, and, after the reset that ends the run before, it works again.
SEND = ("netsend ffffffffffff 0x88b5 before-fuzz", lambda r: r["sent"] == 60)
ACTIVITY = {
    "virtio-net-pci": SEND, "e1000": SEND, "rtl8139": SEND,
    "virtio-blk-pci": ("blk write 3 before-fuzz", lambda r: r == {"status": 0}),
    "piix3-ide": ("ide write 0 0 3 1 dma before-fuzz 48", lambda r: r["status"] == 0x50),
    "virtio-rng-pci": ("rng 64", lambda r: r["bytes"] == 64),
    "virtio-serial-pci": ("console", lambda r: r["max_ports"] == 31),
    "virtio-balloon-pci": ("balloon", lambda r: r["present"] and r["actual"] == 0),
}


class Pinger:
    """Asks the monitor for its status every 50 ms from a thread; counts answers
    and remembers the longest wait."""

    def __init__(self, sock: str) -> None:
        self.qmp = Qmp(sock)
        self.answers, self.longest, self.failure = 0, 0.0, None
        self.lock = threading.Lock()
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.qmp.sock.settimeout(10)
        while self.running:
            started = time.monotonic()
            try:
                with self.lock:
                    reply = self.qmp.execute("query-status")
            except Exception as e:                 # a hang or a closed monitor
                self.failure = repr(e)
                return
            if "return" not in reply:
                self.failure = repr(reply)
                return
            self.longest = max(self.longest, time.monotonic() - started)
            self.answers += 1
            time.sleep(0.05)

    def stop(self) -> None:
        self.running = False
        self.thread.join(15)


@pytest.mark.parametrize("device", sorted(DEVICES))
def test_kvmkit_survives_a_guest_fuzzing_its_registers(launch, tmp_path, device):
    disk = tmp_path / "disk.raw"
    disk.write_bytes(bytes(1 << 20))
    sock = str(tmp_path / "qmp.sock")
    extra = [arg.replace("{disk}", str(disk)) for arg in DEVICES[device]]
    args = machine_args(extra=[*extra, "-qmp", f"unix:{sock},server=on,wait=off"])
    # Without isa-debug-exit: a guest whose memory its device's DMA wrecked takes an
    # exception, and the probe's handler would end the VM through that port (status
    # 255, as on QEMU); here it halts instead, and the reset brings it back.
    at = args.index("isa-debug-exit")
    vm = launch(args[:at - 1] + args[at + 1:], "kvmkit")
    vm.wait_event("ready", timeout=60)
    pinger = Pinger(sock)
    deadline = time.monotonic() + MINUTES * 60
    started, seed, finished = time.monotonic(), SEED, 0
    while True:                   # one seeded run, or seed after seed for MINUTES
        finished += fuzz_once(vm, pinger, device, seed)
        if time.monotonic() >= deadline:
            break
        seed += 1
    pinger.stop()
    print(f"\n{device}: seeds {SEED}..{seed}, {STEPS} steps each, "
          f"{(seed - SEED + 1) * STEPS} accesses in {(time.monotonic() - started) / 60:.1f} min, "
          f"guest finished {finished} of {seed - SEED + 1} runs, "
          f"{pinger.answers} monitor answers, longest {pinger.longest * 1000:.0f} ms")


def fuzz_once(vm, pinger: Pinger, device: str, seed: int) -> bool:
    """One seeded run, then a reset that must boot the guest again; whether the
    guest lived to print its summary."""
    line, works = ACTIVITY[device]
    answer = vm.command(line)
    assert works(answer), (seed, line, answer)
    vm.send(f"fuzz {seed} {STEPS} {TARGETS.get(device, SLOT)}\n")
    try:
        summary = vm.read_json(timeout=60)
    except GuestError:
        summary = None                          # the guest did not live to tell
    assert vm.proc.poll() is None, (seed, vm.stderr)
    assert pinger.failure is None and pinger.answers > 0, (seed, pinger.failure)
    assert "Traceback" not in vm.stderr and "Exception" not in vm.stderr, (seed, vm.stderr)
    finished = summary is not None and "seed" in summary
    if finished:
        assert summary["steps"] == STEPS and summary["writes"] > 0 and summary["regions"] > 0
    with pinger.lock:                   # (a QMP socket serves one client at a time)
        assert pinger.qmp.execute("system_reset") == {"return": {}}
        # A guest its device killed may have hit a KVM internal error (DMA over its own
        # code); a reset leaves that machine in prelaunch, as QEMU's, until cont.
        if pinger.qmp.execute("query-status")["return"]["status"] == "prelaunch":
            assert pinger.qmp.execute("cont") == {"return": {}}
    vm.wait_event("ready", timeout=60)                 # the machine boots again
    with pinger.lock:
        assert pinger.qmp.execute("query-status")["return"]["status"] == "running"
    return finished


@pytest.mark.parametrize("offset", [-1, 0])
def test_guest_ram_is_fenced_by_guard_pages(offset, tmp_path):
    """What the fuzzing relies on to show that host memory outside guest RAM is never
    touched: the byte just past a RAM region (and just before it) is a PROT_NONE
    page, so a device or ring that ran over would kill the VMM, which every fuzz
    run checks for. The last byte of RAM itself reads fine."""
    import subprocess
    import sys

    program = ("import ctypes; from vmm.memory import GuestMemory; m = GuestMemory(1 << 20); "
               "r = m.regions[0]; base = m.host_address(r); "
               f"ctypes.string_at(base + r.size - 1, 1); print('inside', flush=True); "
               f"ctypes.string_at(base + ({offset} if {offset} < 0 else r.size), 1); "
               "print('outside')")
    result = subprocess.run([sys.executable, "-c", program], capture_output=True, text=True,
                            timeout=30, cwd=tmp_path)      # (the installed package)
    assert result.stdout == "inside\n" and result.returncode == -11, result
