#!/usr/bin/env python3
"""Runs kvm-unit-tests (x86) on kvmkit and on QEMU 7.2 side by side, unchanged.

The suite comes from ../shared/third_party/ (a pinned git archive); it is unpacked
and built once under a work directory (gcc and make, a few seconds). Each VMM runs
the suite's own harness, run_tests.sh, with QEMU= naming its binary, in its own
copy of the tree (logs/ are per copy). The table gives each test's result on both
VMMs and, where they differ, the summaries.

    scripts/kvm_unit_tests.py                       # every x86 test, both VMMs
    scripts/kvm_unit_tests.py msr64 smptest         # some tests
    scripts/kvm_unit_tests.py --vmm kvmkit -t 30    # one VMM, 30 s per test
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROJECT = HERE.parent
ARCHIVE_GLOB = "kvm-unit-tests-*.tar.gz"
RESULT_LINE = re.compile(r"^(PASS|FAIL|SKIP) (\S+)(?: (.*))?$")
ANSI = re.compile(r"\x1b\[[0-9;]*m")


@dataclass(frozen=True)
class Result:
    status: str          # PASS, FAIL or SKIP
    detail: str          # the harness's summary or reason, without brackets


def find_archive() -> Path:
    for base in (PROJECT.parent / "shared" / "third_party",
                 PROJECT.parent.parent / "shared" / "third_party"):
        found = sorted(base.glob(ARCHIVE_GLOB))
        if found:
            return found[-1]
    raise SystemExit("kvm-unit-tests archive not found in ../shared/third_party/")


def build(workdir: Path) -> Path:
    """The unpacked, built tree (reused when already built)."""
    tree = workdir / "kvm-unit-tests"
    if (tree / "x86" / "msr.flat").exists():
        return tree
    workdir.mkdir(parents=True, exist_ok=True)
    with tarfile.open(find_archive()) as tar:
        tar.extractall(workdir, filter="tar")
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    subprocess.run(["./configure"], cwd=tree, check=True, **quiet)
    subprocess.run(["make", f"-j{os.cpu_count() or 1}"], cwd=tree, check=True, **quiet)
    return tree


def run_suite(tree: Path, name: str, binary: str, tests: list[str], timeout: int,
              jobs: int = 1) -> dict[str, Result]:
    """Runs the harness in a copy of the tree for this VMM; returns test -> Result."""
    copy = tree.parent / f"run-{name}"
    if copy.exists():
        shutil.rmtree(copy)
    shutil.copytree(tree, copy, symlinks=True)
    env = {**os.environ, "QEMU": binary, "TIMEOUT": str(timeout)}
    command = ["./run_tests.sh", "-v", "-j", str(jobs)] + tests
    proc = subprocess.run(command, cwd=copy, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True)
    results = parse(proc.stdout)
    if not results:
        raise RuntimeError(f"{name}: the harness reported no test:\n{proc.stdout[-2000:]}")
    return results


def parse(output: str) -> dict[str, Result]:
    results = {}
    for raw in output.splitlines():
        match = RESULT_LINE.match(ANSI.sub("", raw).strip())
        if match:
            status, test, detail = match.groups()
            results[test] = Result(status, (detail or "").strip().strip("()"))
    return results


def table(columns: dict[str, dict[str, Result]]) -> str:
    names = list(columns)
    tests = list(dict.fromkeys(t for results in columns.values() for t in results))
    rows = [["test"] + names + ["differs"]]
    for test in tests:
        cells = [columns[n].get(test) for n in names]
        statuses = [c.status if c else "-" for c in cells]
        details = [c.detail if c else "" for c in cells]
        differs = ""
        if len(set(statuses)) > 1 or len(set(details)) > 1:
            differs = " | ".join(f"{n}: {d or '-'}" for n, d in zip(names, details))
        # a VMM that refused the test's options while another ran it does not support it
        statuses = [s + " (not supported)" if s == "SKIP" and set(statuses) - {"SKIP", "-"}
                    else s for s in statuses]
        rows.append([test] + statuses + [differs])
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]) - 1)]
    lines = ["  ".join(cell.ljust(w) for cell, w in zip(r, widths)) + "  " + r[-1]
             for r in rows]
    counts = []
    for n in names:
        statuses = [r.status for r in columns[n].values()]
        counts.append(f"{n}: {statuses.count('PASS')} pass, {statuses.count('FAIL')} fail, "
                      f"{statuses.count('SKIP')} skip")
    return "\n".join(lines + [""] + counts) + "\n"


def default_kvmkit() -> str:
    venv = PROJECT / ".venv" / "bin" / "kvmkit"
    return str(venv) if venv.exists() else (shutil.which("kvmkit") or "kvmkit")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("tests", nargs="*", help="test names (default: all)")
    parser.add_argument("--vmm", choices=("both", "kvmkit", "qemu"), default="both")
    parser.add_argument("-t", "--timeout", type=int, default=60, help="seconds per test")
    parser.add_argument("-j", "--jobs", type=int, default=1)
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/kvmkit-kvm-unit-tests"))
    parser.add_argument("--kvmkit", default=default_kvmkit())
    parser.add_argument("--qemu", default="qemu-system-x86_64")
    parser.add_argument("--json", type=Path, help="also write the results to this file")
    args = parser.parse_args(argv)
    tree = build(args.workdir)
    vmms = {"qemu": args.qemu, "kvmkit": args.kvmkit}
    wanted = list(vmms) if args.vmm == "both" else [args.vmm]
    columns = {name: run_suite(tree, name, vmms[name], args.tests, args.timeout, args.jobs)
               for name in wanted}
    sys.stdout.write(table(columns))
    if args.json:
        args.json.write_text(json.dumps({vmm: {test: [r.status, r.detail]
                                                for test, r in results.items()}
                                          for vmm, results in columns.items()}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
