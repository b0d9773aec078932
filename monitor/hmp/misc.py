"""HMP commands of QEMU's list that stand on their own: objects, fds, announce_self,
cpu, boot_set, singlestep, mce, log and logfile, the page-table views (info mem,
info tlb), info history and info stats, and the reports of features that only
QEMU's TCG or its build options have (info jit, opcount, profile, replay)."""

from __future__ import annotations

import logging
import struct

from monitor.hmp.table import HmpContext, forward, hmp, report
from vmm import paging


@hmp("object_add", "object:S", "[qom-type=]type,id=str[,prop=value][,...]",
     "create QOM object")
async def object_add_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm import objects

    await ctx.call("object-add", **objects.from_text(args["object"]))
    return ""


forward("object_del", "id:s", "id", "destroy QOM object", "object-del")
forward("getfd", "fdname:s", "getfd name",
        "receive a file descriptor via SCM rights and assign it a name")
forward("closefd", "fdname:s", "closefd name",
        "close a file descriptor previously passed via SCM rights")
forward("exit_preconfig", "", "", "exit the preconfig state", "x-exit-preconfig")


@hmp("announce_self", "interfaces:s?,id:s?", "[interfaces] [id]",
     "Trigger GARP/RARP announcements")
async def announce_self_cmd(ctx: HmpContext, args: dict) -> str:
    """With the migration parameters' announce-* timing, as QEMU's."""
    params = ctx.machine.migration_settings.parameters
    extra = {}
    if "interfaces" in args:
        extra["interfaces"] = args["interfaces"].split(",")
    if "id" in args:
        extra["id"] = args["id"]
    await ctx.call("announce-self", initial=params["announce-initial"],
                   max=params["announce-max"], rounds=params["announce-rounds"],
                   step=params["announce-step"], **extra)
    return ""


@hmp("cpu", "index:i", "index", "set the default CPU")
async def cpu_cmd(ctx: HmpContext, args: dict) -> str:
    if not 0 <= args["index"] < len(ctx.machine.vcpus):
        return "invalid CPU index\n"
    ctx.state.cpu = args["index"]
    return ""


@hmp("boot_set", "bootdevice:s", "bootdevice", "define new values for the boot device list")
async def boot_set_cmd(ctx: HmpContext, args: dict) -> str:
    """The PC's rules for the list (kvmkit boots its -kernel, so nothing else changes)."""
    order = args["bootdevice"]
    for i, letter in enumerate(order):                  # any machine's letters first
        if not "a" <= letter <= "p":
            return f"Invalid boot device '{letter}'\n"
        if letter in order[:i]:
            return f"Boot device '{letter}' was given twice\n"
    if len(order) > 3:
        return "Too many boot devices for PC\n"
    for letter in order:                                # then the PC's
        if letter not in "abcdn":
            return f"Invalid boot device for PC: '{letter}'\n"
    ctx.machine.boot_order = order
    return f"boot device list now set to {order}\n"


@hmp("singlestep", "option:s?", "[on|off]",
     "run emulation in singlestep mode or switch to normal mode")
async def singlestep_cmd(ctx: HmpContext, args: dict) -> str:
    """TCG's one-instruction blocks: QEMU keeps the flag under KVM, where it does
    nothing, and so does kvmkit (gdb's stepi steps a vCPU)."""
    option = args.get("option", "on")
    if option not in ("on", "off"):
        return f"unexpected option {option}\n"
    ctx.machine.singlestep = option == "on"
    return ""


MCI_STATUS_VAL = 1 << 63


@hmp("mce", "broadcast:-b,cpu_index:i,bank:i,status:l,mcg_status:l,addr:l,misc:l",
     "[-b] cpu bank status mcgstatus addr misc",
     "inject a MCE on the given CPU [and broadcast to other CPUs with -b option]")
