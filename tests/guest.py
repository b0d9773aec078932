"""Runs a VMM (kvmkit or QEMU) on a guest and talks to it over COM1 on stdio.

Both VMMs get the same machine options, so a probe-guest scenario written
once runs on each: QEMU 7.2 is the reference, kvmkit must give the same answers.
"""

from __future__ import annotations

import json
import os
import queue
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"


def kvmkit_command() -> list[str]:
    script = Path(sys.executable).with_name("kvmkit")
    if script.exists():
        return [str(script)]
    found = shutil.which("kvmkit")
    if found:
        return [found]
    return [sys.executable, "-m", "qmp"]


def probe_elf() -> str:
    from vmm.probe import elf_path
    return str(elf_path())


class GuestError(AssertionError):
    pass


class Vmm:
    """A VMM process whose stdout is the guest's COM1 and stdin its input."""

    def __init__(self, argv: list[str], cwd: str | None = None, preexec_fn=None,
                 pass_fds: tuple[int, ...] = ()) -> None:
        self.argv = argv
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, cwd=cwd, preexec_fn=preexec_fn,
                                     pass_fds=pass_fds)
        self.lines: queue.Queue[bytes | None] = queue.Queue()
        self.stderr_chunks: list[bytes] = []
        self.transcript: list[str] = []
        threading.Thread(target=self._pump_stdout, daemon=True).start()
        threading.Thread(target=self._pump_stderr, daemon=True).start()
        self.started = time.monotonic()

    def _pump_stdout(self) -> None:
        for line in self.proc.stdout:
            self.lines.put(line)
        self.lines.put(None)

    def _pump_stderr(self) -> None:
        for chunk in iter(lambda: self.proc.stderr.read1(4096), b""):
            self.stderr_chunks.append(chunk)

    @property
    def stderr(self) -> str:
        return b"".join(self.stderr_chunks).decode(errors="replace")

    def read_line(self, timeout: float) -> str:
        try:
            line = self.lines.get(timeout=timeout)
        except queue.Empty:
            raise GuestError(f"no output within {timeout}s; transcript={self.transcript[-5:]} "
                             f"stderr={self.stderr!r}") from None
        if line is None:
            self.lines.put(None)
            raise GuestError(f"VMM output ended (rc={self.proc.poll()}); "
                             f"transcript={self.transcript[-5:]} stderr={self.stderr!r}")
        text = line.decode(errors="replace").rstrip("\r\n")
        self.transcript.append(text)
        return text

    def read_json(self, timeout: float) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            text = self.read_line(max(deadline - time.monotonic(), 0.01))
            if text.startswith("{"):
                return json.loads(text)

    def wait_event(self, name: str, timeout: float = 30) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read_json(max(deadline - time.monotonic(), 0.01))
            if msg.get("event") == name:
                return msg

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def command(self, text: str, timeout: float = 30) -> dict:
        """Sends one probe command; returns its (non-event) JSON answer."""
        self.send(text)
        deadline = time.monotonic() + timeout
        while True:
            msg = self.read_json(max(deadline - time.monotonic(), 0.01))
            if "event" not in msg:
                return msg

    def wait_exit(self, timeout: float = 30) -> int:
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            raise GuestError(f"VMM did not exit within {timeout}s") from None

    def close(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        for f in (self.proc.stdin, self.proc.stdout, self.proc.stderr):
            try:
                f.close()
            except OSError:
                pass


def machine_args(memory_mib: int = 256, cpus: int = 1, kernel: str | None = None,
                 extra: list[str] | None = None) -> list[str]:
    return ["-m", str(memory_mib), "-smp", str(cpus), "-nodefaults", "-display", "none",
            "-serial", "stdio", "-device", "isa-debug-exit",
            "-kernel", kernel or probe_elf(), *(extra or [])]


def start_kvmkit(args: list[str], cwd: str | None = None, preexec_fn=None) -> Vmm:
    return Vmm(kvmkit_command() + args, cwd=cwd, preexec_fn=preexec_fn)


def start_qemu(args: list[str], cwd: str | None = None, preexec_fn=None) -> Vmm:
    return Vmm([QEMU, "-accel", "kvm", *args], cwd=cwd, preexec_fn=preexec_fn)


def free_vnc_display() -> int:
    """A VNC display whose port is free on IPv4 and IPv6 (":N" listens on both)."""
    import socket

    with socket.socket(socket.AF_INET6) as s:
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.bind(("::", 0))
        port = s.getsockname()[1]
    return port - 5900 if port > 5900 else free_vnc_display()


def kvm_usable() -> bool:
    return os.access("/dev/kvm", os.R_OK | os.W_OK)


def start_with_qmp(argv: list[str], *sockets: str, preexec_fn=None) -> subprocess.Popen:
    """Starts a VMM with a QMP server on each unix socket path; returns once they exist."""
    extra = []
    for path in sockets:
        extra += ["-qmp", f"unix:{path},server=on,wait=off"]
    proc = subprocess.Popen(argv + extra, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, preexec_fn=preexec_fn)
    deadline = time.monotonic() + 30
    while not all(os.path.exists(p) for p in sockets):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise GuestError(f"{argv[0]} did not open its QMP sockets")
        time.sleep(0.05)
    return proc


def connect_unix(path: str, deadline: float):
    """A socket connected to a VMM's unix socket, retried until ``deadline`` (a
    time.monotonic() value): the socket file is made (bind) just before listen."""
    import socket

    sock = socket.socket(socket.AF_UNIX)
    while True:
        try:
            sock.connect(path)
            return sock
        except ConnectionRefusedError:
            if time.monotonic() > deadline:
                sock.close()
                raise
            time.sleep(0.05)


class QmpLine:
    """A minimal line-based QMP client for tests: negotiates, then runs commands,
    keeping any events that arrive in between."""

    def __init__(self, path: str) -> None:

        self.sock = connect_unix(path, time.monotonic() + 10)
        self.file = self.sock.makefile("rb")
        self.file.readline()
        self.events: list[dict] = []
        self.execute("qmp_capabilities")

    def execute(self, command: str, /, **args) -> dict:
        msg: dict = {"execute": command}
        if args:
            msg["arguments"] = args
        self.sock.sendall(json.dumps(msg).encode() + b"\n")
        while True:
            reply = json.loads(self.file.readline())
            if "event" not in reply:
                return reply
            self.events.append(reply)

    def hmp(self, line: str) -> str:
        reply = self.execute("human-monitor-command", **{"command-line": line})
        assert "return" in reply, (line, reply)
        return reply["return"]


def qmp_answers(argv: list[str], sock: str, commands: list[tuple[str, dict]]) -> list[dict]:
    """Starts a VMM stopped (-S, no devices, no display), runs each (command, arguments)
    over QMP and returns the replies: the same questions for kvmkit and for QEMU."""
    proc = start_with_qmp(argv + ["-S", "-display", "none", "-nodefaults"], sock)
    try:
        qmp = QmpLine(sock)
        return [qmp.execute(name, **args) for name, args in commands]
    finally:
        proc.kill()
        proc.wait()
