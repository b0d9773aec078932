"""QMP fuzzing with QEMU 7.2 as the oracle (#17): messages built from QEMU's own
schema, valid and mutated, go to kvmkit and to QEMU, started alike; where QEMU
has the command, the two answers must agree (return or error, the error's
class and text, the id). Neither side may hang or die.

The messages come from a `Chooser`: hypothesis drives it in the CI test
(tests/test_qmp_oracle.py, a stateful machine), a seeded PRNG in the campaign
(`python tests/qmp_oracle.py --messages N --seed S`), which sends them in
pipelined batches to go fast. Either way a run is replayed by its seed.

What is not compared, and why:
- commands kvmkit does not have yet (#20): only kvmkit is asked, and it must
  answer CommandNotFound with QEMU's text;
- return values (they describe two different processes): only that both returned;
- a message naming an id that one side made and the other refused (`tainted`):
  the first difference is the finding, its echoes are not.
"""

from __future__ import annotations

import ctypes
import json
import os
import random
import re
import selectors
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from guest import QEMU, connect_unix, kvmkit_command  # noqa: E402
from qmp_replay import REFERENCE  # noqa: E402

SCHEMA = json.loads(json.loads((REFERENCE / "03b_query_qmp_schema.json").read_text())
                    [0]["recv"][0])["return"]
VMM_ARGS = ["-S", "-nodefaults", "-display", "none", "-no-shutdown", "-m", "128",
            "-netdev", "user,id=n0", "-device", "e1000,netdev=n0,id=net0",
            "-device", "virtio-balloon-pci,id=balloon0",
            "-object", "iothread,id=io0"]

# Commands that end the VM, change its run state or start something long: they
# are sent only with an argument no command takes, which both must refuse first.
RUN_CONTROL = {"quit", "stop", "cont", "system_reset", "system_powerdown", "system_wakeup",
               "migrate", "migrate-incoming", "migrate-pause", "x-exit-preconfig",
               "snapshot-save", "snapshot-load", "snapshot-delete", "migrate_cancel"}
# Members whose values reach the host (files, programs, memory): from safe pools only.
PATHS = ["", "nonexistent.img", "/nonexistent/dir/x", "fuzz-file", "/dev/null"]
HOST_MEMBERS = {"filename": PATHS, "file": PATHS, "mem-path": PATHS, "dir": PATHS,
                "script": ["no", ""], "downscript": ["no", ""], "helper": ["/bin/false"],
                "uri": ["", "tcp:", "nosuch:x", "unix:"], "protocol": ["", "nosuch:x"],
                "prealloc": [False], "size": [0, 1, 4096, 1 << 20, 64 << 20, -1, 1 << 62]}
# Plausible strings for members the VMMs look up by name.
NAMES = {
    "driver": ["e1000", "virtio-net-pci", "rtl8139", "virtio-balloon-pci", "virtio-rng-pci",
               "virtio-blk-pci", "isa-serial", "pci-bridge", "nosuch", "container", "device",
               "virtio-serial-pci", "ide-hd", "VGA", "i440FX-pcihost", "e1000e", "null-co",
               "raw", "qcow2", "file"],
    "typename": ["e1000", "virtio-net-pci", "device", "nosuch", "object", "iothread",
                 "rng-random", "memory-backend-ram", "container", "pci-device"],
    "qom-type": ["iothread", "rng-random", "rng-builtin", "memory-backend-ram", "secret",
                 "throttle-group", "nosuch", "container"],
    "path": ["/machine", "/machine/peripheral", "/machine/peripheral/net0", "/objects",
             "/objects/io0", "/machine/peripheral/balloon0", "/machine/unattached",
             "/machine/i440fx", "net0", "balloon0", "/nosuch", "", "/"],
    "property": ["type", "realized", "mac", "netdev", "guest-stats-polling-interval",
                 "guest-stats", "poll-max-ns", "nosuch", "parent_bus", "addr", ""],
    "name": ["n0", "net0", "balloon0", "io0", "nosuch", "max-bandwidth", ""],
    "netdev": ["n0", "n1", "nosuch", ""], "bus": ["pci.0", "nosuch", "ide.0", ""],
    "command-line": ["info status", "info network", "info balloon", "info pci", "info qtree",
                     "info nosuch", "nosuch", "", "info", "balloon 64", "balloon",
                     "set_link n0 off", "set_link", "device_del nosuch", "info mtree",
                     "info kvm", "info name", "info version", "info uuid", "info chardev",
                     "info block", "info cpus", "info registers", "netdev_del nosuch",
                     "info migrate", "info iothreads", "x 0", "xp /4x 0", "info history"],
}
IDS = ["n0", "net0", "balloon0", "io0", "fz0", "fz1", "fz2", "fz3", "9bad", "bad id!", "",
       "nosuch"]
