"""qcow2 images, versions 2 and 3, as a BlockBackend over the image file's node.

The format (QEMU's docs/interop/qcow2.txt): a guest offset splits into an L1
index, an L2 index and an offset in a cluster. L1 entries point to L2 tables,
L2 entries to data clusters, which may also be all zeroes (v3), compressed
(zlib, or zstd in v3), or unallocated (read from the backing image, else
zeroes). Every cluster in use has a reference count, kept in refcount blocks
that a refcount table points to; a count above one (internal snapshots share
clusters) means a write must copy the cluster first.

Metadata goes to the file as it changes (no cache of dirty tables), data
before the L2 entry that points to it, so what a write completed is on the
file and a crash at worst leaks a cluster. Corruption found while running
marks the image corrupt (the v3 header bit, as QEMU does) and fails requests;
a broken header or table is refused when the image opens.
"""

from __future__ import annotations

import errno
import struct
import threading
import zlib
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

from vmm.block import qcow2_bitmaps
from vmm.errors import UserError

MAGIC = b"QFI\xfb"
HEADER = struct.Struct(">4sIQIIQIIQQIIQ")          # the 72 bytes of version 2
HEADER_V3 = struct.Struct(">QQQII")                 # features, refcount order, length
V3_HEADER_LENGTH = 104
OFFSET_MASK = 0x00FFFFFFFFFFFE00                   # L1, L2 and refcount table entries
COPIED = 1 << 63                                    # the cluster's refcount is exactly 1
COMPRESSED = 1 << 62
ZERO = 1                                            # v3: the cluster reads as zeroes
INCOMPAT_DIRTY, INCOMPAT_CORRUPT, INCOMPAT_DATA_FILE = 1, 2, 4
INCOMPAT_COMPRESSION, INCOMPAT_EXTL2 = 8, 16
INCOMPAT_NAMES = {INCOMPAT_DIRTY: "dirty bit", INCOMPAT_CORRUPT: "corrupt bit",
                  INCOMPAT_DATA_FILE: "external data file",
                  INCOMPAT_COMPRESSION: "compression type", INCOMPAT_EXTL2: "extended L2 entries"}
INCOMPAT_KNOWN = INCOMPAT_DIRTY | INCOMPAT_CORRUPT | INCOMPAT_COMPRESSION
COMPAT_LAZY_REFCOUNTS = 1
AUTOCLEAR_BITMAPS = qcow2_bitmaps.AUTOCLEAR_BITMAPS
EXT_END, EXT_BACKING_FORMAT, EXT_FEATURE_TABLE = 0, 0xE2792ACA, 0x6803F857
EXT_BITMAPS, EXT_CRYPTO, EXT_DATA_FILE = 0x23852875, 0x0537BE77, 0x44415441
COMPRESSION_ZLIB, COMPRESSION_ZSTD = 0, 1
COMPRESSED_SECTOR = 512
MAX_L1_BYTES = 32 << 20                            # QEMU's limits on the tables
MAX_REFTABLE_BYTES = 8 << 20
MAX_SNAPSHOTS = 65536
MAX_BACKING_NAME = 1023
SNAPSHOT = struct.Struct(">QIHHIIQII")             # a snapshot table entry's fixed part
SNAPSHOT_EXTRA = struct.Struct(">QQQ")             # vm state size, disk size, icount


class Corrupt(OSError):
    """Metadata that points somewhere it may not: the image is now marked corrupt."""

    def __init__(self, message: str) -> None:
        super().__init__(errno.EIO, message)


@dataclass
class Snapshot:
    """An internal snapshot, as its table entry records it."""
    id: str
    name: str
    l1_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    disk_size: int | None
    icount: int | None


def _open_error(message: str) -> UserError:
    return UserError(message)


