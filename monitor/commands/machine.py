"""The machine as a whole: NMIs, what happens on reboot, shutdown, panic and a
watchdog's expiry, memory saved to files (memsave, pmemsave), memory back ends,
and the machine's text reports (x-query-irq, -numa, -ramblock, -roms)."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import (
    BOOL,
    INT,
    SIZE,
    STR,
    UINT8,
    UINT16,
    UINT32,
    UINT64,
    Enum,
    ListOf,
    Member,
    Struct,
    Union,
)
from vmm import paging

HUMAN_READABLE = Struct("HumanReadableText", (Member("human-readable-text", STR),))
WATCHDOG_ACTION = Enum("WatchdogAction", ("reset", "shutdown", "poweroff", "pause", "debug",
                                          "none", "inject-nmi"))
CHUNK = 1 << 20


@command("inject-nmi", lock=False)
def inject_nmi(ctx):
    """An NMI to every vCPU, as QEMU's x86 machines deliver the monitor's. (Not under
    the machine lock: the vCPU must leave KVM_RUN, and may be waiting for the lock.)"""
    for runner in ctx.machine.vcpus:
        runner.inspect(lambda vcpu: vcpu.nmi())


@command("query-current-machine", returns=Struct("CurrentMachineParams", (
    Member("wakeup-suspend-support", BOOL),)))
def query_current_machine(ctx):
    return {"wakeup-suspend-support": not ctx.machine.empty}     # S3 through the ACPI PM


@command("query-acpi-ospm-status", returns=ListOf(Struct("ACPIOSTInfo", (
    Member("device", STR, True), Member("slot", STR),
    Member("slot-type", Enum("ACPISlotType", ("DIMM", "CPU"))),
    Member("source", INT), Member("status", INT)))))
def query_acpi_ospm_status(ctx):
    return []           # _OST reports come from DIMM and CPU hotplug, which kvmkit lacks


@command("set-action", args=[
    Member("reboot", Enum("RebootAction", ("reset", "shutdown")), True),
    Member("shutdown", Enum("ShutdownAction", ("poweroff", "pause")), True),
    Member("panic", Enum("PanicAction", ("pause", "shutdown", "exit-failure", "none")), True),
    Member("watchdog", WATCHDOG_ACTION, True)])
def set_action(ctx, reboot=None, shutdown=None, panic=None, watchdog=None):
    """-no-reboot and -no-shutdown at run time; panic and watchdog are kept for the
    devices that raise them."""
    cfg = ctx.machine.cfg
    if reboot is not None:
        cfg.no_reboot = reboot == "shutdown"
    if shutdown is not None:
        cfg.no_shutdown = shutdown == "pause"
    if panic is not None:
        ctx.machine.panic_action = panic
    if watchdog is not None:
        ctx.machine.watchdog_action = watchdog


@command("watchdog-set-action", args=[Member("action", WATCHDOG_ACTION)])
def watchdog_set_action(ctx, action):
    ctx.machine.watchdog_action = action


@command("rtc-reset-reinjection")
def rtc_reset_reinjection(ctx):
    """QEMU forgets the RTC ticks it still owes a guest (driftfix=slew); kvmkit's RTC
    never holds any back, so there is nothing to forget."""


@command("x-exit-preconfig", features=("unstable",))
def x_exit_preconfig(ctx):
    raise QmpError("The command is permitted only before machine initialization")


NUMA_BASE = (Member("type", Enum("NumaOptionsType", (
    "node", "dist", "cpu", "hmat-lb", "hmat-cache"))),)
NUMA_OPTIONS = Union("NumaOptions", NUMA_BASE, "type", (
    ("node", Struct("NumaNodeOptions", (
        Member("nodeid", UINT16, True), Member("cpus", ListOf(UINT16), True),
        Member("mem", SIZE, True), Member("memdev", STR, True),
        Member("initiator", UINT16, True)))),
    ("dist", Struct("NumaDistOptions", (Member("src", UINT16), Member("dst", UINT16),
                                        Member("val", UINT8)))),
    ("cpu", Struct("NumaCpuOptions", tuple(Member(m, INT, True) for m in (
        "node-id", "socket-id", "die-id", "cluster-id", "core-id", "thread-id")))),
    ("hmat-lb", Struct("NumaHmatLBOptions", (
        Member("initiator", UINT16), Member("target", UINT16),
        Member("hierarchy", Enum("HmatLBMemoryHierarchy", (
            "memory", "first-level", "second-level", "third-level"))),
        Member("data-type", Enum("HmatLBDataType", (
            "access-latency", "read-latency", "write-latency", "access-bandwidth",
            "read-bandwidth", "write-bandwidth"))),
        Member("latency", UINT64, True), Member("bandwidth", SIZE, True)))),
    ("hmat-cache", Struct("NumaHmatCacheOptions", (
        Member("node-id", UINT32), Member("size", SIZE), Member("level", UINT8),
        Member("associativity", Enum("HmatCacheAssociativity", ("none", "direct", "complex"))),
        Member("policy", Enum("HmatCacheWritePolicy", ("none", "write-back", "write-through"))),
        Member("line", UINT16))))))


@command("set-numa-node", args=NUMA_BASE, variants=NUMA_OPTIONS)
def set_numa_node(ctx, type, props):
    raise QmpError("The command is permitted only before the machine has been created")


@command("dumpdtb", args=[Member("filename", STR)])
def dumpdtb(ctx, filename):
    raise QmpError("This machine doesn't have a FDT")        # x86 boots without one


# -- memory ------------------------------------------------------------------------
def _open_for_dump(filename: str):
    try:
        return open(filename, "wb")
    except OSError as e:
        raise QmpError(f"Could not open '{filename}': {e.strerror}") from None


@command("memsave", args=[Member("val", INT), Member("size", INT), Member("filename", STR),
                          Member("cpu-index", INT, True)], lock=False)
def memsave(ctx, val, size, filename, cpu_index=0):
    """size bytes of guest-virtual memory from val, through that vCPU's page tables."""
    machine = ctx.machine
    cpu_index = (cpu_index + (1 << 31)) % (1 << 32) - (1 << 31)   # QEMU passes a C int on
    if not 0 <= cpu_index < len(machine.vcpus):
        raise QmpError("Parameter 'cpu-index' expects a CPU number")
    addr = val & 0xFFFFFFFFFFFFFFFF
    sregs = machine.cpu_state(cpu_index)["sregs"]
    with _open_for_dump(filename) as f:
        done = 0
        while done < size:
            step = min(size - done, CHUNK)
            data = paging.read_virtual(machine.memory.read, sregs, addr + done, step)
            if data is None:
                raise QmpError(f"Invalid addr 0x{addr:016x}/size {size} specified")
            f.write(data)
            done += step
        if size < 0:       # QEMU loops on for ever here; kvmkit says no
            raise QmpError(f"Invalid addr 0x{addr:016x}/size {size} specified")