ID_MEMBERS = {"id", "node-name", "device", "job-id", "fdname", "node", "qdev", "netdev",
              "chardev", "iothread", "name"}


class Chooser(Protocol):
    def integer(self, lo: int, hi: int) -> int: ...


class RandomChooser:
    def __init__(self, seed: int) -> None:
        self.random = random.Random(seed)

    def integer(self, lo: int, hi: int) -> int:
        return self.random.randint(lo, hi)


@dataclass
class MessageMaker:
    """Builds messages from QEMU's schema; `chooser` decides every choice."""
    chooser: Chooser
    ours: set[str]                                    # the commands kvmkit has
    ids: list[str] = field(default_factory=lambda: list(IDS))   # grows with what is made
    by_name: dict[str, dict] = field(default_factory=lambda: {e["name"]: e for e in SCHEMA})

    def __post_init__(self) -> None:
        self.commands = sorted(e["name"] for e in SCHEMA if e["meta-type"] == "command")
        self.shared = [c for c in self.commands if c in self.ours]

    # -- choices -------------------------------------------------------------
    def pick(self, items: list):
        return items[self.chooser.integer(0, len(items) - 1)]

    def chance(self, percent: int) -> bool:
        return self.chooser.integer(0, 99) < percent

    def text(self) -> str:
        alphabet = "abcxyz019-_./: \u00e9\"\\"
        return "".join(self.pick(list(alphabet)) for _ in range(self.chooser.integer(0, 10)))

    def junk(self, depth: int = 0) -> Any:
        """Any JSON value: the wrong type for whatever it replaces."""
        kind = self.chooser.integer(0, 6 if depth < 2 else 4)
        if kind == 0:
            return None
        if kind == 1:
            return self.chance(50)
        if kind == 2:
            return self.pick([0, -1, 255, 1 << 63, -(1 << 63) - 1, 1 << 64, 0.5, -1e300])
        if kind in (3, 4):
            return self.text()
        if kind == 5:
            return [self.junk(depth + 1) for _ in range(self.chooser.integer(0, 2))]
        return {self.text(): self.junk(depth + 1) for _ in range(self.chooser.integer(0, 2))}

    # -- values of a schema type ---------------------------------------------
    def value(self, type_name: str, member: str = "", depth: int = 0) -> Any:
        if member in HOST_MEMBERS:
            return self.pick(HOST_MEMBERS[member])
        entity = self.by_name[type_name]
        meta = entity["meta-type"]
        if meta == "builtin":
            return self.builtin(entity["json-type"], member)
        if meta == "enum":
            values = entity["values"]
            return self.pick(values) if values and self.chance(90) else self.text()
        if meta == "array":
            if depth > 3:
                return []
            return [self.value(entity["element-type"], member, depth + 1)
                    for _ in range(self.chooser.integer(0, 2))]
        if meta == "alternate":
            return self.value(self.pick(entity["members"])["type"], member, depth + 1)
        return self.members(entity, depth + 1) if depth <= 4 else {}

    def builtin(self, json_type: str, member: str) -> Any:
        if json_type == "string":
            if member == "command-line" and not self.chance(85):   # HMP: no random command,
                return self.pick(["info ", "help ", "info mtree "]) + self.text()   # 'c' runs
            if member in NAMES and self.chance(85):
                return self.pick(NAMES[member])
            if member in ID_MEMBERS and self.chance(85):
                return self.pick(self.ids)
            return self.text()
        if json_type == "int":
            return self.pick([0, 1, 2, 7, 64, 100, 1000, 4096, -1, 1 << 31, 1 << 32,
                              (1 << 63) - 1, -(1 << 63), 1 << 64, self.chooser.integer(0, 1 << 20)])
        if json_type == "number":
            return self.pick([0, 1.5, -2.25, 1e10, 100])
        if json_type == "boolean":
            return self.chance(50)
        if json_type == "null":
            return None
        return self.junk()                              # 'any'

    def members(self, entity: dict, depth: int) -> dict:
        """An object of the type: its mandatory members, some optional ones, and the
        members of the variant its tag picks."""
        out: dict[str, Any] = {}
        tag = entity.get("tag")
        for member in entity.get("members", []):
            name = member["name"]
            if name == tag:
                continue
            if "default" not in member or self.chance(30):
                out[name] = self.value(member["type"], name, depth)
        if tag is not None:
            cases = {v["case"]: v["type"] for v in entity["variants"]}
            tag_type = next(m["type"] for m in entity["members"] if m["name"] == tag)
            names = NAMES.get(tag)
            case = self.pick(names) if names and self.chance(70) else \
                self.pick(self.by_name[tag_type]["values"])
            out[tag] = case
            if case in cases:
                out.update(self.members(self.by_name[cases[case]], depth))
        return out

    # -- messages ------------------------------------------------------------
    def message(self) -> dict | bytes:
        """A request as a dict, or (rarely) raw bytes that are not one."""
        roll = self.chooser.integer(0, 99)
        if roll < 4:
            return self.garbage()
        command = self.pick(self.shared) if roll < 90 else self.pick(self.commands)
        entity = self.by_name[command]
        args = self.members(self.by_name[entity["arg-type"]], 0)
        request: dict[str, Any] = {"execute": command}
        if args or self.chance(10):
            request["arguments"] = args
        if command in RUN_CONTROL:
            request.setdefault("arguments", {})["no-such-member"] = 1
        elif self.chance(35):
            self.mutate(request, entity)
        if self.chance(50):
            request["id"] = self.pick(["fz", 1, -5, 1.5, None, [], {"a": [1]}, True, "\u00e9"])
        args = request.get("arguments")
        if request["execute"] == "human-monitor-command" and isinstance(args, dict) and \
                isinstance(args.get("command-line"), str) and \
                args["command-line"] not in NAMES["command-line"]:
            # a mangled line may be 'c': the guests differ (SeaBIOS, kvmkit's own), so
            # the machines must not run
            args["command-line"] = "info " + args["command-line"]
        tame(request)
        return request

    def mutate(self, request: dict, entity: dict) -> None:
        """One wrong thing about a request."""
        args = request.setdefault("arguments", {})
        kind = self.chooser.integer(0, 7)
        if kind == 0 and args:                          # a member missing
            del args[self.pick(sorted(args))]
        elif kind == 1:                                 # a member too many
            args[self.pick(["x", "extra", "ID", "Id", "driver", "type"])] = self.junk()
        elif kind in (2, 3) and args:                   # a member of the wrong type
            args[self.pick(sorted(args))] = self.junk()
        elif kind == 4:                                 # arguments not an object
            request["arguments"] = self.pick([[], "x", 1, None, True])
        elif kind == 5:                                 # execute not a string, or unknown
            request["execute"] = self.pick([1, None, ["query-status"], "", "query-status ",
                                            request["execute"].upper(), "nosuch"])
        elif kind == 6:                                 # an unknown top-level member
            request[self.pick(["extra", "control", "exec-oob"])] = self.junk()
        else:                                           # a nested member's value mangled
            for value in args.values():
                if isinstance(value, dict) and value:
                    value[self.pick(sorted(value))] = self.junk()
                    break

    def garbage(self) -> bytes:
        return self.pick([b"{", b"}", b"[]", b"1", b'"x"', b"nul", b'{"execute"}',
                          b'{"execute": "query-status",}', b"{'execute': 'query-status'}",
                          b'{"execute": "query-status"} {', b'\\u', b'"\\ud800"',
                          b'{"a": ' * 3, b"\x80\x81", b"\xc3", b"-", b"1e999", b'{"":1}'])


