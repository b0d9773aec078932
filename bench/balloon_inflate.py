"""Inflating and deflating the balloon by 800 MiB: kvmkit vs QEMU 7.2, same guest.

    .venv/bin/python bench/balloon_inflate.py [--runs 3]

A 1024 MiB probe guest touches 800 MiB; the monitor sets the balloon to
224 MiB (QMP `balloon`), and the clock runs until the guest reports the last
page handed over; then back to 1024 MiB. Also reports the process RSS before
and after inflating. Prints medians per VMM and the kvmkit/QEMU ratios.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time

from vmms import QmpProbe, probe
from vmms import vmms as all_vmms

MiB = 1 << 20


def rss_mib(pid: int) -> int:
    for line in open(f"/proc/{pid}/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) // 1024
    return 0


class Guest(QmpProbe):
    def __init__(self, argv: list[str], qmp_path: str) -> None:
        super().__init__(argv + ["-m", "1024", "-nodefaults", "-display", "none",
                                 "-serial", "stdio", "-device", "virtio-balloon-pci,id=balloon0",
                                 "-kernel", probe()], qmp_path)
        self.wait_for('"ready"')

    def balloon(self, mib: int) -> float:
        start = time.perf_counter()
        self.execute("balloon", value=mib * MiB)
        self.wait_for('"event": "balloon"')
        return time.perf_counter() - start


def run_once(argv: list[str]) -> dict:
    with tempfile.TemporaryDirectory() as tmp:
        guest = Guest(argv, os.path.join(tmp, "qmp.sock"))
        try:
            guest.command("touch 800 1")
            before = rss_mib(guest.proc.pid)
            inflate = guest.balloon(224)
            after = rss_mib(guest.proc.pid)
            deflate = guest.balloon(1024)
            return {"inflate": inflate, "deflate": deflate, "rss_before": before,
                    "rss_after": after}
        finally:
            guest.close()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    args = parser.parse_args()
    vmms = all_vmms()
    results = {name: [run_once(argv) for _ in range(args.runs)] for name, argv in vmms.items()}

    def median(name: str, key: str) -> float:
        return statistics.median(r[key] for r in results[name])

    print(f"balloon 1024 -> 224 -> 1024 MiB after touching 800 MiB, {args.runs} runs each")
    print(f"{'vmm':<8} {'inflate s':>10} {'deflate s':>10} {'RSS before':>11} {'RSS after':>10}")
    for name in results:
        print(f"{name:<8} {median(name, 'inflate'):>10.3f} {median(name, 'deflate'):>10.3f} "
              f"{median(name, 'rss_before'):>8.0f} MiB {median(name, 'rss_after'):>6.0f} MiB")
    if "qemu" in results:
        for key in ("inflate", "deflate", "rss_after"):
            ratio = median("kvmkit", key) / median("qemu", key)
            print(f"ratio kvmkit/qemu {key} (median): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
