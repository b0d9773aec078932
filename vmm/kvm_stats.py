"""KVM's binary statistics (KVM_GET_STATS_FD, Linux's Documentation/virt/kvm/api.rst
4.133): the counters KVM keeps for a VM and for each vCPU, read as QEMU's
query-stats reports them.

The file starts with a header locating the descriptors (name, type, unit, base,
exponent, size, offset) and the data; each value is ``size`` u64s at
``data_offset + offset``. Descriptors are read once; values on every query.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass

KVM_GET_STATS_FD = 0xAECE                 # _IO(KVMIO, 0xce)
HEADER = struct.Struct("<6I")              # flags, name_size, num_desc, id/desc/data offsets
DESC = struct.Struct("<IhHII")             # flags, exponent, size, offset, bucket_size
TYPES = ("cumulative", "instant", "peak", "linear-histogram", "log2-histogram")
UNITS = (None, "bytes", "seconds", "cycles", "boolean")
BASES = (10, 2)


@dataclass(frozen=True)
class Stat:
    name: str
    type: str
    unit: str | None
    base: int
    exponent: int
    size: int
    offset: int
    bucket_size: int

    def schema(self) -> dict:
        """query-stats-schemas' entry, in QEMU's member order."""
        entry: dict = {"name": self.name}
        if self.unit is not None:
            entry["unit"] = self.unit
        if self.exponent:
            entry["base"] = self.base
        entry["exponent"] = self.exponent
        entry["type"] = self.type
        if self.type == "linear-histogram":
            entry["bucket-size"] = self.bucket_size
        return entry


class KvmStats:
    """One VM's or vCPU's statistics file."""

    def __init__(self, fd: int) -> None:
        self.fd = fd
        _flags, name_size, count, _id, desc_offset, self.data_offset = \
            HEADER.unpack(os.pread(fd, HEADER.size, 0))
        stride = DESC.size + name_size
        raw = os.pread(fd, stride * count, desc_offset)
        stats = []
        for index in range(count):
            at = index * stride
            flags, exponent, size, offset, bucket = DESC.unpack_from(raw, at)
            name = raw[at + DESC.size:at + stride].split(b"\0")[0].decode()
            kind, unit, base = flags & 0xF, (flags >> 4) & 0xF, (flags >> 8) & 0xF
            if kind >= len(TYPES) or unit >= len(UNITS) or base >= len(BASES):
                continue                      # a kind newer than this code: left out
            stats.append(Stat(name, TYPES[kind], UNITS[unit], BASES[base], exponent, size,
                              offset, bucket))
        self.stats = stats[::-1]              # QEMU lists them last first
        self.data_size = max((s.offset + 8 * s.size for s in stats), default=0)

    def values(self, names: list[str] | None = None) -> list[dict]:
        data = os.pread(self.fd, self.data_size, self.data_offset)
        out = []
        for stat in self.stats:
            if names is not None and stat.name not in names:
                continue
            numbers = list(struct.unpack_from(f"<{stat.size}Q", data, stat.offset))
            if stat.unit == "boolean":
                value: object = bool(numbers[0])
            elif stat.type.endswith("histogram"):
                value = numbers
            else:
                value = numbers[0]
            out.append({"name": stat.name, "value": value})
        return out

    def close(self) -> None:
        os.close(self.fd)


def open_stats(ioctl_fd: int) -> KvmStats | None:
    """The statistics of a VM or vCPU fd; None where KVM has none (before Linux 5.14)."""
    from vmm._kvm import lib

    fd = lib.kk_ioctl_val(ioctl_fd, KVM_GET_STATS_FD, 0)
    if fd < 0:
        return None
    return KvmStats(fd)
