"""The member order of QEMU's QDict, which QMP clients see on the wire.

QEMU keeps object members in a 512-bucket hash table (Samba's tdb_hash) and
walks it bucket by bucket, newest member first within a bucket. It decides
both output order and which bad member an error message names first.
"""

from __future__ import annotations

QDICT_BUCKETS = 512


def tdb_hash(key: str) -> int:
    raw = key.encode("utf-8", errors="surrogatepass")
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, byte in enumerate(raw):
        value = (value + (byte << (i * 5 % 24))) & 0xFFFFFFFF
    return (1103515243 * value + 12345) & 0xFFFFFFFF


def qdict_order(keys: list[str]) -> list[str]:
    """Keys, given in insertion order, in the order a QDict iterates them."""
    indexed = [(tdb_hash(k) % QDICT_BUCKETS, -i, k) for i, k in enumerate(keys)]
    return [k for _, _, k in sorted(indexed)]
