"""The kvmkit command line: QEMU's options, validated into a MachineConfig.

Every user error raises ConfigError whose text is QEMU's (``-m foo: Parameter
'size' expects ...``); the CLI prints it after ``kvmkit: `` and exits 1.
"""

from __future__ import annotations

import json
import random
import uuid as uuidlib
from dataclasses import dataclass, field

from vmm import objects as user_objects
from vmm.block import options as blockdev_options
from vmm.boot.smbios import SmbiosConfig, SmbiosError
from vmm.cpu_models import CpuConfig, CpuModelError, parse_cpu
from vmm.errors import UserError
from vmm.net import netdev_options
from vmm.qemuopts import SIZE_HELP, OptsError, parse_bool, parse_opts, parse_size
from vmm.vnc import VncError, VncSpec, parse_vnc

DEFAULT_RAM = 128 << 20
VGA_TYPES = {"std": "VGA", "cirrus": "cirrus-vga"}
VGA_HELP = "none                 no graphic card\nstd                  standard VGA (default)\n" \
    "cirrus               Cirrus VGA\n"
MACHINE_TYPES = {"pc": "Standard PC (i440FX + PIIX, 1996)",
                 "pc-i440fx-7.2": "Standard PC (i440FX + PIIX, 1996)",
                 "none": "empty machine"}


class ConfigError(UserError):
    """A command-line error; str() is the full message without the program name."""


@dataclass
class ChardevSpec:
    id: str
    backend: str
    options: dict[str, str]


def legacy_chardev(arg: str, cid: str) -> ChardevSpec | None:
    """A chardev in -serial's shorthand ('stdio', 'file:PATH', 'unix:PATH,server=on',
    'tcp:HOST:PORT[,server=on]', 'null', 'pty'), or None for other text."""
    head, _, rest = arg.partition(":")
    if head in ("stdio", "null", "pty", "none"):
        return ChardevSpec(cid, "null" if head == "none" else head, {})
    if head == "file":
        return ChardevSpec(cid, "file", {"path": rest})
    if head == "unix":
        return ChardevSpec(cid, "socket", parse_opts(rest, implied="path"))
    if head == "tcp":
        hostport, *extra = rest.split(",", 1)
        host, _, port = hostport.rpartition(":")
        opts = parse_opts(extra[0]) if extra else {}
        opts.update(host=host or "0.0.0.0", port=port)
        return ChardevSpec(cid, "socket", opts)
    return None


@dataclass
class DeviceSpec:
    driver: str
    options: dict[str, str]
    origin: str                        # the option text, for error messages
    json: bool = False                 # given as JSON: values keep their JSON types


@dataclass
class MonitorSpec:
    chardev: str
    mode: str                          # "control" (QMP) or "readline" (HMP)
    pretty: bool = False


@dataclass
class MachineConfig:
    memory: int = DEFAULT_RAM
    memory_given: bool = False          # -m: else a memory backend's size is the RAM size
    memory_backend: str | None = None   # -machine memory-backend=ID
    usb: bool = False                   # -usb or -machine usb=on: a piix3-usb-uhci
    msg_timestamp: bool = False         # -msg timestamp=on
    acpi: bool = True                   # -no-acpi, -machine acpi=off: no ACPI at all
    objects: list[tuple[str, dict, bool]] = field(default_factory=list)  # (origin, members, JSON)
    fdsets: list[tuple[int, int, str | None]] = field(default_factory=list)  # -add-fd
    cpus: int = 1
    topology: tuple[int, int, int] = (1, 1, 1)    # sockets, cores per socket, threads per core
    smbios: SmbiosConfig = field(default_factory=SmbiosConfig)
    cpu: CpuConfig = field(default_factory=CpuConfig)
    pit: bool = True
    globals: dict[str, dict[str, str]] = field(default_factory=dict)   # driver -> prop -> value
    kernel: str | None = None
    initrd: str | None = None
    append: str = ""
    machine_type: str = "pc"
    name: str | None = None
    uuid: str = "00000000-0000-0000-0000-000000000000"
    start_paused: bool = False
    no_reboot: bool = False
    no_shutdown: bool = False
    nodefaults: bool = False
    nographic: bool = False
    chardevs: list[ChardevSpec] = field(default_factory=list)
    serials: list[str] = field(default_factory=list)      # chardev ids, COM1 first
    devices: list[DeviceSpec] = field(default_factory=list)
    monitors: list[MonitorSpec] = field(default_factory=list)
    netdevs: list[tuple[str, dict[str, str]]] = field(default_factory=list)  # (origin, opts)
    # (origin, options, default id): -drive, opened by the block layer (vmm/block/)
    drives: list[tuple[str, dict[str, str], str]] = field(default_factory=list)
    blockdevs: list[tuple[str, dict]] = field(default_factory=list)   # (origin, JSON)
    # (origin, index, drive id, "disk" or "cdrom"): -drive if=ide, -hda..-hdd, -cdrom
    ide_drives: list[tuple[str, int, str, str]] = field(default_factory=list)
    snapshot: bool = False          # -snapshot: every -drive writes to a temporary overlay
    pidfile: str | None = None
    incoming: str | None = None       # -incoming URI|defer: wait for a migration stream
    loadvm: str | None = None         # -loadvm NAME: start from a snapshot
    daemonize: bool = False
    sandbox: object = None              # -sandbox on: vmm.seccomp.SandboxOptions
    runas: object = None                # -runas: vmm.privileges.RunAs
    chroot: str | None = None           # -chroot DIR
    logfile: str | None = None
    show_version: bool = False
    show_help: bool = False
    list_machines: bool = False
    list_devices: bool = False
    device_help: str | None = None     # -device DRIVER,help
    list_cpus: bool = False
    gdb: str | None = None              # -gdb DEVICE, -s: where the gdb stub listens
    traces: list[str] = field(default_factory=list)     # -trace options, in order
    show_vga_help: bool = False
    vnc: VncSpec | None = None          # -vnc: the VNC server's address
    mem_lock: bool = False              # -overcommit mem-lock=on: guest RAM stays resident
    warnings: list[str] = field(default_factory=list)   # printed once logging is set up