async def mce_cmd(ctx: HmpContext, args: dict) -> str:
    machine = ctx.machine
    if not 0 <= args["cpu_index"] < len(machine.vcpus):
        return ""                                  # QEMU ignores an unknown CPU
    banks = getattr(machine, "_mcg_cap", 0) & 0xFF
    if not banks:
        return "MCE injection not supported\n"
    if args["bank"] >= banks:
        return "Invalid MCE bank number\n"
    if not args["status"] & MCI_STATUS_VAL:
        return "Invalid MCE status code\n"
    targets = range(len(machine.vcpus)) if args["broadcast"] else [args["cpu_index"]]
    for index in targets:
        first = index == args["cpu_index"]
        # the others get QEMU's broadcast: an uncorrected error in bank 1, MCIP and RIPV
        event = (args["bank"], args["status"], args["mcg_status"], args["addr"],
                 args["misc"]) if first else (1, MCI_STATUS_VAL | 1 << 61, 1 << 2 | 1, 0, 0)
        machine.vcpus[index].inspect(lambda vcpu, e=event: vcpu.inject_mce(*e))
    return ""


# QEMU's log items; none of TCG's mean anything under KVM, but they are accepted
LOG_ITEMS = (
    ("out_asm", "show generated host assembly code for each compiled TB"),
    ("in_asm", "show target assembly code for each compiled TB"),
    ("op", "show micro ops for each compiled TB"),
    ("op_opt", "show micro ops after optimization"),
    ("op_ind", "show micro ops before indirect lowering"),
    ("int", "show interrupts/exceptions in short format"),
    ("exec", "show trace before each executed TB (lots of logs)"),
    ("cpu", "show CPU registers before entering a TB (lots of logs)"),
    ("fpu", "include FPU registers in the 'cpu' logging"),
    ("mmu", "log MMU-related activities"),
    ("pcall", "x86 only: show protected mode far calls/returns/exceptions"),
    ("cpu_reset", "show CPU state before CPU resets"),
    ("unimp", "log unimplemented functionality"),
    ("guest_errors", "log when the guest OS does something invalid (eg accessing a\n"
                     "non-existent register)"),
    ("page", "dump pages at beginning of user mode emulation"),
    ("nochain", "do not chain compiled TBs so that \"exec\" and \"cpu\" show\n"
                "complete traces"),
    ("plugin", "output from TCG plugins\n"),
    ("strace", "log every user-mode syscall, its input, and its result"),
    ("tid", "open a separate log file per thread; filename must contain '%d'"),
    ("trace:PATTERN", "enable trace events"),
)


def log_items_help() -> str:
    """What `log help` and `help log` print."""
    return ("Log items (comma separated):\nnone            remove all logs\n"
            + "".join(f"{name:<15} {text}\n" for name, text in LOG_ITEMS)
            + '\nUse "log trace:help" to get a list of trace events.\n\n')


@hmp("log", "items:s", "item1[,...]", "activate logging of the specified items")
async def log_cmd(ctx: HmpContext, args: dict) -> str:
    items = args["items"]
    names = {name for name, _text in LOG_ITEMS if ":" not in name} | {"none"}
    wanted = items.split(",")
    if items == "help" or any(item not in names for item in wanted):
        return log_items_help()
    ctx.machine.log_items = [] if "none" in wanted else wanted
    return ""


@hmp("logfile", "filename:F", "filename", "output logs to 'filename'")
async def logfile_cmd(ctx: HmpContext, args: dict) -> str:
    """kvmkit's log (-D) goes to this file from now on."""
    root = logging.getLogger()
    try:
        handler = logging.FileHandler(args["filename"])
    except OSError as e:
        return f"Error opening logfile {args['filename']}: {e.strerror}\n"
    for old in [h for h in root.handlers if isinstance(h, logging.FileHandler)]:
        root.removeHandler(old)
        old.close()
    handler.setFormatter(logging.Formatter("%(message)s"))
    root.addHandler(handler)
    return ""


