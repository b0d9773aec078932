"""Replays QEMU 7.2's QMP captures (../shared/reference/qemu-7.2) against a live server.

Each step's bytes are sent as captured; the replies are read and compared
line by line after normalisation: the version in the greeting and event
timestamps are the only things allowed to differ.
"""

from __future__ import annotations

import json
import os
import re
import socket
import time
from pathlib import Path


def _find_reference() -> Path:
    """../shared/reference/qemu-7.2 beside the checkout (KVMKIT_REFERENCE overrides)."""
    if os.environ.get("KVMKIT_REFERENCE"):
        return Path(os.environ["KVMKIT_REFERENCE"])
    checkout = Path(__file__).resolve().parents[1]
    return checkout.parent / "shared" / "reference" / "qemu-7.2"


REFERENCE = _find_reference()

_TIMESTAMP = re.compile(r'"timestamp": \{"seconds": \d+, "microseconds": \d+\}')
_VERSION = re.compile(r'\{"qemu": \{"micro": \d+, "minor": \d+, "major": \d+\}, '
                      r'"package": "[^"]*"\}')


def load(name: str) -> list[dict]:
    return json.loads((REFERENCE / name).read_text())


def step_bytes(step: dict) -> bytes | None:
    if "send_hex" in step:
        return bytes.fromhex(step["send_hex"])
    if "send_elided" in step:
        e = step["send_elided"]
        return (e["prefix"] + e["repeat"] * e["count"] + e["suffix"]).encode()
    if step["send"] is None:
        return None
    return step["send"].encode()


def normalise(line: str) -> str:
    line = _TIMESTAMP.sub('"timestamp": {}', line)
    return _VERSION.sub("{VERSION}", line)


class Connection:
    def __init__(self, path: str, timeout: float = 60.0) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(timeout)
        self.buf = b""

    def send(self, data: bytes) -> None:
        self.sock.settimeout(300)   # a big message may take the server a while to lex
        self.sock.sendall(data)

    def read_line(self, timeout: float) -> str | None:
        deadline = time.monotonic() + timeout
        while b"\n" not in self.buf:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(1 << 20)
            except TimeoutError:
                return None
            if not chunk:
                return None
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return (line + b"\n").decode()

    def exchange(self, data: bytes | None, expected: int, settle: float = 0.3,
                 timeout: float = 60.0) -> list[str]:
        """Sends data, reads the expected number of lines, then anything extra."""
        if data:
            self.send(data)
        lines = []
        for _ in range(expected):
            line = self.read_line(timeout)
            if line is None:
                break
            lines.append(line)
        while True:
            extra = self.read_line(settle)
            if extra is None:
                return lines
            lines.append(extra)

    def close(self) -> None:
        self.sock.close()


def compare(step: dict, got: list[str]) -> str | None:
    want = [normalise(x) for x in step["recv"]]
    have = [normalise(x) for x in got]
    if want == have:
        return None
    return f"step {step.get('note')!r}: sent {str(step.get('send'))[:80]!r}\n" \
           f"  QEMU:   {want}\n  kvmkit: {have}"
