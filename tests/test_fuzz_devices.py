"""Guest-driven register fuzzing: the probe guest's `fuzz SEED STEPS SLOT` throws
seeded random reads and writes of every width at a device's BARs, its
configuration space (and an IDE function's legacy ports), while the test asks
the monitor for its status over and over. kvmkit must come through: the process
alive, no Python exception anywhere (a device that raised would print a
traceback and stop its vCPU), the monitor answering throughout, and afterwards a
system_reset that boots the guest again. A guest that its own broken device
killed (random DMA addresses can land on its code) is fine; the VMM is what is
tested. Each run is replayed by its seed: KVMKIT_FUZZ_SEED and KVMKIT_FUZZ_STEPS
change them (a long campaign: a large STEPS)."""

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


class Pinger:
    """Asks the monitor for its status every 50 ms from a thread; counts answers
    and remembers the longest wait."""

    def __init__(self, sock: str) -> None:
        self.qmp = Qmp(sock)
        self.answers, self.longest, self.failure = 0, 0.0, None
        self.running = True
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        self.qmp.sock.settimeout(10)
        while self.running:
            started = time.monotonic()
            try:
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
    vm = launch(machine_args(extra=[*extra, "-qmp", f"unix:{sock},server=on,wait=off"]),
                "kvmkit")
    vm.wait_event("ready", timeout=60)
    pinger = Pinger(sock)
    vm.send(f"fuzz {SEED} {STEPS} {TARGETS.get(device, SLOT)}\n")
    try:
        summary = vm.read_json(timeout=300)
    except GuestError:
        summary = None                          # the guest did not live to tell
    pinger.stop()
    assert vm.proc.poll() is None, vm.stderr
    assert pinger.failure is None and pinger.answers > 0, pinger.failure
    assert "Traceback" not in vm.stderr and "Exception" not in vm.stderr, vm.stderr
    if summary is not None and "seed" in summary:
        assert summary["steps"] == STEPS and summary["writes"] > 0 and summary["regions"] > 0
    qmp = pinger.qmp                          # (a QMP socket serves one client at a time)
    assert qmp.execute("system_reset") == {"return": {}}
    vm.wait_event("ready", timeout=60)                 # the machine boots again
    assert qmp.execute("query-status")["return"]["status"] == "running"
    print(f"\n{device}: seed {SEED}, {STEPS} steps, guest "
          f"{'finished' if summary and 'seed' in summary else 'died'}, "
          f"{pinger.answers} monitor answers, longest {pinger.longest * 1000:.0f} ms")
