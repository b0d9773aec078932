"""`info ...` subcommands, each printing what QEMU 7.2 prints."""

from __future__ import annotations

from monitor import qom
from monitor.hmp import qtree
from monitor.hmp.table import HmpContext, hmp, report


@hmp("status", "", "", "show the current VM status (running|paused)", info=True)
async def info_status(ctx: HmpContext, args: dict) -> str:
    st = await ctx.call("query-status")
    text = "VM status: " + ("running" if st["running"] else "paused")
    if not st["running"] and st["status"] != "paused":
        text += f" ({st['status']})"
    return text + "\n"


@hmp("version", "", "", "show the version of QEMU", info=True)
async def info_version(ctx: HmpContext, args: dict) -> str:
    v = await ctx.call("query-version")
    q = v["qemu"]
    return f"{q['major']}.{q['minor']}.{q['micro']}{v['package']}\n"


@hmp("name", "", "", "show the current VM name", info=True)
async def info_name(ctx: HmpContext, args: dict) -> str:
    name = (await ctx.call("query-name")).get("name")
    return f"{name}\n" if name else ""


@hmp("uuid", "", "", "show the current VM UUID", info=True)
async def info_uuid(ctx: HmpContext, args: dict) -> str:
    return (await ctx.call("query-uuid"))["UUID"] + "\n"


@hmp("kvm", "", "", "show KVM information", info=True)
async def info_kvm(ctx: HmpContext, args: dict) -> str:
    kvm = await ctx.call("query-kvm")
    return "kvm support: " + ("enabled" if kvm["enabled"] else "disabled") + "\n"


@hmp("cpus", "", "", "show infos for each CPU", info=True)
async def info_cpus(ctx: HmpContext, args: dict) -> str:
    cpus = await ctx.call("query-cpus-fast")
    return "".join(f"{'*' if c['cpu-index'] == ctx.cpu else ' '} CPU #{c['cpu-index']}: "
                   f"thread_id={c['thread-id']}\n" for c in cpus)


@hmp("chardev", "", "", "show the character devices", info=True)
async def info_chardev(ctx: HmpContext, args: dict) -> str:
    return "".join(f"{d['label']}: filename={d['filename']}\n"
                   for d in await ctx.call("query-chardev"))


@hmp("balloon", "", "", "show balloon information", info=True)
async def info_balloon(ctx: HmpContext, args: dict) -> str:
    info = await ctx.call("query-balloon")
    return f"balloon: actual={info['actual'] >> 20}\n"


@hmp("network", "", "", "show the network state", info=True)
async def info_network(ctx: HmpContext, args: dict) -> str:
    return "".join(line + "\n" for line in ctx.machine.network.lines())


@hmp("usernet", "", "", "show user network stack connection states", info=True)
async def info_usernet(ctx: HmpContext, args: dict) -> str:
    return ctx.machine.network.usernet_text()


@hmp("pci", "", "", "show PCI info", info=True)
async def info_pci(ctx: HmpContext, args: dict) -> str:
    out = []
    for bus in await ctx.call("query-pci"):
        for dev in bus["devices"]:
            out.append(f"  Bus {dev['bus']:2d}, device {dev['slot']:3d}, "
                       f"function {dev['function']}:\n")
            ci = dev["class_info"]
            kind = ci["desc"] if "desc" in ci else f"Class {ci['class']:04d}"
            ids = dev["id"]
            out.append(f"    {kind}: PCI device {ids['vendor']:04x}:{ids['device']:04x}\n")
            out.append(f"      PCI subsystem {ids['subsystem-vendor']:04x}:"
                       f"{ids['subsystem']:04x}\n")
            if "irq" in dev:
                out.append(f"      IRQ {dev['irq']}, pin {chr(ord('A') + dev['irq_pin'] - 1)}\n")
            for r in dev["regions"]:
                addr = r["address"] & 0xFFFFFFFFFFFFFFFF
                end = (addr + r["size"] - 1) & 0xFFFFFFFFFFFFFFFF
                if r["type"] == "io":
                    out.append(f"      BAR{r['bar']}: I/O at 0x{addr:04x} [0x{end:04x}].\n")
                else:
                    bits = 64 if r["mem_type_64"] else 32
                    pf = " prefetchable" if r["prefetch"] else ""
                    out.append(f"      BAR{r['bar']}: {bits} bit{pf} memory at "
                               f"0x{addr:08x} [0x{end:08x}].\n")
            out.append(f"      id \"{dev['qdev_id']}\"\n")
    return "".join(out)


@hmp("qom-tree", "path:s?", "[path]", "show QOM composition tree", info=True)
async def info_qom_tree(ctx: HmpContext, args: dict) -> str:
    return "".join(line + "\n" for line in qom.tree_lines(ctx.machine,
                                                           args.get("path") or "/machine"))


