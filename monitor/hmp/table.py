"""The HMP command table and QEMU's argument syntax.

A command declares its arguments with QEMU's args_type letters:
``s`` word, ``S`` rest of line, ``O`` option string, ``i``/``l`` integer
expression, ``M`` size in MiB (no negatives), ``o`` size in bytes (with
suffixes), ``b`` on|off, ``-x`` flag, ``-xs`` flag with a value, ``/`` x/xp format;
a trailing ``?``
makes an argument optional. Parse errors print QEMU's message and
``Try "help NAME" for more information``.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.hmp.expr import ExprError, ExprParser
from monitor.monitor import Monitor, Session
from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_size

log = logging.getLogger(__name__)

Handler = Callable[["HmpContext", dict], Awaitable[str]]


@dataclass
class HmpCommand:
    name: str
    args_type: str       # QEMU's args_type, e.g. "name:s,up:b"
    params: str          # how `help` shows the arguments
    help: str
    handler: Handler
    aliases: tuple[str, ...] = ()
    full_name: str = ""  # "info status" for info subcommands
    qmp: str = ""        # the QMP command it runs with its own arguments, if that is all


@dataclass
class HmpContext:
    monitor: Monitor
    session: Session
    cpu: int = 0
    state: HmpState | None = None

    @property
    def machine(self):
        return self.monitor.machine

    async def call(self, command: str, /, **arguments) -> Any:
        return await self.monitor.call(command, self.session, **arguments)


@dataclass
class HmpState:
    """What QEMU's HMP remembers between commands of one monitor."""

    last_format: str = "x"
    last_size: int = 4
    cpu: int = 0                       # `cpu N`: the vCPU commands look at
    history: list[str] = field(default_factory=list)   # the readline monitor's lines


COMMANDS: dict[str, HmpCommand] = {}
INFO: dict[str, HmpCommand] = {}


def hmp(name: str, args_type: str = "", params: str = "", help: str = "",
        aliases: tuple[str, ...] = (), info: bool = False, qmp: str = ""):
    def register(handler: Handler) -> Handler:
        table = INFO if info else COMMANDS
        full = f"info {name}" if info else name
        cmd = HmpCommand(name, args_type, params, help, handler, aliases, full, qmp)
        for key in (name, *aliases):
            table[key] = cmd
        return handler
    return register


def forward(name: str, args_type: str, params: str, help: str, qmp: str | None = None,
            aliases: tuple[str, ...] = ()) -> None:
    """An HMP command that runs a QMP command (of the same name unless `qmp` says) with
    its arguments, printing nothing on success: the registry checks the arguments."""
    target = qmp or name

    async def handler(ctx: HmpContext, args: dict) -> str:
        await ctx.call(target, **args)
        return ""
    hmp(name, args_type, params, help, aliases=aliases, qmp=target)(handler)


def report(name: str, args_type: str, params: str, help: str, qmp: str,
           text: Callable[[Any], str] = lambda reply: reply["human-readable-text"]) -> None:
    """`info NAME` over a QMP query: its reply put as text (by default the
    human-readable-text of QEMU's x-query-* commands); its error printed as HMP's."""
    async def handler(ctx: HmpContext, args: dict) -> str:
        return text(await ctx.call(qmp, **args))
    hmp(name, args_type, params, help, info=True)(handler)


def help_line(cmd: HmpCommand) -> str:
    names = "|".join((cmd.name, *cmd.aliases))
    prefix = "info " if cmd.full_name.startswith("info ") else ""
    return f"{prefix}{names} {cmd.params} -- {cmd.help}\n"


def unique(table: dict[str, HmpCommand]) -> list[HmpCommand]:
    seen: dict[int, HmpCommand] = {}
    for cmd in table.values():
        seen.setdefault(id(cmd), cmd)
    # QEMU sorts by its name field, which holds the aliases too ("stop|s")
    return sorted(seen.values(), key=lambda c: "|".join((c.name, *c.aliases)))


