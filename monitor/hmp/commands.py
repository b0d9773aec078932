"""HMP commands other than `info`: help, run control, balloon, devices, QOM."""

from __future__ import annotations

import json

from monitor.errors import QmpError
from monitor.hmp.table import COMMANDS, INFO, HmpContext, forward, help_line, hmp, unique
from monitor.qemu_json import pretty


@hmp("help", "name:S?", "[cmd]", "show the help", aliases=("?",))
async def help_cmd(ctx: HmpContext, args: dict) -> str:
    name = args.get("name")
    if name is None:
        return "".join(help_line(c) for c in unique(COMMANDS))
    words = name.split()
    if words[0] == "log":                     # QEMU lists the log items instead
        from monitor.hmp.misc import log_items_help
        return log_items_help()
    if words[0] == "info":
        if len(words) == 1:
            return "".join(help_line(c) for c in unique(INFO))
        cmd = INFO.get(words[1])
        return help_line(cmd) if cmd else f"unknown command: 'info {words[1]}'\n"
    cmd = COMMANDS.get(words[0])
    return help_line(cmd) if cmd else f"unknown command: '{words[0]}'\n"


@hmp("info", "item:s?", "[subcommand]", "show various information about the system state")
async def info_cmd(ctx: HmpContext, args: dict) -> str:
    # `info X` is dispatched to INFO by run_line; alone it lists the subcommands
    return "".join(help_line(c) for c in unique(INFO))


forward("stop", "", "", "stop emulation", aliases=("s",))
forward("cont", "", "", "resume emulation", aliases=("c",))
forward("system_reset", "", "", "reset the system")
forward("system_powerdown", "", "", "send system power down event")
forward("system_wakeup", "", "", "wakeup guest from suspend")
forward("quit", "", "", "quit the emulator", aliases=("q",))
forward("balloon", "value:M", "target", "request VM to change its memory allocation (in MB)")
forward("device_del", "id:s", "device", "remove device")
forward("set_link", "name:s,up:b", "name on|off", "change the link status of a network adapter")


@hmp("device_add", "device:O", "driver[,prop=value][,...]",
     "add device, like -device on the command line")
async def device_add_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm.qemuopts import parse_opts

    opts = parse_opts(args["device"], implied="driver")
    await ctx.call("device_add", **opts)
    return ""


@hmp("qom-list", "path:s?", "path", "list QOM properties")
async def qom_list_cmd(ctx: HmpContext, args: dict) -> str:
    path = args.get("path")
    if path is None:
        return "/\n"
    props = await ctx.call("qom-list", path=path)
    return "".join(f"{p['name']} ({p['type']})\n" for p in props)


@hmp("qom-get", "path:s,property:s", "path property", "print QOM property")
async def qom_get_cmd(ctx: HmpContext, args: dict) -> str:
    value = await ctx.call("qom-get", path=args["path"], property=args["property"])
    return pretty(value) + "\n"


@hmp("qom-set", "json:-j,path:s,property:s,value:S", "[-j] path property value",
     "set QOM property.\n\t\t\t-j: the value is specified in json format.")
async def qom_set_cmd(ctx: HmpContext, args: dict) -> str:
    text = args["value"]
    if args["json"]:
        try:
            value = json.loads(text)
        except ValueError as e:
            raise QmpError(f"JSON parse error, {e}") from None
    else:
        value = _from_string(text)
    await ctx.call("qom-set", path=args["path"], property=args["property"], value=value)
    return ""


def _from_string(text: str):
    """QEMU's string input visitor: numbers and booleans are read from their text."""
    try:
        return int(text, 0)
    except ValueError:
        pass
    if text in ("on", "yes", "true"):
        return True
    if text in ("off", "no", "false"):
        return False
    return text


@hmp("netdev_add", "netdev:O",
     "[user|tap|socket|stream|dgram|vde|bridge|hubport|netmap|vhost-user],id=str"
     "[,prop=value][,...]", "add host network device")
async def netdev_add_cmd(ctx: HmpContext, args: dict) -> str:
    from monitor.commands.netdev import valid_id
    from vmm.net import netdev_options
    opts = netdev_options.parse_text(args["netdev"])
    if "id" in opts and not valid_id(opts["id"]):
        # QEMU reports the bad id on its stderr; the monitor only shows this line
        return 'Try "help netdev_add" for more information\n'
    base = {key: opts.pop(key) for key in ("id", "type") if key in opts}
    await ctx.call("netdev_add", **base,
                   **netdev_options.from_text(base.get("type", ""), opts))
    return ""


def _slirp_target(ctx: HmpContext, args: dict):
    """hostfwd_add/remove's [netdev_id] rule: (back end, rule), or (None, message)."""
    from vmm.net.network import NetError

    name, rule = (args["arg1"], args["arg2"]) if "arg2" in args else (None, args["arg1"])
    try:
        return ctx.machine.network.user_backend(name), rule
    except NetError as e:
        return None, f"{e}\n"


@hmp("hostfwd_add", "arg1:s,arg2:s?",
     "[netdev_id] [tcp|udp]:[hostaddr]:hostport-[guestaddr]:guestport",
     "redirect TCP or UDP connections from host to guest (requires -net user)")
async def hostfwd_add_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm.errors import UserError

    backend, rule = _slirp_target(ctx, args)
    if backend is None:
        return rule
    try:
        backend.add_hostfwd(rule)
    except UserError as e:              # QEMU reports these bare, as error_report
        return f"{e}\n"
    return ""


@hmp("hostfwd_remove", "arg1:s,arg2:s?", "[netdev_id] [tcp|udp]:[hostaddr]:hostport",
     "remove host-to-guest TCP or UDP redirection")
async def hostfwd_remove_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm.net.slirp_config import parse_hostfwd_key

    backend, rule = _slirp_target(ctx, args)
    if backend is None:
        return rule
    key = parse_hostfwd_key(rule)
    if key is None:
        return "invalid format\n"
    removed = backend.remove_hostfwd(*key)
    return f"host forwarding rule for {rule} {'removed' if removed else 'not found'}\n"


@hmp("netdev_del", "id:s", "id", "remove host network device")
async def netdev_del_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("netdev_del", id=args["id"])
    return ""


@hmp("gdbserver", "device:s?", "[device]",
     "start gdbserver on given device (default 'tcp::1234'), stop with 'none'")
async def gdbserver_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm.gdbstub import DEFAULT_DEVICE, GdbDeviceError, GdbServer

    device = args.get("device", DEFAULT_DEVICE)
    machine = ctx.machine
    if device == "none":
        if machine.gdb is not None:
            await machine.gdb.stop()
        return "Disabled gdbserver\n"
    if machine.gdb is None:
        machine.gdb = GdbServer(machine)
    try:
        await machine.gdb.start(device)
    except (GdbDeviceError, OSError) as e:
        reason = str(e) if isinstance(e, GdbDeviceError) else f"Failed to bind socket: {e.strerror}"
        return f"{reason}\nCould not open gdbserver on device '{device}'\n"
    return f"Waiting for gdb connection on device '{device}'\n"
