"""Real QMP clients against kvmkit: qemu.qmp (async and legacy), qmp-shell,
every transport, several monitors, events, fd passing, QOM."""

from __future__ import annotations

import array
import asyncio
import contextlib
import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
from guest import kvmkit_command
from qemu.qmp import ExecuteError, QMPClient
from qemu.qmp.legacy import QEMUMonitorProtocol

pytestmark = pytest.mark.kvm

BASE = ["-m", "128", "-nodefaults", "-display", "none", "-serial", "null"]


class Kvmkit:
    def __init__(self, tmp_path: Path, extra: list[str], stdin=subprocess.DEVNULL,
                 stdout=subprocess.DEVNULL, pass_fds=()):
        self.proc = subprocess.Popen(kvmkit_command() + BASE + extra, cwd=tmp_path,
                                     stdin=stdin, stdout=stdout, stderr=subprocess.PIPE,
                                     pass_fds=pass_fds)

    def wait_for_path(self, path: str) -> str:
        deadline = time.monotonic() + 30
        while not os.path.exists(path):
            assert self.proc.poll() is None, self.proc.stderr.read().decode()
            assert time.monotonic() < deadline, "socket never appeared"
            time.sleep(0.05)
        return path

    def close(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
        return self.proc.wait(10)


@pytest.fixture
def vm(tmp_path):
    started = []

    def start(extra, **kw):
        k = Kvmkit(tmp_path, extra, **kw)
        started.append(k)
        return k

    yield start
    for k in started:
        k.close()


def qmp_unix(vm, tmp_path, *extra, name="qmp.sock"):
    path = str(tmp_path / name)
    k = vm(["-qmp", f"unix:{path},server=on,wait=off", "-S", *extra])
    k.wait_for_path(path)
    return k, path


def test_async_client_commands_events_and_errors(vm, tmp_path):
    k, path = qmp_unix(vm, tmp_path, "-device", "isa-debug-exit,id=dbg")

    async def scenario():
        client = QMPClient("test")
        await client.connect(path)
        assert client.greeting.QMP.version["qemu"] == {"micro": 22, "minor": 2,
                                                             "major": 7}
        assert await client.execute("query-status") == {
            "status": "prelaunch", "singlestep": False, "running": False}
        with client.listener() as listener:
            await client.execute("cont")
            event = await asyncio.wait_for(listener.get(), 5)
            assert event["event"] == "RESUME" and "data" not in event
            await client.execute("stop")
            assert (await asyncio.wait_for(listener.get(), 5))["event"] == "STOP"
            await client.execute("system_reset")
            reset = await asyncio.wait_for(listener.get(), 5)
            assert reset["data"] == {"guest": False, "reason": "host-qmp-system-reset"}
            await client.execute("system_powerdown")
            assert (await asyncio.wait_for(listener.get(), 5))["event"] == "POWERDOWN"
        with pytest.raises(ExecuteError) as err:
            await client.execute("query-balloon")
        assert err.value.error_class == "DeviceNotActive"
        with pytest.raises(ExecuteError) as err:
            await client.execute("balloon", {"value": "x"})
        assert err.value.error.error.desc == "Invalid parameter type for 'value', expected: integer"
        names = {c["name"] for c in await client.execute("query-commands")}
        assert {"qmp_capabilities", "query-status", "human-monitor-command", "qom-get"} <= names
        threads = await client.execute("query-cpus-fast")
        assert threads[0]["thread-id"] > 0 and threads[0]["qom-path"].startswith("/machine")
        assert await client.execute("qom-get", {"path": "dbg", "property": "type"}) == \
            "isa-debug-exit"
        assert await client.execute("qom-get", {"path": "/machine/peripheral/dbg",
                                                "property": "iobase"}) == 0x501
        props = await client.execute("qom-list", {"path": "/machine/peripheral"})
        assert {"name": "dbg", "type": "child<isa-debug-exit>"} in props
        with pytest.raises(ExecuteError) as err:
            await client.execute("qom-get", {"path": "/machine/peripheral/nope",
                                             "property": "type"})
        assert err.value.error.error.desc == "Device '/machine/peripheral/nope' not found"
        with pytest.raises(ExecuteError) as err:
            await client.execute("device_del", {"id": "dbg"})
        assert err.value.error.error.desc == "Bus 'isa.0' does not support hotplugging"
        text = await client.execute("human-monitor-command", {"command-line": "info status"})
        assert text == "VM status: paused (prelaunch)\r\n"
        schema = await client.execute("query-qmp-schema")
        by_name = {e["name"]: e for e in schema}
        assert by_name["query-status"]["meta-type"] == "command"
        assert by_name["RESET"]["meta-type"] == "event"
        assert by_name[by_name["query-status"]["ret-type"]]["members"][0]["name"] == "running"
        with client.listener() as listener:
            await client.execute("quit")
            shutdown = await asyncio.wait_for(listener.get(), 5)
        assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
        # After quit the server hangs up, as QEMU's does; qemu.qmp reports that
        # EOF from disconnect() when it arrives first (QEMUMachine ignores it too).
        with contextlib.suppress(EOFError):
            await client.disconnect()

    asyncio.run(scenario())
    assert k.proc.wait(10) == 0


def test_legacy_client(vm, tmp_path):
    _, path = qmp_unix(vm, tmp_path)
    qmp = QEMUMonitorProtocol(path)
    greeting = qmp.connect(negotiate=True)
    assert greeting["QMP"]["capabilities"] == ["oob"]
    assert qmp.cmd_raw("query-kvm") == {"return": {"enabled": True, "present": True}}
    assert qmp.cmd("query-name") == {}
    assert qmp.cmd("cont") == {}
    assert [e["event"] for e in qmp.get_events(wait=1.0)] == ["RESUME"]
    qmp.close()


def test_qmp_shell_through_a_pipe(vm, tmp_path):
    _, path = qmp_unix(vm, tmp_path)
    shell = Path(sys.executable).with_name("qmp-shell")
    result = subprocess.run([str(shell), path], input="query-status\nquery-kvm\n",
                            capture_output=True, text=True, timeout=60)
    assert '"status": "prelaunch"' in result.stdout, result.stdout + result.stderr
    assert '"present": true' in result.stdout


def test_tcp_transport(vm, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    vm(["-qmp", f"tcp:127.0.0.1:{port},server=on,wait=off", "-S"])
    qmp = QEMUMonitorProtocol(("127.0.0.1", port))
    deadline = time.monotonic() + 30
    while True:
        try:
            qmp.connect()
            break
        except Exception:   # qemu.qmp's ConnectError: the server is not listening yet
            assert time.monotonic() < deadline
            time.sleep(0.1)
    assert qmp.cmd("query-target") == {"arch": "x86_64"}
    qmp.close()


def test_stdio_transport_and_quit_order(vm, tmp_path):
    k = vm(["-qmp", "stdio", "-S"], stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    greeting = k.proc.stdout.readline()
    assert greeting.startswith(b'{"QMP": {"version": {"qemu": {"micro": 22, "minor": 2,')
    assert greeting.endswith(b"\r\n")
    k.proc.stdin.write(b'{"execute": "qmp_capabilities"}\n{"execute": "quit"}\n')
    k.proc.stdin.flush()
    assert k.proc.stdout.readline() == b'{"return": {}}\r\n'
    shutdown = json.loads(k.proc.stdout.readline())
    assert shutdown["event"] == "SHUTDOWN"
    assert shutdown["data"] == {"guest": False, "reason": "host-qmp-quit"}
    assert k.proc.stdout.readline() == b'{"return": {}}\r\n'
    assert k.proc.stdout.readline() == b""          # then EOF
    assert k.proc.wait(10) == 0


def test_chardev_mon_and_several_monitors_get_events(vm, tmp_path):
    a, b = str(tmp_path / "a.sock"), str(tmp_path / "b.sock")
    k = vm(["-chardev", f"socket,id=mon0,path={a},server=on,wait=off",
            "-mon", "chardev=mon0,mode=control",
            "-qmp", f"unix:{b},server=on,wait=off", "-S"])
    k.wait_for_path(a)
    k.wait_for_path(b)
    first, second = QEMUMonitorProtocol(a), QEMUMonitorProtocol(b)
    first.connect()
    second.connect()
    first.cmd("cont")
    assert [e["event"] for e in second.get_events(wait=2.0)] == ["RESUME"]
    assert [e["event"] for e in first.get_events(wait=1.0)] == ["RESUME"]
    labels = {c["label"] for c in second.cmd("query-chardev")}
    assert {"mon0", "compat_monitor0"} <= labels
    first.close()
    second.close()


def test_inherited_listening_fd(vm, tmp_path):
    path = str(tmp_path / "inherited.sock")
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(path)
    listener.listen(1)
    fd = listener.fileno()
    vm(["-chardev", f"socket,id=m,fd={fd},server=on,wait=off", "-mon", "chardev=m,mode=control",
        "-S"], pass_fds=[fd])
    qmp = QEMUMonitorProtocol(path)
    qmp.connect()
    assert qmp.cmd("query-status")["status"] == "prelaunch"
    qmp.close()
    listener.close()


def send_with_fd(sock: socket.socket, data: bytes, fd: int) -> None:
    sock.sendmsg([data], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [fd]))])