# -- page tables ----------------------------------------------------------------------
PTE_FLAGS = ((1 << 63, "X"), (1 << 8, "G"), (1 << 7, "P"), (1 << 6, "D"), (1 << 5, "A"),
             (1 << 4, "C"), (1 << 3, "T"), (1 << 2, "U"), (1 << 1, "W"))


def _canonical(addr: int) -> int:
    return addr | 0xFFFF000000000000 if addr & (1 << 47) else addr


def _leaves(machine, sregs):
    """(virtual address, entry, page size, rights) of each mapped page of a 4-level
    table, in address order; rights are the U and W bits all levels allow."""
    read = machine.memory.read

    def entries(table: int):
        try:
            raw = read(table, 4096)
        except ValueError:
            return []
        return [(i, e) for i, e in enumerate(struct.unpack("<512Q", raw)) if e & 1]

    def walk(table: int, level: int, base: int, rights: int):
        shift = 12 + 9 * level
        for index, entry in entries(table):
            vaddr, allowed = base | index << shift, rights & entry & 6
            if level == 0 or (level in (1, 2) and entry & 0x80):
                yield vaddr, entry, 1 << shift, allowed
            else:
                yield from walk(entry & paging.ADDR_52, level - 1, vaddr, allowed)
    yield from walk(sregs.cr3 & paging.ADDR_52, 3, 0, 6)


def _paging_state(ctx: HmpContext):
    machine = ctx.machine
    if not machine.vcpus:
        return None, "No CPU available\n"
    sregs = machine.cpu_state(ctx.cpu)["sregs"]
    if not sregs.cr0 & paging.CR0_PG:
        return None, "PG disabled\n"
    if not sregs.efer & paging.EFER_LMA:
        return None, "Error: only 64-bit paging is shown by kvmkit\n"
    return sregs, ""


@hmp("tlb", "", "", "show virtual to physical memory mappings", info=True)
async def info_tlb(ctx: HmpContext, args: dict) -> str:
    sregs, text = _paging_state(ctx)
    if sregs is None:
        return text
    out = []
    for vaddr, entry, size, _flags in _leaves(ctx.machine, sregs):
        frame = entry & paging.ADDR_52 & ~(size - 1)
        out.append(f"{_canonical(vaddr):016x}: {frame:016x} "
                   + "".join(c if entry & bit else "-" for bit, c in PTE_FLAGS) + "\n")
    return "".join(out)


@hmp("mem", "", "", "show the active virtual memory mappings", info=True)
async def info_mem(ctx: HmpContext, args: dict) -> str:
    """Runs of pages with the same user/read/write rights, as QEMU prints them."""
    sregs, text = _paging_state(ctx)
    if sregs is None:
        return text
    out = []
    run_start = run_end = None
    run_prot = 0
    for vaddr, _entry, size, rights in list(_leaves(ctx.machine, sregs)) + [(None, 0, 0, 0)]:
        prot = rights if vaddr is not None else None
        if run_start is not None and (vaddr != run_end or prot != run_prot):
            start, end = _canonical(run_start), _canonical(run_end - 1) + 1
            rights = ("u" if run_prot & 4 else "-") + "r" + ("w" if run_prot & 2 else "-")
            out.append(f"{start:016x}-{end & 0xFFFFFFFFFFFFFFFF:016x} "
                       f"{end - start:016x} {rights}\n")
            run_start = None
        if vaddr is None:
            break
        if run_start is None:
            run_start, run_prot = vaddr, prot
        run_end = vaddr + size
    return "".join(out)


@hmp("history", "", "", "show the command line history", info=True)
async def info_history(ctx: HmpContext, args: dict) -> str:
    return "".join(f"{i}: '{line}'\n" for i, line in enumerate(ctx.state.history))


@hmp("stats", "target:s,names:s?,provider:s?", "target [names] [provider]",
     "show statistics for the given target (vm or vcpu); optionally filter by"
     "name (comma-separated list, or * for all) and provider", info=True)
