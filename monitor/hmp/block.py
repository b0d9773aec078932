"""HMP's block commands, with QEMU 7.2's text: info block, info blockstats,
drive_add, drive_del, block_resize and block_set_io_throttle."""

from __future__ import annotations

import math

from monitor.hmp.table import HmpContext, forward, hmp
from vmm.block import options as blockdev_options
from vmm.block.throttle import LIMITS
from vmm.errors import UserError
from vmm.qemuopts import parse_opts

# QEMU's BlockInterfaceType, in order: drive_add names one by its number
INTERFACES = ("none", "ide", "scsi", "floppy", "pflash", "mtd", "sd", "virtio", "xen")


def _cache_mode(cache: dict) -> str:
    mode = "writeback" if cache["writeback"] else "writethrough"
    mode += ", direct" if cache["direct"] else ""
    return mode + (", ignore flushes" if cache["no-flush"] else "")


def _removable_line(drive: dict) -> str:
    return (f"    Removable device: {'' if drive.get('locked') else 'not '}locked, "
            f"tray {'open' if drive.get('tray_open') else 'closed'}")


def _node_lines(name: str, image: dict, attached: str | None, drive: dict | None) -> list[str]:
    lines = [f"{name}: {image['file']} ({image['drv']}"
             f"{', read-only' if image['ro'] else ''})"]
    if attached:
        lines.append(f"    Attached to:      {attached}")
    if drive is not None and drive["removable"]:
        lines.append(_removable_line(drive))
    lines.append(f"    Cache mode:       {_cache_mode(image['cache'])}")
    if image.get("backing_file"):
        lines.append(f"    Backing file:     {image['backing_file']} "
                     f"(chain depth: {image['backing_file_depth']})")
    if image.get("group"):
        limits = " ".join(f"{n}={image.get(n, 0)}" for _o, n in LIMITS[:3]) + " " + \
            " ".join(f"{n}_max={image.get(n + '_max', 0)}" for _o, n in LIMITS[:3]) + " " + \
            " ".join(f"{n}={image.get(n, 0)}" for _o, n in LIMITS[3:]) + " " + \
            " ".join(f"{n}_max={image.get(n + '_max', 0)}" for _o, n in LIMITS[3:])
        lines.append(f"    I/O throttling:   {limits} iops_size={image.get('iops_size', 0)} "
                     f"group={image['group']}")
    return lines


@hmp("block", "nodes:-n,verbose:-v,device:B?", "[-n] [-v] [device]",
     "show info of one block device or all block devices (-n: show named nodes; "
     "-v: show details)", info=True)
async def info_block(ctx: HmpContext, args: dict) -> str:
    out = []
    wanted = args.get("device")
    if args.get("nodes"):
        for position, image in enumerate(await ctx.call("query-named-block-nodes")):
            if wanted not in (None, image["node-name"]):
                continue
            out.append(_entry(position, _node_lines(image["node-name"], image, None, None)))
        return "".join(out)
    for position, drive in enumerate(await ctx.call("query-block")):
        image = drive.get("inserted")
        name = drive["device"] or (image["node-name"] if image else drive.get("qdev", ""))
        if wanted not in (None, name):
            continue
        if image is None:                    # drive_del left the device without one
            lines = [f"{name}: [not inserted]"]
            if drive.get("qdev"):
                lines.append(f"    Attached to:      {drive['qdev']}")
            if drive["removable"]:
                lines.append(_removable_line(drive))
        else:
            title = f"{drive['device']} ({image['node-name']})" if drive["device"] else name
            lines = _node_lines(title, image, drive.get("qdev"), drive)
            if args.get("verbose"):
                lines += ["", "Images:", *_image_lines(image["image"])]
        out.append(_entry(position, lines))
    return "".join(out)