@command("pmemsave", args=[Member("val", INT), Member("size", INT), Member("filename", STR)])
def pmemsave(ctx, val, size, filename):
    """size bytes of guest-physical memory from val; what is not RAM reads as QEMU's
    bus gives it: the local APIC page as all ones, the rest as zeros."""
    machine = ctx.machine
    with _open_for_dump(filename) as f:
        addr, end = val & 0xFFFFFFFFFFFFFFFF, (val & 0xFFFFFFFFFFFFFFFF) + max(size, 0)
        while addr < end:
            step = min(end - addr, CHUNK, 0x1000 - (addr & 0xFFF))
            f.write(physical_bytes(machine, addr, step))
            addr += step


def physical_bytes(machine, addr: int, length: int) -> bytes:
    """length bytes of one page at guest-physical addr, RAM or not."""
    try:
        return machine.memory.read(addr, length)
    except ValueError:
        return (b"\xff" if 0xFEE00000 <= addr < 0xFEE01000 else b"\0") * length


@command("query-memdev", returns=ListOf(Struct("Memdev", (
    Member("id", STR, True), Member("size", INT), Member("merge", BOOL), Member("dump", BOOL),
    Member("prealloc", BOOL), Member("share", BOOL), Member("reserve", BOOL, True),
    Member("host-nodes", ListOf(INT)),
    Member("policy", Enum("HostMemPolicy", ("default", "preferred", "bind", "interleave")))))))
