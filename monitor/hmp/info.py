"""`info ...` subcommands, each printing what QEMU 7.2 prints."""

from __future__ import annotations

from monitor import qom
from monitor.commands.pci import CLASS_NAMES
from monitor.hmp.table import HmpContext, hmp


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


@hmp("block", "nodes:-n,verbose:-v,device:B?", "[-n] [-v] [device]",
     "show info of one block device or all block devices (-n: show named nodes; "
     "-v: show details)", info=True)
async def info_block(ctx: HmpContext, args: dict) -> str:
    entries = []
    for drive in await ctx.call("query-block"):
        if args.get("device") not in (None, drive["device"]):
            continue
        image = drive["inserted"]
        lines = [f"{drive['device']} ({image['node-name']}): {image['file']} ({image['drv']}"
                 f"{', read-only' if image['ro'] else ''})"]
        if "qdev" in drive:
            lines.append(f"    Attached to:      {drive['qdev']}")
        lines.append("    Cache mode:       writeback")
        entries.append("".join(line + "\n" for line in lines))
    return "\n".join(entries)


@hmp("network", "", "", "show the network state", info=True)
async def info_network(ctx: HmpContext, args: dict) -> str:
    return "".join(line + "\n" for line in ctx.machine.network.lines())


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


@hmp("irq", "", "", "show the interrupts statistics (if available)", info=True)
async def info_irq(ctx: HmpContext, args: dict) -> str:
    counts = sorted(ctx.machine.irq_counts.items())
    out = ["IRQ statistics for kvm-ioapic:\n"]
    out += [f"{gsi:2d}: {n}\n" if gsi >= 10 else f" {gsi}: {n}\n" for gsi, n in counts]
    out.append("IRQ statistics for kvm-i8259:\n")
    out += [f"{gsi:2d}: {n}\n" if gsi >= 10 else f" {gsi}: {n}\n"
            for gsi, n in counts if gsi < 16]
    return "".join(out)


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


