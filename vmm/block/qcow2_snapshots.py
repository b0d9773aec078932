"""qcow2 internal snapshots, as QEMU writes them (docs/interop/qcow2.txt).

A snapshot is a copy of the active L1 table plus a table entry naming it. Taking
one adds a reference to every L2 table and data cluster the active image uses,
so the next guest write to any of them copies it first (the COPIED flag says a
cluster has exactly one user and may be written in place). The VM state lives
in the image's VM-state area, guest offsets past the disk's end (from the first
L1 entry the disk does not need): savevm writes it there, takes the snapshot,
and drops the area from the active image; loadvm makes the snapshot's L1 the
active one and reads the state back from the same place.
"""

from __future__ import annotations

import struct
import time
from collections import Counter

from vmm.block.qcow2 import (
    COMPRESSED,
    COPIED,
    OFFSET_MASK,
    SNAPSHOT,
    SNAPSHOT_EXTRA,
    Qcow2Image,
    Snapshot,
)
from vmm.errors import UserError

NO_ICOUNT = (1 << 64) - 1


def vm_state_offset(img: Qcow2Image) -> int:
    span = img.cluster_size * img.l2_entries
    return -(-img.size // span) * span


class VmStateWriter:
    """The VM state, written in order into the active image's VM-state area."""

    def __init__(self, img: Qcow2Image) -> None:
        self.img = img
        self.offset = 0
        self._pending = bytearray()

    def write(self, data) -> int:
        self._pending += data
        if len(self._pending) >= 1 << 20:
            self._write_out()
        return len(data)

    def _write_out(self) -> None:
        img, start = self.img, vm_state_offset(self.img) + self.offset
        with img.lock:
            needed = -(-(start + len(self._pending)) // (img.cluster_size * img.l2_entries))
            if needed > len(img.l1):
                img._grow_l1(needed)
        img.write(start, self._pending)
        self.offset += len(self._pending)
        self._pending = bytearray()

    def flush(self) -> None:
        if self._pending:
            self._write_out()
        self.img.flush()


class VmStateReader:
    """The VM state of the snapshot now active, read in order (readinto)."""

    def __init__(self, img: Qcow2Image, size: int) -> None:
        self.img = img
        self.offset = 0
        self.size = size

    def readinto(self, view) -> int:
        view = memoryview(view).cast("B")[:self.size - self.offset]
        if view:
            self.img.read_into(vm_state_offset(self.img) + self.offset, [view])
            self.offset += len(view)
        return len(view)


def find(img: Qcow2Image, name: str) -> Snapshot | None:
    """By name, else by id (as QEMU's bdrv_snapshot_find)."""
    return next((s for s in img.snapshots if s.name == name), None) or \
        next((s for s in img.snapshots if s.id == name), None)


def _change(img: Qcow2Image, counts: Counter, sign: int) -> None:
    """Adds (sign * how often) to each cluster's refcount, contiguous runs at once."""
    clusters = sorted(counts)
    i = 0
    while i < len(clusters):
        j = i + 1
        while j < len(clusters) and clusters[j] == clusters[j - 1] + 1 and \
                counts[clusters[j]] == counts[clusters[i]]:
            j += 1
        img._change_refcounts(clusters[i], j - i, sign * counts[clusters[i]])
        i = j


def _fix_copied(img: Qcow2Image) -> None:
    """The active image's COPIED flags again, from the refcounts: set where the
    active image is a cluster's only user, clear elsewhere."""
    cs = img.cluster_size
    for index, entry in enumerate(img.l1):
        l2 = entry & OFFSET_MASK
        if not l2:
            continue
        owned = img.refcount(l2 // cs) == 1
        wanted = l2 | (COPIED if owned else 0)
        if wanted != entry:
            img._set_l1(index, wanted)
        table = img._l2_table(l2)
        changed = False
        for at in range(0, cs, 8):
            data = struct.unpack_from(">Q", table, at)[0]
            if not data & OFFSET_MASK or data & COMPRESSED:
                continue
            sole = owned and img.refcount((data & OFFSET_MASK) // cs) == 1
            fixed = data | COPIED if sole else data & ~COPIED
            if fixed != data:
                struct.pack_into(">Q", table, at, fixed)
                changed = True
        if changed:
            img._pwrite(l2, table)


def _write_table(img: Qcow2Image, snapshots: list[Snapshot]) -> None:
    """A new snapshot table in clusters of its own, then the header points at it."""
    cs = img.cluster_size
    raw = bytearray()
    for s in snapshots:
        ident, name = s.id.encode(), s.name.encode()
        extra = SNAPSHOT_EXTRA.pack(s.vm_state_size, s.disk_size or img.size,
                                    NO_ICOUNT if s.icount is None else s.icount)
        raw += SNAPSHOT.pack(s.l1_offset, s.l1_size, len(ident), len(name), s.date_sec,
                             s.date_nsec, s.vm_clock_nsec,
                             s.vm_state_size if s.vm_state_size < 1 << 32 else 0, len(extra))
        raw += extra + ident + name
        raw += bytes(-len(raw) % 8)
    old_offset, old_bytes = img.snapshots_offset, \
        img._snapshot_table_bytes() if img.nb_snapshots else 0
    offset = img._alloc_clusters(-(-len(raw) // cs)) if raw else 0
    if raw:
        img._pwrite(offset, bytes(raw))
    img.file.flush()
    img._pwrite(60, struct.pack(">IQ", len(snapshots), offset))
    img.file.flush()
    img.nb_snapshots, img.snapshots_offset, img.snapshots = len(snapshots), offset, snapshots
    if old_bytes:
        img._change_refcounts(old_offset // cs, -(-old_bytes // cs), -1)


def create(img: Qcow2Image, name: str, vm_state_size: int, vm_clock_nsec: int) -> Snapshot:
    """Takes a snapshot of the active image, whose VM-state area holds
    ``vm_state_size`` bytes just written; then the area leaves the active image."""
    cs = img.cluster_size
    with img.lock:
        img._usable()
        if len(img.snapshots) >= 65536:
            raise UserError("Too many snapshots")
        ids = [int(s.id) for s in img.snapshots if s.id.isdigit()]
        l1 = [entry & ~COPIED for entry in img.l1]
        l1_offset = img._alloc_clusters(max(-(-len(l1) * 8 // cs), 1))
        img._pwrite(l1_offset, struct.pack(f">{len(l1)}Q", *l1))
        _change(img, img.clusters_reached(img.l1), +1)
        _fix_copied(img)
        now = time.time()
        snapshot = Snapshot(str(max(ids, default=0) + 1), name, l1_offset, len(l1),
                            int(now), int(now % 1 * 1e9), vm_clock_nsec, vm_state_size,
                            img.size, None)
        _write_table(img, img.snapshots + [snapshot])
        if vm_state_size:                     # the active image needs it no more
            first = vm_state_offset(img) // cs
            for cluster in range(first, first + -(-vm_state_size // cs)):
                entry = img._entry(cluster)[2]
                if entry:
                    img._set_entry(cluster, 0)
                    img._free(entry)
    img.flush()
    return snapshot


def goto(img: Qcow2Image, snapshot: Snapshot) -> None:
    """The snapshot's disk becomes the active image (loadvm)."""
    with img.lock:
        img._usable()
        if snapshot.disk_size is not None and snapshot.disk_size != img.size:
            raise UserError("qcow2: Loading snapshots with different disk size is not "
                            "supported")
        table = img._read_l1(snapshot.l1_offset, snapshot.l1_size)
        if len(table) > len(img.l1):
            img._grow_l1(len(table))
        table += [0] * (len(img.l1) - len(table))
        old = list(img.l1)
        _change(img, img.clusters_reached(table), +1)
        img._pwrite(img.l1_offset, struct.pack(f">{len(table)}Q", *table))
        img.file.flush()
        img.l1 = table
        _change(img, img.clusters_reached(old), -1)
        img._l2_cache.clear()
        _fix_copied(img)
    img.flush()


def delete(img: Qcow2Image, snapshot: Snapshot) -> None:
    cs = img.cluster_size
    with img.lock:
        img._usable()
        table = img._read_l1(snapshot.l1_offset, snapshot.l1_size)
        reached = img.clusters_reached(table)
        _write_table(img, [s for s in img.snapshots if s is not snapshot])
        _change(img, reached, -1)
        img._change_refcounts(snapshot.l1_offset // cs,
                              max(-(-snapshot.l1_size * 8 // cs), 1), -1)
        img._l2_cache.clear()
        _fix_copied(img)
    img.flush()
