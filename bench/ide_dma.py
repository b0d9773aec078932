"""Sequential DMA reads from an IDE disk (PIIX3 bus master, READ DMA EXT): kvmkit
vs QEMU 7.2 on the same probe guest and the same kind of raw image, in one run.

    .venv/bin/python bench/ide_dma.py [--runs 3] [--size-mib 256]

The guest (`ide bench`) reads the whole disk front to back in requests of 64 KiB,
256 KiB and 1 MiB (one PRD per 64 KiB), polling the bus master's status, with
cache=none and cache=writeback. Each VMM gets a fresh image of its own, filled
with data, in a directory under /var/tmp (a real disk, where O_DIRECT works).
Prints MB/s, the median of the runs, and the kvmkit/QEMU ratio.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import tempfile
from pathlib import Path

from vmms import ProbeConsole, probe
from vmms import vmms as all_vmms

REQUEST_KIB = (64, 256, 1024)


def make_image(path: Path, size_mib: int) -> None:
    chunk = bytes(range(256)) * 4096                  # 1 MiB, not zeroes
    with open(path, "wb") as f:
        for _ in range(size_mib):
            f.write(chunk)


def run_guest(argv: list[str], image: Path, cache: str, size_mib: int) -> dict:
    guest = ProbeConsole([*argv, "-m", "256", "-nodefaults", "-display", "none",
                          "-serial", "stdio", "-kernel", probe(), "-drive",
                          f"file={image},format=raw,if=ide,cache={cache}"])
    try:
        guest.wait_for('"ready"')
        out = {}
        for kib in REQUEST_KIB:
            reply = guest.command(f"ide bench 0 0 {size_mib} {kib}")
            if reply.get("errors") != 0 or not reply.get("us"):
                raise RuntimeError(f"{kib} KiB: {reply}")
            out[f"{kib} KiB requests"] = size_mib * (1 << 20) / (reply["us"] / 1e6) / 1e6
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
        for cache in ("none", "writeback"):
            for run in range(args.runs):
                for vmm, argv in vmms.items():
                    image = workdir / f"{vmm}-{run}.img"
                    make_image(image, args.size_mib)
                    for name, value in run_guest(argv, image, cache, args.size_mib).items():
                        results.setdefault((cache, name), {}).setdefault(vmm, []).append(value)
                    image.unlink()
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    print(f"{'case':40} " + " ".join(f"{v + ' MB/s':>14}" for v in vmms) + "   ratio")
    for (cache, name), per_vmm in results.items():
        medians = {vmm: statistics.median(per_vmm[vmm]) for vmm in vmms}
        line = f"{'cache=' + cache + ' ' + name:40} " + " ".join(
            f"{medians[v]:14.1f}" for v in vmms)
        if "qemu" in medians:
            line += f"   {medians['kvmkit'] / medians['qemu']:.2f}x"
        print(line)


if __name__ == "__main__":
    main()