# option -> takes an argument
IDE_UNITS = 2                     # units on an IDE bus: master and slave
OPTIONS: dict[str, bool] = {
    "m": True, "smp": True, "s": False, "gdb": True, "trace": True, "kernel": True,
    "initrd": True, "append": True,
    "incoming": True, "loadvm": True,
    "machine": True, "M": True, "accel": True, "enable-kvm": False, "cpu": True,
    "name": True, "uuid": True, "nodefaults": False, "nographic": False, "display": True,
    "vnc": True, "k": True,
    "vga": True, "serial": True, "chardev": True, "device": True, "S": False,
    "no-reboot": False, "no-shutdown": False, "pidfile": True, "daemonize": False,
    "D": True, "d": True, "version": False, "h": False, "help": False, "qmp": True,
    "qmp-pretty": True, "monitor": True, "mon": True, "netdev": True, "nic": True, "net": True,
    "no-user-config": False, "boot": True, "drive": True, "hda": True, "hdb": True, "hdc": True,
    "hdd": True, "cdrom": True, "global": True,
    "blockdev": True, "snapshot": False, "object": True, "add-fd": True, "usb": False,
    "rtc": True, "overcommit": True, "realtime": True, "smbios": True, "msg": True,
    "audiodev": True, "no-acpi": False,
    "no-hpet": False, "sandbox": True, "runas": True, "chroot": True,
}


