"""Cycles per VM exit, kvmkit vs QEMU 7.2, from kvm-unit-tests' own vmexit guest.

    .venv/bin/python bench/vmexit_cost.py [--runs 3] [TEST ...]

Both VMMs run x86/vmexit.flat (built from ../shared/third_party/ by
scripts/kvm_unit_tests.py) with the harness's devices, in one run. The guest
prints the TSC cycles one exit of each kind costs; this prints the median per
VMM and the kvmkit/QEMU ratio. The exits that reach the VMM's user space are
inl_from_qemu, inl_from_pmtimer (port reads) and pci-testdev's no-eventfd tests
(an MMIO and a port write); the others stay in KVM and measure the kernel.
"""

from __future__ import annotations

import argparse
import re
import statistics
import subprocess
import sys
from pathlib import Path

from vmms import vmms as all_vmms

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "scripts"))
from kvm_unit_tests import build  # noqa: E402

DEFAULT_TESTS = ["cpuid", "inl_from_kernel", "inl_from_qemu", "inl_from_pmtimer",
                 "mov_to_cr8", "pci-mem", "pci-io"]
RESULT = re.compile(r"^(\S+) (\d+)\s*$")
HARNESS_DEVICES = ["-nodefaults", "-device", "pc-testdev", "-device",
                   "isa-debug-exit,iobase=0xf4,iosize=0x4", "-display", "none",
                   "-serial", "stdio", "-device", "pci-testdev"]


def run_once(argv: list[str], flat: Path, tests: list[str]) -> dict[str, int]:
    proc = subprocess.run(argv + HARNESS_DEVICES + ["-kernel", str(flat), "-append",
                                                    " ".join(tests)],
                          stdin=subprocess.DEVNULL, capture_output=True, text=True,
                          timeout=600)
    cycles = {}
    for line in proc.stdout.replace("\r", "").splitlines():
        match = RESULT.match(line)
        if match:
            cycles[match.group(1)] = int(match.group(2))
    if not cycles:
        raise RuntimeError(f"{argv[0]}: no result\n{proc.stdout[-1000:]}{proc.stderr[-1000:]}")
    return cycles


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", default=DEFAULT_TESTS)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kvmkit-kvm-unit-tests"))
    args = parser.parse_args()
    flat = build(args.workdir) / "x86" / "vmexit.flat"
    medians: dict[str, dict[str, float]] = {}
    for name, argv in all_vmms().items():
        runs = [run_once(argv, flat, args.tests) for _ in range(args.runs)]
        kinds = list(dict.fromkeys(k for run in runs for k in run))
        medians[name] = {k: statistics.median(run[k] for run in runs if k in run)
                         for k in kinds}
    names = list(medians)
    kinds = list(dict.fromkeys(k for m in medians.values() for k in m))
    print(f"{'exit':<32}" + "".join(f"{n + ' cycles':>16}" for n in names) +
          ("   kvmkit/qemu" if len(names) == 2 else ""))
    for kind in kinds:
        values = [medians[n].get(kind) for n in names]
        row = f"{kind:<32}" + "".join(f"{v:>16.0f}" if v is not None else f"{'-':>16}"
                                      for v in values)
        if len(names) == 2 and None not in values and values[1]:
            row += f"   {values[0] / values[1]:.2f}x"
        print(row)
    return 0


if __name__ == "__main__":
    sys.exit(main())