async def info_stats(ctx: HmpContext, args: dict) -> str:
    target = args["target"]
    if target not in ("vm", "vcpu"):
        return f"Error: Parameter 'target' does not accept value '{target}'\n"
    provider = args.get("provider")
    if provider not in (None, "kvm"):
        return f"Error: Parameter 'provider' does not accept value '{provider}'\n"
    request: dict = {"provider": "kvm"}
    names = args.get("names")
    if names and names != "*":
        request["names"] = names.split(",")
    from monitor.commands.core import cpu_qom_path
    extra = {"vcpus": [cpu_qom_path(ctx.cpu)]} if target == "vcpu" else {}
    results = await ctx.call("query-stats", target=target, providers=[request], **extra)
    schemas = {(s["target"], v["name"]): v for s in await ctx.call("query-stats-schemas")
               for v in s["stats"]}
    out = []
    for result in results:
        out.append(f"provider: {result['provider']}\n")
        for stat in result["stats"]:
            schema = schemas.get((target, stat["name"]), {})
            out.append(f"    {stat['name']} ({_stat_kind(schema)}): "
                       f"{_stat_value(schema, stat['value'])}\n")
    return "".join(out)


SI_PREFIXES = {-9: "n", -6: "u", -3: "m", 0: "", 3: "K", 6: "M", 9: "G"}


def _stat_kind(schema: dict) -> str:
    """'cumulative', 'instant, boolean', 'log2-histogram, ns': the type and unit."""
    kind = schema.get("type", "instant")
    unit, exponent = schema.get("unit"), schema.get("exponent", 0)
    if unit == "seconds" and exponent in SI_PREFIXES:
        kind += f", {SI_PREFIXES[exponent]}s"
    elif unit is not None:
        kind += f", {unit}" if not exponent else \
            f", * {schema.get('base', 10)}^{exponent} {unit}"
    elif exponent:
        kind += f", * {schema.get('base', 10)}^{exponent}"
    if kind.startswith("linear-histogram") and "bucket-size" in schema:
        kind += f", bucket size={schema['bucket-size']}"
    return kind


def _stat_value(schema: dict, value) -> str:
    if isinstance(value, list):
        step = schema.get("bucket-size", 1)
        keys = [(i + 1) if schema.get("type") == "log2-histogram" else i * step
                for i in range(len(value))]
        return "".join(f"[{k}]={v} " for k, v in zip(keys, value))
    if schema.get("unit") == "boolean":
        return "yes" if value else "no"
    return str(int(value))


report("jit", "", "", "show dynamic compiler info", "x-query-jit")
report("opcount", "", "", "show dynamic compiler opcode counters", "x-query-opcount")
report("profile", "", "", "show profiling information", "x-query-profile")
report("rdma", "", "", "show RDMA state", "x-query-rdma")
report("replay", "", "", "show record/replay information", "query-replay",
        lambda reply: "Record/replay is not active\n" if reply["mode"] == "none" else
        f"Record/replay mode: {reply['mode']}\n")
report("vm-generation-id", "", "", "Show Virtual Machine Generation ID",
        "query-vm-generation-id", lambda reply: f"{reply['guid']}\n")
report("tpm", "", "", "show the TPM device", "query-tpm",
        lambda reply: "" if not reply else "TPM device:\n")
report("sev", "", "", "show SEV information", "query-sev",
        lambda reply: "SEV is not enabled\n" if not reply["enabled"] else
        f"SEV policy: 0x{reply['policy']:x}\n")
for _rocker, _params, _help in (
        ("rocker", "name", "Show rocker switch"),
        ("rocker-ports", "name", "Show rocker ports"),
        ("rocker-of-dpa-flows", "name [tbl_id]", "Show rocker OF-DPA flow tables"),
        ("rocker-of-dpa-groups", "name [type]", "Show rocker OF-DPA groups")):
    _extra = {"rocker-of-dpa-flows": ",tbl-id:i?", "rocker-of-dpa-groups": ",type:i?"}
    report(_rocker, "name:s" + _extra.get(_rocker, ""), _params, _help,
            "query-" + _rocker, lambda reply: "")