class ArgError(Exception):
    """A parse error: QEMU prints the message, then the 'Try help' line."""


@dataclass
class _Cursor:
    text: str
    pos: int = 0
    state: HmpState = field(default_factory=HmpState)

    def skip_spaces(self) -> None:
        while self.pos < len(self.text) and self.text[self.pos].isspace():
            self.pos += 1

    def at_end(self) -> bool:
        self.skip_spaces()
        return self.pos >= len(self.text)

    def word(self) -> str | None:
        """A word, or a "quoted string" with \\ escapes; None at end of line."""
        self.skip_spaces()
        text = self.text
        if self.pos >= len(text):
            return None
        if text[self.pos] == '"':
            out, i = [], self.pos + 1
            while i < len(text) and text[i] != '"':
                if text[i] == "\\" and i + 1 < len(text):
                    i += 1
                    out.append({"n": "\n", "r": "\r", "t": "\t"}.get(text[i], text[i]))
                else:
                    out.append(text[i])
                i += 1
            if i >= len(text):
                return None
            self.pos = i + 1
            return "".join(out)
        start = self.pos
        while self.pos < len(text) and not text[self.pos].isspace():
            self.pos += 1
        return text[start:self.pos]


def parse_arguments(cmd: HmpCommand, text: str, state: HmpState,
                    register: Callable[[str], int] | None) -> dict:
    cur = _Cursor(text, 0, state)
    args: dict[str, Any] = {}
    for spec in [s for s in cmd.args_type.split(",") if s]:
        name, _, kind = spec.partition(":")
        optional = kind.endswith("?")
        kind = kind.rstrip("?")
        if kind.startswith("-") and len(kind) == 3 and kind[2] == "s":   # -f VALUE
            cur.skip_spaces()
            if cur.text.startswith(f"-{kind[1]}", cur.pos) and (
                    cur.pos + 2 >= len(cur.text) or cur.text[cur.pos + 2].isspace()):
                cur.pos += 2
                value = cur.word()
                if value is None:
                    raise ArgError(f"{cmd.name}: string expected")
                args[name] = value
            continue
        if kind.startswith("-"):
            cur.skip_spaces()
            flag = kind[1:]
            if cur.text.startswith(f"-{flag}", cur.pos) and (
                    cur.pos + len(flag) + 1 >= len(cur.text)
                    or cur.text[cur.pos + len(flag) + 1].isspace()):
                cur.pos += len(flag) + 1
                args[name] = True
            else:
                args[name] = False
            continue
        if optional and cur.at_end():
            continue
        if kind in ("s", "B", "F"):
            word = cur.word()
            if word is None:
                expected = {"F": "filename", "B": "block device name"}.get(kind, "string")
                raise ArgError(f"{cmd.name}: {expected} expected")
            args[name] = word
        elif kind == "S":
            cur.skip_spaces()
            if cur.pos >= len(cur.text):
                raise ArgError(f"{cmd.name}: string expected")
            args[name] = cur.text[cur.pos:].rstrip()
            cur.pos = len(cur.text)
        elif kind == "O":
            word = cur.word()
            args[name] = "" if word is None else word   # QEMU parses an empty option string
        elif kind == "o":                                # bytes, with QEMU's size suffixes
            word = cur.word()
            try:
                args[name] = parse_size(word or "")
            except OptsError:
                raise ArgError("invalid size") from None
        elif kind in ("i", "l", "M"):
            parser = ExprParser(cur.text, cur.pos, register)
            try:
                value = parser.parse()
            except ExprError as e:
                raise ArgError(str(e)) from None
            cur.pos = parser.pos
            if kind == "M":
                if value < 0:
                    raise ArgError("enter a positive value")
                value <<= 20
            elif kind == "i":
                value &= 0xFFFFFFFF
            args[name] = value
        elif kind == "b":
            word = cur.word()
            if word not in ("on", "off"):
                raise ArgError("Expected 'on' or 'off'")
            args[name] = word == "on"
        elif kind == "/":
            args[name] = _parse_format(cur)
        else:
            raise AssertionError(f"unknown HMP argument type {kind}")
    if not cur.at_end():
        raise ArgError(f"{cmd.name}: extraneous characters at the end of line")
    return args