def size_text(size: int) -> str:
    """QEMU's size_to_str: three significant digits and a binary unit, switching
    units at 1000 of the smaller one."""
    units = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")
    _mantissa, exponent = math.frexp(size / (1000 / 1024))
    index = max((exponent - 1) // 10, 0)
    return f"{size / (1 << (index * 10)):.3g} {units[index]}B"


def _image_lines(image: dict) -> list[str]:
    """An image and its backing chain, as qemu-img info prints them."""
    lines = [f"image: {image['filename']}", f"file format: {image['format']}",
             f"virtual size: {size_text(image['virtual-size'])} "
             f"({image['virtual-size']} bytes)",
             f"disk size: {size_text(image.get('actual-size', 0))}"]
    if "cluster-size" in image:
        lines.append(f"cluster_size: {image['cluster-size']}")
    if "backing-filename" in image:
        lines.append(f"backing file: {image['backing-filename']}")
        if image.get("full-backing-filename", image["backing-filename"]) != \
                image["backing-filename"]:
            lines[-1] += f" (actual path: {image['full-backing-filename']})"
        if "backing-filename-format" in image:
            lines.append(f"backing file format: {image['backing-filename-format']}")
    specific = image.get("format-specific")
    if specific:
        lines.append("Format specific information:")
        for key, value in specific["data"].items():
            shown = str(value).lower() if isinstance(value, bool) else value
            lines.append(f"    {key.replace('-', ' ')}: {shown}")
    if "backing-image" in image:
        lines += _image_lines(image["backing-image"])
    return lines


def _entry(position: int, lines: list[str]) -> str:
    """One entry; QEMU starts each but the list's first with a blank line, even when
    the entries before it were not shown."""
    return ("\n" if position else "") + "".join(line + "\n" for line in lines)


@hmp("blockstats", "", "", "show block device statistics", info=True)
async def info_blockstats(ctx: HmpContext, args: dict) -> str:
    out = []
    for entry in await ctx.call("query-blockstats"):
        s = entry["stats"]
        out.append(f"{entry.get('device', '')}: rd_bytes={s['rd_bytes']} "
                   f"wr_bytes={s['wr_bytes']} rd_operations={s['rd_operations']} "
                   f"wr_operations={s['wr_operations']} "
                   f"flush_operations={s['flush_operations']} "
                   f"wr_total_time_ns={s['wr_total_time_ns']} "
                   f"rd_total_time_ns={s['rd_total_time_ns']} "
                   f"flush_total_time_ns={s['flush_total_time_ns']} "
                   f"rd_merged={s['rd_merged']} wr_merged={s['wr_merged']} "
                   f"idle_time_ns={s.get('idle_time_ns', 0)}\n")
    return "".join(out)


@hmp("drive_add", "node:-n,pci_addr:s,opts:s", "[-n] [[<domain>:]<bus>:]<slot>\n"
     "[file=file][,if=type][,bus=n]\n[,unit=m][,media=d][,index=i]\n"
     "[,snapshot=on|off][,cache=on|off]\n[,readonly=on|off][,copy-on-read=on|off]",
     "add drive to PCI storage controller")
async def drive_add(ctx: HmpContext, args: dict) -> str:
    try:
        return _drive_add(ctx, args)
    except UserError as e:                  # QEMU prints these without "Error: "
        return f"{e}\n"


def _drive_add(ctx: HmpContext, args: dict) -> str:
    block = ctx.machine.block
    if args.get("node"):                    # -n: a node, as blockdev-add's options
        with ctx.machine.lock:
            block.add_blockdev(blockdev_options.from_keyval(parse_opts(args["opts"])))
        return "OK\n"
    opts = parse_opts(args["opts"], implied="file")
    interface = opts.get("if", "ide")
    if interface not in INTERFACES:
        raise UserError(f"unsupported bus type '{interface}'")
    with ctx.machine.lock:
        drive = block.add_drive(opts, f"drive{len(block.drives)}")
        if interface != "none":              # opened first, as QEMU does, then refused
            block.remove_drive(drive)
            return f"Can't hot-add drive to type {INTERFACES.index(interface)}\n"
    return "OK\n"


@hmp("drive_del", "id:B", "device", "remove host block device")
async def drive_del(ctx: HmpContext, args: dict) -> str:
    try:
        with ctx.machine.lock:
            ctx.machine.block.drive_del(args["id"])
    except UserError as e:
        return f"{e}\n"
    return ""


@hmp("block_resize", "device:B,size:o", "device size", "resize a block image",
     qmp="block_resize")
async def block_resize(ctx: HmpContext, args: dict) -> str:
    await ctx.call("block_resize", device=args["device"], size=args["size"])
    return ""


@hmp("block_set_io_throttle", "device:B,bps:l,bps_rd:l,bps_wr:l,iops:l,iops_rd:l,iops_wr:l",
     "device bps bps_rd bps_wr iops iops_rd iops_wr",
     "change I/O throttle limits for a block drive", qmp="block_set_io_throttle")
async def block_set_io_throttle(ctx: HmpContext, args: dict) -> str:
    await ctx.call("block_set_io_throttle", **args)
    return ""


@hmp("eject", "force:-f,device:B", "[-f] device",
     "eject a removable medium (use -f to force it)", qmp="eject")
async def eject(ctx: HmpContext, args: dict) -> str:
    await ctx.call("eject", device=args["device"], force=args["force"])
    return ""


@hmp("change", "device:B,force:-f,target:F,arg:s?,read-only-mode:s?",
     "device [-f] filename [format [read-only-mode]]",
     "change a removable medium, optional format, use -f to force the operation")
async def change(ctx: HmpContext, args: dict) -> str:
    mode = args.get("read-only-mode")
    if mode is not None and mode not in ("retain", "read-only", "read-write"):
        raise UserError(f"Parameter 'read-only-mode' does not accept value '{mode}'")
    call = {"device": args["device"], "filename": args["target"], "force": args["force"]}
    if args.get("arg") is not None:
        call["format"] = args["arg"]
    if mode is not None:
        call["read-only-mode"] = mode
    await ctx.call("blockdev-change-medium", **call)
    return ""



forward("block_job_cancel", "force:-f,device:B", "[-f] device",
           "stop an active background block operation (use -f\n\t\t\t if you want to abort "
           "the operation immediately\n\t\t\t instead of keep running until data is in "
           "sync)", "block-job-cancel")
forward("block_job_complete", "device:B", "device",
           "stop an active background block operation", "block-job-complete")
forward("block_job_pause", "device:B", "device",
           "pause an active background block operation", "block-job-pause")
forward("block_job_resume", "device:B", "device",
           "resume a paused background block operation", "block-job-resume")
forward("block_job_set_speed", "device:B,speed:o", "device speed",
           "set maximum speed for a background block operation", "block-job-set-speed")


@hmp("block-jobs", "", "", "show progress of ongoing block device operations", info=True)
async def info_block_jobs(ctx: HmpContext, args: dict) -> str:
    jobs = await ctx.call("query-block-jobs")
    if not jobs:
        return "No active jobs\n"
    return "".join(f"Type {j['type']}, device {j['device']}: Completed {j['offset']} of "
                   f"{j['len']} bytes, speed limit {j['speed']} bytes/s\n" for j in jobs)


forward("nbd_server_stop", "", "nbd_server_stop",
        "stop serving block devices using the NBD protocol", "nbd-server-stop")


@hmp("nbd_server_remove", "force:-f,name:s", "nbd_server_remove [-f] name",
     "remove an export previously exposed via NBD")
async def nbd_server_remove_cmd(ctx: HmpContext, args: dict) -> str:
    await ctx.call("nbd-server-remove", name=args["name"],
                   mode="hard" if args["force"] else "safe")
    return ""


@hmp("nbd_server_add", "writable:-w,device:B,name:s?", "nbd_server_add [-w] device [name]",
     "export a block device via NBD")
async def nbd_server_add_cmd(ctx: HmpContext, args: dict) -> str:
    extra = {"name": args["name"]} if "name" in args else {}
    await ctx.call("nbd-server-add", device=args["device"], writable=args["writable"], **extra)
    return ""


@hmp("nbd_server_start", "all:-a,writable:-w,uri:s", "nbd_server_start [-a] [-w] host:port",
     "serve block devices on the given host and port")
async def nbd_server_start_cmd(ctx: HmpContext, args: dict) -> str:
    host, _, port = args["uri"].rpartition(":")
    await ctx.call("nbd-server-start", addr={"type": "inet", "data": {"host": host,
                                                                      "port": port}})
    return ""
