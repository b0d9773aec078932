"""cffi builder for vmm.virtio._spec: the virtio constants, from the kernel's headers.

Every plain numeric ``#define`` of <linux/virtio_*.h> (feature bits, status bits,
register offsets, capability types, ring flags) is declared to cffi as
``#define NAME ...``, so the C compiler reads each value from the header itself;
vmm/virtio/spec.py hands them to the devices. Nothing here writes a value out.
"""

import re
from pathlib import Path

from cffi import FFI

HEADERS = ("virtio_config.h", "virtio_ring.h", "virtio_pci.h", "virtio_ids.h",
           "virtio_net.h", "virtio_blk.h", "virtio_balloon.h", "virtio_console.h",
           "virtio_rng.h")
# a name, then an integer literal or a shift of two: nothing that needs the preprocessor
NUMERIC_DEFINE = re.compile(
    r"^#define\s+((?:VIRTIO|VRING)_[A-Z0-9_]+)\s+\(?\s*(?:0x[0-9a-fA-F]+|\d+)[uUlL]*"
    r"(?:\s*<<\s*\d+)?\s*\)?\s*(?:/\*.*)?$", re.M)


def _include_dir() -> Path:
    for base in ("/usr/include", "/usr/local/include"):
        if (Path(base) / "linux" / "virtio_config.h").exists():
            return Path(base)
    raise SystemExit("kvmkit needs the Linux UAPI headers (<linux/virtio_*.h>): "
                     "apt-get install linux-libc-dev")


def defines() -> list[str]:
    names: list[str] = []
    for header in HEADERS:
        text = (_include_dir() / "linux" / header).read_text()
        names += [n for n in NUMERIC_DEFINE.findall(text) if n not in names]
    return names


ffibuilder = FFI()
ffibuilder.cdef("".join(f"#define {name} ...\n" for name in defines()))
ffibuilder.set_source("vmm.virtio._spec",
                      "".join(f"#include <linux/{header}>\n" for header in HEADERS))

if __name__ == "__main__":
    ffibuilder.compile(verbose=True)