@hmp("sgx", "", "", "show intel SGX information", info=True)
async def info_sgx(ctx: HmpContext, args: dict) -> str:
    from vmm.errors import UserError
    try:
        await ctx.call("query-sgx")
    except UserError:
        return "No EPC regions defined, SGX not available\n"
    return ""


@hmp("usbhost", "", "", "show host USB devices", info=True)
async def info_usbhost(ctx: HmpContext, args: dict) -> str:
    # QEMU's answer before its usb-host module is loaded; kvmkit passes no host USB
    # device through to a guest
    return 'Command "info usbhost" is not available.\n'


@hmp("capture", "", "", "show capture information", info=True)
async def info_capture(ctx: HmpContext, args: dict) -> str:
    return ""                                  # kvmkit has no audio to capture


def _replay(name: str, args_type: str, params: str, help: str, qmp: str) -> None:
    """Record/replay, which kvmkit lacks: QEMU prints these errors bare."""
    async def handler(ctx: HmpContext, args: dict) -> str:
        from vmm.errors import UserError
        try:
            await ctx.call(qmp, **args)
        except UserError as e:
            return f"{e}\n"
        return ""
    hmp(name, args_type, params, help, qmp=qmp)(handler)


_replay("replay_break", "icount:l", "icount", "set breakpoint at the specified instruction count",
        "replay-break")
_replay("replay_delete_break", "", "", "remove replay breakpoint", "replay-delete-break")
_replay("replay_seek", "icount:l", "icount",
        "replay execution to the specified instruction count", "replay-seek")
forward("x_colo_lost_heartbeat", "", "",
        "Tell COLO that heartbeat is lost,\n\t\t\ta failover or takeover is needed.",
        "x-colo-lost-heartbeat")


@hmp("trace-event", "name:s,option:b,vcpu:i?", "name on|off [vcpu]",
     "changes status of a specific trace event (vcpu: vCPU to set, default is all)")
async def trace_event_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm.errors import UserError
    extra = {"vcpu": args["vcpu"]} if "vcpu" in args else {}
    try:
        await ctx.call("trace-event-set-state", name=args["name"], enable=args["option"],
                       **extra)
    except UserError as e:
        return f"{e}\n"                       # QEMU prints it bare
    return ""


@hmp("trace-events", "name:s?,vcpu:i?", "[name] [vcpu]",
     "show available trace-events & their state (name: event name pattern; vcpu: vCPU to "
     "query, default is any)", info=True)
async def info_trace_events(ctx: HmpContext, args: dict) -> str:
    from vmm.errors import UserError
    extra = {"vcpu": args["vcpu"]} if "vcpu" in args else {}
    try:
        events = await ctx.call("trace-event-get-state", name=args.get("name", "*"), **extra)
    except UserError as e:
        return f"{e}\n"
    return "".join(f"{e['name']} : state {int(e['state'] == 'enabled')}\n" for e in events)


@hmp("qdm", "", "", "show qdev device model list", info=True)
async def info_qdm(ctx: HmpContext, args: dict) -> str:
    from vmm import qdev
    return qdev.device_help(with_board_parts=True)


@hmp("mouse_move", "dx_str:s,dy_str:s,dz_str:s?", "dx dy [dz]", "send mouse move events")
async def mouse_move_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm.input import InputEvent

    def number(text: str | None) -> int:
        try:
            return int(text or "0", 0)
        except ValueError:
            return 0                             # QEMU's strtol: no digits, no motion
    dx, dy, dz = number(args["dx_str"]), number(args["dy_str"]), number(args.get("dz_str"))
    events = [InputEvent("rel", axis="x", value=dx), InputEvent("rel", axis="y", value=dy)]
    wheel = "wheel-up" if dz > 0 else "wheel-down"
    with ctx.machine.lock:                   # QEMU's batches: the move with the wheel press
        ctx.machine.input.send(events + ([InputEvent("btn", button=wheel, value=1)]
                                         if dz else []))
        if dz:
            ctx.machine.input.send([InputEvent("btn", button=wheel, value=0)])
    return ""