def query_memdev(ctx):
    out = []
    for obj in ctx.machine.objects.by_id.values():
        if not obj.qom_type.startswith("memory-backend-"):
            continue
        p = obj.props
        out.append({"id": obj.id, "size": p.get("size", 0), "merge": p.get("merge", True),
                    "dump": p.get("dump", True), "prealloc": p.get("prealloc", False),
                    "share": p.get("share", obj.qom_type == "memory-backend-memfd"),
                    "reserve": p.get("reserve", True),
                    "host-nodes": list(p.get("host-nodes", [])),
                    "policy": p.get("policy", "default")})
    return out


DIMM_INFO = Struct("PCDIMMDeviceInfo", (
    Member("id", STR, True), Member("addr", INT), Member("size", INT), Member("slot", INT),
    Member("node", INT), Member("memdev", STR), Member("hotplugged", BOOL),
    Member("hotpluggable", BOOL)))


def _wrapped(name: str, members: tuple[Member, ...]) -> Struct:
    return Struct(f"{name}Wrapper", (Member("data", Struct(name, members)),))


@command("query-memory-devices", returns=ListOf(Union("MemoryDeviceInfo", (
    Member("type", Enum("MemoryDeviceInfoKind", (
        "dimm", "nvdimm", "virtio-pmem", "virtio-mem", "sgx-epc"))),), "type", (
    ("dimm", Struct("PCDIMMDeviceInfoWrapper", (Member("data", DIMM_INFO),))),
    ("nvdimm", Struct("PCDIMMDeviceInfoWrapper", (Member("data", DIMM_INFO),))),
    ("virtio-pmem", _wrapped("VirtioPMEMDeviceInfo", (
        Member("id", STR, True), Member("memaddr", INT), Member("size", INT),
        Member("memdev", STR)))),
    ("virtio-mem", _wrapped("VirtioMEMDeviceInfo", (
        Member("id", STR, True), Member("memaddr", INT), Member("requested-size", INT),
        Member("size", INT), Member("max-size", INT), Member("block-size", INT),
        Member("node", INT), Member("memdev", STR)))),
    ("sgx-epc", _wrapped("SgxEPCDeviceInfo", (
        Member("id", STR, True), Member("memaddr", INT), Member("size", INT),
        Member("node", INT), Member("memdev", STR))))))))
def query_memory_devices(ctx):
    return []               # kvmkit plugs no DIMMs, NVDIMMs, virtio-mem or -pmem


# -- text reports --------------------------------------------------------------------
def irq_text(machine) -> str:
    """IRQ statistics: rising edges per GSI (QEMU counts none with KVM's irqchip)."""
    if machine.empty:
        return ""
    counts = sorted(machine.irq_counts.items())
    lines = ["IRQ statistics for kvm-ioapic:\n"]
    lines += [f"{gsi:2d}: {n}\n" for gsi, n in counts]
    lines.append("IRQ statistics for kvm-i8259:\n")
    lines += [f"{gsi:2d}: {n}\n" for gsi, n in counts if gsi < 16]
    return "".join(lines)


@command("x-query-irq", returns=HUMAN_READABLE, features=("unstable",))
def x_query_irq(ctx):
    return {"human-readable-text": irq_text(ctx.machine)}


@command("x-query-numa", returns=HUMAN_READABLE, features=("unstable",))
def x_query_numa(ctx):
    return {"human-readable-text": "0 nodes\n"}           # kvmkit has no -numa