# -- the two VMMs ------------------------------------------------------------------
def _private_netns() -> None:
    """A preexec_fn: the VMM gets a network namespace of its own, so a tap or bridge
    a message asks for is made there, not on the host (and not twice)."""
    if ctypes.CDLL(None, use_errno=True).unshare(0x40000000) != 0:     # CLONE_NEWNET
        raise OSError(ctypes.get_errno(), "unshare(CLONE_NEWNET)")


class SideFailure(Exception):
    """A VMM died, closed its monitor or did not answer."""

    def __init__(self, side: Side, what: str) -> None:
        super().__init__(f"{side.name}: {what}")
        self.side = side


class Side:
    """One VMM and its QMP connection, with replies read as they come."""

    def __init__(self, name: str, argv: list[str], workdir: Path) -> None:
        self.name = name
        workdir.mkdir(parents=True, exist_ok=True)
        sock = str(workdir / "qmp.sock")
        self.log = open(workdir / "stderr.log", "wb")
        self.proc = subprocess.Popen(
            argv + VMM_ARGS + ["-qmp", f"unix:{sock},server=on,wait=off"], cwd=workdir,
            stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=self.log,
            preexec_fn=_private_netns if os.geteuid() == 0 else None)
        deadline = time.monotonic() + 60
        while not os.path.exists(sock):
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not start: {self.stderr()}")
            time.sleep(0.05)
        self.sock = connect_unix(sock, deadline)
        self.buf = b""
        self.replies: list[dict] = []
        self.sock.settimeout(60)
        self._line()                                             # the greeting
        self.sock.sendall(b'{"execute": "qmp_capabilities"}\n')
        assert self._line() == {"return": {}}
        self.sock.setblocking(False)

    def _line(self) -> dict:
        while b"\n" not in self.buf:
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                raise SideFailure(self, f"closed its monitor ({self.proc.poll()})")
            self.buf += chunk
        line, self.buf = self.buf.split(b"\n", 1)
        return json.loads(line)

    def take_lines(self) -> None:
        """Reads what has arrived; keeps the replies, drops the events."""
        try:
            chunk = self.sock.recv(1 << 20)
        except BlockingIOError:
            return
        except OSError as e:
            raise SideFailure(self, f"{e} (exit status {self.proc.poll()}): "
                                    f"{self.stderr()}") from None
        if not chunk:
            raise SideFailure(self, f"closed its monitor: {self.stderr()}")
        self.buf += chunk
        *lines, self.buf = self.buf.split(b"\n")
        for line in lines:
            reply = json.loads(line)
            if "event" not in reply:
                self.replies.append(reply)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def stderr(self) -> str:
        self.log.flush()
        return Path(self.log.name).read_text(errors="replace")[-3000:]

    def close(self) -> None:
        self.proc.kill()
        self.proc.wait()
        self.sock.close()
        self.log.close()


