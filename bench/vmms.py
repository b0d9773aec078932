"""What the benchmarks here share: both VMMs' commands, the probe guest, and a
probe guest's console (its COM1 on the process's stdin and stdout, one JSON
line per answer). Run each benchmark as ``.venv/bin/python bench/NAME.py``."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

QEMU = "qemu-system-x86_64"


def kvmkit_cmd() -> list[str]:
    script = Path(sys.executable).with_name("kvmkit")
    return [str(script)] if script.exists() else [sys.executable, "-m", "qmp"]


def probe() -> str:
    from vmm.probe import elf_path
    return str(elf_path())


def vmms() -> dict[str, list[str]]:
    """kvmkit, and QEMU 7.2 with KVM where it is installed: side by side."""
    found = {"kvmkit": kvmkit_cmd()}
    if shutil.which(QEMU):
        found["qemu"] = [QEMU, "-accel", "kvm"]
    return found


class ProbeConsole:
    """A VMM process whose stdin and stdout are the probe guest's COM1."""

    def __init__(self, argv: list[str]) -> None:
        self.proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                     stderr=subprocess.DEVNULL)

    def wait_for(self, marker: str) -> dict:
        for line in self.proc.stdout:
            if marker.encode() in line:
                return json.loads(line)
        raise RuntimeError("the guest went away")

    def send(self, text: str) -> None:
        self.proc.stdin.write(text.encode() + b"\n")
        self.proc.stdin.flush()

    def command(self, text: str) -> dict:
        self.send(text)
        return self.wait_for("{")

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()


class QmpProbe(ProbeConsole):
    """A probe guest with a QMP socket too (connected once the socket exists)."""

    def __init__(self, argv: list[str], qmp_path: str) -> None:
        super().__init__(argv + ["-qmp", f"unix:{qmp_path},server=on,wait=off"])
        while not os.path.exists(qmp_path):
            if self.proc.poll() is not None:
                raise RuntimeError(f"{argv[0]} exited")
            time.sleep(0.02)
        self.qmp = socket.socket(socket.AF_UNIX)
        self.qmp.connect(qmp_path)
        self.qmp_file = self.qmp.makefile("rb")
        self.qmp_file.readline()
        self.execute("qmp_capabilities")

    def execute(self, name: str, **args) -> dict:
        self.qmp.sendall(json.dumps({"execute": name, "arguments": args}).encode() + b"\n")
        while True:
            reply = json.loads(self.qmp_file.readline())
            if "event" not in reply:
                return reply

    def close(self) -> None:
        self.qmp.close()
        super().close()