def test_getfd_and_closefd_with_scm_rights(vm, tmp_path):
    k, path = qmp_unix(vm, tmp_path)
    sock = socket.socket(socket.AF_UNIX)
    sock.connect(path)
    f = sock.makefile("rb")
    f.readline()
    sock.sendall(b'{"execute": "qmp_capabilities"}\n')
    f.readline()
    sock.sendall(b'{"execute": "getfd", "arguments": {"fdname": "x"}}\n')
    assert json.loads(f.readline())["error"]["desc"] == \
        "No file descriptor supplied via SCM_RIGHTS"
    r, w = os.pipe()
    send_with_fd(sock, b'{"execute": "getfd", "arguments": {"fdname": "mypipe"}}\n', r)
    os.close(r)
    assert json.loads(f.readline()) == {"return": {}}
    fds_before = len(os.listdir(f"/proc/{k.proc.pid}/fd"))
    sock.sendall(b'{"execute": "closefd", "arguments": {"fdname": "mypipe"}}\n')
    assert json.loads(f.readline()) == {"return": {}}
    assert len(os.listdir(f"/proc/{k.proc.pid}/fd")) == fds_before - 1
    sock.sendall(b'{"execute": "closefd", "arguments": {"fdname": "mypipe"}}\n')
    assert json.loads(f.readline())["error"]["desc"] == \
        "File descriptor named 'mypipe' not found"
    os.close(w)
    sock.close()