def wire(message: dict | bytes, marker: str) -> tuple[bytes, int | str]:
    """The bytes for a message, and what ends its replies: a count, or the id of the
    query that follows raw bytes (a 0xff first, to reset the JSON lexer)."""
    if isinstance(message, bytes):
        return (message + b"\n\xff\n" + json.dumps(
            {"execute": "query-status", "id": marker}).encode() + b"\n", marker)
    return json.dumps(message).encode() + b"\n", 1


def exchange(sides: list[Side], batches: list[list[dict | bytes]],
             timeout: float = 120) -> list[list[list[dict]]]:
    """Sends each side its batch at once and reads while sending (a reply may be
    large); returns, per side, the replies of each message."""
    plans, pending = [], {}
    for side, batch in zip(sides, batches):
        side.replies = []
        parts = [wire(message, f"sync-{n}") for n, message in enumerate(batch)]
        plans.append([end for _, end in parts])
        pending[side] = b"".join(data for data, _ in parts)
    selector = selectors.DefaultSelector()
    for side in sides:
        selector.register(side.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, side)
    deadline = time.monotonic() + timeout
    waiting = set(sides)
    while waiting:
        if time.monotonic() > deadline:
            late = next(s for s in sides if s in waiting)
            raise SideFailure(late, f"no complete answer in {timeout} s ({len(late.replies)} "
                                    "replies so far)")
        for key, events in selector.select(1.0):
            side = key.data
            if events & selectors.EVENT_WRITE and pending[side]:
                try:
                    sent = side.sock.send(pending[side][:1 << 16])
                except OSError as e:
                    raise SideFailure(side, f"{e} (exit status {side.proc.poll()}): "
                                            f"{side.stderr()}") from None
                pending[side] = pending[side][sent:]
                if not pending[side]:
                    selector.modify(side.sock, selectors.EVENT_READ, side)
            if events & selectors.EVENT_READ:
                side.take_lines()
        for side, plan in zip(sides, plans):
            if side in waiting and _complete(side.replies, plan):
                waiting.discard(side)
        for side in waiting:
            if not side.alive():
                raise SideFailure(side, f"died: {side.stderr()}")
    selector.close()
    return [_split(side.replies, plan) for side, plan in zip(sides, plans)]


