"""Persistent dirty bitmaps in qcow2 images (docs/interop/qcow2.txt, "Bitmaps"):
the bitmaps extension points to a directory of bitmaps; each has a table of
clusters holding its bits (bit N of the data: chunk N of the disk, least
significant bit first).

kvmkit reads the bitmaps when it opens an image, keeps them in memory
(vmm/block/dirty_bitmap.py) and writes them back when it closes the image. While
the image is open for writing the bitmaps are marked in_use in the file, so a
crash leaves them marked inconsistent, as QEMU does.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass

from vmm.errors import UserError

EXTENSION = 0x23852875
AUTOCLEAR_BITMAPS = 1
EXT = struct.Struct(">IIQQ")               # nb_bitmaps, reserved, directory size, offset
ENTRY = struct.Struct(">QIIBBHI")          # table offset, size, flags, type, gran, name, extra
IN_USE, AUTO, EXTRA_DATA_COMPATIBLE = 1, 2, 4
DIRTY_TRACKING = 1
TABLE_OFFSET_MASK = 0x00FFFFFFFFFFFE00
ALL_ONES = 1


@dataclass
class StoredBitmap:
    name: str
    granularity: int
    flags: int
    bits: bytearray                        # one bit per chunk, LSB first
    table_offset: int = 0
    table_size: int = 0
    inconsistent: bool = False             # in_use when the image was opened: unusable

    @property
    def auto(self) -> bool:
        return bool(self.flags & AUTO)


def _chunks(size: int, granularity: int) -> int:
    return -(-size // granularity)


def load(image) -> list[StoredBitmap]:
    """The bitmaps the image holds (none unless the extension is there and the
    autoclear bit vouches for it)."""
    raw = next((data for kind, data in image._extensions if kind == EXTENSION), None)
    if raw is None or not image.autoclear & AUTOCLEAR_BITMAPS:
        return []
    if len(raw) < EXT.size:
        raise UserError("Could not open bitmaps extension: it is too short")
    count, _reserved, dir_size, dir_offset = EXT.unpack(raw[:EXT.size])
    cs = image.cluster_size
    if dir_offset % cs or dir_size > 64 << 20 or count > 65535:
        raise UserError("Could not open bitmaps extension: invalid directory")
    directory = image._pread(dir_offset, dir_size)
    out, at = [], 0
    for _ in range(count):
        if at + ENTRY.size > len(directory):
            raise UserError("Could not open bitmaps extension: directory too short")
        offset, table_size, flags, kind, gran_bits, name_size, extra = \
            ENTRY.unpack_from(directory, at)
        name_at = at + ENTRY.size + extra
        name = directory[name_at:name_at + name_size].decode("utf-8", "replace")
        at = -(-(name_at + name_size) // 8) * 8
        if kind != DIRTY_TRACKING or not 9 <= gran_bits <= 31:
            raise UserError(f"Could not open bitmap '{name}': unsupported type or granularity")
        granularity = 1 << gran_bits
        bits = bytearray(-(-_chunks(image.size, granularity) // 8))
        table = struct.unpack(f">{table_size}Q", image._pread(offset, table_size * 8)) \
            if table_size else ()
        for index, entry in enumerate(table):
            start = index * cs
            if start >= len(bits):
                break
            length = min(cs, len(bits) - start)
            if entry & TABLE_OFFSET_MASK:
                bits[start:start + length] = image._pread(entry & TABLE_OFFSET_MASK, length)
            elif entry & ALL_ONES:
                bits[start:start + length] = b"\xff" * length
        out.append(StoredBitmap(name, granularity, flags, bits, offset, table_size,
                                inconsistent=bool(flags & IN_USE)))
    return out


def clusters_used(image, bitmaps: list[StoredBitmap]) -> list[tuple[int, int]]:
    """(offset, length) of everything the bitmaps take in the file: the directory,
    the tables and the data clusters (for refcount checks)."""
    raw = next((data for kind, data in image._extensions if kind == EXTENSION), None)
    if raw is None or not bitmaps:
        return []
    _count, _reserved, dir_size, dir_offset = EXT.unpack(raw[:EXT.size])
    out = [(dir_offset, dir_size)]
    for bitmap in bitmaps:
        if bitmap.table_size:
            out.append((bitmap.table_offset, bitmap.table_size * 8))
            for entry in struct.unpack(f">{bitmap.table_size}Q",
                                       image._pread(bitmap.table_offset,
                                                    bitmap.table_size * 8)):
                if entry & TABLE_OFFSET_MASK:
                    out.append((entry & TABLE_OFFSET_MASK, image.cluster_size))
    return out


def _free_old(image, bitmaps: list[StoredBitmap]) -> None:
    cs = image.cluster_size
    for offset, length in clusters_used(image, bitmaps):
        image._change_refcounts(offset // cs, -(-length // cs), -1)


def _directory(bitmaps: list[StoredBitmap]) -> bytes:
    out = b""
    for bitmap in bitmaps:
        name = bitmap.name.encode()
        entry = ENTRY.pack(bitmap.table_offset, bitmap.table_size, bitmap.flags,
                           DIRTY_TRACKING, bitmap.granularity.bit_length() - 1, len(name), 0)
        out += (entry + name).ljust(-(-(len(entry) + len(name)) // 8) * 8, b"\0")
    return out


def _write_extension(image, count: int, directory_offset: int, directory_size: int) -> None:
    extensions = [(k, d) for k, d in image._extensions if k != EXTENSION]
    if count:
        extensions.append((EXTENSION, EXT.pack(count, 0, directory_size, directory_offset)))
        image.autoclear |= AUTOCLEAR_BITMAPS
    else:
        image.autoclear &= ~AUTOCLEAR_BITMAPS
    image._extensions = extensions
    image.set_backing_file(image.backing_file, image.backing_format)   # rewrites them
    image._write_header_features()
    image.file.flush()


def store(image, bitmaps: list[StoredBitmap]) -> None:
    """Writes ``bitmaps`` as the image's whole set (their in_use flags as given),
    freeing what the old set took."""
    cs = image.cluster_size
    with image.lock:
        _free_old(image, load(image))
        for bitmap in bitmaps:
            data = bytes(bitmap.bits)
            entries = []
            for start in range(0, len(data), cs):
                piece = data[start:start + cs]
                if not any(piece):
                    entries.append(0)
                    continue
                host = image._alloc_clusters(1)
                image._pwrite(host, piece.ljust(cs, b"\0"))
                entries.append(host)
            bitmap.table_size = len(entries)
            bitmap.table_offset = 0
            if entries:
                bitmap.table_offset = image._alloc_clusters(-(-len(entries) * 8 // cs))
                image._pwrite(bitmap.table_offset, struct.pack(f">{len(entries)}Q", *entries))
        directory = _directory(bitmaps)
        offset = image._alloc_clusters(-(-len(directory) // cs)) if bitmaps else 0
        if bitmaps:
            image._pwrite(offset, directory)
        image.file.flush()
        _write_extension(image, len(bitmaps), offset, len(directory))


def mark_in_use(image, bitmaps: list[StoredBitmap]) -> None:
    """The file says the bitmaps are being changed (set when opened for writing)."""
    raw = next((data for kind, data in image._extensions if kind == EXTENSION), None)
    if raw is None or not bitmaps:
        return
    for bitmap in bitmaps:
        bitmap.flags |= IN_USE
    _count, _reserved, _size, offset = EXT.unpack(raw[:EXT.size])
    with image.lock:
        image._pwrite(offset, _directory(bitmaps))
        image.file.flush()
    for bitmap in bitmaps:                # in memory: as consistent as they were
        bitmap.flags = bitmap.flags & ~IN_USE | (IN_USE if bitmap.inconsistent else 0)
