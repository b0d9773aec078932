"""HMP over the machine as a whole: nmi, memsave and pmemsave, sum, gva2gpa and
gpa2hpa, i and o (port I/O), print, watchdog_action, the chardev and ring-buffer
commands, and the `info` reports of memory, NUMA, RAM blocks, ROMs and iothreads."""

from __future__ import annotations

import os
import struct

from monitor.errors import QmpError
from monitor.hmp.memory import translate
from monitor.hmp.table import HmpContext, forward, hmp, report

forward("nmi", "", "", "inject an NMI", "inject-nmi")
forward("memsave", "val:l,size:i,filename:s", "addr size file",
        "save to disk virtual memory dump starting at 'addr' of size 'size'", "memsave")
forward("pmemsave", "val:l,size:i,filename:s", "addr size file",
        "save to disk physical memory dump starting at 'addr' of size 'size'", "pmemsave")
forward("chardev-remove", "id:s", "id", "remove chardev", "chardev-remove")
forward("dumpdtb", "filename:F", "filename", "dump the FDT in dtb format to 'filename'")
forward("chardev-send-break", "id:s", "id", "send a break on chardev", "chardev-send-break")
forward("ringbuf_write", "device:s,data:s", "device data",
        "Write to a ring buffer character device", "ringbuf-write")


@hmp("ringbuf_read", "device:s,size:i", "device size",
     "Read from a ring buffer character device")
async def ringbuf_read_cmd(ctx: HmpContext, args: dict) -> str:
    """The bytes as they are, control characters escaped as \\xNN (QEMU's way)."""
    from monitor.commands.chardevs import _ringbuf

    ring = _ringbuf(ctx, args["device"])
    if args["size"] <= 0:
        raise QmpError("size must be greater than zero")
    data = ring.read(args["size"]).split(b"\0", 1)[0].decode("utf-8", errors="replace")
    out = []
    for ch in data:
        if ch == "\\":
            out.append("\\\\")
        elif ord(ch) < 0x20 or ord(ch) == 0x7F:
            out.append(f"\\u{ord(ch):04X}")
        else:
            out.append(ch)
    return "".join(out) + "\n"


def _chardev_backend(text: str) -> tuple[str, dict]:
    """-chardev's option text as chardev-add's (id, backend)."""
    from vmm.qemuopts import parse_opts

    opts = parse_opts(text, implied="backend")
    kind = opts.pop("backend", "")
    chardev_id = opts.pop("id", "")
    data: dict = {}
    if kind == "file":
        data = {"out": opts.get("path", "")}
        if "append" in opts:
            data["append"] = opts["append"] == "on"
    elif kind == "socket":
        if "path" in opts:
            addr = {"type": "unix", "data": {"path": opts["path"]}}
        else:
            addr = {"type": "inet", "data": {"host": opts.get("host", ""),
                                             "port": opts.get("port", "")}}
        data = {"addr": addr, "server": opts.get("server", "off") == "on",
                "wait": opts.get("wait", "on") == "on"}
    elif kind in ("ringbuf", "memory") and "size" in opts:
        data = {"size": int(opts["size"], 0)}
    return chardev_id, {"type": kind, "data": data}


@hmp("chardev-add", "args:s", "args", "add chardev")
async def chardev_add_cmd(ctx: HmpContext, args: dict) -> str:
    chardev_id, backend = _chardev_backend(args["args"])
    reply = await ctx.call("chardev-add", id=chardev_id, backend=backend)
    return f"char device redirected to {reply['pty']}\n" if "pty" in reply else ""


@hmp("chardev-change", "id:s,args:s", "id args", "change chardev")
async def chardev_change_cmd(ctx: HmpContext, args: dict) -> str:
    _id, backend = _chardev_backend(args["args"])
    reply = await ctx.call("chardev-change", id=args["id"], backend=backend)
    return f"char device redirected to {reply['pty']}\n" if "pty" in reply else ""


@hmp("watchdog_action", "action:s", "[reset|shutdown|poweroff|pause|debug|none]",
     "change watchdog action")
async def watchdog_action_cmd(ctx: HmpContext, args: dict) -> str:
    from monitor.commands.machine import WATCHDOG_ACTION

    if args["action"] not in WATCHDOG_ACTION.values:
        return f"Error: invalid parameter value: {args['action']}\n"
    await ctx.call("watchdog-set-action", action=args["action"])
    return ""


