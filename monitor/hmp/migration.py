"""HMP migration commands and their `info`, with QEMU 7.2's text."""

from __future__ import annotations

import asyncio

from monitor.commands.migration import MIGRATION_CAPABILITY, PARAMETERS
from monitor.errors import QmpError
from monitor.hmp.table import HmpContext, forward, hmp
from monitor.types import BOOL, SIZE, STR, Enum
from vmm.qemuopts import OptsError, parse_size

GLOBALS = ("globals:\nstore-global-state: on\nonly-migratable: off\nsend-configuration: on\n"
           "send-section-footer: on\ndecompress-error-check: on\nclear-bitmap-shift: 18\n")
# info migrate_parameters: QEMU's order, and the unit each is printed with
SHOWN_PARAMETERS = (
    ("announce-initial", " ms"), ("announce-max", " ms"), ("announce-rounds", ""),
    ("announce-step", " ms"), ("compress-level", ""), ("compress-threads", ""),
    ("compress-wait-thread", ""), ("decompress-threads", ""),
    ("throttle-trigger-threshold", ""), ("cpu-throttle-initial", ""),
    ("cpu-throttle-increment", ""), ("cpu-throttle-tailslow", ""), ("max-cpu-throttle", ""),
    ("tls-creds", ""), ("tls-hostname", ""), ("max-bandwidth", " bytes/second"),
    ("downtime-limit", " ms"), ("x-checkpoint-delay", " ms"), ("block-incremental", ""),
    ("multifd-channels", ""), ("multifd-compression", ""), ("xbzrle-cache-size", " bytes"),
    ("max-postcopy-bandwidth", ""), ("tls-authz", ""))


@hmp("migrate", "detach:-d,blk:-b,inc:-i,resume:-r,uri:s", "[-d] [-b] [-i] [-r] uri",
     "migrate to URI (using -d to not wait for completion)\n\t\t\t -b for migration "
     "without shared storage with full copy of disk\n\t\t\t -i for migration without "
     "shared storage with incremental copy of disk (base image shared between src and "
     "destination)\n\t\t\t -r to resume a paused migration")
async def migrate_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("migrate", uri=args["uri"], blk=args.get("blk", False),
                   inc=args.get("inc", False), resume=args.get("resume", False))
    if args.get("detach"):
        return ""
    if ctx.session.name != "hmp":   # human-monitor-command: QEMU cannot wait there
        return "terminal does not allow synchronous migration, continuing detached\n"
    while True:                     # the monitor waits, as QEMU's suspends itself
        info = await ctx.call("query-migrate")
        if info.get("status") not in (None, "setup", "active", "cancelling"):
            break
        await asyncio.sleep(0.05)
    if info.get("error-desc"):
        return f"{info['error-desc']}\n"
    return ""


@hmp("migrate_cancel", "", "", "cancel the current VM migration")
async def migrate_cancel_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("migrate_cancel")
    return ""


@hmp("migrate_incoming", "uri:s", "uri", "Continue an incoming migration from an -incoming defer")
async def migrate_incoming_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("migrate-incoming", uri=args["uri"])
    return ""


@hmp("migrate_set_capability", "capability:s,state:b", "capability state",
     "Enable/Disable the usage of a capability for migration")
async def migrate_set_capability_cmd(ctx: HmpContext, args: dict) -> str:
    name = args["capability"]
    if name not in MIGRATION_CAPABILITY.values:
        raise QmpError(f"invalid parameter value: {name}")
    await ctx.call("migrate-set-capabilities",
                   capabilities=[{"capability": name, "state": args["state"]}])
    return ""


@hmp("migrate_set_parameter", "parameter:s,value:s", "parameter value",
     "Set the parameter for migration")
async def migrate_set_parameter_cmd(ctx: HmpContext, args: dict) -> str:
    name, text = args["parameter"], args["value"]
    kind = next((k for n, k, _ in PARAMETERS if n == name), None)
    if kind is None:
        raise QmpError(f"invalid parameter value: {name}")
    await ctx.call("migrate-set-parameters", **{name: _parse_value(name, kind, text)})
    return ""


