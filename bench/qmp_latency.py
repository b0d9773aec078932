"""Round-trip latency of `query-status` through qemu.qmp: kvmkit vs QEMU 7.2, one run.

    .venv/bin/python bench/qmp_latency.py [--calls 2000]

Both VMMs get the same machine (-m 128 -nodefaults -S, a QMP unix socket);
prints median and p99 per VMM and the kvmkit/QEMU ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import subprocess
import sys
import tempfile
import time

from qemu.qmp import QMPClient
from vmms import vmms as all_vmms


def start(argv: list[str], sock: str) -> subprocess.Popen:
    proc = subprocess.Popen(argv + ["-m", "128", "-nodefaults", "-display", "none", "-S",
                                    "-qmp", f"unix:{sock},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not os.path.exists(sock):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{argv[0]} did not start")
        time.sleep(0.05)
    return proc


async def measure(sock: str, calls: int) -> list[float]:
    client = QMPClient("bench")
    await client.connect(sock)
    for _ in range(50):                       # warm up
        await client.execute("query-status")
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        await client.execute("query-status")
        samples.append(time.perf_counter() - t0)
    await client.disconnect()
    return samples


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=2000)
    args = parser.parse_args()
    vmms = all_vmms()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for name, argv in vmms.items():
            sock = os.path.join(tmp, f"{name}.sock")
            proc = start(argv, sock)
            try:
                results[name] = asyncio.run(measure(sock, args.calls))
            finally:
                proc.terminate()
                proc.wait(10)
    print(f"query-status round trip through qemu.qmp, {args.calls} calls")
    print(f"{'vmm':<8} {'median us':>10} {'p99 us':>10}")
    for name, samples in results.items():
        print(f"{name:<8} {statistics.median(samples) * 1e6:>10.1f} {p99(samples) * 1e6:>10.1f}")
    if "qemu" in results:
        med = statistics.median(results["kvmkit"]) / statistics.median(results["qemu"])
        tail = p99(results["kvmkit"]) / p99(results["qemu"])
        print(f"ratio kvmkit/qemu: median {med:.2f}x, p99 {tail:.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
