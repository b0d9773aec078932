"""A disk's CHS geometry as QEMU guesses it (virtio-blk's config, IDE's IDENTIFY)."""

from __future__ import annotations

SECTOR = 512


def guess_geometry(mbr: bytes, sectors: int) -> tuple[int, int, int, str]:
    """Cylinders, heads, sectors per track and the BIOS translation QEMU picks: the
    geometry an MBR partition ending on a cylinder boundary implies, if it has at
    most 16 heads (no translation); otherwise 16 heads of 63 sectors and as many
    cylinders as fit (2 to 16383), translated when a BIOS could not address it."""
    if len(mbr) == SECTOR and mbr[510:512] == b"\x55\xaa":
        for entry in range(0x1BE, 0x1FE, 16):
            end_head, end_sector = mbr[entry + 5], mbr[entry + 6] & 63
            if not int.from_bytes(mbr[entry + 12:entry + 16], "little") or not end_head \
                    or not end_sector:
                continue
            cylinders = sectors // ((end_head + 1) * end_sector)
            if not 1 <= cylinders <= 16383:
                continue
            if end_head + 1 <= 16:
                return cylinders, end_head + 1, end_sector, "none"
            cylinders, heads, secs = _standard(sectors)      # the BIOS translated it
            return cylinders, heads, secs, "large" if cylinders * heads <= 131072 else "lba"
    cylinders, heads, secs = _standard(sectors)
    return cylinders, heads, secs, "none" if cylinders <= 1024 else "lba"


def _standard(sectors: int) -> tuple[int, int, int]:
    return min(max(sectors // (16 * 63), 2), 16383), 16, 63