def ramblock_text(machine) -> str:
    """The RAM blocks, as QEMU's `info ramblock`: guest RAM is one block, pc.ram."""
    out = [f"{'Block Name':>24} {'PSize':>8}  {'Offset':>18} {'Used':>18} {'Total':>18}\n"]
    total = sum(region.size for region in machine.memory.regions)
    if total:
        out.append(f"{'pc.ram':>24} {'4 KiB':>8}  0x{0:016x} 0x{total:016x} 0x{total:016x}\n")
    return "".join(out)


@command("x-query-ramblock", returns=HUMAN_READABLE, features=("unstable",))
def x_query_ramblock(ctx):
    return {"human-readable-text": ramblock_text(ctx.machine)}


def roms_text(machine) -> str:
    """The blobs kvmkit writes into guest memory in firmware's place, in QEMU's
    `info roms` form: kvmkit has no BIOS or option ROMs, but builds the RSDP and
    each ACPI table itself."""
    tables = getattr(machine, "acpi_tables", None)
    if tables is None:
        return ""
    blobs = [("etc/acpi/rsdp", tables.rsdp_addr, 36)]
    blobs += [(f"etc/acpi/{sig}", addr, len(data)) for sig, (addr, data) in tables.tables.items()]
    return "".join(f"addr={addr:016x} size=0x{size:06x} mem=ram name=\"{name}\"\n"
                   for name, addr, size in sorted(blobs, key=lambda b: b[1]))


@command("x-query-roms", returns=HUMAN_READABLE, features=("unstable",))
def x_query_roms(ctx):
    return {"human-readable-text": roms_text(ctx.machine)}


def usb_text(machine) -> str:
    """`info usb`: the devices on the guest's USB buses, in the order they came."""
    controllers = [d for d in machine.devices if d.driver == "piix3-usb-uhci"]
    if not controllers:
        raise QmpError("USB support not enabled")
    lines = []
    for bus, controller in enumerate(controllers):
        for device in machine.devices:
            if device.parent is controller and getattr(device.obj, "port", None):
                lines.append(f"  Device {bus}.{device.obj.address}, Port {device.obj.port}, "
                             f"Speed 12 Mb/s, Product {device.obj.product}"
                             f"{', ID: ' + device.id if device.id else ''}\n")
    return "".join(lines)


@command("x-query-usb", returns=HUMAN_READABLE, features=("unstable",))
def x_query_usb(ctx):
    return {"human-readable-text": usb_text(ctx.machine)}


# -- device state alone (QEMU's Xen commands; kvmkit's stream without RAM) -------------
def _open_device_state(filename: str, mode: str):
    try:
        return open(filename, mode)
    except OSError as e:
        raise QmpError(f"Unable to open {filename}: {e.strerror}") from None


@command("xen-save-devices-state", args=[Member("filename", STR), Member("live", BOOL, True)],
         lock=False)
def xen_save_devices_state(ctx, filename, live=True):
    """Every device's state and the vCPUs', without RAM, in kvmkit's migration stream
    format; the VM stops while it is taken, as QEMU's."""
    from vmm.migration import machine_state
    from vmm.migration.stream import Writer

    machine = ctx.machine
    with _open_device_state(filename, "wb") as out:
        resume = machine.running
        if resume:
            machine.stop("save-vm")
        try:
            writer = Writer(out)
            writer.header()
            writer.state(machine_state.save(machine))
            writer.end()
        finally:
            if resume and machine.runstate == "save-vm":
                machine.cont()


@command("xen-load-devices-state", args=[Member("filename", STR)], lock=False)
def xen_load_devices_state(ctx, filename):
    """What xen-save-devices-state wrote, loaded into a stopped VM (RAM is the
    caller's to restore)."""
    from vmm.errors import UserError
    from vmm.migration import machine_state
    from vmm.migration.stream import Reader

    machine = ctx.machine
    if machine.running:
        raise QmpError("The VM must be stopped to load its device state")
    with _open_device_state(filename, "rb") as source:
        try:
            state = Reader(source).load(machine.memory)
            machine_state.load(machine, state)
        except UserError as e:
            raise QmpError(str(e)) from None