def _complete(replies: list[dict], plan: list[int | str]) -> bool:
    return _split(replies, plan) is not None


def _split(replies: list[dict], plan: list[int | str]) -> list[list[dict]] | None:
    """Each message's replies: one for a request, all up to its marker's for raw
    bytes; None while some have not come."""
    out, at = [], 0
    for end in plan:
        start = at
        if end == 1:
            at += 1
        else:
            while at < len(replies) and replies[at].get("id") != end:
                at += 1
            at += 1
        if at > len(replies):
            return None
        out.append(replies[start:at])
    return out


# -- comparing ---------------------------------------------------------------------
def shape(reply: dict) -> dict:
    """A reply with its return value blanked: two processes' values differ."""
    return {k: ("<return>" if k == "return" else v) for k, v in reply.items()}


def strings_in(value: Any) -> set[str]:
    if isinstance(value, str):
        return {value}
    if isinstance(value, dict):
        return set().union(*(strings_in(v) for v in value.values()), set())
    if isinstance(value, list):
        return set().union(*(strings_in(v) for v in value), set())
    return set()


@dataclass
class Tally:
    sent: int = 0
    compared: int = 0
    missing: Counter = field(default_factory=Counter)      # commands kvmkit lacks (#20)
    tainted: int = 0
    qemu_dies: int = 0                                     # messages QEMU cannot take
    gaps: Counter = field(default_factory=Counter)         # what kvmkit says it lacks
    failures: list[tuple[str, list]] = field(default_factory=list)   # kvmkit's: findings
    qemu_failures: list[tuple[str, list]] = field(default_factory=list)   # the oracle's
    differences: list[tuple[Any, list[dict], list[dict]]] = field(default_factory=list)
    taint: set[str] = field(default_factory=set)

    def tainted_by(self, message: dict) -> bool:
        """Whether a message names (as itself or as a part of a path) an id that
        one side made and the other did not, or asks about such a device."""
        return BY_PRESENCE.get(str(message.get("execute"))) in self.taint or any(
            text in self.taint or set(text.split("/")) & self.taint
            for text in strings_in(message.get("arguments")))

    def judge(self, message: dict | bytes, ours: list[dict], theirs: list[dict],
              our_commands: set[str]) -> str | None:
        """Records one message's answers; returns a description of a difference."""
        self.sent += 1
        command = message.get("execute") if isinstance(message, dict) else None
        if only_ours(message, our_commands):
            want = {"class": "CommandNotFound",
                    "desc": f"The command {command} has not been found"}
            if len(ours) != 1 or ours[0].get("error") != want:
                return f"{command}: kvmkit lacks it but answered {ours}"
            self.missing[command] += 1
            return None
        if kills_qemu(message):
            self.qemu_dies += 1
            if len(ours) != 1 or not ({"return", "error"} & set(ours[0])):
                return f"{command}: kvmkit answered {ours}"
            return None
        if isinstance(message, dict) and self.tainted_by(message):
            self.tainted += 1
            return None
        if isinstance(message, dict) and message.get("execute") in ("device_del",
                                                                      "device_add") \
                and "return" in ours[0] and "return" in theirs[0]:
            # a device comes and goes when the guest says so, and the guests differ:
            # what depends on it is not compared from now on
            device = (message.get("arguments") or {}).get("id")
            if message["execute"] == "device_del":          # (gone only when the guest says)
                self.taint |= {device, "@pci-slots"} | DEPENDS_ON.get(str(device), set())
            driver = (message.get("arguments") or {}).get("driver")
            self.taint |= DEPENDS_ON.get(f"driver:{driver}", set())
        if command == "chardev-add" and "return" in ours[0] and "return" in theirs[0] and \
                '"vc"' in json.dumps(message.get("arguments")):
            self.taint.add("@vc")      # QEMU's vc is a text console screendump can take
        if "@pci-slots" in self.taint and any(
                "no slot/function available" in str(r) for r in ours + theirs):
            self.tainted += 1            # the sides have filled their PCI buses differently
            return None
        if command == "device_add" and ours and theirs and "error" in ours[0] \
                and "return" in theirs[0]:
            self.taint.add("@pci-slots")
        self.compared += 1
        if [shape(r) for r in ours] == [shape(r) for r in theirs]:
            return None
        args = message.get("arguments") if isinstance(message, dict) else None
        if isinstance(args, dict) and ours and theirs and \
                ("return" in ours[0]) != ("return" in theirs[0]):
            # made (or removed) on one side only: what it named differs from now on
            self.taint |= {v for k, v in args.items() if k in ID_MEMBERS and v} & \
                strings_in(args)
        gap = feature_gap(ours, theirs)
        if gap is not None:
            if command == "nbd-server-start":
                self.taint.add("@nbd")
            if command == "migrate-set-capabilities":      # QEMU took one kvmkit lacks
                self.taint.add("@migrate-caps")
            self.gaps[gap] += 1
            return None
        self.differences.append((message, ours, theirs))
        return f"{command}: kvmkit {ours} QEMU {theirs}"


