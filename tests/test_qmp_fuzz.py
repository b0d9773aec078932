"""Random and mutated input at a live QMP server: every complete message gets
exactly one answer, the server stays up, and another monitor is still served."""

from __future__ import annotations

import itertools
import json
import os
import socket
import subprocess
import time

import pytest
from guest import kvm_usable, kvmkit_command
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

pytestmark = pytest.mark.kvm

# Commands that would change the run state (and so emit events) or end the VM.
UNSAFE = {"quit", "q", "stop", "cont", "c", "system_reset", "system_powerdown"}
COMMANDS = ["query-status", "query-name", "query-kvm", "qom-list", "qom-get", "balloon",
            "human-monitor-command", "set_link", "device_del", "getfd", "closefd",
            "qmp_capabilities", "query-qmp-schema", "migrate-pause", "no-such-command"]


class Line:
    def __init__(self, path: str) -> None:
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(path)
        self.sock.settimeout(30)
        self.buf = b""
        self.read()                              # greeting
        self.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert self.read() == {"return": {}}

    def read(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            assert chunk, "the server closed the connection"
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def replies_until(self, marker: str) -> list[dict]:
        """Every reply up to and including the one whose id is marker."""
        replies = []
        while True:
            reply = self.read()
            replies.append(reply)
            if reply.get("id") == marker:
                return replies


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    if not kvm_usable():
        pytest.skip("/dev/kvm is not available")
    tmp = tmp_path_factory.mktemp("fuzz")
    a, b = str(tmp / "a.sock"), str(tmp / "b.sock")
    proc = subprocess.Popen(kvmkit_command() + [
        "-m", "64", "-nodefaults", "-S", "-serial", "null",
        "-qmp", f"unix:{a},server=on,wait=off", "-qmp", f"unix:{b},server=on,wait=off"],
        stdin=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 30
    while not (os.path.exists(a) and os.path.exists(b)):
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.05)
    fuzzed, other = Line(a), Line(b)
    yield proc, fuzzed, other
    proc.terminate()
    proc.wait(10)


_markers = (f"sync-{n}" for n in itertools.count())


def sync(conn: Line) -> list[dict]:
    marker = next(_markers)
    conn.sock.sendall(b'\xff\n{"execute": "query-status", "id": "' + marker.encode() + b'"}\n')
    return conn.replies_until(marker)


def still_serving(proc, other: Line) -> None:
    assert proc.poll() is None, proc.stderr.read().decode()
    other.sock.sendall(b'{"execute": "query-status", "id": "alive"}\n')
    assert other.read() == {"return": {"status": "prelaunch", "singlestep": False,
                                       "running": False}, "id": "alive"}


scalars = (st.none() | st.booleans() | st.integers(-(1 << 70), 1 << 70)
           | st.floats(allow_nan=False, allow_infinity=False)
           | st.text(max_size=12))
values = st.recursive(scalars, lambda c: st.lists(c, max_size=3)
                      | st.dictionaries(st.text(max_size=8), c, max_size=3), max_leaves=12)
requests = st.fixed_dictionaries(
    {"execute": st.sampled_from(COMMANDS) | st.text(max_size=10)},
    optional={"arguments": st.dictionaries(
        st.sampled_from(["path", "property", "value", "id", "name", "up", "fdname",
                         "command-line", "enable", "x"]), values, max_size=3),
        "id": values, "extra": values})


def mentions_unsafe(value) -> bool:
    if isinstance(value, str):
        return value.strip() in UNSAFE or value.strip().split(" ")[0] in UNSAFE
    if isinstance(value, dict):
        return any(mentions_unsafe(k) or mentions_unsafe(v) for k, v in value.items())
    if isinstance(value, list):
        return any(mentions_unsafe(v) for v in value)
    return False


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(request=requests | values)
def test_each_complete_message_gets_one_answer(server, request):
    assume(not mentions_unsafe(request))
    proc, fuzzed, other = server
    fuzzed.sock.sendall(json.dumps(request).encode() + b"\n")
    replies = sync(fuzzed)
    # one answer for the message, then the 0xff reset's error, then the sync reply
    assert len(replies) == 3, replies
    assert "return" in replies[0] or "error" in replies[0]
    assert replies[1]["error"]["desc"].startswith("JSON parse error, stray")
    still_serving(proc, other)


@settings(max_examples=250, deadline=None, suppress_health_check=list(HealthCheck))
@given(noise=st.binary(max_size=300) | st.builds(
    lambda r, cut: json.dumps(r).encode()[:cut], requests, st.integers(0, 60)))
def test_garbage_and_truncated_messages_never_break_the_server(server, noise):
    assume(b"quit" not in noise and not any(w in noise for w in (b'"q"', b'"stop"', b'"cont"',
                                                                  b"system_", b'"c"')))
    proc, fuzzed, other = server
    fuzzed.sock.sendall(noise)
    replies = sync(fuzzed)
    assert replies[-1]["return"]["status"] == "prelaunch"
    for reply in replies:
        assert set(reply) <= {"return", "error", "id", "event", "timestamp", "data"}
    still_serving(proc, other)