class Qcow2Image:
    """``file`` is the node holding the image (read_into/write/flush/truncate,
    ``size``); ``backing`` is set by whoever opens the chain."""

    driver = "qcow2"

    def __init__(self, file, read_only: bool = False, unmap: bool = False) -> None:
        self.file = file
        self.read_only = read_only
        self.unmap = unmap
        self.backing = None                  # a BlockBackend, or None
        self.lock = threading.RLock()        # metadata is changed by one request at a time
        # host clusters with data I/O in flight outside the lock: not reallocated
        # until it ends, even if a discard freed them meanwhile
        self._busy: dict[int, int] = {}
        self._l2_cache: dict[int, bytearray] = {}
        self._refblock_cache: dict[int, bytearray] = {}
        self._compressed_cache: tuple[int, bytes] | None = None
        self.corrupt = False
        self.wr_highest_offset = 0           # query-blockstats' for the node
        self._read_header()
        self._read_tables()
        self.stored_bitmaps = qcow2_bitmaps.load(self)      # as the file holds them
        self.bitmaps_in_use = False          # the file marks them being changed (rw)
        if not read_only:
            self._open_for_writing()

    def invalidate_cache(self) -> None:
        """Another process wrote the image (the source of a migration): its header
        and tables are read again, and nothing cached is trusted."""
        with self.lock:
            self._l2_cache.clear()
            self._refblock_cache.clear()
            self._compressed_cache = None
            self._read_header()
            self._read_tables()
            self.stored_bitmaps = qcow2_bitmaps.load(self)

    # -- opening ---------------------------------------------------------------
    def _read_header(self) -> None:
        head = self._pread(0, HEADER.size)
        (magic, version, backing_offset, backing_size, cluster_bits, size, crypt,
         l1_size, l1_offset, rt_offset, rt_clusters, nb_snapshots, snapshots_offset) = \
            HEADER.unpack(head)
        if magic != MAGIC:
            raise _open_error("Image is not in qcow2 format")
        if version not in (2, 3):
            raise _open_error(f"Unsupported qcow2 version {version}")
        if not 9 <= cluster_bits <= 21:
            raise _open_error(f"Unsupported cluster size: 2^{cluster_bits}")
        self.version, self.cluster_bits, self.size = version, cluster_bits, size
        cs = self.cluster_size = 1 << cluster_bits
        self.file_size = self.file.size
        self.incompatible = self.compatible = self.autoclear = 0
        self.refcount_order, self.header_length, self.compression = 4, HEADER.size, 0
        if version == 3:
            (self.incompatible, self.compatible, self.autoclear, self.refcount_order,
             self.header_length) = HEADER_V3.unpack(self._pread(HEADER.size, HEADER_V3.size))
            if self.header_length < V3_HEADER_LENGTH:
                raise _open_error("qcow2 header too short")
            if self.header_length > cs:
                raise _open_error("qcow2 header exceeds cluster size")
            if self.header_length > V3_HEADER_LENGTH:
                self.compression = self._pread(V3_HEADER_LENGTH, 1)[0]
        if backing_offset > cs or backing_offset + backing_size > cs:
            raise _open_error("Invalid backing file offset")
        extensions = self._read_extensions(backing_offset)
        unknown = self.incompatible & ~INCOMPAT_KNOWN
        if unknown:
            names = extensions.get(EXT_FEATURE_TABLE, {})
            listed = ", ".join(names.get(bit) or INCOMPAT_NAMES.get(bit) or
                               f"Unknown incompatible feature: {bit:x}"
                               for bit in (1 << i for i in range(64)) if unknown & bit)
            raise _open_error(f"Unsupported qcow2 feature(s): {listed}")
        if self.incompatible & INCOMPAT_CORRUPT and not self.read_only:
            raise _open_error("qcow2: Image is corrupt; cannot be opened read/write")
        if self.refcount_order > 6:
            raise _open_error("Reference count entry width too large; may not exceed 64 bits")
        if bool(self.incompatible & INCOMPAT_COMPRESSION) != (self.compression != 0) or \
                self.compression not in (COMPRESSION_ZLIB, COMPRESSION_ZSTD):
            raise _open_error(f"Unknown compression type '{self.compression}'")
        if crypt:
            raise _open_error(f"Unsupported encryption method: {crypt} "
                              "(kvmkit opens unencrypted images only)")
        self.refcount_bits = 1 << self.refcount_order
        self.refblock_entries = cs * 8 // self.refcount_bits
        self.l2_entries = cs // 8
        self.backing_file = ""
        if backing_offset:
            if backing_size > MAX_BACKING_NAME:
                raise _open_error("Backing file name too long")
            self.backing_file = self._pread(backing_offset, backing_size).decode(
                "utf-8", "replace")
        self.backing_format = extensions.get(EXT_BACKING_FORMAT, "")
        self.has_bitmaps = EXT_BITMAPS in extensions
        self.l1_offset, self.l1_size = l1_offset, l1_size
        self.rt_offset, self.rt_clusters = rt_offset, rt_clusters
        self.snapshots_offset, self.nb_snapshots = snapshots_offset, nb_snapshots
        self.dirty = bool(self.incompatible & INCOMPAT_DIRTY)
        self.corrupt = bool(self.incompatible & INCOMPAT_CORRUPT)
        self.lazy_refcounts = bool(self.compatible & COMPAT_LAZY_REFCOUNTS)
        # where a compressed cluster's sector count starts in its L2 entry
        self.csize_shift = 62 - (cluster_bits - 8)

    def _read_extensions(self, backing_offset: int) -> dict:
        out: dict = {}
        self._extensions: list[tuple[int, bytes]] = []     # as found, for rewriting
        at, end = self.header_length, backing_offset or self.cluster_size
        while at + 8 <= end:
            kind, length = struct.unpack(">II", self._pread(at, 8))
            if kind == EXT_END:
                break
            if at + 8 + length > end:
                raise _open_error("qcow2: Header extension too large")
            data = self._pread(at + 8, length)
            self._extensions.append((kind, data))
            if kind == EXT_BACKING_FORMAT:
                out[kind] = data.split(b"\0")[0].decode("ascii", "replace")
            elif kind == EXT_FEATURE_TABLE:
                names = {}
                for entry in range(0, length - 47, 48):
                    if data[entry] == 0:          # incompatible features
                        names[1 << data[entry + 1]] = data[entry + 2:entry + 48] \
                            .split(b"\0")[0].decode("ascii", "replace")
                out[kind] = names
            elif kind == EXT_CRYPTO:
                raise _open_error("qcow2: encrypted images are not supported by kvmkit")
            else:
                out[kind] = data
            at += 8 + (length + 7) // 8 * 8
        return out

    def _check_table(self, offset: int, entries: int, entry_size: int, what: str,
                     limit: int) -> None:
        """QEMU's checks on a table the header points to, and that it lies in the file."""
        if entries * entry_size > limit:
            raise _open_error(f"{what} too large")
        if offset % self.cluster_size or (entries and offset == 0):
            raise _open_error(f"Invalid {what.lower().replace('l1', 'L1')} offset")
        if offset + entries * entry_size > self.file_size:
            raise _open_error(f"{what} lies past the end of the image (truncated?)")

    def _read_tables(self) -> None:
        cs = self.cluster_size
        self._check_table(self.rt_offset, self.rt_clusters * cs, 1, "Reference count table",
                          MAX_REFTABLE_BYTES)
        raw = self._pread(self.rt_offset, self.rt_clusters * cs)
        self.rt = list(struct.unpack(f">{len(raw) // 8}Q", raw))
        for index, entry in enumerate(self.rt):
            block = entry & OFFSET_MASK
            if entry & ~OFFSET_MASK or block % cs:
                raise _open_error(f"Refcount block offset {entry:#x} is invalid "
                                  f"(refcount table index {index})")
            if block + cs > self._file_end():
                raise _open_error(f"Refcount block offset {entry:#x} (refcount table index "
                                  f"{index}) lies past the end of the image (truncated?)")
        if self.nb_snapshots > MAX_SNAPSHOTS:
            raise _open_error("Too many snapshots")
        l1_needed = -(-self.size // (cs * self.l2_entries))
        if self.l1_size > MAX_L1_BYTES // 8:
            raise _open_error("Active L1 table too large")
        if self.l1_size < l1_needed:
            raise _open_error("L1 table is too small")
        self._check_table(self.l1_offset, self.l1_size, 8, "Active L1 table", MAX_L1_BYTES)
        self.l1 = self._read_l1(self.l1_offset, self.l1_size)
        for index, entry in enumerate(self.l1):
            self._check_l2_offset(entry, index, at_open=True)
        self.snapshots = self._read_snapshots()

    def _read_l1(self, offset: int, size: int) -> list[int]:
        raw = self._pread(offset, size * 8)
        return list(struct.unpack(f">{size}Q", raw))

    def _read_snapshots(self) -> list[Snapshot]:
        out, at = [], self.snapshots_offset
        if self.nb_snapshots and (at % self.cluster_size or at >= self.file_size):
            raise _open_error("Invalid snapshot table offset")
        for _ in range(self.nb_snapshots):
            (l1_offset, l1_size, id_size, name_size, date_sec, date_nsec, vm_clock,
             vm_state, extra_size) = SNAPSHOT.unpack(self._pread(at, SNAPSHOT.size))
            extra = self._pread(at + SNAPSHOT.size, extra_size)
            large_state = disk_size = icount = None
            if extra_size >= 8:
                large_state = struct.unpack_from(">Q", extra)[0]
            if extra_size >= 16:
                disk_size = struct.unpack_from(">Q", extra, 8)[0]
            if extra_size >= 24:
                icount = struct.unpack_from(">Q", extra, 16)[0]
            names = self._pread(at + SNAPSHOT.size + extra_size, id_size + name_size)
            if l1_size > MAX_L1_BYTES // 8 or l1_offset % self.cluster_size:
                raise _open_error("Snapshot L1 table offset invalid")
            out.append(Snapshot(names[:id_size].decode("utf-8", "replace"),
                                names[id_size:].decode("utf-8", "replace"), l1_offset,
                                l1_size, date_sec, date_nsec, vm_clock,
                                large_state if large_state is not None else vm_state,
                                disk_size, icount if icount != 2**64 - 1 else None))
            at += SNAPSHOT.size + extra_size + id_size + name_size
            at = (at + 7) // 8 * 8
        return out

    def _open_for_writing(self) -> None:
        if self.autoclear & ~AUTOCLEAR_BITMAPS:     # what kvmkit would not keep up to date
            self.autoclear &= AUTOCLEAR_BITMAPS
            self._write_header_features()
        if self.dirty:                                  # refcounts may lag: rebuild them
            self.rebuild_refcounts()
            self.dirty = False
            self.incompatible &= ~INCOMPAT_DIRTY
            self._write_header_features()
            self.file.flush()
        if self.stored_bitmaps:                     # kept in memory until the image closes
            qcow2_bitmaps.mark_in_use(self, self.stored_bitmaps)
            self.bitmaps_in_use = True

    def save_bitmaps(self, bitmaps: list) -> None:
        """The node's persistent bitmaps, written back as the image's whole set."""
        if self.read_only or self.corrupt or not (bitmaps or self.stored_bitmaps):
            return
        qcow2_bitmaps.store(self, bitmaps)
        self.stored_bitmaps = qcow2_bitmaps.load(self)
        self.bitmaps_in_use = False

    def _write_header_features(self) -> None:
        self._pwrite(HEADER.size, struct.pack(">QQQ", self.incompatible, self.compatible,
                                              self.autoclear))

    # -- the file ----------------------------------------------------------------
    def _pread(self, offset: int, length: int) -> bytes:
        buf = bytearray(length)
        if length:
            self.file.read_into(offset, [memoryview(buf)])
        return bytes(buf)

    def _pwrite(self, offset: int, data: bytes | memoryview) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "image is read-only")
        self.file.write(offset, data)
        self.file_size = max(self.file_size, offset + len(data))

    def _file_end(self) -> int:
        """The end of the last cluster the file holds any of."""
        cs = self.cluster_size
        return (self.file_size + cs - 1) // cs * cs

    # -- corruption ----------------------------------------------------------------
    def _mark_corrupt(self, message: str) -> Corrupt:
        if not self.corrupt:
            self.corrupt = True
            if self.version == 3 and not self.read_only:
                self.incompatible |= INCOMPAT_CORRUPT
                try:
                    self._write_header_features()
                    self.file.flush()
                except OSError:
                    pass
        return Corrupt(f"qcow2: Marking image as corrupt: {message}")

    def _check_l2_offset(self, entry: int, l1_index: int, at_open: bool = False) -> int:
        offset = entry & OFFSET_MASK
        problem = ""
        if entry & ~(OFFSET_MASK | COPIED):
            problem = f"L1 entry {entry:#x} has reserved bits set"
        elif offset % self.cluster_size:
            problem = f"L2 table offset {offset:#x} unaligned"
        elif offset and offset + self.cluster_size > self._file_end():
            problem = f"L2 table offset {offset:#x} past the end of the image"
        if problem:
            problem += f" (L1 index: {l1_index:#x})"
            if at_open:
                raise _open_error(f"qcow2: {problem}")
            raise self._mark_corrupt(problem)
        return offset

    def _check_data_offset(self, host: int, l2_offset: int, l2_index: int) -> int:
        if host % self.cluster_size or host + self.cluster_size > self._file_end():
            where = "unaligned" if host % self.cluster_size else "past the end of the image"
            raise self._mark_corrupt(f"Cluster allocation offset {host:#x} {where} "
                                     f"(L2 offset: {l2_offset:#x}, L2 index: {l2_index:#x})")
        return host

    def _usable(self) -> None:
        if self.corrupt and not self.read_only:
            raise Corrupt("qcow2: the image is marked corrupt")

    # -- L2 tables -----------------------------------------------------------------
    def _l2_table(self, offset: int) -> bytearray:
        table = self._l2_cache.get(offset)
        if table is None:
            if len(self._l2_cache) >= 256:
                del self._l2_cache[next(iter(self._l2_cache))]
            table = self._l2_cache[offset] = bytearray(self._pread(offset, self.cluster_size))
        return table

    def _entry(self, cluster: int) -> tuple[int, int, int]:
        """The L2 entry for a guest cluster: (L2 table offset or 0, index, entry)."""
        l1_index, l2_index = divmod(cluster, self.l2_entries)
        if l1_index >= len(self.l1):
            return 0, l2_index, 0
        l2 = self._check_l2_offset(self.l1[l1_index], l1_index)
        if not l2:
            return 0, l2_index, 0
        entry = struct.unpack_from(">Q", self._l2_table(l2), l2_index * 8)[0]
        return l2, l2_index, entry

    def _set_entry(self, cluster: int, entry: int) -> None:
        self._set_entries(cluster, [entry])

    def _set_entries(self, cluster: int, entries: list[int]) -> None:
        """Points consecutive guest clusters' L2 entries at ``entries`` (one write per
        L2 table), giving the active L1 an L2 table of its own first if it shares
        one (or has none)."""
        while entries:
            l1_index, l2_index = divmod(cluster, self.l2_entries)
            count = min(len(entries), self.l2_entries - l2_index)
            l2 = self._l2_for_write(l1_index)
            packed = struct.pack(f">{count}Q", *entries[:count])
            self._pwrite(l2 + l2_index * 8, packed)
            self._l2_table(l2)[l2_index * 8:l2_index * 8 + len(packed)] = packed
            cluster, entries = cluster + count, entries[count:]

    def _l2_for_write(self, l1_index: int) -> int:
        entry = self.l1[l1_index]
        old = self._check_l2_offset(entry, l1_index)
        if old and entry & COPIED:
            return old
        table = bytearray(self._l2_table(old)) if old else bytearray(self.cluster_size)
        new = self._alloc_clusters(1)
        self._pwrite(new, table)
        self._l2_cache[new] = table
        self._set_l1(l1_index, new | COPIED)
        if old:                              # a snapshot's table, shared until now
            self._change_refcount(old // self.cluster_size, -1)
        return new

    def _set_l1(self, index: int, entry: int) -> None:
        self._pwrite(self.l1_offset + index * 8, struct.pack(">Q", entry))
        self.l1[index] = entry

    # -- refcounts -------------------------------------------------------------------
    def _refblock(self, offset: int) -> bytearray:
        block = self._refblock_cache.get(offset)
        if block is None:
            if len(self._refblock_cache) >= 256:
                del self._refblock_cache[next(iter(self._refblock_cache))]
            block = self._refblock_cache[offset] = bytearray(
                self._pread(offset, self.cluster_size))
        return block

    def _get(self, block: bytes, index: int) -> int:
        bits = self.refcount_bits
        if bits >= 8:
            width = bits // 8
            return int.from_bytes(block[index * width:(index + 1) * width], "big")
        at, shift = divmod(index * bits, 8)
        return (block[at] >> shift) & ((1 << bits) - 1)

    def _set(self, block: bytearray, index: int, value: int) -> None:
        bits = self.refcount_bits
        if bits >= 8:
            width = bits // 8
            block[index * width:(index + 1) * width] = value.to_bytes(width, "big")
            return
        at, shift = divmod(index * bits, 8)
        mask = ((1 << bits) - 1) << shift
        block[at] = (block[at] & ~mask) | (value << shift)

    def refcount(self, cluster: int) -> int:
        block_index, index = divmod(cluster, self.refblock_entries)
        if block_index >= len(self.rt) or not self.rt[block_index] & OFFSET_MASK:
            return 0
        return self._get(self._refblock(self.rt[block_index] & OFFSET_MASK), index)

    def _change_refcount(self, cluster: int, delta: int) -> None:
        self._change_refcounts(cluster, 1, delta)

    def _change_refcounts(self, first: int, count: int, delta: int) -> None:
        """Adds ``delta`` to the refcounts of ``count`` clusters from ``first`` on,
        with one write per refcount block."""
        bits = self.refcount_bits
        while count:
            block_index, index = divmod(first, self.refblock_entries)
            if block_index >= len(self.rt) or not self.rt[block_index] & OFFSET_MASK:
                if delta < 0:
                    raise self._mark_corrupt(f"Freeing cluster {first:#x} without a refcount")
                self._create_refblock(block_index)
            offset = self.rt[block_index] & OFFSET_MASK
            block = self._refblock(offset)
            here = min(count, self.refblock_entries - index)
            for n in range(index, index + here):
                value = self._get(block, n) + delta
                cluster = block_index * self.refblock_entries + n
                if value < 0:
                    raise self._mark_corrupt(f"Refcount of cluster {cluster:#x} drops below zero")
                if value >= 1 << bits:
                    raise OSError(errno.ERANGE, f"refcount of cluster {cluster:#x} would overflow")
                self._set(block, n, value)
                if value == 0:
                    self._free_hint = min(self._free_hint, cluster)
                    self._l2_cache.pop(cluster * self.cluster_size, None)
            start, end = index * bits // 8, -(-(index + here) * bits // 8)
            self._pwrite(offset + start, bytes(block[start:end]))
            first, count = first + here, count - here

    _free_hint = 0

    def _find_free(self, count: int) -> int:
        """The first run of ``count`` clusters with no references, from the hint on."""
        per_block = self.refblock_entries
        start = cluster = self._free_hint
        while cluster - start < count:
            block_index, index = divmod(cluster, per_block)
            block = self.rt[block_index] & OFFSET_MASK if block_index < len(self.rt) else 0
            if not block:                    # a block never made: none of its clusters used
                cluster = (block_index + 1) * per_block
            elif self._get(self._refblock(block), index) or cluster in self._busy:
                start = cluster = cluster + 1
            else:
                cluster += 1
        return start

    def _alloc_clusters(self, count: int) -> int:
        """Allocates ``count`` contiguous clusters; their host offset."""
        for _attempt in range(1024):
            if count >= self.refblock_entries // 2 and _attempt > 16:
                raise OSError(errno.EFBIG, f"qcow2: cannot place {count} contiguous clusters")
            start = self._find_free(count)
            first_block = start // self.refblock_entries
            last_block = (start + count - 1) // self.refblock_entries
            missing = next((b for b in range(first_block, last_block + 1)
                            if b >= len(self.rt) or not self.rt[b] & OFFSET_MASK), None)
            if missing is None:
                break
            self._create_refblock(missing)       # then look again: it took a cluster
        else:
            raise OSError(errno.EFBIG, f"qcow2: cannot place {count} contiguous clusters")
        self._change_refcounts(start, count, +1)
        self._free_hint = start + count
        return start * self.cluster_size

    def _create_refblock(self, block_index: int) -> None:
        """A refcount block for clusters none of which is in use yet (it has none), so
        it goes in the first of them and counts itself."""
        if block_index >= len(self.rt):
            self._grow_refcount_table(block_index)
            return
        first = block_index * self.refblock_entries
        block = bytearray(self.cluster_size)
        self._set(block, 0, 1)
        self._pwrite(first * self.cluster_size, block)
        self._refblock_cache[first * self.cluster_size] = block
        self.file.flush()
        self._set_rt(block_index, first * self.cluster_size)

    def _set_rt(self, index: int, offset: int) -> None:
        self._pwrite(self.rt_offset + index * 8, struct.pack(">Q", offset))
        self.rt[index] = offset

    def _grow_refcount_table(self, block_index: int) -> None:
        """A bigger refcount table, placed with the new block it needs in the range
        that block counts (all free), so the new structure counts itself."""
        cs = self.cluster_size
        per_cluster = cs // 8
        clusters = max(2 * self.rt_clusters, -(-(block_index + 1) // per_cluster))
        if clusters * cs > MAX_REFTABLE_BYTES or clusters + 1 > self.refblock_entries:
            raise OSError(errno.EFBIG, "qcow2: the refcount table cannot grow any further")
        first = block_index * self.refblock_entries
        block = bytearray(cs)
        for index in range(clusters + 1):
            self._set(block, index, 1)
        table = self.rt + [0] * (clusters * per_cluster - len(self.rt))
        table[block_index] = first * cs
        self._pwrite(first * cs, block)
        self._pwrite((first + 1) * cs, struct.pack(f">{len(table)}Q", *table))
        self.file.flush()
        old_offset, old_clusters = self.rt_offset, self.rt_clusters
        self._pwrite(48, struct.pack(">QI", (first + 1) * cs, clusters))
        self.file.flush()
        self.rt, self.rt_offset, self.rt_clusters = table, (first + 1) * cs, clusters
        self._refblock_cache[first * cs] = block
        for cluster in range(old_offset // cs, old_offset // cs + old_clusters):
            self._change_refcount(cluster, -1)

    def _free(self, entry: int) -> None:
        """Drops the active image's reference to a data cluster (normal or compressed)."""
        if entry & COMPRESSED:
            start, length = self._compressed_range(entry)
            for cluster in range(start // self.cluster_size,
                                 (start + length - 1) // self.cluster_size + 1):
                self._change_refcount(cluster, -1)
            return
        host = entry & OFFSET_MASK
        if host:
            self._change_refcount(host // self.cluster_size, -1)
            if self.unmap and not self.refcount(host // self.cluster_size):
                self.file.discard(host, self.cluster_size)

    # -- data ------------------------------------------------------------------------
    def _compressed_range(self, entry: int) -> tuple[int, int]:
        host = entry & ((1 << self.csize_shift) - 1)
        sectors = ((entry & ~COMPRESSED & ~COPIED) >> self.csize_shift) + 1
        start = host & ~(COMPRESSED_SECTOR - 1)
        return start, sectors * COMPRESSED_SECTOR

    def _decompress(self, entry: int) -> bytes:
        cached = self._compressed_cache
        if cached is not None and cached[0] == entry:
            return cached[1]
        host = entry & ((1 << self.csize_shift) - 1)
        start, length = self._compressed_range(entry)
        if start >= self.file_size:
            raise self._mark_corrupt(f"Compressed cluster {host:#x} past the end of the image")
        data = self._pread(host, start + length - host)
        try:
            if self.compression == COMPRESSION_ZSTD:
                import zstandard
                out = zstandard.ZstdDecompressor().decompressobj().decompress(data)
            else:
                out = zlib.decompressobj(-15).decompress(data, self.cluster_size)
        except (zlib.error, Exception) as e:       # zstandard raises its own ZstdError
            raise OSError(errno.EIO, f"qcow2: compressed cluster at {host:#x}: {e}") from None
        if len(out) < self.cluster_size:
            raise OSError(errno.EIO, f"qcow2: compressed cluster at {host:#x} is short")
        out = out[:self.cluster_size]
        self._compressed_cache = (entry, out)
        return out

    def _pieces(self, offset: int, buffers: list[memoryview]) -> Iterator[tuple[int, memoryview]]:
        """The buffers cut at cluster boundaries: (guest offset, view) in order."""
        cs = self.cluster_size
        for view in buffers:
            while view:
                take = min(len(view), cs - offset % cs)
                yield offset, view[:take]
                offset, view = offset + take, view[take:]

    def read_into(self, offset: int, buffers: list[memoryview]) -> None:
        """Maps the pieces under the lock, then reads outside it: pieces whose host
        clusters follow each other become one read of the file."""
        cs = self.cluster_size
        runs: list[tuple[int, list[memoryview]]] = []     # data in the file
        run_end = -1
        with self.lock:
            self._usable()
            for at, view in self._pieces(offset, buffers):
                l2, index, entry = self._entry(at // cs)
                if entry & COMPRESSED:
                    data = self._decompress(entry)
                    view[:] = data[at % cs:at % cs + len(view)]
                elif entry & ZERO:
                    view[:] = bytes(len(view))
                elif entry & OFFSET_MASK:
                    where = self._check_data_offset(entry & OFFSET_MASK, l2, index) + at % cs
                    if runs and where == run_end:
                        runs[-1][1].append(view)
                    else:
                        runs.append((where, [view]))
                    run_end = where + len(view)
                else:
                    runs.append((-at - 1, [view]))        # the backing file's
                    run_end = -1
            busy = self._mark_busy(runs)
        try:
            for where, views in runs:
                if where >= 0:
                    self.file.read_into(where, views)
                else:
                    self._read_backing(-where - 1, views[0])
        finally:
            self._unmark_busy(busy)

    def _mark_busy(self, runs: list[tuple[int, list[memoryview]]]) -> list[int]:
        cs = self.cluster_size
        busy = []
        for where, views in runs:
            if where >= 0:
                length = sum(len(view) for view in views)
                busy.extend(range(where // cs, (where + length - 1) // cs + 1))
        for cluster in busy:
            self._busy[cluster] = self._busy.get(cluster, 0) + 1
        return busy

    def _unmark_busy(self, busy: list[int]) -> None:
        if not busy:
            return
        with self.lock:
            for cluster in busy:
                left = self._busy[cluster] - 1
                if left:
                    self._busy[cluster] = left
                else:
                    del self._busy[cluster]

    def _read_backing(self, offset: int, view: memoryview) -> None:
        backing = self.backing
        if backing is None or offset >= backing.size:
            view[:] = bytes(len(view))
            return
        inside = min(len(view), backing.size - offset)
        backing.read_into(offset, [view[:inside]])
        if inside < len(view):
            view[inside:] = bytes(len(view) - inside)

    def _cluster_now(self, cluster: int, entry: int) -> bytearray:
        """A guest cluster's whole content as it reads now."""
        cs = self.cluster_size
        if entry & COMPRESSED:
            return bytearray(self._decompress(entry))
        data = bytearray(cs)
        if entry & ZERO:
            return data
        host = entry & OFFSET_MASK
        if host:
            self.file.read_into(host, [memoryview(data)])
        else:
            self._read_backing(cluster * cs, memoryview(data))
        return data

    def write(self, offset: int, data: bytes | memoryview) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "image is read-only")
        cs = self.cluster_size
        view = memoryview(data)
        overwrites: list[tuple[int, list[memoryview]]] = []     # done outside the lock
        with self.lock:
            self._usable()
            self.wr_highest_offset = max(self.wr_highest_offset, offset + len(view))
            pieces = list(self._pieces(offset, [view]))
            i = 0
            while i < len(pieces):
                at, piece = pieces[i]
                entry = self._entry(at // cs)[2]
                if self._owned(entry):
                    host, length, i = self._owned_run(pieces, i)
                    overwrites.append((host, [view[at - offset:at - offset + length]]))
                elif len(piece) == cs:
                    i = self._write_new_clusters(pieces, i, view[at - offset:])
                else:
                    self._write_partial(at, piece, entry)
                    i += 1
            busy = self._mark_busy(overwrites)
        try:
            for host, (data,) in overwrites:
                self._pwrite(host, data)
        finally:
            self._unmark_busy(busy)

    def _owned(self, entry: int) -> bool:
        """A data cluster only the active image uses: written in place."""
        return bool(entry & OFFSET_MASK and entry & COPIED and
                    not entry & (COMPRESSED | ZERO))

    def _owned_run(self, pieces: list, i: int) -> tuple[int, int, int]:
        """Owned clusters that follow each other in the file, from piece ``i``: where
        they are, how many bytes of the request, and the first piece after them."""
        cs = self.cluster_size
        at = pieces[i][0]
        l2, index, entry = self._entry(at // cs)
        host = self._check_data_offset(entry & OFFSET_MASK, l2, index) + at % cs
        length, j = len(pieces[i][1]), i + 1
        while j < len(pieces):
            l2, index, entry = self._entry(pieces[j][0] // cs)
            if not self._owned(entry) or entry & OFFSET_MASK != host + length:
                break
            self._check_data_offset(entry & OFFSET_MASK, l2, index)
            length, j = length + len(pieces[j][1]), j + 1
        return host, length, j

    def _write_new_clusters(self, pieces: list, i: int, rest: memoryview) -> int:
        """Whole clusters that need a cluster of their own: as many as follow, in
        clusters allocated together, one data write, one L2 write per table."""
        cs = self.cluster_size
        first = pieces[i][0] // cs
        old = []
        # (a run at most a quarter of what a refcount block counts: a block made for
        # the run goes in its own first cluster, and the run must still fit after it)
        for at, piece in pieces[i:i + max(self.refblock_entries // 4, 1)]:
            entry = self._entry(at // cs)[2]
            if len(piece) != cs or self._owned(entry):
                break
            old.append(entry)
        new = self._alloc_clusters(len(old))
        self._pwrite(new, rest[:len(old) * cs])
        self._set_entries(first, [(new + n * cs) | COPIED for n in range(len(old))])
        for entry in old:
            if entry & OFFSET_MASK or entry & COMPRESSED:
                self._free(entry)
        return i + len(old)

    def _write_partial(self, at: int, piece: memoryview, entry: int) -> None:
        """Part of a cluster that needs one of its own: what the cluster reads now,
        with the piece over it (only the piece where the new cluster is past the end
        of the file and the rest reads as zeroes)."""
        cs = self.cluster_size
        cluster = at // cs
        host = entry & OFFSET_MASK
        keep = host and entry & COPIED and entry & ZERO and not entry & COMPRESSED
        new = host if keep else self._alloc_clusters(1)
        if not keep and new >= self.file_size and self._reads_zero(cluster, entry):
            self._pwrite(new + at % cs, piece)
        else:
            content = self._cluster_now(cluster, entry)
            content[at % cs:at % cs + len(piece)] = piece
            self._pwrite(new, content)
        self._set_entry(cluster, new | COPIED)
        if not keep and (host or entry & COMPRESSED):
            self._free(entry)

    def _reads_zero(self, cluster: int, entry: int) -> bool:
        if entry & COMPRESSED:
            return False
        if entry & ZERO:
            return True
        return not entry & OFFSET_MASK and (
            self.backing is None or cluster * self.cluster_size >= self.backing.size)

    def flush(self) -> None:
        self.file.flush()

    # -- what block jobs need --------------------------------------------------------
    def allocated(self, offset: int, length: int) -> bool:
        """Whether this image itself says what some cluster of the range reads (data,
        zeroes or compressed), rather than leaving it to the backing image."""
        cs = self.cluster_size
        with self.lock:
            return any(self._entry(cluster)[2] & (OFFSET_MASK | ZERO | COMPRESSED)
                       for cluster in range(offset // cs, -(-(offset + length) // cs)))

    def copy_up(self, offset: int, length: int) -> None:
        """block-stream: the clusters of the range this image leaves to its backing
        image get their data written here, each under the lock so that a guest write
        landing meanwhile is never overwritten with the older data."""
        cs = self.cluster_size
        for cluster in range(offset // cs, -(-(offset + length) // cs)):
            with self.lock:
                entry = self._entry(cluster)[2]
                if entry & (OFFSET_MASK | ZERO | COMPRESSED):
                    continue
                data = self._cluster_now(cluster, entry)
                end = min(cs, self.size - cluster * cs)
                if any(data):
                    self.write(cluster * cs, memoryview(data)[:end])

    def set_backing_file(self, name: str, fmt: str) -> None:
        """Rewrites the header's backing file name and format (after block-stream,
        block-commit, change-backing-file); other header extensions are kept."""
        encoded = name.encode()
        if len(encoded) > MAX_BACKING_NAME:
            raise UserError("Backing file name too long")
        extensions = [(k, d) for k, d in self._extensions if k != EXT_BACKING_FORMAT]
        if name and fmt:
            extensions.insert(0, (EXT_BACKING_FORMAT, fmt.encode()))
        area = b"".join(struct.pack(">II", k, len(d)) + d.ljust(-(-len(d) // 8) * 8, b"\0")
                        for k, d in extensions) + bytes(8)
        start = self.header_length
        if start + len(area) + len(encoded) > self.cluster_size:
            raise UserError("Backing file name too long")
        with self.lock:
            self._pwrite(start, area + encoded)
            self._pwrite(8, struct.pack(">QI", start + len(area) if name else 0,
                                        len(encoded)))
            self.file.flush()
            self._extensions = extensions
            self.backing_file, self.backing_format = name, fmt if name else ""

    def make_empty(self) -> None:
        """HMP commit's last step: every cluster is left to the backing image again."""
        cs = self.cluster_size
        with self.lock:
            self._usable()
            for cluster in range(-(-self.size // cs)):
                entry = self._entry(cluster)[2]
                if entry:
                    self._set_entry(cluster, 0)
                    if entry & (OFFSET_MASK | COMPRESSED):
                        self._free(entry)
            self.file.flush()

    def set_read_only(self, read_only: bool) -> None:
        """Reopened for writing (a commit's base) or for reading only (a snapshot's
        old active layer); the file node is reopened first by the caller."""
        with self.lock:
            if read_only and not self.read_only:
                self.file.flush()
            was, self.read_only = self.read_only, read_only
            if was and not read_only:
                self._open_for_writing()

    def _whole_clusters(self, offset: int, length: int) -> tuple[range, list[tuple[int, int]]]:
        """The clusters a range covers whole, and the partial pieces either side."""
        cs = self.cluster_size
        first = -(-offset // cs)
        last = (offset + length) // cs
        if first >= last:
            return range(0), [(offset, length)]
        parts = []
        if offset < first * cs:
            parts.append((offset, first * cs - offset))
        if offset + length > last * cs:
            parts.append((last * cs, offset + length - last * cs))
        return range(first, last), parts

    def write_zeroes(self, offset: int, length: int, may_unmap: bool) -> None:
        if self.read_only:
            raise OSError(errno.EROFS, "image is read-only")
        self.wr_highest_offset = max(self.wr_highest_offset, offset + length)
        whole, parts = self._whole_clusters(offset, length)
        if self.version == 2 and self.backing is not None:
            whole, parts = range(0), [(offset, length)]     # no zero flag to say it
        for start, count in parts:
            self.write(start, bytes(count))
        with self.lock:
            self._usable()
            for cluster in whole:
                _l2, _index, entry = self._entry(cluster)
                if not entry and self.backing is None:      # reads as zeroes already
                    continue
                host = entry & OFFSET_MASK
                if self.version == 2:                       # unallocated reads zeroes
                    if entry:
                        self._set_entry(cluster, 0)
                        self._free(entry)
                    continue
                if not may_unmap and host and entry & COPIED and not entry & COMPRESSED:
                    if not entry & ZERO:
                        self._set_entry(cluster, host | COPIED | ZERO)
                    continue
                if entry != ZERO:
                    self._set_entry(cluster, ZERO)
                    if host or entry & COMPRESSED:
                        self._free(entry)

    def discard(self, offset: int, length: int) -> None:
        """Frees whole clusters (-drive discard=unmap): with a backing file they then
        read as zeroes in v3; v2 can only let the backing file show through."""
        if not self.unmap or self.read_only:
            return
        whole, _parts = self._whole_clusters(offset, length)
        with self.lock:
            self._usable()
            for cluster in whole:
                _l2, _index, entry = self._entry(cluster)
                new = ZERO if self.backing is not None and self.version == 3 else 0
                if entry == new:
                    continue
                self._set_entry(cluster, new)
                if entry & OFFSET_MASK or entry & COMPRESSED:
                    self._free(entry)

    def truncate(self, size: int) -> None:
        """block_resize: a bigger L1 table if need be; shrinking frees what is cut off."""
        if self.read_only:
            raise OSError(errno.EROFS, "image is read-only")
        if self.snapshots:
            raise UserError("Can't resize an image which has snapshots")
        cs = self.cluster_size
        if size % 512:
            raise UserError("The new size must be a multiple of 512")
        with self.lock:
            self._usable()
            old = self.size
            if size < old:
                for cluster in range(-(-size // cs), -(-old // cs)):
                    _l2, _index, entry = self._entry(cluster)
                    if entry:
                        self._set_entry(cluster, 0)
                        self._free(entry)
            needed = -(-size // (cs * self.l2_entries))
            if needed > len(self.l1):
                self._grow_l1(needed)
            self._pwrite(24, struct.pack(">Q", size))
            self.file.flush()
            self.size = size
            # the new part reads as zeroes, whatever the old tail or the backing held
            if size > old and old % cs:
                end = min(size, (old // cs + 1) * cs)
                self.write_zeroes(old, end - old, True)
            if self.backing is not None and min(size, self.backing.size) > old:
                self.write_zeroes(old, min(size, self.backing.size) - old, True)

    def _grow_l1(self, entries: int) -> None:
        cs = self.cluster_size
        if entries * 8 > MAX_L1_BYTES:
            raise UserError("File too large")
        table = self.l1 + [0] * (entries - len(self.l1))
        new = self._alloc_clusters(-(-entries * 8 // cs))
        self._pwrite(new, struct.pack(f">{entries}Q", *table))
        self.file.flush()
        old_offset, old_size = self.l1_offset, len(self.l1)
        self._pwrite(36, struct.pack(">IQ", entries, new))
        self.file.flush()
        self.l1, self.l1_offset, self.l1_size = table, new, entries
        for cluster in range(old_offset // cs, old_offset // cs + -(-old_size * 8 // cs)):
            self._change_refcount(cluster, -1)

    def close(self) -> None:
        """Its file node is the graph's to close; what was written is flushed to it."""
        if not self.read_only:
            try:
                self.file.flush()
            except OSError:
                pass

    # -- checking ---------------------------------------------------------------------
    def clusters_reached(self, l1: list[int]) -> Counter:
        """Every L2 table and data cluster an L1 table reaches, with how often (each
        reference a refcount counts; internal snapshots add and drop these)."""
        cs = self.cluster_size
        counts: Counter = Counter()
        for entry in l1:
            l2 = entry & OFFSET_MASK
            if not l2:
                continue
            counts[l2 // cs] += 1
            for l2_entry in struct.unpack(f">{self.l2_entries}Q", self._pread(l2, cs)):
                if l2_entry & COMPRESSED:
                    start, length = self._compressed_range(l2_entry)
                    counts.update(range(start // cs, (start + length - 1) // cs + 1))
                elif l2_entry & OFFSET_MASK:
                    counts[(l2_entry & OFFSET_MASK) // cs] += 1
        return counts

    def expected_refcounts(self) -> dict[int, int]:
        """How many references each cluster has, from walking all the metadata."""
        cs = self.cluster_size
        counts: Counter = Counter()

        def add(offset: int, length: int) -> None:
            counts.update(range(offset // cs, (offset + length - 1) // cs + 1))

        def walk_l1(table: list[int], offset: int) -> None:
            if table:
                add(offset, len(table) * 8)
            counts.update(self.clusters_reached(table))

        add(0, cs)
        walk_l1(self.l1, self.l1_offset)
        for snapshot in self.snapshots:
            walk_l1(self._read_l1(snapshot.l1_offset, snapshot.l1_size), snapshot.l1_offset)
        if self.snapshots:
            add(self.snapshots_offset, self._snapshot_table_bytes())
        for offset, length in qcow2_bitmaps.clusters_used(self, self.stored_bitmaps):
            add(offset, length)
        add(self.rt_offset, self.rt_clusters * cs)
        for entry in self.rt:
            if entry & OFFSET_MASK:
                add(entry & OFFSET_MASK, cs)
        return counts

    def _snapshot_table_bytes(self) -> int:
        at = self.snapshots_offset
        for _ in range(self.nb_snapshots):
            fixed = SNAPSHOT.unpack(self._pread(at, SNAPSHOT.size))
            at += SNAPSHOT.size + fixed[8] + fixed[2] + fixed[3]
            at = (at + 7) // 8 * 8
        return at - self.snapshots_offset

    def rebuild_refcounts(self) -> None:
        """A new refcount structure, after all in-use clusters, with exactly the
        counts the metadata implies (the old structure is left unreferenced)."""
        cs = self.cluster_size
        counts = self.expected_refcounts()
        for cluster in range(self.rt_offset // cs, self.rt_offset // cs + self.rt_clusters):
            counts.pop(cluster, None)
        for entry in self.rt:
            if entry & OFFSET_MASK:
                counts.pop((entry & OFFSET_MASK) // cs, None)
        end = max(counts, default=0) + 1
        per_cluster = cs // 8
        extra = 0
        while True:                          # blocks and table that also count themselves
            blocks = -(-(end + extra) // self.refblock_entries)
            table_clusters = -(-blocks // per_cluster)
            if blocks + table_clusters <= extra:
                break
            extra = blocks + table_clusters
        for cluster in range(end, end + extra):
            counts[cluster] = 1
        table = [0] * (table_clusters * per_cluster)
        for block_index in range(blocks):
            block = bytearray(cs)
            base = block_index * self.refblock_entries
            for index in range(self.refblock_entries):
                value = counts.get(base + index, 0)
                if value >= 1 << self.refcount_bits:
                    raise _open_error(f"qcow2: refcount of cluster {base + index:#x} "
                                      "overflows its width")
                if value:
                    self._set(block, index, value)
            table[block_index] = (end + block_index) * cs
            self._pwrite((end + block_index) * cs, block)
        self._pwrite((end + blocks) * cs, struct.pack(f">{len(table)}Q", *table))
        self.file.flush()
        self._pwrite(48, struct.pack(">QI", (end + blocks) * cs, table_clusters))
        self.file.flush()
        self.rt, self.rt_offset, self.rt_clusters = table, (end + blocks) * cs, table_clusters
        self._refblock_cache.clear()
        self._free_hint = 0

    # -- what query-block and query-named-block-nodes show -------------------------------
    def format_specific(self) -> dict:
        data: dict = {"compat": "1.1" if self.version == 3 else "0.10"}
        if self.version == 3:
            data.update({"compression-type": "zstd" if self.compression else "zlib",
                         "lazy-refcounts": self.lazy_refcounts,
                         "refcount-bits": self.refcount_bits, "corrupt": self.corrupt,
                         "extended-l2": False})
        else:
            data.update({"compression-type": "zlib", "refcount-bits": self.refcount_bits})
        if self.stored_bitmaps:                 # as the file lists them
            data["bitmaps"] = [{"flags": (["in-use"] if self.bitmaps_in_use or
                                          b.inconsistent else []) +
                                (["auto"] if b.auto else []),
                                "name": b.name, "granularity": b.granularity}
                               for b in self.stored_bitmaps]
        return {"type": "qcow2", "data": data}


def create(path: str, size: int, cluster_bits: int = 16, backing_file: str = "",
           backing_format: str = "") -> None:
    """A new, empty version 3 image: the header, a refcount table and block, an L1
    table (QEMU's layout), each in a cluster of its own; with a backing file, its
    name (and format extension) follow the header."""
    cs = 1 << cluster_bits
    l1_size = max(-(-size // (cs * (cs // 8))), 1)
    l1_clusters = -(-l1_size * 8 // cs)
    extensions = b""
    if backing_file and backing_format:
        fmt = backing_format.encode()
        extensions = struct.pack(">II", EXT_BACKING_FORMAT, len(fmt)) + \
            fmt.ljust(-(-len(fmt) // 8) * 8, b"\0")
    extensions += bytes(8)
    name = backing_file.encode()
    if V3_HEADER_LENGTH + len(extensions) + len(name) > cs or len(name) > MAX_BACKING_NAME:
        raise UserError("Backing file name too long")
    name_offset = V3_HEADER_LENGTH + len(extensions) if name else 0
    header = HEADER.pack(MAGIC, 3, name_offset, len(name), cluster_bits, size, 0, l1_size,
                         3 * cs, cs, 1, 0, 0) + HEADER_V3.pack(0, 0, 0, 4, V3_HEADER_LENGTH)
    if name:
        header += extensions + name
    refblock = bytearray(cs)
    for cluster in range(3 + l1_clusters):
        refblock[cluster * 2:cluster * 2 + 2] = b"\0\1"
    with open(path, "wb") as f:
        f.write(header.ljust(cs, b"\0"))
        f.write(struct.pack(">Q", 2 * cs).ljust(cs, b"\0"))
        f.write(refblock)
        f.write(bytes(-(-l1_size * 8 // 512) * 512))      # as QEMU: the file ends after the L1
