"""Live migration of the probe guest: kvmkit to kvmkit vs QEMU 7.2 to QEMU 7.2.

    .venv/bin/python bench/migration.py [--runs 3] [--mib 512]

A 1024 MiB probe guest touches MIB MiB, then migrates over a local unix socket
to a second VMM of its kind (max-bandwidth unlimited, QEMU's default downtime
limit), twice: idle, and while it rewrites its MIB MiB ("churn", the pages dirty
until it ends). query-migrate's total-time and downtime are the figures; the
medians and the kvmkit/QEMU ratios are printed (the goal: at most 1).
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


def guest(argv: list[str], qmp_path: str, extra: list[str]) -> QmpProbe:
    return QmpProbe(argv + ["-m", "1024", "-nodefaults", "-display", "none",
                            "-serial", "stdio", "-kernel", probe()] + extra, qmp_path)


def migrate_once(argv: list[str], mib: int, churn: bool, workdir: str) -> dict:
    src = guest(argv, f"{workdir}/src.sock", [])
    dst = None
    try:
        src.wait_for('"ready"')
        src.command(f"touch {mib} 3")
        stream = f"{workdir}/stream.sock"
        dst = guest(argv, f"{workdir}/dst.sock", ["-incoming", f"unix:{stream}"])
        while not os.path.exists(stream):
            time.sleep(0.02)
        src.execute("migrate-set-parameters", **{"max-bandwidth": 1 << 40})
        if churn:
            src.send(f"churn {mib} 6")
        src.execute("migrate", uri=f"unix:{stream}")
        while True:
            info = src.execute("query-migrate")["return"]
            if info.get("status") in ("completed", "failed", "cancelled"):
                break
            time.sleep(0.01)
        if info["status"] != "completed":
            raise RuntimeError(f"migration {info['status']}: {info}")
        return info
    finally:
        src.close()
        if dst is not None:
            dst.close()
        for name in ("src.sock", "dst.sock", "stream.sock"):
            try:
                os.unlink(f"{workdir}/{name}")
            except OSError:
                pass


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--mib", type=int, default=512)
    args = parser.parse_args()
    results: dict[tuple[str, str], dict[str, float]] = {}
    with tempfile.TemporaryDirectory() as workdir:
        for name, argv in all_vmms().items():
            for workload in ("idle", "dirtying"):
                totals, downtimes = [], []
                for _ in range(args.runs):
                    info = migrate_once(argv, args.mib, workload == "dirtying", workdir)
                    totals.append(info["total-time"])
                    downtimes.append(info["downtime"])
                results[name, workload] = {"total": statistics.median(totals),
                                           "downtime": statistics.median(downtimes)}
                print(f"{name:7} {workload:9} total {results[name, workload]['total']:7.0f} ms"
                      f"  downtime {results[name, workload]['downtime']:5.0f} ms", flush=True)
    if ("qemu", "idle") in results:
        for workload in ("idle", "dirtying"):
            ours, theirs = results["kvmkit", workload], results["qemu", workload]
            print(f"kvmkit/QEMU {workload:9} total {ours['total'] / theirs['total']:.2f}"
                  f"  downtime {ours['downtime'] / max(theirs['downtime'], 1):.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
