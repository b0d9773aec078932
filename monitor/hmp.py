"""HMP: text commands with QEMU's syntax and QEMU's output, over the registry.

Each entry maps a command line onto registry calls and formats the result as
QEMU 7.2 prints it. Output uses "\\n"; transports turn it into "\\r\\n".
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass

from monitor.errors import QmpError
from monitor.monitor import Monitor, Session

Handler = Callable[["HmpContext", str], Awaitable[str]]


@dataclass
class HmpCommand:
    name: str
    params: str          # as `help` shows them
    help: str
    handler: Handler
    aliases: tuple[str, ...] = ()


@dataclass
class HmpContext:
    monitor: Monitor
    session: Session

    async def call(self, name: str, **arguments):
        return await self.monitor.call(name, self.session, **arguments)


COMMANDS: dict[str, HmpCommand] = {}
INFO: dict[str, HmpCommand] = {}


def hmp(name: str, params: str = "", help: str = "", aliases: tuple[str, ...] = (),
        table: dict[str, HmpCommand] | None = None):
    def register(handler: Handler) -> Handler:
        cmd = HmpCommand(name, params, help, handler, aliases)
        target = COMMANDS if table is None else table
        target[name] = cmd
        for alias in aliases:
            target[alias] = cmd
        return handler
    return register


def info(name: str, params: str = "", help: str = ""):
    return hmp(name, params, help, table=INFO)


def help_line(prefix: str, cmd: HmpCommand) -> str:
    names = "|".join((cmd.name, *cmd.aliases))
    params = f" {cmd.params}" if cmd.params else " "
    return f"{prefix}{names}{params} -- {cmd.help}\n"


async def run_command_line(monitor: Monitor, session: Session, line: str) -> str:
    """Runs one HMP line; returns its output (errors included, as QEMU prints them)."""
    words = line.strip().split(None, 1)
    if not words:
        return ""
    name, rest = words[0], (words[1] if len(words) > 1 else "")
    cmd = COMMANDS.get(name)
    if cmd is None:
        return f"unknown command: '{name}'\n"
    try:
        return await cmd.handler(HmpContext(monitor, session), rest.strip())
    except QmpError as e:
        return f"Error: {e.desc}\n"


# -- commands ---------------------------------------------------------------------
@hmp("help", "[cmd]", "show the help", aliases=("?",))
async def help_cmd(ctx: HmpContext, args: str) -> str:
    if args == "info":
        return await info_cmd(ctx, "")
    if args:
        cmd = COMMANDS.get(args)
        return help_line("", cmd) if cmd else ""
    seen = []
    for cmd in sorted({id(c): c for c in COMMANDS.values()}.values(), key=lambda c: c.name):
        seen.append(help_line("", cmd))
    return "".join(seen)


@hmp("info", "[subcommand]", "show various information about the system state")
async def info_cmd(ctx: HmpContext, args: str) -> str:
    if not args:
        return "".join(help_line("info ", c) for c in sorted(INFO.values(),
                                                              key=lambda c: c.name))
    name, _, rest = args.partition(" ")
    sub = INFO.get(name)
    if sub is None:
        return help_line("", COMMANDS["info"])
    return await sub.handler(ctx, rest.strip())


@info("status", "", "show the current VM status (running|paused)")
async def info_status(ctx: HmpContext, args: str) -> str:
    st = await ctx.call("query-status")
    text = "VM status: " + ("running" if st["running"] else "paused")
    if not st["running"] and st["status"] != "paused":
        text += f" ({st['status']})"
    return text + "\n"


@info("version", "", "show the version of QEMU")
async def info_version(ctx: HmpContext, args: str) -> str:
    v = await ctx.call("query-version")
    q = v["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}{v['package']}\n"


@info("name", "", "show the current VM name")
async def info_name(ctx: HmpContext, args: str) -> str:
    name = (await ctx.call("query-name")).get("name")
    return f"{name}\n" if name else ""


@info("uuid", "", "show the current VM UUID")
async def info_uuid(ctx: HmpContext, args: str) -> str:
    return (await ctx.call("query-uuid"))["UUID"] + "\n"


@info("kvm", "", "show KVM information")
async def info_kvm(ctx: HmpContext, args: str) -> str:
    kvm = await ctx.call("query-kvm")
    if not kvm["present"]:
        return "kvm support: not compiled\n"
    return "kvm support: " + ("enabled" if kvm["enabled"] else "disabled") + "\n"


@info("cpus", "", "show infos for each CPU")
async def info_cpus(ctx: HmpContext, args: str) -> str:
    cpus = await ctx.call("query-cpus-fast")
    return "".join(f"{'*' if c['cpu-index'] == 0 else ' '} CPU #{c['cpu-index']}: "
                   f"thread_id={c['thread-id']}\n" for c in cpus)


@info("chardev", "", "show the character devices")
async def info_chardev(ctx: HmpContext, args: str) -> str:
    devs = await ctx.call("query-chardev")
    return "".join(f"{d['label']}: filename={d['filename']}\n" for d in devs)


@hmp("stop", "", "stop emulation")
async def stop_cmd(ctx: HmpContext, args: str) -> str:
    await ctx.call("stop")
    return ""


@hmp("cont", "", "resume emulation", aliases=("c",))
async def cont_cmd(ctx: HmpContext, args: str) -> str:
    await ctx.call("cont")
    return ""


@hmp("system_reset", "", "reset the system")
async def system_reset_cmd(ctx: HmpContext, args: str) -> str:
    await ctx.call("system_reset")
    return ""


@hmp("system_powerdown", "", "send system power down event")
async def system_powerdown_cmd(ctx: HmpContext, args: str) -> str:
    await ctx.call("system_powerdown")
    return ""


@hmp("quit", "", "quit the emulator", aliases=("q",))
async def quit_cmd(ctx: HmpContext, args: str) -> str:
    await ctx.call("quit")
    return ""