QEMU_COMMANDS = {e["name"] for e in SCHEMA if e["meta-type"] == "command"}
# Commands that answer by a device's presence without naming it
DEPENDS_ON = {"balloon0": {"@balloon"}, "driver:virtio-balloon-pci": {"@balloon"}}
BY_PRESENCE = {"balloon": "@balloon", "query-balloon": "@balloon",
               "migrate-start-postcopy": "@migrate-caps", "screendump": "@vc",
               "query-migrate-capabilities": "@migrate-caps",
               # once QEMU runs an NBD server (kvmkit has none), the NBD commands differ
               **{name: "@nbd" for name in ("nbd-server-start", "nbd-server-stop",
                                            "nbd-server-add", "nbd-server-remove",
                                            "block-export-add", "block-export-del",
                                            "query-block-exports")}}
GAPS = [   # kvmkit's refusal of something QEMU has (the first group names it)
    re.compile(r"Parameter '[^']*' does not accept value '(.*)'"),     # a smaller enum
    re.compile(r"'(.*)' is not a valid device model name"),
    re.compile(r"(.*kvmkit.*)"),                                    # said outright
    re.compile(r"(kdump-\w+) is not available now"),     # a dump format QEMU was built with
]
TYPE_GAPS = [re.compile(r"Class '(.*)' not found"), re.compile(r"Device '(.*)' not found")]


def feature_gap(ours: list[dict], theirs: list[dict]) -> str | None:
    """Why kvmkit's answer differs, when the reason is a model, back end, object
    type or capability that kvmkit does not have (other issues own those)."""
    if len(ours) != 1 or len(theirs) != 1 or "error" not in ours[0]:
        return None
    desc = ours[0]["error"]["desc"]
    for pattern in GAPS:
        if match := pattern.fullmatch(desc):
            return match.group(1)
    if "return" in theirs[0]:           # a type QEMU has and kvmkit lacks
        for pattern in TYPE_GAPS:
            if match := pattern.fullmatch(desc):
                return f"type {match.group(1)}"
    # an object of QEMU's QOM tree that kvmkit's (smaller: #20) does not have
    match = re.fullmatch(r"Device '(/machine/.*)' not found", desc)
    if match and theirs[0].get("error", {}).get("class") != "DeviceNotFound":
        return f"QOM path {match.group(1)}"
    return None


