"""block-set-write-threshold: one event (BLOCK_WRITE_THRESHOLD) when a write to a node
reaches past an offset, after which the threshold is off again, as QEMU's. A
management tool uses it to grow thin-provisioned storage before a guest fills it.

The node's writes (data and zeroes) are watched where they enter its backend, so
a format node sees guest offsets and a file node host-file offsets, as in QEMU.
"""

from __future__ import annotations

from collections.abc import Callable


def set_threshold(node, threshold: int, notify: Callable[[str, int, int], None]) -> None:
    """``notify(node_name, amount_exceeded, threshold)`` runs (on an I/O thread) for
    the first write ending past ``threshold``; 0 turns the watch off."""
    node.write_threshold = threshold
    image = node.image
    if threshold == 0 or getattr(image, "_threshold_watched", False):
        return
    image._threshold_watched = True

    def check(offset: int, length: int) -> None:
        limit = node.write_threshold
        if limit and offset + length > limit:
            node.write_threshold = 0
            notify(node.name, offset + length - limit, limit)

    write, write_zeroes = image.write, image.write_zeroes

    def watched_write(offset: int, data) -> None:
        check(offset, len(data))
        write(offset, data)

    def watched_write_zeroes(offset: int, length: int, may_unmap: bool) -> None:
        check(offset, length)
        write_zeroes(offset, length, may_unmap)
    image.write, image.write_zeroes = watched_write, watched_write_zeroes
