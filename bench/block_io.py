"""Disk I/O through virtio-blk: kvmkit vs QEMU 7.2 on the same probe guest and the
same kind of image, in one run.

    .venv/bin/python bench/block_io.py [--runs 3] [--size-mib 256]

For raw and qcow2 images, with cache=none and cache=writeback, the guest
(`blk bench`) times 4 KiB random reads and writes at queue depths 1 and 16, and
1 MiB sequential reads and writes. Each VMM gets a fresh image of its own
(qcow2 ones filled first by a sequential write, so reads hit allocated clusters),
made by qemu-img in a directory under /var/tmp (a real disk, where O_DIRECT
works). Prints IOPS and MB/s, the median of the runs, and kvmkit/QEMU ratios.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from vmms import ProbeConsole, probe
from vmms import vmms as all_vmms

# name: (blk bench arguments but COUNT, bytes per request, requests)
CASES = {
    "4k randread qd1": ("r rand 4096 1", 4096, 3000),
    "4k randread qd16": ("r rand 4096 16", 4096, 6000),
    "4k randwrite qd1": ("w rand 4096 1", 4096, 3000),
    "4k randwrite qd16": ("w rand 4096 16", 4096, 6000),
    "1m seqread": ("r seq 1048576 1", 1 << 20, 128),
    "1m seqwrite": ("w seq 1048576 1", 1 << 20, 128),
}


def make_image(path: Path, fmt: str, size_mib: int) -> None:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), f"{size_mib}M"],
                   check=True)


def run_guest(argv: list[str], image: Path, fmt: str, cache: str, size_mib: int) -> dict:
    guest = ProbeConsole([*argv, "-m", "256", "-nodefaults", "-display", "none",
                          "-serial", "stdio", "-kernel", probe(), "-drive",
                          f"file={image},format={fmt},if=none,id=d0,cache={cache}",
                          "-device", "virtio-blk-pci,drive=d0"])
    try:
        guest.wait_for('"ready"')
        if fmt == "qcow2":                     # allocate every cluster first
            guest.command(f"blk bench w seq 1048576 1 {size_mib}")
        out = {}
        for name, (args, size, count) in CASES.items():
            reply = guest.command(f"blk bench {args} {count}")
            if reply.get("status") != 0 or not reply.get("us"):
                raise RuntimeError(f"{name}: {reply}")
            seconds = reply["us"] / 1e6
            out[name] = (count / seconds, count * size / seconds / 1e6)
        return out
    finally:
        guest.close()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--size-mib", type=int, default=256)
    args = parser.parse_args()
    vmms = all_vmms()
    results: dict = {}
    workdir = Path(tempfile.mkdtemp(prefix="kvmkit-bench-", dir="/var/tmp"))
    try:
        for fmt in ("raw", "qcow2"):
            for cache in ("none", "writeback"):
                for run in range(args.runs):
                    for vmm, argv in vmms.items():
                        image = workdir / f"{vmm}-{run}.{fmt}"
                        make_image(image, fmt, args.size_mib)
                        measured = run_guest(argv, image, fmt, cache, args.size_mib)
                        image.unlink()
                        for name, value in measured.items():
                            results.setdefault((fmt, cache, name), {}).setdefault(
                                vmm, []).append(value)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'case':40} " + " ".join(f"{v + ' IOPS':>14} {v + ' MB/s':>12}" for v in vmms)
          + "   ratio")
    for (fmt, cache, name), per_vmm in results.items():
        line = f"{fmt + ' cache=' + cache + ' ' + name:40} "
        medians = {}
        for vmm in vmms:
            iops = statistics.median(v[0] for v in per_vmm[vmm])
            mbps = statistics.median(v[1] for v in per_vmm[vmm])
            medians[vmm] = iops
            line += f"{iops:14.0f} {mbps:12.1f} "
        if "qemu" in medians:
            line += f"  {medians['kvmkit'] / medians['qemu']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
