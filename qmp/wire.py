"""QMP output lines exactly as QEMU 7.2 writes them: one JSON text, then CR LF."""

from __future__ import annotations

from monitor.qemu_json import encode, pretty


def message(value: object, pretty_print: bool = False) -> bytes:
    """One QMP output line (-qmp-pretty prints QEMU's indented form)."""
    return ((pretty(value) if pretty_print else encode(value)) + "\r\n").encode("ascii")