def _qtree_value(value) -> str:
    """A property as `info qtree` prints it."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, int):
        return f"{value} (0x{value & 0xFFFFFFFFFFFFFFFF:x})"
    return f'"{value}"'


# Properties every QEMU PCI device shows after `addr` (PCIDevice's own).
PCI_DEVICE_PROPS = (("romfile", ""), ("romsize", 0xFFFFFFFF), ("rombar", 1),
                    ("multifunction", False), ("x-pcie-lnksta-dllla", True),
                    ("x-pcie-extcap-init", True), ("failover_pair_id", ""), ("acpi-index", 0))
# What a virtio-pci proxy shows before them, and its virtio device's common tail.
VIRTIO_PCI_PROXY_PROPS = (
    ("virtio-pci-bus-master-bug-migration", False), ("migrate-extra", True),
    ("modern-pio-notify", False), ("x-disable-pcie", False), ("page-per-vq", False),
    ("x-ignore-backend-features", False), ("ats", False), ("x-ats-page-aligned", True),
    ("x-pcie-deverr-init", True), ("x-pcie-lnkctl-init", True), ("x-pcie-pm-init", True),
    ("x-pcie-flr-init", True), ("aer", False))
VIRTIO_NET_FEATURE_PROPS = (
    "csum", "guest_csum", "gso", "guest_tso4", "guest_tso6", "guest_ecn", "guest_ufo",
    "guest_announce", "host_tso4", "host_tso6", "host_ecn", "host_ufo", "mrg_rxbuf", "status",
    "ctrl_vq", "ctrl_rx", "ctrl_vlan", "ctrl_rx_extra", "ctrl_mac_addr", "ctrl_guest_offloads")
VIRTIO_DEVICE_PROPS = (
    ("indirect_desc", True), ("event_idx", True), ("notify_on_empty", True),
    ("any_layout", True), ("iommu_platform", False), ("packed", False),
    ("queue_reset", True), ("use-started", True), ("use-disabled-flag", True),
    ("x-disable-legacy-check", False))


# The proxies with a `class` property: its default, and whether QEMU lists it
# before ioeventfd and vectors or after them.
VIRTIO_PROXY_CLASS = {"virtio-blk-pci": (0, "before"), "virtio-serial-pci": (0x0780, "after")}
# virtio-blk-device's properties that do not change here, in QEMU's order.
BLK_FIXED_HEAD = ('backend_defaults = "auto"', "logical_block_size = 512 (512 B)",
                  "physical_block_size = 512 (512 B)", "min_io_size = 0 (0 B)",
                  "opt_io_size = 0 (0 B)", "discard_granularity = 4294967295 (4 GiB)",
                  'write-cache = "auto"', "share-rw = false", 'account-invalid = "auto"',
                  'account-failed = "auto"', 'rerror = "auto"', 'werror = "auto"')
BLK_FIXED_TAIL = ("seg-max-adjust = true", "discard = true",
                  "report-discard-granularity = true", "write-zeroes = true",
                  "max-discard-sectors = 4194303 (0x3fffff)",
                  "max-write-zeroes-sectors = 4194303 (0x3fffff)",
                  "x-enable-wce-if-config-wce = true")


def _qtree_pci(device, instance=None, consoles=()) -> list[str]:
    klass = device.class_code >> 8
    name = CLASS_NAMES.get(klass, f"Class {klass:04x}")
    sub = int.from_bytes(device.config[0x2C:0x2E], "little"), \
        int.from_bytes(device.config[0x2E:0x30], "little")
    props = instance.props if instance else {}
    lines = []
    virtio = getattr(device, "backend", None)
    if instance is not None and instance.driver in ("e1000", "rtl8139"):
        lines += [f'mac = "{props["mac"]}"', f'netdev = "{props.get("netdev") or ""}"']
    if instance is not None and instance.driver == "e1000":
        lines += [f"{key} = {_qtree_value(value)}" for key, value in (
            ("autonegotiation", props["autonegotiation"]), ("mitigation", props["mitigation"]),
            ("extra_mac_registers", True), ("migrate_tso_props", True), ("init-vet", True))]
    if virtio is not None:
        lines += [f'disable-legacy = "{"off" if device.legacy else "on"}"',
                  f"disable-modern = {_qtree_value(not device.modern)}"]
        klass, where = VIRTIO_PROXY_CLASS.get(instance.driver if instance else "", (0, None))
        class_line = [f"class = {_qtree_value(klass)}"] if where else []
        lines += class_line if where == "before" else []
        if device.msix is not None:
            lines += ["ioeventfd = true", f"vectors = {_qtree_value(device.msix.vectors)}"]
        lines += class_line if where == "after" else []
        lines += [f"{key} = {_qtree_value(value)}" for key, value in VIRTIO_PCI_PROXY_PROPS]
    lines.append(f"addr = {device.slot:02x}.{device.function}")
    live = {"multifunction": bool(device.config[0x0E] & 0x80)}
    rom = device.bars.get(6)
    if rom is not None:
        live.update(romfile=props.get("romfile", ""), romsize=rom.size)
    lines += [f"{key} = {_qtree_value(live.get(key, value))}" for key, value in PCI_DEVICE_PROPS]
    lines.append(f"class {name}, addr 00:{device.slot:02x}.{device.function}, pci id "
                 f"{device.vendor_id:04x}:{device.device_id:04x} (sub {sub[0]:04x}:{sub[1]:04x})")
    for bar in sorted(device.bars.values(), key=lambda b: b.index):
        addr = bar.mapped_at         # QEMU prints where it is mapped, all-ones if nowhere
        end = (addr + bar.size - 1) & 0xFFFFFFFFFFFFFFFF
        kind = "i/o" if bar.kind == "io" else "mem"
        lines.append(f"bar {bar.index}: {kind} at 0x{addr:x} [0x{end:x}]")
    if virtio is not None and instance is not None:
        lines += ["bus: virtio-bus", "  type virtio-pci-bus",
                  f'  dev: {instance.driver.removesuffix("-pci")}-device, id ""']
        lines += ["    " + line for line in _virtio_device_lines(instance.driver, props, virtio)]
        if instance.driver == "virtio-serial-pci":
            lines += _qtree_serial_bus(instance, virtio, consoles)
    return lines


def _virtio_device_lines(driver: str, props: dict, backend) -> list[str]:
    """The virtio device's own properties, then those every virtio device has."""
    if driver == "virtio-blk-pci":
        cylinders, heads, sectors = backend.geometry
        own = [f'drive = "{props.get("drive") or ""}"', *BLK_FIXED_HEAD,
               f"cyls = {_qtree_value(cylinders)}", f"heads = {_qtree_value(heads)}",
               f"secs = {_qtree_value(sectors)}", "lcyls = 0 (0x0)", "lheads = 0 (0x0)",
               "lsecs = 0 (0x0)", f'serial = "{props.get("serial") or ""}"',
               "config-wce = true", "scsi = false", "request-merging = true",
               f"num-queues = {_qtree_value(len(backend.queue_sizes))}",
               "queue-size = 256 (0x100)", *BLK_FIXED_TAIL]
    elif driver == "virtio-serial-pci":
        own = [f"max_ports = {_qtree_value(props['max_ports'])}", "emergency-write = true"]
    else:
        own = [f"{key} = {_qtree_value(value)}"
               for key, value in _virtio_own_props(driver, props)]
    return own + [f"{key} = {_qtree_value(props.get(key, value))}"
                  for key, value in VIRTIO_DEVICE_PROPS]


