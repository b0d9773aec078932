"""Launch to the probe guest's first prompt ("ready" on COM1): kvmkit vs QEMU 7.2.

    .venv/bin/python bench/boot_time.py [--runs 5]

Both VMMs boot the same probe ELF with the same machine options; prints the
median and spread per VMM and the kvmkit/QEMU ratio.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time

from vmms import probe
from vmms import vmms as all_vmms


def boot_once(argv: list[str]) -> float:
    start = time.perf_counter()
    proc = subprocess.Popen(argv + ["-m", "256", "-nodefaults", "-display", "none",
                                    "-serial", "stdio", "-kernel", probe()],
                            stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL)
    try:
        for line in proc.stdout:
            if b'"ready"' in line:
                return time.perf_counter() - start
        raise RuntimeError(f"{argv[0]} exited before the guest was ready")
    finally:
        proc.kill()
        proc.wait()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    args = parser.parse_args()
    vmms = all_vmms()
    results = {name: [boot_once(argv) for _ in range(args.runs)] for name, argv in vmms.items()}
    print(f"launch to the probe guest's first prompt, {args.runs} runs each")
    print(f"{'vmm':<8} {'median s':>9} {'min s':>7} {'max s':>7}")
    for name, times in results.items():
        print(f"{name:<8} {statistics.median(times):>9.3f} {min(times):>7.3f} {max(times):>7.3f}")
    if "qemu" in results:
        ratio = statistics.median(results["kvmkit"]) / statistics.median(results["qemu"])
        print(f"ratio kvmkit/qemu (median): {ratio:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