def _parse_format(cur: _Cursor) -> tuple[int, str, int]:
    """'/[count][format][size]' for x/xp; format and size default to the last ones."""
    cur.skip_spaces()
    state = cur.state
    count, fmt, size = 1, state.last_format, -1
    if cur.pos < len(cur.text) and cur.text[cur.pos] == "/":
        cur.pos += 1
        start = cur.pos
        while cur.pos < len(cur.text) and cur.text[cur.pos].isdigit():
            cur.pos += 1
        if cur.pos > start:
            count = int(cur.text[start:cur.pos])
        while cur.pos < len(cur.text) and not cur.text[cur.pos].isspace():
            ch = cur.text[cur.pos]
            if ch in "xduoci":
                fmt = ch
            elif ch in "bhwg":
                size = {"b": 1, "h": 2, "w": 4, "g": 8}[ch]
            else:
                raise ArgError(f"invalid char in format: '{ch}'")
            cur.pos += 1
    if size < 0:
        size = state.last_size   # QEMU: even for c, then dumps that many bytes
    state.last_format, state.last_size = fmt, size
    return count, fmt, size


async def run_line(monitor: Monitor, session: Session, line: str,
                   state: HmpState | None = None, cpu: int | None = None) -> str:
    """Runs one HMP command line; returns its output, errors included, as QEMU prints it."""
    if state is None:
        if session.hmp_state is None:
            session.hmp_state = HmpState()
        state = session.hmp_state
    text = line.strip()
    if not text:
        return ""
    match = _NAME.match(text)
    name = match.group() if match else text[:1]
    rest = text[len(name):]
    cmd = COMMANDS.get(name)
    if cmd is None:
        return f"unknown command: '{name}'\n"
    if cmd.name == "info" and rest.strip():
        sub_name, _, rest = rest.strip().partition(" ")
        cmd = INFO.get(sub_name)
        if cmd is None:
            return f"unknown command: 'info {sub_name}'\n"
    ctx = HmpContext(monitor, session, state.cpu if cpu is None else cpu, state)
    try:
        args = parse_arguments(cmd, rest, state, lambda reg: _register(ctx, reg))
    except ArgError as e:
        return f"{e}\nTry \"help {cmd.full_name}\" for more information\n"
    try:
        return await cmd.handler(ctx, args)
    except UserError as e:                   # the user's error, from whichever layer
        return f"Error: {e}\n" + (f"{e.hint}\n" if e.hint else "")
    except Exception as e:  # a bug in one command: report it, keep the monitor
        log.exception("HMP command %s failed", cmd.full_name)
        return f"Error: internal error: {e}\n"


_NAME = re.compile(r"[^/\s]+")          # QEMU: a command name ends at '/' or a space
_REG32 = {"eax": "rax", "ebx": "rbx", "ecx": "rcx", "edx": "rdx", "esi": "rsi", "edi": "rdi",
          "esp": "rsp", "ebp": "rbp", "eip": "rip"}


def _register(ctx: HmpContext, name: str) -> int:
    state = ctx.machine.cpu_state(ctx.cpu)
    regs = state["regs"]
    key = name.lower()
    if key in _REG32:
        return getattr(regs, _REG32[key]) & 0xFFFFFFFF
    if key in ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rsp", "rbp", "rip", "r8", "r9",
               "r10", "r11", "r12", "r13", "r14", "r15", "pc"):
        return getattr(regs, "rip" if key == "pc" else key)
    if key in ("cr0", "cr2", "cr3", "cr4"):
        return getattr(state["sregs"], key)
    raise KeyError(name)