def _qtree_serial_bus(instance, console, consoles) -> list[str]:
    """virtio-serial's port bus and the virtconsoles on it. Port 0 counts as open by
    the guest once a driver without MULTIPORT is running, as in QEMU."""
    name = f"{instance.id}.0" if instance.id else "virtio-serial-bus.0"
    lines = [f"    bus: {name}", "      type virtio-serial-bus"]
    transport = console.transport
    guest = transport is not None and transport.running and \
        not console.negotiated & (1 << 1)                     # VIRTIO_CONSOLE_F_MULTIPORT
    for port in consoles:
        chardev = port.props.get("chardev") or ""
        lines += [f'      dev: virtconsole, id "{port.id or ""}"',
                  f'        chardev = "{chardev}"',
                  f"        nr = {_qtree_value(port.props['nr'])}",
                  f'        name = "{port.props.get("name") or ""}"',
                  f"        port {port.props['nr']}, guest {'on' if guest else 'off'}, "
                  f"host {'on' if chardev else 'off'}, throttle off"]
    return lines


def _virtio_own_props(driver: str, props: dict) -> list[tuple[str, object]]:
    """The properties of net, rng and balloon devices before the common ones."""
    own: list[tuple[str, object]] = []
    if driver == "virtio-net-pci":
        own = [(name, props.get(name, True)) for name in VIRTIO_NET_FEATURE_PROPS]
        own += [("mq", props.get("mq", False)), ("rss", False), ("hash", False),
                ("guest_rsc_ext", False), ("rsc_interval", 300000), ("mac", props["mac"]),
                ("netdev", props.get("netdev") or ""), ("x-txtimer", 150000),
                ("x-txburst", 256), ("tx", ""), ("rx_queue_size", 256),
                ("tx_queue_size", 256), ("host_mtu", 0), ("x-mtu-bypass-backend", True),
                ("speed", -1), ("duplex", ""), ("failover", False)]
    elif driver == "virtio-rng-pci":
        own = [("max-bytes", props["max-bytes"]), ("period", props["period"])]
    elif driver == "virtio-balloon-pci":
        own = [("deflate-on-oom", props["deflate-on-oom"]), ("free-page-hint", False),
               ("page-poison", props["page-poison"]),
               ("free-page-reporting", props["free-page-reporting"]),
               ("qemu-4-0-config-size", False)]
    return own


# The fixed properties and child buses of the chipset functions kvmkit models.
PIIX_OWN_PROPS = {"PIIX4_PM": (
    'gpio-out "smi-irq" 1', 'gpio-out "" 1',
    "smb_io_base = 1792 (0x700)", "disable_s3 = 0 (0x0)", "disable_s4 = 0 (0x0)",
    "s4_val = 2 (0x2)", "acpi-pci-hotplug-with-bridge-support = true",
    "acpi-root-pci-hotplug = true", "memory-hotplug-support = true", "smm-compat = false",
    "smm-enabled = false", "x-not-migrate-acpi-index = false")}