# Commands that write guest memory to a host file (both VMMs would write what they
# are asked: 2^62 bytes, or, for a negative size, QEMU without end), and those
# that open host files or sockets by paths deep in their arguments.
WRITES_MEMORY = {"memsave", "pmemsave"}
OPENS_PATHS = {"chardev-add", "chardev-change"}
PATH_MEMBERS = {"out", "in", "logfile", "device", "path"}


def tame(request: dict) -> None:
    """Keeps a request's effect on the host small and inside the work directory."""
    command, args = request.get("execute"), request.get("arguments")
    if not isinstance(command, str) or not isinstance(args, dict):
        return
    if command in WRITES_MEMORY and isinstance(args.get("size"), int) and \
            not 0 <= args["size"] <= 1 << 16:
        args["size"] = 4096
    if command in OPENS_PATHS:
        def walk(value):
            if isinstance(value, dict):
                for key, inner in value.items():
                    if key in PATH_MEMBERS and isinstance(inner, str):
                        value[key] = "fuzz-chardev"
                    else:
                        walk(inner)
        walk(args)


def kills_qemu(message: dict | bytes) -> bool:
    """Messages QEMU 7.2 itself dies of (found by this fuzzer):
    - a colo-compare object that fails to complete is finalized with an
      uninitialised mutex ("qemu_mutex_destroy: Assertion `mutex->initialized'");
    - a memory backend within a page of 2^64 bytes (a negative size, taken modulo
      2^64) rounds up to 0 ("find_ram_offset: Assertion `size != 0'");
    - a ring-buffer chardev of 2^31 bytes or more, which it cannot allocate;
    - xen-load-devices-state of a state it saved itself, outside Xen;
    - blockdev-reopen of no nodes at all ("bdrv_reopen_multiple: Assertion
      `bs_queue != NULL'")."""
    if not isinstance(message, dict):
        return False
    if message.get("execute") == "xen-load-devices-state":
        return True                     # it loads a state of its own, then dies (no Xen)
    args = message.get("arguments")
    if not isinstance(args, dict):
        return False
    if message.get("execute") == "blockdev-reopen":
        return args.get("options") == []
    if message.get("execute") in ("chardev-add", "chardev-change"):
        backend = args.get("backend")
        data = backend.get("data") if isinstance(backend, dict) else None
        size = data.get("size") if isinstance(data, dict) else None
        return isinstance(size, int) and size >= 1 << 31
    if message.get("execute") != "object-add":
        return False
    size = args.get("size")
    return args.get("qom-type") == "colo-compare" or \
        str(args.get("qom-type")).startswith("memory-backend") and \
        isinstance(size, int) and size % (1 << 64) > (1 << 64) - (1 << 30)


def only_ours(message: dict | bytes, our_commands: set[str]) -> bool:
    """A well-formed request for a command QEMU has and kvmkit lacks (a malformed
    one is refused for its form first, by both, and compared)."""
    return isinstance(message, dict) and isinstance(message.get("execute"), str) and \
        message["execute"] not in our_commands and message["execute"] in QEMU_COMMANDS \
        and isinstance(message.get("arguments", {}), dict) and \
        set(message) <= {"execute", "arguments", "id"}


def stand_in(message: dict | bytes, our_commands: set[str]) -> dict | bytes:
    """What QEMU is sent: the message, except a command kvmkit lacks, which only
    kvmkit is asked about (and QEMU is spared what it would do to the host), and
    one QEMU would die of."""
    if only_ours(message, our_commands) or kills_qemu(message):
        return {"execute": "query-status"}
    return message


