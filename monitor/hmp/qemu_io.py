"""HMP qemu-io: a few of qemu-io's commands run on a drive or node (read, write,
discard, flush, length), for tests and debugging. As in QEMU, what the command
prints goes to kvmkit's standard output; only errors reach the monitor."""

from __future__ import annotations

import asyncio
import shlex
import sys
import time

from monitor.commands.devices import find_device
from monitor.errors import QmpError
from monitor.hmp.table import HmpContext, hmp
from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_size


class _NodeWriter:
    """A node without a drive, written as a temporary BlockBackend would: its
    observers (dirty bitmaps, jobs) see the write."""

    def __init__(self, node) -> None:
        self.node = node

    def read_into(self, offset, buffers):
        self.node.image.read_into(offset, buffers)

    def _observed(self, offset, length, call):
        for observer in list(self.node.observers):
            observer.before_write(offset, length)
        call()
        for observer in list(self.node.observers):
            observer.after_write(offset, length)

    def write(self, offset, data):
        self._observed(offset, len(data), lambda: self.node.image.write(offset, data))

    def write_zeroes(self, offset, length, may_unmap):
        self._observed(offset, length,
                       lambda: self.node.image.write_zeroes(offset, length, may_unmap))

    def discard(self, offset, length):
        self._observed(offset, length, lambda: self.node.image.discard(offset, length))

    def flush(self):
        self.node.image.flush()

    @property
    def size(self):
        return self.node.image.size


def _size(text: str) -> int:
    try:
        return parse_size(text)
    except OptsError:
        raise UserError(f"non-numeric length argument -- {text}") from None


def _human(n: int) -> str:
    for unit, scale in (("GiB", 1 << 30), ("MiB", 1 << 20), ("KiB", 1 << 10)):
        if n >= scale:
            value = n / scale
            return f"{value:.0f} {unit}" if value == int(value) else f"{value:.3g} {unit}"
    return f"{n} bytes"


def _run(target, words: list[str]) -> str:
    """One qemu-io command; returns what qemu-io prints."""
    command, flags, rest = words[0], {}, []
    i = 1
    while i < len(words):
        word = words[i]
        if word in ("-P",) and i + 1 < len(words):
            flags[word] = int(words[i + 1], 0)
            i += 2
            continue
        if word.startswith("-") and len(word) == 2 and not word[1].isdigit():
            flags[word] = True
        else:
            rest.append(word)
        i += 1
    started = time.monotonic()
    if command in ("flush", "aio_flush"):
        target.flush()
        return ""
    if command == "length":
        return f"{_human(target.size)}\n"
    if command not in ("read", "write", "discard"):
        return f"command \"{command}\" not found\n"
    if len(rest) != 2:
        return f"bad number of arguments to \"{command}\"\n"
    offset, length = _size(rest[0]), _size(rest[1])
    if offset + length > target.size:
        return f"{command} failed: Input/output error\n"
    verb = {"read": "read", "write": "wrote", "discard": "discard"}[command]
    if command == "read":
        buf = bytearray(length)
        target.read_into(offset, [memoryview(buf)])
        if "-P" in flags and buf != bytes([flags["-P"]]) * length:
            bad = next(i for i, b in enumerate(buf) if b != flags["-P"])
            return f"Pattern verification failed at offset {offset + bad}, {length} bytes\n"
    elif command == "write" and "-z" in flags:
        target.write_zeroes(offset, length, "-u" in flags)
    elif command == "write":
        target.write(offset, bytes([flags.get("-P", 0xCD)]) * length)
    else:
        target.discard(offset, length)
    took = time.monotonic() - started
    return (f"{verb} {length}/{length} bytes at offset {offset}\n"
            f"{_human(length)}, 1 ops; {took:08.4f} sec "
            f"({_human(int(length / max(took, 1e-9)))}/sec and "
            f"{1 / max(took, 1e-9):.4f} ops/sec)\n")


@hmp("qemu-io", "qdev:-d,device:B,command:s", "[-d] [device] \"[command]\"",
     "run a qemu-io command on a block device\n\t\t\t-d: [device] is a device ID rather "
     "than a drive ID or node name")
async def qemu_io_cmd(ctx: HmpContext, args: dict) -> str:
    machine, name = ctx.machine, args["device"]
    with machine.lock:
        block = machine.block
        if args["qdev"]:
            try:
                device = find_device(machine, name)
            except QmpError:
                return f"Error: Device '{name}' not found\n"
            # QEMU's drive is on the device itself (ide-hd), not on a virtio proxy
            drive = None if device.driver.startswith("virtio-") else \
                machine.block.drive_of_device(device)
            if drive is None:
                return "Error: Device does not have a block device backend\n"
            target = drive
        else:
            drive = block.find_drive(name)
            node = block.graph.find(name) if drive is None else None
            if drive is None and node is None:
                return f"Error: Cannot find device='' nor node-name='{name}'\n"
            target = drive if drive is not None else _NodeWriter(node)
    try:
        words = shlex.split(args["command"])
    except ValueError:
        return ""
    if not words:
        return ""
    try:
        out = await asyncio.to_thread(_run, target, words)
    except (OSError, UserError) as e:
        out = f"{words[0]} failed: {getattr(e, 'strerror', None) or e}\n"
    sys.stdout.write(out)
    sys.stdout.flush()
    return ""