PIIX_CHILD_BUSES = {"piix3-ide": ("bus: ide.1", "  type IDE", "bus: ide.0", "  type IDE")}

PCI_TYPE_NAMES = {(0x8086, 0x1237): "i440FX", (0x8086, 0x7000): "PIIX3",
                  (0x8086, 0x7010): "piix3-ide", (0x8086, 0x7113): "PIIX4_PM"}


@hmp("qtree", "", "", "show device tree", info=True)
async def info_qtree(ctx: HmpContext, args: dict) -> str:
    machine = ctx.machine
    out = ["bus: main-system-bus", "  type System",
           '  dev: kvm-ioapic, id ""', '    gpio-in "" 24', "    gsi_base = 0 (0x0)",
           "    mmio 00000000fec00000/0000000000001000",
           '  dev: i440FX-pcihost, id ""', "    pci-hole64-size = 2147483648 (2 GiB)",
           "    short_root_bus = 0 (0x0)", "    x-pci-hole64-fix = true",
           "    x-config-reg-migration-enabled = true", "    bypass-iommu = false",
           "    bus: pci.0", "      type PCI"]
    instances = {id(i.device): i for i in machine.device_instances}
    for device in reversed(machine.pci.sorted_devices()):
        instance = instances.get(id(device))
        type_name = instance.driver if instance else PCI_TYPE_NAMES.get(
            (device.vendor_id, device.device_id), "pci-device")
        out.append(f'      dev: {type_name}, id "{device.qdev_id}"')
        out += ["        " + line for line in PIIX_OWN_PROPS.get(type_name, ())]
        consoles = [i for i in machine.device_instances if i.driver == "virtconsole"] \
            if instance is not None and instance.driver == "virtio-serial-pci" else ()
        out += ["        " + line for line in _qtree_pci(device, instance, consoles)]
        out += ["        " + line for line in PIIX_CHILD_BUSES.get(type_name, ())]
        if (device.vendor_id, device.device_id) == (0x8086, 0x7000):
            out += ["        bus: isa.0", "          type ISA"]
            for isa in reversed(_isa_devices(machine)):
                out += ["          " + line for line in isa]
    return "".join(line + "\n" for line in out)


def _isa_devices(machine) -> list[list[str]]:
    """ISA devices in creation order, as (dev line, property lines...)."""
    devices = [['dev: mc146818rtc, id ""', '  gpio-out "" 1', "  base_year = 0 (0x0)"],
               ['dev: kvm-pit, id ""', '  gpio-in "" 1', "  iobase = 64 (0x40)"],
               ['dev: i8042, id ""', "  kbd-irq = 1 (0x1)", "  mouse-irq = 12 (0xc)"]]
    by_device = {id(i.device): i for i in machine.device_instances}
    for port in machine.serials:
        instance = by_device.get(id(port))
        qdev_id = (instance.id or "") if instance else ""
        devices.append([f'dev: isa-serial, id "{qdev_id}"',
                        f"  index = {port.index} (0x{port.index:x})",
                        f"  iobase = {port.iobase} (0x{port.iobase:x})",
                        f"  irq = {port.irq} (0x{port.irq:x})"])
    for instance in machine.device_instances:
        if instance.driver == "isa-debug-exit":
            p = instance.props
            devices.append([f'dev: isa-debug-exit, id "{instance.id or ""}"',
                            f"  iobase = {p['iobase']} (0x{p['iobase']:x})",
                            f"  iosize = {p['iosize']} (0x{p['iosize']:x})"])
    return devices


@hmp("mtree", "flatview:-f,dispatch_tree:-d,owner:-o,disabled:-D", "[-f][-d][-o][-D]",
     "show memory tree (-f: dump flat view for address spaces;-d: dump dispatch tree, "
     "valid with -f only);-o: dump region owners/parents;-D: dump disabled regions",
     info=True)
async def info_mtree(ctx: HmpContext, args: dict) -> str:
    machine = ctx.machine
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