MOUSE_BUTTON_BITS = {"left": 1, "right": 2, "middle": 4}     # QEMU's MOUSE_EVENT_*BUTTON


@hmp("mouse_button", "button_state:i", "state", "change mouse button state (1=L, 2=M, 4=R)")
async def mouse_button_cmd(ctx: HmpContext, args: dict) -> str:
    from vmm.input import InputEvent

    state, previous = args["button_state"], getattr(ctx.machine, "mouse_buttons", 0)
    events = [InputEvent("btn", button=name, value=int(bool(state & bit)))
              for name, bit in MOUSE_BUTTON_BITS.items() if (state ^ previous) & bit]
    with ctx.machine.lock:
        ctx.machine.mouse_buttons = state
        ctx.machine.input.send(events)
    return ""


@hmp("mouse_set", "index:i", "index", "set which mouse device receives events")
async def mouse_set_cmd(ctx: HmpContext, args: dict) -> str:
    hub = ctx.machine.input
    mouse = next((m for m in hub.mice() if m.index == args["index"]), None)
    if mouse is None:
        return f"Mouse at index '{args['index']}' not found\n"
    with ctx.machine.lock:
        hub.activate(mouse)
    return ""


@hmp("sendkey", "keys:s,hold-time:i?", "keys [hold_ms]",
     "send keys to the VM (e.g. 'sendkey ctrl-alt-f1', default hold time=100 ms)")
async def sendkey_cmd(ctx: HmpContext, args: dict) -> str:
    from monitor.commands.display import press_keys
    from vmm.input import QKEYCODES, qcode_of_number

    names = []
    for part in args["keys"].split("-"):
        if part in QKEYCODES:
            names.append(part)
            continue
        try:
            names.append(qcode_of_number(int(part, 16 if part.startswith("0x") else 10)))
        except ValueError:
            return f"invalid parameter: {part}\n"
    with ctx.machine.lock:
        press_keys(ctx.machine, names, args.get("hold-time") or 100)
    return ""


@hmp("wavcapture", "path:F,audiodev:s,freq:i?,bits:i?,nchannels:i?",
     "path audiodev [frequency [bits [channels]]]",
     "capture audio to a wave file (default frequency=44100 bits=16 channels=2)")
async def wavcapture_cmd(ctx: HmpContext, args: dict) -> str:
    return f"Audiodev '{args['audiodev']}' not found\n"      # kvmkit has no audio back ends


@hmp("stopcapture", "n:i", "capture index", "stop capture")
async def stopcapture_cmd(ctx: HmpContext, args: dict) -> str:
    return ""                                              # there are no captures to stop


@hmp("pcie_aer_inject_error",
     "advisory_non_fatal:-a,correctable:-c,id:s,error_status:s,header0:i?,header1:i?,"
     "header2:i?,header3:i?,prefix0:i?,prefix1:i?,prefix2:i?,prefix3:i?",
     "[-a] [-c] id <error_status> [<tlp header> [<tlp header prefix>]]",
     "inject pcie aer error\n\t\t\t -a for advisory non fatal error\n\t\t\t -c for "
     "correctable error\n\t\t\t<id> = qdev device id\n\t\t\t<error_status> = error string "
     "or 32bit\n\t\t\t<tlp header> = 32bit x 4\n\t\t\t<tlp header prefix> = 32bit x 4")
async def pcie_aer_inject_error_cmd(ctx: HmpContext, args: dict) -> str:
    device = ctx.machine.devices.find(args["id"])
    if device is None or device.type.bus != "PCI":
        return f"id or pci device path is invalid or device not found. {args['id']}\n"
    return f"the device doesn't support pci express. {args['id']}\n"   # i440FX: PCI only
