"""Character back ends, and the process behaviour around a running VM:
pidfile, daemonize, log file, signals, a missing /dev/kvm."""

from __future__ import annotations

import json
import os
import re
import signal
import socket
import subprocess
import time

import pytest
from guest import kvmkit_command, probe_elf
from tinyguests import pvh_serial_guest

pytestmark = pytest.mark.kvm

BASE = ["-m", "128", "-nodefaults", "-display", "none", "-device", "isa-debug-exit"]


def kvmkit(args, tmp_path, **kw):
    return subprocess.Popen(kvmkit_command() + BASE + args, cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, **kw)


def wait_for(predicate, timeout=30.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError("timed out")


class Line:
    """Line-oriented JSON over a socket or fd."""

    def __init__(self, read, write):
        self.read, self.write, self.buf = read, write, b""

    def json(self, timeout=30.0):
        """The next whole JSON line (a client that joins mid-line sees a fragment first)."""
        deadline = time.monotonic() + timeout
        while True:
            while b"\n" not in self.buf:
                if time.monotonic() > deadline:
                    raise AssertionError(f"no line; got {self.buf!r}")
                chunk = self.read()
                if chunk:
                    self.buf += chunk
                else:
                    time.sleep(0.02)
            line, self.buf = self.buf.split(b"\n", 1)
            if line.startswith(b"{"):
                return json.loads(line)

    def sync(self, timeout=30.0):
        """Waits until the guest answers: input sent before it set up its UART is lost."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            self.write(b"echo sync\n")
            try:
                while self.json(timeout=1.0) != {"echo": "sync"}:
                    pass
                return
            except AssertionError:
                continue
        raise AssertionError("the guest never answered")

    def command(self, text):
        self.write(text.encode() + b"\n")
        while True:
            msg = self.json()
            if "event" not in msg:
                return msg


def socket_line(sock):
    sock.settimeout(0.2)

    def read():
        try:
            return sock.recv(4096)
        except TimeoutError:
            return b""

    return Line(read, sock.sendall)


def test_serial_to_a_file(tmp_path):
    out = tmp_path / "console.log"
    guest = tmp_path / "g.elf"
    guest.write_bytes(pvh_serial_guest(b"to the file\n", 1))
    proc = kvmkit(["-kernel", str(guest), "-serial", f"file:{out}"], tmp_path)
    assert proc.wait(30) == 3
    assert out.read_text() == "to the file\n"


def test_unix_socket_server_serial_accepts_a_client(tmp_path):
    path = str(tmp_path / "serial.sock")
    proc = kvmkit(["-kernel", probe_elf(), "-chardev",
                   f"socket,id=s0,path={path},server=on,wait=off", "-serial", "chardev:s0"],
                  tmp_path)
    try:
        wait_for(lambda: os.path.exists(path))
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        line = socket_line(sock)
        line.sync()
        assert line.command("echo over unix") == {"echo": "over unix"}
        sock.close()
        # One client at a time, and a new one is accepted after the first leaves.
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        assert socket_line(sock).command("echo again") == {"echo": "again"}
        sock.sendall(b"exit 2\n")
        assert proc.wait(30) == 5
    finally:
        proc.kill()
        proc.wait()


def test_tcp_server_serial_waits_for_its_client(tmp_path):
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    proc = kvmkit(["-kernel", probe_elf(), "-serial",
                   f"tcp:127.0.0.1:{port},server=on,wait=on"], tmp_path)
    try:
        sock = wait_for(lambda: _try_connect(port))
        line = socket_line(sock)
        assert line.json()["event"] == "ready"   # wait=on: nothing ran before we came
        assert line.command("info")["cpus"] == 1
    finally:
        proc.kill()
        proc.wait()


def _try_connect(port):
    try:
        return socket.create_connection(("127.0.0.1", port), timeout=1)
    except OSError:
        return None


def test_socket_client_serial_connects_out(tmp_path):
    path = str(tmp_path / "listener.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    proc = kvmkit(["-kernel", probe_elf(), "-chardev", f"socket,id=c,path={path}",
                   "-serial", "chardev:c"], tmp_path)
    try:
        listener.settimeout(30)
        conn, _ = listener.accept()
        line = socket_line(conn)
        assert line.json()["event"] == "ready"
        assert line.command("echo client") == {"echo": "client"}
    finally:
        proc.kill()
        proc.wait()
        listener.close()


def test_inherited_listening_fd(tmp_path):
    listener = socket.socket(socket.AF_UNIX)
    path = str(tmp_path / "inherited.sock")
    listener.bind(path)
    listener.listen(1)
    fd = listener.fileno()
    proc = kvmkit(["-kernel", probe_elf(), "-chardev",
                   f"socket,id=s,fd={fd},server=on,wait=off", "-serial", "chardev:s"],
                  tmp_path, pass_fds=[fd])
    try:
        sock = socket.socket(socket.AF_UNIX)
        sock.connect(path)
        line = socket_line(sock)
        line.sync()
        assert line.command("echo inherited") == {"echo": "inherited"}
    finally:
        proc.kill()
        proc.wait()
        listener.close()


def test_pty_serial(tmp_path):
    proc = kvmkit(["-kernel", probe_elf(), "-serial", "pty"], tmp_path)
    try:
        first = proc.stderr.readline().decode()
        match = re.match(r"char device redirected to (/dev/pts/\d+) \(label serial0\)", first)
        assert match, first
        fd = os.open(match.group(1), os.O_RDWR | os.O_NOCTTY | os.O_NONBLOCK)
        import tty
        tty.setraw(fd)

        def read():
            try:
                return os.read(fd, 4096)
            except BlockingIOError:
                return b""

        line = Line(read, lambda data: os.write(fd, data))
        line.sync()
        assert line.command("echo pty") == {"echo": "pty"}
        os.close(fd)
    finally:
        proc.kill()
        proc.wait()


def test_pidfile_daemonize_logfile_and_sigterm(tmp_path):
    pidfile = tmp_path / "kvmkit.pid"
    out = tmp_path / "console.log"
    log = tmp_path / "kvmkit.log"
    result = subprocess.run(kvmkit_command() + BASE + [
        "-kernel", probe_elf(), "-serial", f"file:{out}", "-pidfile", str(pidfile),
        "-daemonize", "-D", str(log)], cwd=tmp_path, capture_output=True, timeout=30)
    assert result.returncode == 0, result.stderr
    pid = int(pidfile.read_text())
    try:
        assert pid != os.getpid()
        os.kill(pid, 0)
        wait_for(lambda: b"ready" in out.read_bytes())
        os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not pidfile.exists())
        assert log.exists()
    finally:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_sigterm_ends_the_vmm_with_status_0(tmp_path):
    proc = kvmkit(["-kernel", probe_elf(), "-serial", "null"], tmp_path)
    time.sleep(1)
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0
    assert b"terminating on signal 15" in proc.stderr.read()


def test_sigterm_ends_the_vmm_whose_parent_is_gone(tmp_path):
    """The test harness that started it died: its stdout and stderr are pipes no one
    reads. SIGTERM must still end it (the message it cannot print must not stop
    it; found by a killed fuzz campaign whose VMMs outlived it)."""
    read_end, write_end = os.pipe()
    proc = subprocess.Popen(kvmkit_command() + BASE + ["-kernel", probe_elf(), "-serial",
                                                       "stdio"], cwd=tmp_path,
                            stdin=subprocess.DEVNULL, stdout=write_end, stderr=write_end)
    os.close(write_end)
    time.sleep(1)
    os.close(read_end)                                  # the reader is gone
    proc.send_signal(signal.SIGTERM)
    assert proc.wait(30) == 0


def test_daemonize_refuses_stdio():
    result = subprocess.run(kvmkit_command() + BASE + ["-serial", "stdio", "-daemonize"],
                            capture_output=True, text=True, timeout=30)
    assert result.returncode == 1
    assert result.stderr.startswith("kvmkit: -daemonize cannot be used with")



@pytest.mark.parametrize("stdin_kind", ["devnull", "file"])
def test_serial_stdio_with_a_stdin_epoll_refuses(tmp_path, stdin_kind):
    """stdin from /dev/null or a regular file (as test harnesses run VMMs): it runs."""
    guest = tmp_path / "g.elf"
    guest.write_bytes(pvh_serial_guest(b"stdin is not a tty\n", 2))
    source = tmp_path / "input.txt"
    source.write_text("typed ahead\n")
    with open(os.devnull if stdin_kind == "devnull" else source, "rb") as stdin:
        proc = subprocess.run(kvmkit_command() + BASE + ["-kernel", str(guest), "-serial",
                                                         "stdio"],
                              stdin=stdin, capture_output=True, timeout=30, cwd=tmp_path)
    assert proc.stdout == b"stdin is not a tty\n"
    assert b"Traceback" not in proc.stderr
    assert proc.returncode == 5