class _Parser:
    def __init__(self) -> None:
        self.cfg = MachineConfig()
        self.serial_count = 0
        self.auto_chardev = 0
        self._nic_count = 0             # back ends without an id: QEMU's "#netNxx"
        self._hub_ports = 0             # -net: ports of hub 0, in command-line order
        self.drive_devices: list[DeviceSpec] = []   # -drive if=virtio's devices
        self.vga_chosen = False                     # -vga given: no default card
        self.opt = ""
        self.arg = ""

    def fail(self, message: str) -> ConfigError:
        return ConfigError(f"-{self.opt} {self.arg}: {message}" if self.arg
                           else f"-{self.opt}: {message}")

    def new_chardev_id(self, prefix: str) -> str:
        cid = f"{prefix}{self.auto_chardev}"
        self.auto_chardev += 1
        return cid

    # -- the options -----------------------------------------------------
    def opt_m(self, arg: str) -> None:
        opts = parse_opts(arg, implied="size")
        size_text = opts.pop("size", "")
        for key in opts:
            if key not in ("slots", "maxmem"):
                raise self.fail(f"Invalid parameter '{key}'")
        try:
            size = parse_size(size_text, default_shift=20) if size_text else DEFAULT_RAM
        except OptsError:
            raise self.fail("Parameter 'size' expects a non-negative number below 2^64\n"
                            + SIZE_HELP) from None
        if size == 0:
            size = DEFAULT_RAM
        self.cfg.memory = (size + 0x1FFFFF) & ~0x1FFFFF
        self.cfg.memory_given = True

    def opt_smp(self, arg: str) -> None:
        opts = parse_opts(arg, implied="cpus")
        values = {}
        for key, value in opts.items():
            if key not in ("cpus", "sockets", "dies", "cores", "threads", "maxcpus"):
                raise self.fail(f"Invalid parameter '{key}'")
            try:
                values[key] = int(value, 10)
            except ValueError:
                raise ConfigError(f"Parameter 'smp.{key}' expects integer") from None
        cpus = values.get("cpus")
        if cpus is None:
            cpus = 1
            for key in ("sockets", "dies", "cores", "threads"):
                cpus *= values.get(key, 1)
        if cpus < 1 or any(v < 1 for v in values.values()):
            raise self.fail("CPU topology parameters must be greater than zero")
        if values.get("maxcpus", cpus) != cpus:
            raise self.fail("CPU hotplug (maxcpus) is not supported by kvmkit")
        self.cfg.cpus = cpus
        # what is not given follows QEMU 7.2's pc machines: cores before sockets
        threads, dies = values.get("threads", 1), values.get("dies", 1)
        sockets = values.get("sockets") or 1
        cores = values.get("cores") or max(1, cpus // (sockets * dies * threads))
        if "sockets" not in values and "cores" in values:
            sockets = max(1, cpus // (cores * dies * threads))
        self.cfg.topology = (sockets, cores * dies, threads)

    def opt_machine(self, arg: str) -> None:
        opts = parse_opts(arg, implied="type")
        mtype = opts.pop("type", "pc")
        if mtype == "help":
            self.cfg.list_machines = True
            return
        if mtype not in MACHINE_TYPES:
            raise ConfigError("unsupported machine type\n"
                              "Use -machine help to list supported machines")
        self.cfg.machine_type = mtype
        accel = opts.pop("accel", None)
        if accel is not None:
            self._check_accel(accel)
        if "pit" in opts:
            self.cfg.pit = parse_bool("pit", opts.pop("pit"))
        if "usb" in opts:
            self.cfg.usb = parse_bool("usb", opts.pop("usb"))
        if "acpi" in opts:
            value = opts.pop("acpi")
            if value not in ("on", "off", "auto"):
                raise self.fail(f"Parameter 'acpi' does not accept value '{value}'")
            self.cfg.acpi = value != "off"
        if "memory-backend" in opts:
            self.cfg.memory_backend = opts.pop("memory-backend")
        for key in opts:
            if key not in ("vmport", "dump-guest-core", "mem-merge", "kernel-irqchip",
                           "hpet", "smm", "sata", "pic"):
                raise self.fail(f"Property '{mtype}-machine.{key}' not found")

    opt_M = opt_machine

    def _check_accel(self, accel: str) -> None:
        """A list tried in order, as QEMU's accel=kvm:tcg: kvm must be in it."""
        names = accel.split(":")
        for name in names:
            if name not in ("kvm", "tcg", "xen", "hax", "whpx", "nvmm"):
                raise self.fail(f"invalid accelerator {name}")
        if "kvm" not in names:
            raise self.fail(f"accelerator '{names[0]}' is not supported: "
                            "kvmkit runs on KVM only")

    def opt_accel(self, arg: str) -> None:
        opts = parse_opts(arg, implied="accel")
        self._check_accel(opts.get("accel", ""))

    def opt_cpu(self, arg: str) -> None:
        if arg in ("help", "?"):
            self.cfg.list_cpus = True
            return
        try:
            self.cfg.cpu = parse_cpu(arg)
        except CpuModelError as e:
            raise ConfigError(str(e)) from None

    def opt_global(self, arg: str) -> None:
        """-global DRIVER.PROP=VALUE: a default for every DRIVER device's PROP."""
        key, eq, value = arg.partition("=")
        driver, dot, prop = key.rpartition(".")
        if not eq or not dot or not driver or not prop:
            raise self.fail(f"Invalid parameter '{key}'")
        self.cfg.globals.setdefault(driver, {})[prop] = value

    def opt_trace(self, arg: str) -> None:
        self.cfg.traces.append(arg)

    def opt_s(self, arg: str) -> None:
        self.opt_gdb("tcp::1234")

    def opt_gdb(self, arg: str) -> None:
        from vmm.gdbstub import GdbDeviceError, parse_device

        if arg != "none":
            try:
                parse_device(arg)
            except GdbDeviceError as e:
                raise self.fail(str(e)) from None
        self.cfg.gdb = None if arg == "none" else arg

    def opt_name(self, arg: str) -> None:
        opts = parse_opts(arg, implied="guest")
        self.cfg.name = opts.get("guest")

    def opt_uuid(self, arg: str) -> None:
        try:
            self.cfg.uuid = str(uuidlib.UUID(arg))
        except ValueError:
            raise self.fail("failed to parse UUID string: wrong format") from None
        if len(arg) != 36:
            raise self.fail("failed to parse UUID string: wrong format")

    def opt_display(self, arg: str) -> None:
        """-display none, or -display vnc=ADDRESS (as -vnc ADDRESS)."""
        kind = split_first(arg)
        if kind.startswith("vnc="):
            self.opt_vnc(arg[4:])
        elif kind != "none":
            raise self.fail(f"Parameter 'type' does not accept value '{kind}'")

    def opt_vnc(self, arg: str) -> None:
        """-vnc [HOST]:DISPLAY|unix:PATH|none[,password=on]: kvmkit's VNC server."""
        try:
            self.cfg.vnc = parse_vnc(arg)
        except VncError as e:
            raise self.fail(str(e)) from None

    def opt_k(self, arg: str) -> None:
        """-k LAYOUT: how keysyms from VNC clients map to keys. kvmkit's server knows
        the en-us layout (clients that send QEMU's extended key events, with scancodes,
        need none)."""
        if arg != "en-us":
            self.cfg.warnings.append(f"warning: -k {arg}: kvmkit's VNC server reads keysyms "
                                     f"as the en-us layout")

    def opt_vga(self, arg: str) -> None:
        """-vga std|cirrus|none: the board's display card, made before any -device (so
        at 00:02.0, as QEMU's)."""
        self.cfg.devices = [d for d in self.cfg.devices if d.origin != "-vga"]
        self.vga_chosen = True
        if arg == "help":
            self.cfg.show_vga_help = True
        elif arg in VGA_TYPES:
            self.cfg.devices.insert(0, DeviceSpec(VGA_TYPES[arg], {}, "-vga"))
        elif arg != "none":
            if arg in ("vmware", "qxl", "virtio", "tcx", "cg3", "xenfb"):
                raise ConfigError(f"{arg} not available")
            raise ConfigError(f"unknown vga type: {arg}")

    def opt_nographic(self, arg: str) -> None:
        self.cfg.nographic = True   # the default serial becomes mon:stdio (see finish())

    def opt_serial(self, arg: str) -> None:
        self.serial_count += 1
        if self.serial_count > 4:
            raise self.fail("Maximum number of serial devices reached")
        if arg == "none":
            self.cfg.serials.append("")
            return
        cid = self.chardev_from_legacy(arg, f"serial{self.serial_count - 1}")
        self.cfg.serials.append(cid)

    def chardev_from_legacy(self, arg: str, cid: str) -> str:
        """-serial/-monitor/-qmp shorthand ('stdio', 'unix:PATH,server=on', ...)."""
        if arg.startswith("chardev:"):
            return arg[len("chardev:"):]
        if arg.startswith("mon:"):   # the monitor shares this back end (mux)
            cid = self.chardev_from_legacy(arg[4:], cid)
            self.cfg.chardevs[-1].options["mux"] = "on"
            self.cfg.monitors.append(MonitorSpec(cid, "readline"))
            return cid
        spec = legacy_chardev(arg, cid)
        if spec is not None:
            self.cfg.chardevs.append(spec)
            return cid
        raise ConfigError(f"-{self.opt} {arg}: '{arg}' is not a valid char driver\n"
                          f"kvmkit: -{self.opt} {arg}: could not connect serial device to "
                          f"character backend '{arg}'")

    def opt_chardev(self, arg: str) -> None:
        opts = parse_opts(arg, implied="backend")
        backend = opts.pop("backend", "")
        cid = opts.pop("id", None)
        if backend not in ("stdio", "file", "pty", "socket", "null", "pipe", "serial", "ringbuf",
                           "memory"):
            raise self.fail(f"'{backend}' is not a valid char driver name")
        if cid is None:
            raise self.fail("Parameter 'id' is missing")
        if any(c.id == cid for c in self.cfg.chardevs):
            raise self.fail(f"Duplicate ID '{cid}' for chardev")
        if backend == "file" and "path" not in opts:
            raise self.fail("chardev: file: no filename given")
        if backend == "socket" and not ({"path", "host", "port", "fd"} & opts.keys()):
            raise self.fail("Unable to parse FD number ")
        if backend in ("pipe", "serial"):
            raise self.fail(f"chardev backend '{backend}' is not supported by kvmkit")
        self.cfg.chardevs.append(ChardevSpec(cid, backend, opts))

    def opt_device(self, arg: str) -> None:
        """-device DRIVER,prop=value,... or, as libvirt gives it, -device {JSON}."""
        if arg.startswith("{"):
            opts = self._json_object(arg)
            driver = opts.pop("driver", None)
            if driver is None:
                raise self.fail("Parameter 'driver' is missing")
            self.cfg.devices.append(DeviceSpec(driver, opts, f"-device {arg}", json=True))
            return
        opts = parse_opts(arg, implied="driver")
        driver = opts.pop("driver", "")
        if driver in ("help", "?"):
            self.cfg.list_devices = True
            return
        if opts.get("help") == "on" or opts.get("?") == "on":
            self.cfg.device_help = driver
            return
        self.cfg.devices.append(DeviceSpec(driver, opts, f"-device {arg}"))

    def _json_object(self, arg: str) -> dict:
        try:
            value = json.loads(arg)
        except ValueError as e:
            raise self.fail(f"JSON parse error, {e.msg}") from None
        if not isinstance(value, dict):
            raise self.fail("Parameter 'driver' is missing")
        return value

    def opt_qmp(self, arg: str) -> None:
        cid = self.chardev_from_legacy(arg, self.new_chardev_id("compat_monitor"))
        self.cfg.monitors.append(MonitorSpec(cid, "control"))

    def opt_qmp_pretty(self, arg: str) -> None:
        cid = self.chardev_from_legacy(arg, self.new_chardev_id("compat_monitor"))
        self.cfg.monitors.append(MonitorSpec(cid, "control", pretty=True))

    def opt_monitor(self, arg: str) -> None:
        if arg == "none":
            return
        cid = self.chardev_from_legacy(arg, self.new_chardev_id("compat_monitor"))
        self.cfg.monitors.append(MonitorSpec(cid, "readline"))

    def opt_mon(self, arg: str) -> None:
        opts = parse_opts(arg, implied="chardev")
        mode = opts.get("mode", "readline")
        if mode not in ("control", "readline"):
            raise self.fail(f"Parameter 'mode' does not accept value '{mode}'")
        if "chardev" not in opts:
            raise self.fail("Parameter 'chardev' is missing")
        self.cfg.monitors.append(MonitorSpec(opts["chardev"], mode,
                                             parse_bool("pretty", opts.get("pretty", "off"))))

    def opt_netdev(self, arg: str) -> None:
        """-netdev TYPE,id=ID,... or -netdev {JSON}, checked as QEMU's QAPI does."""
        if arg.startswith("{"):
            members = self._json_object(arg)
            kind, netdev_id = members.pop("type", None), members.pop("id", None)
            if not isinstance(kind, str):
                raise self.fail("Parameter 'type' is missing")
            if kind not in netdev_options.NETDEV_TYPES:
                raise self.fail(f"Parameter 'type' does not accept value '{kind}'")
            if netdev_id is None:
                raise self.fail("Parameter 'id' is missing")
            try:
                opts = netdev_options.from_json(kind, members)
            except UserError as e:
                raise self.fail(str(e)) from None
            self.cfg.netdevs.append((f"-netdev {arg}", {"type": kind, "id": netdev_id, **opts}))
            return
        opts = self._netdev_text(arg)
        self.cfg.netdevs.append((f"-netdev {arg}", opts))

    def opt_nic(self, arg: str) -> None:
        """-nic TYPE[,id=..][,model=..][,mac=..][,back-end options]: a back end and a
        NIC for it in one option, as QEMU's net_param_nic (default model e1000)."""
        opts = self._netdev_text(arg)
        if opts.get("type") == "none":
            return
        netdev_id = opts.pop("id", None) or self._auto_netdev_id()
        model = opts.pop("model", "e1000")
        nic = {"netdev": netdev_id}
        if "mac" in opts:
            nic["mac"] = opts.pop("mac")
        self.cfg.netdevs.append((f"-nic {arg}", {**opts, "id": netdev_id}))
        self.cfg.devices.append(DeviceSpec(model, nic, f"-nic {arg}"))

    def opt_drive(self, arg: str) -> None:
        """-drive file=F[,format=][,if=ide|none|virtio][,id=][,cache=][,...]: a drive,
        with a disk of its own (if=ide, the default: on the IDE bus and unit its
        index says; if=virtio: a virtio-blk-pci) or for -device ...,drive=ID. The
        block layer opens it (vmm/block/layer.py) and checks the rest."""
        self._add_drive(parse_opts(arg, implied="file"), f"-drive {arg}")

    def _add_drive(self, opts: dict[str, str], origin: str) -> None:
        interface = opts.get("if", "ide")
        media = opts.pop("media", "disk")
        if media not in ("disk", "cdrom"):
            raise self.fail(f"'{media}' invalid media")
        if interface not in ("none", "virtio", "ide"):
            raise self.fail(f"machine type does not support if={interface},bus=0,unit=0")
        if interface == "ide":
            bus, unit = self._ide_position(opts)
            default_id = f"ide{bus}-{'cd' if media == 'cdrom' else 'hd'}{unit}"
            if media == "cdrom":
                opts["read-only"] = "on"          # a CD-ROM's medium is never written
        elif interface == "virtio":          # QEMU names them by their index
            default_id = f"virtio{len(self.drive_devices)}"
        else:
            default_id = f"drive{len(self.cfg.drives)}"
        drive_id = opts.get("id") or default_id
        if any((o.get("id") or d) == drive_id for _origin, o, d in self.cfg.drives):
            raise self.fail(f"Duplicate ID '{drive_id}' for drive")
        self.cfg.drives.append((origin, opts, default_id))
        if interface == "ide":
            self.cfg.ide_drives.append((origin, bus * IDE_UNITS + unit, drive_id, media))
        if interface == "virtio":           # its device comes after every -device, as QEMU's
            self.drive_devices.append(DeviceSpec("virtio-blk-pci", {"drive": drive_id},
                                                 origin))

    def _ide_position(self, opts: dict[str, str]) -> tuple[int, int]:
        """The IDE bus and unit of a drive: from index= (bus * 2 + unit), bus= and
        unit=, or the first free one, as QEMU's drive_new picks them."""
        def number(key: str) -> int | None:
            if key not in opts:
                return None
            text = opts.pop(key)
            if not text.isdigit():
                raise self.fail(f"Parameter '{key}' expects a number")
            return int(text)
        index, bus, unit = number("index"), number("bus"), number("unit")
        if index is not None:
            if bus is not None or unit is not None:
                raise self.fail("index cannot be used with bus and unit")
            bus, unit = divmod(index, IDE_UNITS)
        bus = bus or 0
        taken = {i for _o, i, _d, _m in self.cfg.ide_drives}
        if unit is None:
            unit = 0
            while bus * IDE_UNITS + unit in taken:
                unit += 1
                if unit >= IDE_UNITS:
                    unit, bus = unit - IDE_UNITS, bus + 1
        if unit >= IDE_UNITS:
            raise self.fail(f"unit {unit} too big (max is {IDE_UNITS - 1})")
        if bus * IDE_UNITS + unit in taken:
            raise self.fail(f"drive with bus={bus}, unit={unit} "
                            f"(index={bus * IDE_UNITS + unit}) exists")
        return bus, unit

    def _legacy_drive(self, index: int, media: str, arg: str) -> None:
        """-hda..-hdd FILE and -cdrom FILE: an IDE drive at that index."""
        self._add_drive({"file": arg, "index": str(index), "media": media}, f"-{self.opt} {arg}")

    def opt_hda(self, arg: str) -> None:
        self._legacy_drive(0, "disk", arg)

    def opt_hdb(self, arg: str) -> None:
        self._legacy_drive(1, "disk", arg)

    def opt_hdc(self, arg: str) -> None:
        self._legacy_drive(2, "disk", arg)

    def opt_hdd(self, arg: str) -> None:
        self._legacy_drive(3, "disk", arg)

    def opt_cdrom(self, arg: str) -> None:
        self._legacy_drive(2, "cdrom", arg)

    def opt_blockdev(self, arg: str) -> None:
        """-blockdev {JSON} or -blockdev driver=D,node-name=N,file.filename=F,...: a
        block node (format, file, backing) for -device ...,drive=N."""
        try:
            if arg.startswith("{"):
                options = blockdev_options.check(self._json_object(arg))
            else:
                options = blockdev_options.check(blockdev_options.from_keyval(
                    parse_opts(arg)))
        except UserError as e:
            raise self.fail(str(e)) from None
        if "node-name" not in options:
            raise self.fail("'node-name' must be specified for the root node")
        self.cfg.blockdevs.append((f"-blockdev {arg}", options))

    def opt_net(self, arg: str) -> None:
        """-net nic[,model=][,macaddr=][,netdev=] and -net TYPE,...: the legacy form,
        where NICs and back ends without a netdev meet on hub 0."""
        opts = self._netdev_text(arg)
        kind = opts.pop("type", "")
        if kind == "none":
            return
        if kind == "nic":
            unknown = sorted(set(opts) - {"netdev", "macaddr", "model", "addr", "vectors",
                                          "id", "name"})
            if unknown:
                raise self.fail(f"Invalid parameter '{unknown[0]}'")
            self._auto_netdev_id()            # QEMU names every -net, NICs too
            nic = {"netdev": opts.get("netdev") or f"#hub0:{self._hub_ports}"}
            self._hub_ports += not opts.get("netdev")
            for option, prop in (("macaddr", "mac"), ("addr", "addr"), ("vectors", "vectors")):
                if option in opts:
                    nic[prop] = opts[option]
            self.cfg.devices.append(DeviceSpec(opts.get("model", "e1000"), nic, f"-net {arg}"))
            return
        netdev_id = opts.pop("id", None) or opts.pop("name", None) or self._auto_netdev_id()
        self.cfg.netdevs.append((f"-net {arg}", {**opts, "type": kind, "id": netdev_id,
                                                 "#hubport": str(self._hub_ports)}))
        self._hub_ports += 1

    def _netdev_text(self, arg: str) -> dict:
        try:
            return netdev_options.parse_text(arg)
        except UserError as e:
            raise self.fail(str(e)) from None

    def _auto_netdev_id(self) -> str:
        """QEMU's generated ids: '#net', a counter, two random digits."""
        name = f"#net{self._nic_count}{random.randrange(100):02d}"
        self._nic_count += 1
        return name

    def opt_object(self, arg: str) -> None:
        """-object TYPE,id=ID,... or -object {JSON}: checked here, made with the machine."""
        strict = arg.startswith("{")
        members = self._json_object(arg) if strict else user_objects.from_text(arg)
        try:
            _type, object_id, _props = user_objects.check(members, strict)
        except UserError as e:
            raise self.fail(str(e) + (f"\n{e.hint}" if e.hint else "")) from None
        if any(m.get("id") == object_id for _o, m, _s in self.cfg.objects):
            raise self.fail(f"Duplicate ID '{object_id}' for object")
        self.cfg.objects.append((f"-object {arg}", members, strict))

    def opt_add_fd(self, arg: str) -> None:
        """-add-fd fd=N,set=S[,opaque=TEXT]: an inherited descriptor into fd set S,
        which /dev/fdset/S then opens."""
        opts = parse_opts(arg)
        for key in opts:
            if key not in ("fd", "set", "opaque"):
                raise self.fail(f"Invalid parameter '{key}'")
        try:
            fd, fdset = int(opts["fd"]), int(opts["set"])
        except KeyError as e:
            raise self.fail(f"Parameter '{e.args[0]}' is missing") from None
        except ValueError:
            raise self.fail("Parameter 'fd' expects a number") from None
        if fd <= 2:
            raise self.fail("fd option is required and must be greater than 2")
        self.cfg.fdsets.append((fdset, fd, opts.get("opaque")))

    def opt_usb(self, arg: str) -> None:
        self.cfg.usb = True

    def opt_rtc(self, arg: str) -> None:
        """-rtc base=utc|localtime|DATE,clock=host|rt|vm,driftfix=none|slew: the RTC
        counts from the host's UTC clock, which is what libvirt asks for. driftfix=slew
        makes up lost periodic interrupts in QEMU; kvmkit's RTC raises only update and
        alarm interrupts, which it never loses, so slew and none behave alike."""
        opts = parse_opts(arg)
        for key, value in opts.items():
            if key not in ("base", "clock", "driftfix"):
                raise self.fail(f"Invalid parameter '{key}'")
            if (key, value) not in (("base", "utc"), ("clock", "host"), ("clock", "vm"),
                                    ("driftfix", "none"), ("driftfix", "slew")):
                raise self.fail(f"Parameter '{key}' does not accept value '{value}' "
                                "(kvmkit's RTC runs on UTC from the host clock)")

    def opt_overcommit(self, arg: str) -> None:
        """-overcommit mem-lock=on|off,cpu-pm=off: mem-lock=on locks all of kvmkit's
        memory, guest RAM included, as QEMU does (mlockall); kvmkit does not pass CPU
        power management through."""
        for key, value in parse_opts(arg).items():
            if key not in ("mem-lock", "cpu-pm"):
                raise self.fail(f"Invalid parameter '{key}'")
            on = parse_bool(key, value)
            if key == "mem-lock":
                self.cfg.mem_lock = on
            elif on:
                raise self.fail(f"Parameter '{key}' does not accept value '{value}' "
                                f"(kvmkit supports only {key}=off)")

    def opt_smbios(self, arg: str) -> None:
        """-smbios file=BINARY | type=N,field=value...: the guest's DMI tables."""
        try:
            self.cfg.smbios.add(parse_opts(arg))
        except SmbiosError as e:
            raise self.fail(str(e)) from None

    def opt_realtime(self, arg: str) -> None:
        """-realtime mlock=on|off: QEMU's older spelling of -overcommit mem-lock=, which
        QEMU 7.2 no longer takes. Command lines written for older QEMUs (OpenStack's)
        still use it, so kvmkit takes it, with the deprecation warning QEMU gave."""
        for key, value in parse_opts(arg).items():
            if key != "mlock":
                raise self.fail(f"Invalid parameter '{key}'")
            self.cfg.mem_lock = parse_bool(key, value)
        self.cfg.warnings.append("warning: '-realtime mlock=...' is deprecated, please use "
                                 "'-overcommit mem-lock=...'")

    def opt_msg(self, arg: str) -> None:
        """-msg timestamp=on|off[,guest-name=on|off]: error lines get QEMU's prefixes."""
        for key, value in parse_opts(arg).items():
            if key not in ("timestamp", "guest-name"):
                raise self.fail(f"Invalid parameter '{key}'")
            if parse_bool(key, value) and key == "guest-name":
                raise self.fail("guest-name=on is not supported by kvmkit")
            if key == "timestamp":
                self.cfg.msg_timestamp = parse_bool(key, value)

    def opt_audiodev(self, arg: str) -> None:
        """-audiodev none,id=ID or {JSON}: kvmkit has no sound card, so only the
        'none' back end, which plays nothing."""
        members = self._json_object(arg) if arg.startswith("{") else \
            parse_opts(arg, implied="driver")
        driver = members.get("driver")
        if driver is None:
            raise self.fail("Parameter 'driver' is missing")
        if "id" not in members:
            raise self.fail("Parameter 'id' is missing")
        if driver != "none":
            raise self.fail(f"Parameter 'driver' does not accept value '{driver}' "
                            "(kvmkit has no audio back ends but 'none')")

    def opt_no_acpi(self, arg: str) -> None:
        self.cfg.acpi = False

    def opt_sandbox(self, arg: str) -> None:
        """-sandbox on|off[,obsolete=][,elevateprivileges=][,spawn=][,resourcecontrol=]:
        the seccomp filter of vmm/seccomp.py, installed once set-up is done."""
        from vmm.seccomp import OPTION_GROUPS, parse_options

        opts = parse_opts(arg, implied="enable")
        unknown = sorted(set(opts) - {"enable", *OPTION_GROUPS})
        if unknown:
            raise self.fail(f"Invalid parameter '{unknown[0]}'")
        if not parse_bool("enable", opts.get("enable", "off")):
            self.cfg.sandbox = None
            return
        try:
            self.cfg.sandbox = parse_options(opts)
        except ValueError as e:
            raise self.fail(str(e)) from None

    def opt_runas(self, arg: str) -> None:
        from vmm.privileges import PrivilegeError, parse_runas

        try:
            self.cfg.runas = parse_runas(arg)
        except PrivilegeError as e:
            raise self.fail(e.strerror) from None

    def opt_chroot(self, arg: str) -> None:
        self.cfg.chroot = arg

    def opt_no_hpet(self, arg: str) -> None:
        pass    # kvmkit has no HPET: there is nothing to leave out

    def opt_boot(self, arg: str) -> None:
        pass  # no firmware, so boot order means nothing here

    def opt_d(self, arg: str) -> None:
        pass  # QEMU's TCG log items; nothing to log under KVM


def split_first(arg: str) -> str:
    return parse_opts(arg, implied="_")["_"] if arg else ""


SIMPLE = {
    "kernel": "kernel", "initrd": "initrd", "append": "append", "pidfile": "pidfile",
    "D": "logfile", "incoming": "incoming", "loadvm": "loadvm",
}
FLAGS = {
    "S": "start_paused", "no-reboot": "no_reboot", "no-shutdown": "no_shutdown",
    "nodefaults": "nodefaults", "daemonize": "daemonize", "snapshot": "snapshot",
    "version": "show_version", "h": "show_help", "help": "show_help",
}
IGNORED_FLAGS = ("enable-kvm", "no-user-config")


def parse_args(argv: list[str]) -> MachineConfig:
    parser = _Parser()
    cfg = parser.cfg
    i = 0
    while i < len(argv):
        token = argv[i]
        if not token.startswith("-") or token == "-":
            parser.opt, parser.arg = "", ""
            raise ConfigError(f"{token}: invalid option" if token else "invalid option")
        name = token[2:] if token.startswith("--") else token[1:]
        parser.opt, parser.arg = name, ""
        if name not in OPTIONS:
            raise ConfigError(f"-{name}: invalid option")
        arg = ""
        if OPTIONS[name]:
            if i + 1 >= len(argv):
                raise ConfigError(f"-{name}: requires an argument")
            arg = argv[i + 1]
            i += 1
        i += 1
        parser.arg = arg
        try:
            if name in SIMPLE:
                setattr(cfg, SIMPLE[name], arg)
            elif name in FLAGS:
                setattr(cfg, FLAGS[name], True)
            elif name in IGNORED_FLAGS:
                pass
            else:
                getattr(parser, "opt_" + name.replace("-", "_"))(arg)
        except OptsError as e:
            raise parser.fail(str(e)) from None
    cfg.devices += parser.drive_devices
    if not cfg.nodefaults and not parser.vga_chosen and cfg.machine_type != "none" and \
            not any(d.driver in VGA_TYPES.values() for d in cfg.devices):
        cfg.devices.insert(0, DeviceSpec("VGA", {}, "-vga"))      # QEMU's default card
    if not cfg.nodefaults and not any(index == 2 for _o, index, _d, _m in cfg.ide_drives):
        parser.opt, parser.arg = "drive", "if=ide,index=2,media=cdrom"
        parser._add_drive({"index": "2", "media": "cdrom"}, "")   # QEMU's default CD-ROM
    if cfg.nographic and not cfg.serials and not cfg.nodefaults:
        parser.opt, parser.arg = "nographic", ""
        cfg.serials.append(parser.chardev_from_legacy("mon:stdio", "serial0"))
    return cfg


USAGE = """\
usage: kvmkit [options]

A KVM virtual machine monitor with QEMU's command line and monitor.

Standard options:
-h or -help     display this help and exit
-version        display version information and exit
-machine [type=]pc[,accel=kvm][,pit=on|off]
                select the machine (only the i440FX 'pc' machine)
-accel kvm      the only accelerator; -enable-kvm is accepted too
-cpu qemu64|host|max[,+feature][,-feature][,vendor=..]
                the CPU model (QEMU's default is qemu64; -cpu help)
-smp [cpus=]n[,sockets=s][,cores=c][,threads=t]
                number of vCPUs
-m [size=]megs[,slots=n,maxmem=size]
                guest RAM (suffixes k, M, G, T; a bare number is MiB)
-name string    guest name
-uuid uuid      guest UUID
-nodefaults     create no default devices
-S              do not start the CPUs (the monitor's 'cont' starts them)
-gdb dev        accept a gdb connection on dev (tcp:[host]:port or unix:path)
-s              shorthand for -gdb tcp::1234
-trace [enable=]pattern[,events=file][,file=file]
                enable trace events (trace-event-get-state lists them)
-no-reboot      exit instead of rebooting
-no-shutdown    stop, but do not exit, when the guest powers off
-pidfile file   write the process id to file
-daemonize      detach from the terminal once the VM is set up
-D logfile      write kvmkit's log to logfile
-global driver.property=value
                set a default for a device property (kvm-pit.lost_tick_policy)

Boot:
-kernel bzImage|multiboot|pvh.elf|vmlinux
                the kernel to boot (PVH and multiboot enter in 32-bit mode)
-initrd file    the initial ramdisk (multiboot: 'file args,file2' are modules)
-append cmdline the kernel command line

Devices and back ends:
-device driver[,prop=value][,...]   isa-serial, isa-debug-exit, ... (-device help)
-chardev backend,id=id[,...]        stdio, file, pty, socket, null
-serial dev     stdio, null, none, file:path, pty, unix:path[,server=on],
                tcp:host:port[,server=on], chardev:id
-display none, -nographic          no display (kvmkit has none)
-qmp dev, -monitor dev, -mon chardev=id[,mode=control|readline]
                                    monitors
"""
