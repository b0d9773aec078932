"""Builds the probe guest (freestanding C + assembly) into a PVH ELF with gcc.

Called by setup.py at package build time; ``python -m vmm.probe.build [OUT]``
rebuilds it by hand.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).parent / "src"
SOURCES = ["start.S", "lib.c", "serial.c", "time.c", "apic.c", "acpi.c", "pci.c", "virtio.c",
           "balloon.c", "virtio_net.c", "e1000.c", "rtl8139.c", "net.c", "hotplug.c",
           "legacy.c", "dhcp.c", "tcp.c", "tftp.c", "ipv6.c", "offload.c", "rng.c", "blk.c",
           "ide.c", "console.c", "fuzz.c", "vga.c", "ps2.c", "uhci.c", "main.c"]
CFLAGS = [
    "-m64", "-ffreestanding", "-fno-pic", "-fno-pie", "-no-pie", "-mno-red-zone",
    "-mgeneral-regs-only", "-fno-stack-protector", "-fno-builtin", "-nostdlib", "-static",
    "-O2", "-Wall", "-Wextra", "-Werror", "-g0",
]
LDFLAGS = ["-Wl,-T," + str(SRC / "link.ld"), "-Wl,--build-id=none", "-Wl,-z,noexecstack"]


class ProbeBuildError(RuntimeError):
    pass


def build(output: Path, cc: str | None = None) -> Path:
    compiler = cc or os.environ.get("CC", "gcc")
    if shutil.which(compiler) is None:
        raise ProbeBuildError(
            f"cannot build the probe guest: C compiler '{compiler}' not found "
            "(install gcc, e.g. 'apt-get install gcc')")
    output.parent.mkdir(parents=True, exist_ok=True)
    cmd = [compiler, *CFLAGS, *LDFLAGS, "-o", str(output), *(str(SRC / s) for s in SOURCES)]
    result = subprocess.run(cmd, capture_output=True, text=True)
    if result.returncode != 0:
        raise ProbeBuildError("building the probe guest failed:\n" + result.stderr)
    return output


def main() -> int:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent / "probe.elf"
    try:
        print(build(out))
    except ProbeBuildError as e:
        print(e, file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