def _parse_value(name: str, kind, text: str):
    """The value as QEMU's string input visitor reads it for the parameter's type
    (max-bandwidth: MiB unless a suffix says otherwise)."""
    if name == "max-bandwidth":
        try:
            return parse_size(text, 20)
        except OptsError:
            raise QmpError(f"Invalid size {text}") from None
    if kind is BOOL:
        if text in ("on", "yes", "true", "y"):
            return True
        if text in ("off", "no", "false", "n"):
            return False
        raise QmpError(f"Parameter '{name}' expects 'on' or 'off'")
    if kind is STR:
        return text
    if isinstance(kind, Enum):
        return text
    if kind is SIZE or kind.schema_name == "uint64":
        try:
            return parse_size(text)
        except OptsError:
            raise QmpError(f"Parameter '{name}' expects a size value") from None
    try:
        return int(text, 0)
    except ValueError:
        raise QmpError(f"Parameter '{name}' expects {kind.schema_name}") from None


@hmp("migrate", "", "", "show migration status", info=True)
async def info_migrate(ctx: HmpContext, args: dict) -> str:
    info = await ctx.call("query-migrate")
    out = GLOBALS
    if "status" in info:
        out += f"Migration status: {info['status']}"
        if info["status"] == "failed" and "error-desc" in info:
            out += f" ({info['error-desc']})\n"
        else:
            out += "\n"
        out += f"total time: {info.get('total-time', 0)} ms\n"
        for key, label in (("expected-downtime", "expected downtime"),
                           ("downtime", "downtime"), ("setup-time", "setup")):
            if key in info:
                out += f"{label}: {info[key]} ms\n"
    ram = info.get("ram")
    if ram:
        out += (f"transferred ram: {ram['transferred'] >> 10} kbytes\n"
                f"throughput: {ram['mbps']:0.2f} mbps\n"
                f"remaining ram: {ram['remaining'] >> 10} kbytes\n"
                f"total ram: {ram['total'] >> 10} kbytes\n"
                f"duplicate: {ram['duplicate']} pages\n"
                f"skipped: {ram['skipped']} pages\n"
                f"normal: {ram['normal']} pages\n"
                f"normal bytes: {ram['normal-bytes'] >> 10} kbytes\n"
                f"dirty sync count: {ram['dirty-sync-count']}\n"
                f"page size: {ram['page-size'] >> 10} kbytes\n"
                f"multifd bytes: {ram['multifd-bytes'] >> 10} kbytes\n"
                f"pages-per-second: {ram['pages-per-second']}\n")
        if ram["dirty-pages-rate"]:
            out += f"dirty pages rate: {ram['dirty-pages-rate']} pages\n"
        if ram["precopy-bytes"]:
            out += f"precopy ram: {ram['precopy-bytes'] >> 10} kbytes\n"
        if ram["downtime-bytes"]:
            out += f"downtime ram: {ram['downtime-bytes'] >> 10} kbytes\n"
    return out


@hmp("migrate_capabilities", "", "", "show current migration capabilities", info=True)
async def info_migrate_capabilities(ctx: HmpContext, args: dict) -> str:
    caps = await ctx.call("query-migrate-capabilities")
    return "".join(f"{c['capability']}: {'on' if c['state'] else 'off'}\n" for c in caps)


@hmp("migrate_parameters", "", "", "show current migration parameters", info=True)
async def info_migrate_parameters(ctx: HmpContext, args: dict) -> str:
    params = await ctx.call("query-migrate-parameters")
    out = ""
    for name, unit in SHOWN_PARAMETERS:
        value = params[name]
        if isinstance(value, bool):
            value = "on" if value else "off"
        elif name.startswith("tls-"):
            value = f"'{value}'"
        out += f"{name}: {value}{unit}\n"
    return out


forward("migrate_continue", "state:s", "state",
          "Continue migration from the given paused state", "migrate-continue")
forward("migrate_recover", "uri:s", "uri",
          "Continue a paused incoming postcopy migration", "migrate-recover")
forward("migrate_pause", "", "", "Pause an ongoing migration (postcopy-only)",
          "migrate-pause")
forward("migrate_start_postcopy", "", "",
          "Followup to a migration command to switch the migration to postcopy mode. "
          "The postcopy-ram capability must be set on both source and destination before "
          "the original migration command .", "migrate-start-postcopy")