# -- memory and ports --------------------------------------------------------------
@hmp("sum", "start:i,size:i", "addr size", "compute the checksum of a memory region")
async def sum_cmd(ctx: HmpContext, args: dict) -> str:
    """The BSD checksum of guest-physical bytes, as QEMU prints it."""
    from monitor.commands.machine import physical_bytes

    total = 0
    addr, end = args["start"], args["start"] + args["size"]
    while addr < end:
        step = min(end - addr, 0x1000 - (addr & 0xFFF))
        for byte in physical_bytes(ctx.machine, addr, step):
            total = ((total >> 1) | ((total & 1) << 15)) + byte
            total &= 0xFFFF
        addr += step
    return f"{total:05d}\n"


@hmp("gva2gpa", "addr:l", "addr",
     "print the guest physical address corresponding to a guest virtual address")
async def gva2gpa_cmd(ctx: HmpContext, args: dict) -> str:
    if not ctx.machine.vcpus:
        return "No cpu\n"
    try:
        gpa = translate(ctx.machine, ctx.cpu, args["addr"])
    except QmpError:
        return "Unmapped\n"
    return f"gpa: {gpa:#x}\n"


@hmp("gpa2hpa", "addr:l", "addr",
     "print the host physical address corresponding to a guest physical address")
async def gpa2hpa_cmd(ctx: HmpContext, args: dict) -> str:
    memory, addr = ctx.machine.memory, args["addr"]
    try:
        region = memory.region_of(addr, 1)
    except ValueError:
        return f"No memory is mapped at address 0x{addr:x}\n"
    hva = memory.host_address(region) + addr - region.gpa
    region.view[addr - region.gpa:addr - region.gpa + 1].tobytes()    # fault it in
    try:
        with open("/proc/self/pagemap", "rb") as f:
            f.seek((hva // 4096) * 8)
            entry, = struct.unpack("<Q", f.read(8))
    except OSError as e:
        return f"Error: Cannot open /proc/self/pagemap: {os.strerror(e.errno or 0)}\n"
    frame = entry & ((1 << 55) - 1)
    if not entry >> 63 & 1 or not frame:
        return "Error: Page not present\n"
    return f"Host physical address for 0x{addr:x} (pc.ram) is 0x{frame * 4096 | hva & 0xFFF:x}\n"


_PORT_SUFFIX = {1: "b", 2: "w", 4: "l"}


@hmp("i", "fmt:/,addr:i", "/fmt addr", "I/O port read")
async def port_in_cmd(ctx: HmpContext, args: dict) -> str:
    _count, _fmt, size = args["fmt"]
    size = size if size in (1, 2, 4) else 1
    port = args["addr"] & 0xFFFF
    with ctx.machine.lock:
        value = ctx.machine.pio.read(port, size)
    return f"port{_PORT_SUFFIX[size]}[0x{port:04x}] = 0x{value:0{size * 2}x}\n"


@hmp("o", "fmt:/,addr:i,val:i", "/fmt addr value", "I/O port write")
async def port_out_cmd(ctx: HmpContext, args: dict) -> str:
    _count, _fmt, size = args["fmt"]
    size = size if size in (1, 2, 4) else 1
    with ctx.machine.lock:
        ctx.machine.pio.write(args["addr"] & 0xFFFF, size,
                              args["val"] & ((1 << (size * 8)) - 1))
    return ""


@hmp("print", "fmt:/,val:l", "/fmt expr",
     "print expression value (use $reg for CPU register access)", aliases=("p",))
async def print_cmd(ctx: HmpContext, args: dict) -> str:
    from monitor.hmp.memory import _char

    _count, fmt, _size = args["fmt"]
    value = args["val"] & 0xFFFFFFFFFFFFFFFF
    if fmt == "o":
        return (f"0{value:o}" if value else "0") + "\n"
    if fmt == "x":
        return (f"0x{value:x}" if value else "0") + "\n"
    if fmt == "u":
        return f"{value}\n"
    if fmt == "c":
        return _char(value & 0xFF) + "\n"
    return f"{value - (1 << 64) if value >> 63 else value}\n"


# -- info --------------------------------------------------------------------------
@hmp("memdev", "", "", "show memory backends", info=True)
async def info_memdev(ctx: HmpContext, args: dict) -> str:
    out = []
    for m in await ctx.call("query-memdev"):
        out.append(f"memory backend: {m['id']}\n  size:  {m['size']}\n"
                   f"  merge: {str(m['merge']).lower()}\n  dump: {str(m['dump']).lower()}\n"
                   f"  prealloc: {str(m['prealloc']).lower()}\n"
                   f"  share: {str(m['share']).lower()}\n")
        if "reserve" in m:
            out.append(f"  reserve: {str(m['reserve']).lower()}\n")
        out.append(f"  policy: {m['policy']}\n  host nodes: "
                   + ",".join(str(n) for n in m["host-nodes"]) + "\n\n")
    return "".join(out)


@hmp("memory-devices", "", "", "show memory devices", info=True)
async def info_memory_devices(ctx: HmpContext, args: dict) -> str:
    await ctx.call("query-memory-devices")
    return ""                  # one paragraph a device, and kvmkit plugs none (see there)


report("numa", "", "", "show NUMA information", "x-query-numa")
report("ramblock", "", "", "Display system ramblock information", "x-query-ramblock")
report("roms", "", "", "show roms", "x-query-roms")
report("usb", "", "", "show guest USB devices", "x-query-usb")


@hmp("iothreads", "", "", "show iothreads", info=True)
async def info_iothreads(ctx: HmpContext, args: dict) -> str:
    out = []
    for t in await ctx.call("query-iothreads"):
        out.append(f"{t['id']}:\n  thread_id={t['thread-id']}\n  poll-max-ns={t['poll-max-ns']}\n"
                   f"  poll-grow={t['poll-grow']}\n  poll-shrink={t['poll-shrink']}\n"
                   f"  aio-max-batch={t['aio-max-batch']}\n")
    return "".join(out)


@hmp("dump-guest-memory",
     "paging:-p,detach:-d,windmp:-w,zlib:-z,lzo:-l,snappy:-s,filename:F,begin:l?,length:l?",
     "[-p] [-d] [-z|-l|-s|-w] filename [begin length]",
     "dump guest memory into file 'filename'.\n\t\t\t"
     "-p: do paging to get guest's memory mapping.\n\t\t\t"
     "-d: return immediately (do not wait for completion).\n\t\t\t"
     "-z: dump in kdump-compressed format, with zlib compression.\n\t\t\t"
     "-l: dump in kdump-compressed format, with lzo compression.\n\t\t\t"
     "-s: dump in kdump-compressed format, with snappy compression.\n\t\t\t"
     "-w: dump in Windows crashdump format (can be used instead of ELF-dump converting),"
     "\n\t\t\t    for Windows x86 and x64 guests with vmcoreinfo driver only.\n\t\t\t"
     "begin: the starting physical address.\n\t\t\t"
     "length: the memory size, in bytes.")
async def dump_guest_memory_cmd(ctx: HmpContext, args: dict) -> str:
    formats = [f for flag, f in (("zlib", "kdump-zlib"), ("lzo", "kdump-lzo"),
                                 ("snappy", "kdump-snappy"), ("windmp", "win-dmp"))
               if args[flag]]
    if len(formats) > 1:
        return "Error: only one of '-z|-l|-s|-w' can be set\n"
    extra = {k: args[k] for k in ("begin", "length") if k in args}
    if formats:
        extra["format"] = formats[0]
    await ctx.call("dump-guest-memory", paging=args["paging"], detach=args["detach"],
                   protocol="file:" + args["filename"], **extra)
    return ""


@hmp("dump", "", "", "Display the latest dump status", info=True)
async def info_dump(ctx: HmpContext, args: dict) -> str:
    result = await ctx.call("query-dump")
    text = f"Status: {result['status']}\n"
    if result["status"] == "active":
        done = result["completed"] * 100.0 / result["total"] if result["total"] else 0.0
        text += f"Finished: {done:.2f} %\n"
    return text


# -- dirty pages -----------------------------------------------------------------------
@hmp("calc_dirty_rate", "dirty_ring:-r,dirty_bitmap:-b,second:l,sample_pages_per_GB:l?",
     "[-r] [-b] second [sample_pages_per_GB]",
     "start a round of guest dirty rate measurement (using -r to\n\t\t\t specify dirty ring "
     "as the method of calculation and\n\t\t\t -b to specify dirty bitmap as method of "
     "calculation)")
async def calc_dirty_rate_cmd(ctx: HmpContext, args: dict) -> str:
    if args["dirty_ring"] and args["dirty_bitmap"]:
        return "Either dirty ring or dirty bitmap can be specified!\n"
    mode = "dirty-ring" if args["dirty_ring"] else \
        "dirty-bitmap" if args["dirty_bitmap"] else "page-sampling"
    extra = {"sample-pages": args["sample_pages_per_GB"]} \
        if "sample_pages_per_GB" in args else {}
    await ctx.call("calc-dirty-rate", **{"calc-time": args["second"], "mode": mode, **extra})
    return (f"Starting dirty rate measurement with period {args['second']} seconds\n"
            "[Please use 'info dirty_rate' to check results]\n")


@hmp("dirty_rate", "", "", "show dirty rate information", info=True)
async def info_dirty_rate(ctx: HmpContext, args: dict) -> str:
    info = await ctx.call("query-dirty-rate")
    rate = f"{info['dirty-rate']} (MB/s)" if "dirty-rate" in info else "(not ready)"
    return (f"Status: {info['status']}\nStart Time: {info['start-time']} (ms)\n"
            f"Sample Pages: {info['sample-pages']} (per GB)\nPeriod: {info['calc-time']} (sec)\n"
            f"Mode: {info['mode']}\nDirty rate: {rate}\n")


@hmp("set_vcpu_dirty_limit", "dirty_rate:l,cpu_index:l?", "dirty_rate [cpu_index]",
     "set dirty page rate limit, use cpu_index to set limit\n\t\t\t\t\t on a specified "
     "virtual cpu")
async def set_vcpu_dirty_limit_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {"cpu-index": args["cpu_index"]} if "cpu_index" in args else {}
    await ctx.call("set-vcpu-dirty-limit", **{"dirty-rate": args["dirty_rate"], **extra})
    return ""


@hmp("cancel_vcpu_dirty_limit", "cpu_index:l?", "[cpu_index]",
     "cancel dirty page rate limit, use cpu_index to cancel\n\t\t\t\t\t limit on a "
     "specified virtual cpu")
async def cancel_vcpu_dirty_limit_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {"cpu-index": args["cpu_index"]} if "cpu_index" in args else {}
    await ctx.call("cancel-vcpu-dirty-limit", **extra)
    return "[Please use 'info vcpu_dirty_limit' to query dirty limit for virtual CPU]\n"


@hmp("vcpu_dirty_limit", "", "", "show dirty page limit information of all vCPU", info=True)
async def info_vcpu_dirty_limit(ctx: HmpContext, args: dict) -> str:
    limits = await ctx.call("query-vcpu-dirty-limit")
    if not limits:
        return "Dirty page limit not enabled!\n"
    return "".join(f"vcpu[{x['cpu-index']}], limit rate {x['limit-rate']} (MB/s), "
                   f"current rate {x['current-rate']} (MB/s)\n" for x in limits)


# -- displays (none yet: see monitor/commands/display.py) -------------------------------
@hmp("mice", "", "", "show which guest mouse is receiving events", info=True)
async def info_mice(ctx: HmpContext, args: dict) -> str:
    mice = await ctx.call("query-mice")
    if not mice:
        return "No mouse devices connected\n"
    return "".join(f"{'*' if m['current'] else ' '} Mouse #{m['index']}: {m['name']}"
                   f"{' (absolute)' if m['absolute'] else ''}\n" for m in mice)


@hmp("screendump", "filename:F,format:-fs,device:s?,head:i?",
     "filename [-f format] [device [head]]",
     "save screen from head 'head' of display device 'device'in specified format 'format' "
     "as image 'filename'.Currently only 'png' and 'ppm' formats are supported.")
async def screendump_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {k: args[k] for k in ("device", "head", "format") if k in args}
    await ctx.call("screendump", filename=args["filename"], **extra)
    return ""


@hmp("vnc", "", "", "show the vnc server status", info=True)
async def info_vnc(ctx: HmpContext, args: dict) -> str:
    servers = await ctx.call("query-vnc-servers")
    if not servers:
        return "None\n"
    out = []
    for server in servers:
        out.append(f"{server['id']}:\n")
        for listener in server["server"]:
            out.append(f"  Server: {listener['host']}:{listener['service']} "
                       f"({listener['family']})\n    Auth: {listener['auth']} (Sub: none)\n")
        for client in server["clients"]:
            out.append(f"  Client: {client['host']}:{client['service']} ({client['family']})\n"
                       f"    x509_dname: none\n    sasl_username: none\n")
        if not server["server"]:
            out.append(f"  Auth: {server['auth']} (Sub: none)\n")
    return "".join(out)


@hmp("set_password", "protocol:s,password:s,display:-ds,connected:s?",
     "protocol password [-d display] [action-if-connected]", "set spice/vnc password")
async def set_password_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {k: args[k] for k in ("display", "connected") if k in args}
    vnc = ctx.machine.vnc
    if args["protocol"] == "vnc" and vnc is not None and not vnc.spec.password:
        return ("If you want use passwords please enable password auth using "
                "'-vnc ${dpy},password'.\nError: Could not set password\n")
    await ctx.call("set_password", protocol=args["protocol"], password=args["password"],
                   **extra)
    return ""


@hmp("expire_password", "protocol:s,time:s,display:-ds", "protocol time [-d display]",
     "set spice/vnc password expire-time")
async def expire_password_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {"display": args["display"]} if "display" in args else {}
    await ctx.call("expire_password", protocol=args["protocol"], time=args["time"], **extra)
    return ""


@hmp("client_migrate_info", "protocol:s,hostname:s,port:i?,tls-port:i?,cert-subject:s?",
     "protocol hostname port tls-port cert-subject",
     "set migration information for remote display")
async def client_migrate_info_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("client_migrate_info", **args)
    return ""


# -- virtio ---------------------------------------------------------------------------
@hmp("virtio", "", "", "List all available virtio devices", info=True)
async def info_virtio(ctx: HmpContext, args: dict) -> str:
    devices = await ctx.call("x-query-virtio")
    if not devices:
        return "No VirtIO devices\n"
    return "".join(f"{d['path']} [{d['name']}]\n" for d in devices)


def _comma_lines(lines: list[str]) -> str:
    """One a line, tab first, a comma after each but the last (as QEMU's lists)."""
    return "".join(f"\t{line}{',' if i < len(lines) - 1 else ''}\n"
                   for i, line in enumerate(lines))


def _feature_lines(features: dict) -> str:
    text = _comma_lines(features.get("transports", [])) + \
        _comma_lines(features.get("dev-features", []))
    if "unknown-dev-features" in features:
        text += f"  unknown-features(0x{features['unknown-dev-features']:016x})\n"
    return text


@hmp("virtio-status", "path:s", "path", "Display status of a given virtio device", info=True)
async def info_virtio_status(ctx: HmpContext, args: dict) -> str:
    s = await ctx.call("x-query-virtio-status", path=args["path"])
    flag = lambda v: "true" if v else "false"       # noqa: E731
    return (f"{args['path']}:\n  device_name:             {s['name']} \n"
            f"  device_id:               {s['device-id']}\n"
            f"  vhost_started:           {flag(s['vhost-started'])}\n"
            f"  bus_name:                {s['bus-name'] or '(null)'}\n"
            f"  broken:                  {flag(s['broken'])}\n"
            f"  disabled:                {flag(s['disabled'])}\n"
            f"  disable_legacy_check:    {flag(s['disable-legacy-check'])}\n"
            f"  started:                 {flag(s['started'])}\n"
            f"  use_started:             {flag(s['use-started'])}\n"
            f"  start_on_kick:           {flag(s['start-on-kick'])}\n"
            f"  use_guest_notifier_mask: {flag(s['use-guest-notifier-mask'])}\n"
            f"  vm_running:              {flag(s['vm-running'])}\n"
            f"  num_vqs:                 {s['num-vqs']}\n"
            f"  queue_sel:               {s['queue-sel']}\n"
            f"  isr:                     {s['isr']}\n"
            f"  endianness:              {s['device-endian']}\n  status:\n"
            + _comma_lines(s["status"]["statuses"])
            + "  Guest features:\n" + _feature_lines(s["guest-features"])
            + "  Host features:\n" + _feature_lines(s["host-features"])
            + "  Backend features:\n" + _feature_lines(s["backend-features"]) + "\n")


@hmp("virtio-queue-status", "path:s,queue:i", "path queue",
     "Display status of a given virtio queue", info=True)
async def info_virtio_queue_status(ctx: HmpContext, args: dict) -> str:
    q = await ctx.call("x-query-virtio-queue-status", path=args["path"], queue=args["queue"])
    return (f"{args['path']}:\n  device_name:          {q['name']}\n"
            f"  queue_index:          {q['queue-index']}\n  inuse:                {q['inuse']}\n"
            f"  used_idx:             {q['used-idx']}\n"
            f"  signalled_used:       {q['signalled-used']}\n"
            f"  signalled_used_valid: {'true' if q['signalled-used-valid'] else 'false'}\n"
            f"  last_avail_idx:       {q['last-avail-idx']}\n"
            f"  shadow_avail_idx:     {q['shadow-avail-idx']}\n  VRing:\n"
            f"    num:          {q['vring-num']}\n    num_default:  {q['vring-num-default']}\n"
            f"    align:        {q['vring-align']}\n    desc:         0x{q['vring-desc']:016x}\n"
            f"    avail:        0x{q['vring-avail']:016x}\n"
            f"    used:         0x{q['vring-used']:016x}\n")


@hmp("virtio-queue-element", "path:s,queue:i,index:i?", "path queue [index]",
     "Display element of a given virtio queue", info=True)
async def info_virtio_queue_element(ctx: HmpContext, args: dict) -> str:
    e = await ctx.call("x-query-virtio-queue-element", **args)
    descs = "".join(f"        addr 0x{d['addr']:x} len {d['len']}"
                    + (f" ({', '.join(d['flags'])})" if d["flags"] else "") + "\n"
                    for d in e["descs"])
    return (f"{args['path']}:\n  device_name: {e['name']}\n  index:   {e['index']}\n"
            f"  desc:\n    descs:\n{descs}  avail:\n    flags: {e['avail']['flags']}\n"
            f"    idx:   {e['avail']['idx']}\n    ring:  {e['avail']['ring']}\n"
            f"  used:\n    flags: {e['used']['flags']}\n    idx:   {e['used']['idx']}\n")


@hmp("virtio-vhost-queue-status", "path:s,queue:i", "path queue",
     "Display status of a given vhost queue", info=True)
async def info_virtio_vhost_queue_status(ctx: HmpContext, args: dict) -> str:
    await ctx.call("x-query-virtio-vhost-queue-status", path=args["path"], queue=args["queue"])
    return ""


@hmp("spice", "", "", "show the spice server status", info=True)
async def info_spice(ctx: HmpContext, args: dict) -> str:
    info = await ctx.call("query-spice")
    return "Server: disabled\n" if not info["enabled"] else ""


@hmp("sync-profile", "flag:s?", "[on|off|reset]",
     "enable, disable or reset synchronization profiling. With no arguments, prints "
     "whether profiling is on or off.")
async def sync_profile_cmd(ctx: HmpContext, args: dict) -> str:
    """Profiles the machine lock's waits (vmm/lock_profile.py), as QEMU's qsp."""
    lock, flag = ctx.machine.lock, args.get("flag")
    if flag is None:
        return f"sync-profile is {'on' if lock.profiling else 'off'}\n"
    if flag not in ("on", "off", "reset"):
        return f"Error: Invalid parameter '{flag}'\n"
    if flag == "reset":
        lock.reset()
    else:
        lock.profiling = flag == "on"
    return ""


@hmp("sync-profile", "mean:-m,no_coalesce:-n,max:i?", "[-m] [-n] [max]",
     "show synchronization profiling info, up to max entries (default: 10), sorted by "
     "total wait time. (-m: sort by mean wait time; -n: do not coalesce objects with the "
     "same call site)", info=True)
async def info_sync_profile(ctx: HmpContext, args: dict) -> str:
    """kvmkit profiles one lock, so coalescing objects changes nothing."""
    return ctx.machine.lock.report(args.get("max") or 10, args["mean"])
