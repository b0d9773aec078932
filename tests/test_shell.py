"""kvmkit-shell against kvmkit and against a live QEMU 7.2, in scripts and in a pty."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest import QEMU, kvmkit_command
from guest import start_with_qmp as start

pytestmark = pytest.mark.kvm

SHELL = str(Path(sys.executable).with_name("kvmkit-shell"))




@pytest.fixture
def vmms(tmp_path):
    procs = []

    def launch(kind: str, *socks: str) -> subprocess.Popen:
        base = kvmkit_command() if kind == "kvmkit" else [QEMU, "-accel", "kvm"]
        proc = start(base + ["-m", "128", "-nodefaults", "-display", "none", "-S"], *socks)
        procs.append(proc)
        return proc

    yield launch
    for proc in procs:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(10)


def shell(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SHELL, *args], capture_output=True, text=True, timeout=60)


def test_one_shot_against_kvmkit_and_qemu(vmms, tmp_path, vmm_kind):
    sock = str(tmp_path / "m.sock")
    vmms(vmm_kind, sock)
    result = shell(sock, "-c", "info status", "-c", "info kvm", "-c", "foobar")
    assert result.returncode == 0, result.stderr
    assert result.stdout == ("VM status: paused (prelaunch)\nkvm support: enabled\n"
                             "unknown command: 'foobar'\n")


def test_rich_tables(vmms, tmp_path):
    sock = str(tmp_path / "m.sock")
    vmms("kvmkit", sock)
    result = shell(sock, "--rich", "-c", "info status", "-c", "info pci")
    assert result.returncode == 0, result.stderr
    assert "prelaunch" in result.stdout and "│" in result.stdout
    assert "8086:7113" in result.stdout and "Host bridge" in result.stdout


def test_tcp_address_and_connection_errors(vmms, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(kvmkit_command() + ["-m", "64", "-nodefaults", "-S", "-qmp",
                                                f"tcp:127.0.0.1:{port},server=on,wait=off"],
                            stdin=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            result = shell(f"127.0.0.1:{port}", "-c", "info name")
            if result.returncode == 0 or time.monotonic() > deadline:
                break
            time.sleep(0.2)
        assert result.returncode == 0 and result.stdout == ""
    finally:
        proc.terminate()
        proc.wait(10)
    failed = shell(str(tmp_path / "nothing.sock"), "-c", "info status")
    assert failed.returncode == 1 and failed.stderr.startswith("kvmkit-shell: cannot connect")


class Tmux:
    """A real terminal: tmux runs the program; capture-pane shows the screen."""

    def __init__(self, name: str, command: list[str]) -> None:
        self.name = name
        subprocess.run(["tmux", "new-session", "-d", "-s", name, "-x", "120", "-y", "40",
                        "env", "PROMPT_TOOLKIT_NO_CPR=1", *command], check=True)

    def screen(self) -> str:
        return subprocess.run(["tmux", "capture-pane", "-p", "-t", self.name],
                              capture_output=True, text=True).stdout

    def keys(self, *keys: str) -> None:
        subprocess.run(["tmux", "send-keys", "-t", self.name, *keys], check=True)

    def wait_for(self, text: str, timeout: float = 20) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; screen:\n{self.screen()}")

    def alive(self) -> bool:
        return subprocess.run(["tmux", "has-session", "-t", self.name],
                              capture_output=True).returncode == 0

    def close(self) -> None:
        subprocess.run(["tmux", "kill-session", "-t", self.name], capture_output=True)


def test_interactive_completion_history_events_and_quit(vmms, tmp_path, vmm_kind):
    sock, other = str(tmp_path / "shell.sock"), str(tmp_path / "other.sock")
    vm = vmms(vmm_kind, sock, other)
    history = tmp_path / "history"
    term = Tmux(f"kvmkit-shell-{os.getpid()}-{vmm_kind}",
                [SHELL, sock, "--history", str(history)])
    try:
        term.wait_for("(qemu)")
        term.keys("info statu", "Tab")                 # completes the subcommand
        term.wait_for("(qemu) info status")
        term.keys("Enter")
        term.wait_for("VM status: paused (prelaunch)")
        term.keys("Up")                                # history recalls it
        deadline = time.monotonic() + 10
        while term.screen().count("(qemu) info status") < 2:
            assert time.monotonic() < deadline, term.screen()
            time.sleep(0.1)
        term.keys("C-u")
        # An event raised by another client appears while the shell sits idle.
        peer = socket.socket(socket.AF_UNIX)
        peer.connect(other)
        peer.recv(4096)
        peer.sendall(b'{"execute": "qmp_capabilities"}\n{"execute": "cont"}\n')
        term.wait_for("event RESUME")
        term.keys("quit", "Enter")
        assert vm.wait(10) == 0
        deadline = time.monotonic() + 10
        while term.alive() and time.monotonic() < deadline:
            time.sleep(0.1)
        assert not term.alive(), "the shell should end when the VM quits"
        assert "info status" in history.read_text()
        peer.close()
    finally:
        term.close()


def test_qmp_lines_and_completion_from_the_schema(vmms, tmp_path, vmm_kind):
    """`qmp COMMAND arg=value` runs QMP; completion offers QMP commands, their
    arguments and enum values as the server's query-qmp-schema describes them."""
    import asyncio

    from shell.client import Connection
    from shell.completion import ShellCompleter, Vocabulary

    sock = str(tmp_path / "m.sock")
    vmms(vmm_kind, sock)
    result = shell(sock, "-c", "qmp query-status", "-c", "qmp qom-get "
                   "path=/machine property=type")
    assert result.returncode == 0, result.stderr
    assert '"status": "prelaunch"' in result.stdout
    assert '"pc-i440fx-7.2-machine"' in result.stdout

    async def complete() -> dict:
        conn = Connection()
        await conn.connect(sock)
        try:
            vocab = Vocabulary()
            await vocab.refresh(conn)
        finally:
            await conn.close()
        completer = ShellCompleter(vocab)
        return {text: completer.candidates(text) for text in (
            "qmp query-sta", "qmp device-list-properties ", "qmp set_link name=n0 ",
            "qmp query-cpu-model-expansion type=")}
    got = asyncio.run(complete())
    assert "query-status" in got["qmp query-sta"]
    assert got["qmp device-list-properties "] == ["typename="]
    assert got["qmp set_link name=n0 "] == ["up="]
    assert got["qmp query-cpu-model-expansion type="] == [
        "type=static", "type=full"]