class Pair:
    """kvmkit and QEMU 7.2, started alike under `workdir`."""

    def __init__(self, workdir: Path) -> None:
        self.workdir, self.restarts, self.tally = workdir, 0, Tally()
        self.start(workdir)

    def start(self, workdir: Path) -> None:
        self.kvmkit = Side("kvmkit", kvmkit_command(), workdir / "kvmkit")
        self.qemu = Side("qemu", [QEMU, "-accel", "kvm"], workdir / "qemu")
        self.kvmkit.sock.setblocking(True)
        self.kvmkit.sock.sendall(b'{"execute": "query-commands"}\n')
        self.ours = {c["name"] for c in self.kvmkit._line()["return"]}
        self.kvmkit.sock.setblocking(False)

    def run(self, batch: list[dict | bytes]) -> list[str]:
        """Sends a batch to both, judges each answer; returns the differences. When
        QEMU dies or hangs (it does: see kills_qemu), both start again and the batch
        is kept for the report; when kvmkit does, that is the finding."""
        try:
            ours, theirs = exchange([self.kvmkit, self.qemu],
                                    [batch, [stand_in(m, self.ours) for m in batch]])
            for side in (self.kvmkit, self.qemu):
                if not side.alive():
                    raise SideFailure(side, f"died: {side.stderr()}")
        except SideFailure as failure:
            if failure.side is self.kvmkit or not self.kvmkit.alive():
                raise
            self.tally.qemu_failures.append((str(failure)[-1500:], batch))
            self.restart()
            return []
        found = []
        for message, mine, reference in zip(batch, ours, theirs):
            difference = self.tally.judge(message, mine, reference, self.ours)
            if difference:
                found.append(difference)
        return found

    def restart(self) -> None:
        self.close()
        self.restarts += 1
        self.start(self.workdir / f"restart-{self.restarts}")

    def close(self) -> None:
        self.kvmkit.close()
        self.qemu.close()


def campaign(messages: int, seed: int, batch: int, workdir: Path,
             report_to: Path | None = None) -> Tally:
    pair = Pair(workdir)
    maker = MessageMaker(RandomChooser(seed), pair.ours)
    started, done = time.monotonic(), 0
    try:
        while done < messages:
            messages_now = [maker.message() for _ in range(min(batch, messages - done))]
            try:
                pair.run(messages_now)
            except SideFailure as e:                    # kvmkit's: kept, and started again
                pair.tally.failures.append((str(e)[-2000:], messages_now))
                print(f"batch at {done}: {str(e)[-300:]}", flush=True)
                pair.restart()
            done += batch
            if done % 20000 < batch:
                t = pair.tally
                print(f"{done} messages, {time.monotonic() - started:.0f} s, "
                      f"{len(t.differences)} differences", flush=True)
                if report_to is not None:          # so that nothing is lost if it ends early
                    report_to.write_text(report(t))
    finally:
        pair.close()
    return pair.tally


def report(tally: Tally) -> str:
    groups = Counter()
    examples = {}
    for message, ours, theirs in tally.differences:
        key = (str(message.get("execute")) if isinstance(message, dict) else "<raw>",
               json.dumps(theirs[0].get("error", {}).get("class") if theirs else None))
        groups[key] += 1
        examples.setdefault(key, (message, ours, theirs))
    lines = [f"sent {tally.sent}, compared {tally.compared}, tainted {tally.tainted}, "
             f"QEMU would die of {tally.qemu_dies}, QEMU failed {len(tally.qemu_failures)} "
             f"times, kvmkit failed {len(tally.failures)} times, "
             f"commands kvmkit lacks (#20): {sum(tally.missing.values())} messages over "
             f"{len(tally.missing)} commands, differences {len(tally.differences)}",
             f"feature gaps ({sum(tally.gaps.values())} messages): " +
             ", ".join(f"{name} {n}" for name, n in tally.gaps.most_common())]
    for failure, batch in tally.failures:
        lines.append(f"KVMKIT FAILED: {failure}\n  in a batch of {len(batch)}: {batch!r:.3000}")
    for failure, _batch in tally.qemu_failures:
        lines.append(f"QEMU failed (both restarted): {failure[-300:]}")
    for key, count in groups.most_common():
        message, ours, theirs = examples[key]
        lines.append(f"{count:6d} {key[0]} (QEMU {key[1]}): {message!r}\n"
                     f"       kvmkit {ours}\n       QEMU   {theirs}")
    return "\n".join(lines)


if __name__ == "__main__":
    import argparse
    import tempfile

    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=10000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--report", type=Path, help="rewrite the report here as it goes")
    options = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        print(report(campaign(options.messages, options.seed, options.batch, Path(tmp),
                              options.report)))