report("irq", "", "", "show the interrupts statistics (if available)", "x-query-irq")


@hmp("memory_size_summary", "", "",
     "show the amount of initially allocated and present hotpluggable (if enabled) memory "
     "in bytes.", info=True)
async def info_memory_size_summary(ctx: HmpContext, args: dict) -> str:
    info = await ctx.call("query-memory-size-summary")
    return f"base memory: {info['base-memory']}\nplugged memory: {info['plugged-memory']}\n"


@hmp("hotpluggable-cpus", "", "", "Show information about hotpluggable CPUs", info=True)
async def info_hotpluggable_cpus(ctx: HmpContext, args: dict) -> str:
    out = ["Hotpluggable CPUs:\n"]
    for cpu in await ctx.call("query-hotpluggable-cpus"):
        out += [f"  type: \"{cpu['type']}\"\n", f"  vcpus_count: \"{cpu['vcpus-count']}\"\n"]
        if "qom-path" in cpu:
            out.append(f"  qom_path: \"{cpu['qom-path']}\"\n")
        out.append("  CPUInstance Properties:\n")
        for key in ("node-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id"):
            if key in cpu["props"]:
                out.append(f"    {key}: \"{cpu['props'][key]}\"\n")
    return "".join(out)


@hmp("qtree", "", "", "show device tree", info=True)
async def info_qtree(ctx: HmpContext, args: dict) -> str:
    return "".join(line + "\n" for line in qtree.lines(ctx.machine))


@hmp("mtree", "flatview:-f,dispatch_tree:-d,owner:-o,disabled:-D", "[-f][-d][-o][-D]",
     "show memory tree (-f: dump flat view for address spaces;-d: dump dispatch tree, "
     "valid with -f only);-o: dump region owners/parents;-D: dump disabled regions",
     info=True)
async def info_mtree(ctx: HmpContext, args: dict) -> str:
    machine = ctx.machine
    if machine.empty:
        return ("address-space: I/O\n  0000000000000000-000000000000ffff (prio 0, i/o): io\n"
                "\naddress-space: memory\n"
                "  0000000000000000-ffffffffffffffff (prio 0, i/o): system\n\n")
    out = ["address-space: memory",
           "  0000000000000000-ffffffffffffffff (prio 0, i/o): system"]
    for region in machine.memory.regions:
        name = "ram-below-4g" if region.gpa == 0 else "ram-above-4g"
        offset = region.gpa if region.gpa == 0 else machine.memory.regions[0].size
        out.append(f"    {region.gpa:016x}-{region.end - 1:016x} (prio 0, ram): alias {name} "
                   f"@pc.ram {offset:016x}-{offset + region.size - 1:016x}")
    out.append("    0000000000000000-ffffffffffffffff (prio -1, i/o): pci")
    bars = [r for r in machine.mmio.ranges() if getattr(r[2], "pci_bar", False)]
    out += _mtree_regions(bars, "      ")
    out += _mtree_regions([r for r in machine.mmio.ranges() if r not in bars], "    ")
    out += ["    00000000fec00000-00000000fec00fff (prio 0, i/o): kvm-ioapic",
            "    00000000fee00000-00000000feefffff (prio 4096, i/o): kvm-apic-msi",
            "", "address-space: I/O", "  0000000000000000-000000000000ffff (prio 0, i/o): io"]
    out += _mtree_regions(machine.pio.ranges(), "    ")
    return "".join(line + "\n" for line in out) + "\n"


def _mtree_regions(ranges, indent: str) -> list[str]:
    """Regions with QEMU's names and priorities (PCI BARs 1), their subregions below."""
    out = []
    for start, end, device in ranges:
        if hasattr(device, "mtree_regions"):     # one bus device, several QEMU regions
            out += [f"{indent}{start + o:016x}-{start + o + n - 1:016x} (prio {prio}, i/o): "
                    f"{name}" for o, n, name, prio in device.mtree_regions]
            continue
        name = getattr(device, "mtree_name", None) or _region_name(device)
        prio = 1 if getattr(device, "pci_bar", False) else 0
        out.append(f"{indent}{start:016x}-{end - 1:016x} (prio {prio}, i/o): {name}")
        for offset, size, child in getattr(device, "mtree_children", list)():
            out.append(f"{indent}  {start + offset:016x}-{start + offset + size - 1:016x} "
                       f"(prio 0, i/o): {child}")
    return out


def _region_name(device) -> str:
    names = {"Serial16550": "serial", "Rtc": "rtc", "IsaDebugExit": "isa-debug-exit"}
    kind = type(device).__name__
    if kind == "_Port":
        return "i8042-data" if device.base == 0x60 else "i8042-cmd"
    return names.get(kind, kind.lower())
