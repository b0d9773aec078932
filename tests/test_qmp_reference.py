"""kvmkit's QMP against QEMU 7.2's captured behaviour, byte for byte after normalising."""

from __future__ import annotations

import os
import subprocess
import time

import pytest
from guest import kvmkit_command
from qmp_replay import Connection, compare, load, step_bytes

pytestmark = [pytest.mark.kvm, pytest.mark.reference]


@pytest.fixture
def qmp_socket(tmp_path):
    path = str(tmp_path / "qmp.sock")
    proc = subprocess.Popen(kvmkit_command() + [
        "-m", "128", "-nodefaults", "-display", "none", "-S", "-serial", "null",
        "-qmp", f"unix:{path},server=on,wait=off"], stdin=subprocess.DEVNULL,
        stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not os.path.exists(path):
        assert proc.poll() is None, proc.stderr.read()
        assert time.monotonic() < deadline
        time.sleep(0.05)
    yield path
    proc.terminate()
    proc.wait(10)


def test_protocol_errors_match_qemu(qmp_socket):
    """02_protocol_errors.json: malformed input, limits, id echo; the connection stays open."""
    steps = load("02_protocol_errors.json")
    conn = Connection(qmp_socket)
    mismatches = []
    for step in steps:
        got = conn.exchange(step_bytes(step), len(step["recv"]), settle=0.1, timeout=60)
        problem = compare(step, got)
        if problem:
            mismatches.append(problem)
    conn.close()
    assert not mismatches, "\n".join(mismatches)


def test_json_encoding_matches_qemu(qmp_socket):
    """02b_json_encoding.json: how values echoed through 'id' are re-serialised."""
    steps = load("02b_json_encoding.json")
    conn = Connection(qmp_socket)
    mismatches = [p for step in steps
                  if (p := compare(step, conn.exchange(step_bytes(step), len(step["recv"]),
                                                       timeout=10)))]
    conn.close()
    assert not mismatches, "\n".join(mismatches)


def test_negotiation_matches_qemu(qmp_socket):
    """01_greeting_capabilities.json: negotiation, oob, and one client at a time."""
    steps = load("01_greeting_capabilities.json")
    conns: dict[str, Connection] = {}
    current = None
    mismatches = []
    for step in steps:
        note = step.get("note") or ""
        data = step_bytes(step)
        if note.startswith("connection ") and "E2" not in note:
            label = note.split()[1].rstrip(":")
            if current is not None:
                current.close()
            conns[label] = current = Connection(qmp_socket)
        elif "E2 opened while E1" in note:
            conns["E2"] = Connection(qmp_socket)
            got = conns["E2"].exchange(None, 0, settle=0.5)
            if got:
                mismatches.append(f"second client got {got} while the first was connected")
            continue
        elif note.startswith("E2 after E1 closed"):
            conns["E1"].close()
            current = conns["E2"]
        elif note == "E1 negotiates":
            current = conns["E1"]
        problem = compare(step, current.exchange(data, len(step["recv"]), timeout=10))
        if problem:
            mismatches.append(problem)
    for conn in conns.values():
        conn.close()
    assert not mismatches, "\n".join(mismatches)
