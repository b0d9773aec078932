"""The `pc` board: KVM VM, RAM, vCPUs, buses, platform devices, boot, run state.

Run-state changes (stop, cont, reset, powerdown, shutdown) happen on the
asyncio loop's thread; requests that start in a vCPU thread (a guest reset,
power-off, emulation failure, isa-debug-exit) are handed to the loop. The
machine reports what happens through ``listeners``, each called as
``listener(event_name, data_or_None)`` with QEMU's event names and data.
"""

from __future__ import annotations

import asyncio
import logging
import os
import sys
import threading
from collections.abc import Callable

from vmm import __version__, fdsets, qdev
from vmm import cpu as cpustate
from vmm import input as input_layer
from vmm.block.layer import BlockLayer
from vmm.boot import acpi, firmware, layout, linux, multiboot, smbios
from vmm.boot.loader import BootError, BootFiles, load_kernel, read_boot_files
from vmm.bus import Bus
from vmm.chardev import Chardev, ChardevError, StdioChardev, make_chardev
from vmm.config import IDE_UNITS, MACHINE_TYPES, MachineConfig, legacy_chardev
from vmm.cpu_models import CpuModelError, feature_msr_values, mcg_cap, model_cpuid
from vmm.device_manager import DeviceManager
from vmm.devices import fw_cfg
from vmm.devices.acpi_pcihp import PCIHP_BASE, PCIHP_LEN, PciHotplug
from vmm.devices.acpi_pm import SCI_IRQ, SLP_TYP_S3, AcpiPm
from vmm.devices.fw_cfg import FwCfg
from vmm.devices.i440fx import (
    CONFIG_ADDRESS_PORT,
    CONFIG_PORTS_LEN,
    I440fxHostBridge,
    PciConfigPorts,
    Piix3IsaBridge,
    slot_pirq,
)
from vmm.devices.i8042 import COMMAND_PORT, DATA_PORT, I8042
from vmm.devices.ide import CHANNELS, CommandBlockPorts, ControlPort, Piix3Ide
from vmm.devices.rtc import SHUTDOWN_STATUS, SHUTDOWN_STATUS_S3_RESUME, Rtc
from vmm.devices.uhci import PiixUhci
from vmm.errors import UserError
from vmm.ioevents import IoEvents
from vmm.kvm import Kvm, KvmError
from vmm.lock_profile import ProfiledRLock
from vmm.memory import GuestMemory, lock_all_memory
from vmm.migration import channel as migration_channel
from vmm.migration import machine_state
from vmm.migration.incoming import IncomingMigration
from vmm.migration.outgoing import OutgoingMigration, Settings
from vmm.msix import MsiRoutes
from vmm.net.network import NetError, Network
from vmm.objects import Objects, UserObject, throttle_values
from vmm.pci import INTERRUPT_LINE, NoFreeSlot, PciBus, PciDevice
from vmm.qdev import Device, DeviceError
from vmm.timer import DeviceTimer
from vmm.vcpu import VcpuThread, install_kick_handler

log = logging.getLogger(__name__)

TSS_ADDR = 0xFFFBD000
HELD_INPUT_LIMIT = 64 * 1024              # chardev input held during an incoming migration
RAM_ID = "pc.ram"                        # QEMU's default-ram-id for the pc machine
IDENTITY_MAP_ADDR = 0xFFFBC000
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
Listener = Callable[[str, "dict | None"], None]


class MachineError(UserError):
    """Cannot build or start the machine; the message is for the user."""


class RunStateError(UserError):
    """A run-control request the current state refuses (QEMU's text)."""


NEEDS_RESET = ("internal-error", "shutdown", "guest-panicked")


class Machine:
    def __init__(self, cfg: MachineConfig, kvm_path: str = "/dev/kvm") -> None:
        self.cfg = cfg
        self.lock = ProfiledRLock()          # the big lock, with sync-profile
        self.listeners: list[Listener] = []
        self.runstate = "inmigrate" if cfg.incoming else "prelaunch"
        self._held_input: list[tuple[Callable, bytes]] = []     # see host_input
        self.autostart = not cfg.start_paused     # run once an incoming migration is in
        self._resume_hooks: list[Callable[[], None]] = []
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_status: asyncio.Future[int] | None = None
        self._firmware_pending = True
        self._has_run = False                  # QEMU's virtual clock has not started
        self._unplugs_before_first_run: set[int] = set()
        self.objects = Objects()
        self.migration_settings = Settings()      # migrate-set-parameters/-capabilities
        self._announce_timers: dict[str | None, asyncio.TimerHandle] = {}   # by announce id
        self.migration: OutgoingMigration | None = None   # the last `migrate`
        self.incoming: IncomingMigration | None = None
        self.prior_runstate: str | None = None     # before an outgoing migration stopped it
        self.saved_runstate: str | None = None     # the source's, from an incoming stream
        self.chardevs: dict[str, Chardev] = {}
        self.vcpus: list[VcpuThread] = []
        self.displays: list = []                   # display cards, for screendump
        self.input = input_layer.InputHub()        # keyboards and mice (vmm/input.py)
        self.vnc = None                            # the VNC server (vmm/vnc.py), with -vnc
        self.gdb = None                            # the gdb stub, once -gdb or gdbserver starts it
        self.panic_action = "shutdown"             # set-action: for a pvpanic device's report
        self.watchdog_action = "reset"             # set-action, watchdog-set-action
        self.boot_order = "cad"                    # HMP boot_set (kvmkit boots -kernel)
        self.singlestep = False                    # HMP singlestep: TCG's, no effect here
        self.log_items: list[str] = []             # HMP log: TCG's items, accepted
        if cfg.mem_lock:
            try:
                lock_all_memory()
            except OSError as e:
                raise MachineError(f"mlockall: {e.strerror}\nlocking memory failed") from None
        try:
            for set_id, fd, opaque in cfg.fdsets:
                fdsets.add(fd, set_id, opaque)
            for _origin, members, strict in cfg.objects:
                try:
                    self.objects.add(members, strict)
                except UserError as e:
                    raise MachineError(str(e) + (f"\n{e.hint}" if e.hint else "")) from None
            if cfg.machine_type != "none":        # -machine none boots nothing
                self.boot_files = self._read_boot_files()
            for spec in cfg.chardevs:
                try:
                    self.chardevs[spec.id] = make_chardev(spec, lambda: self.finish(0))
                except ChardevError as e:
                    raise MachineError(str(e)) from None
            if cfg.machine_type == "none":
                self._setup_empty_machine(kvm_path)
                return
            self._setup_kvm(kvm_path)
            self._default_ram_object()
            self._setup_devices()
            self._setup_vcpus()
            self._reset_to_boot_state()
        except KvmError as e:
            self.close()
            raise MachineError(f"failed to initialize kvm: {e.strerror or e}") from None
        except BaseException:
            self.close()
            raise

    # -- construction ------------------------------------------------------
    def _setup_empty_machine(self, kvm_path: str) -> None:
        """-machine none: a KVM VM with no CPUs, no RAM and no devices, whose monitor
        answers (libvirt probes QEMU's capabilities this way)."""
        self.kvm = Kvm(kvm_path)
        self.vm = self.kvm.create_vm()
        self.pio, self.mmio = Bus("pio"), Bus("mmio")
        self.pm = self.pcihp = None
        self.memory = GuestMemory(0)
        self.irq_counts = {}
        self.pci = None
        self.devices = DeviceManager(self)
        self.block = BlockLayer()
        self.network = self._new_network()
        self._msi_routes = None
        self._firmware_pending = False

    def _new_network(self) -> Network:
        """The back ends' home: events they raise reach the monitor on the loop."""
        return Network(self.lock, _inherited_fd,
                       lambda name, data: self._from_vcpu(self.emit, name, data),
                       self._guestfwd_chardev)

    def _guestfwd_chardev(self, text: str, label: str) -> tuple[Chardev, bool] | None:
        """guestfwd's target: chardev:ID (one of -chardev's, which the machine runs),
        or one in -serial's syntax (tcp:HOST:PORT, unix:PATH, file:...), opened now
        as QEMU opens it, which the back end runs. (chardev, the back end's own?),
        or None if there is none."""
        if text.startswith("chardev:"):
            found = self.chardevs.get(text[len("chardev:"):])
            return (found, False) if found is not None else None
        spec = legacy_chardev(text, label)
        if spec is None:
            return None
        try:
            return make_chardev(spec, lambda: None), True
        except ChardevError as e:
            log.warning("%s", e)
            return None
        try:
            return make_chardev(spec, lambda: None)
        except ChardevError as e:
            log.warning("%s", e)
            return None

    def _ram_backing(self):
        """-machine memory-backend=ID: that object's RAM (its size when -m is not given)."""
        backend_id = self.cfg.memory_backend
        if backend_id is None:
            return None
        obj = self.objects.by_id.get(backend_id)
        if obj is None or not obj.qom_type.startswith("memory-backend-"):
            raise MachineError(f"Memory backend '{backend_id}' not found")
        size = obj.props["size"]
        if self.cfg.memory_given and size != self.cfg.memory:
            raise MachineError("Machine memory size does not match the size of the "
                               "memory backend")
        self.cfg.memory = size
        obj.used_by = "/machine"
        return obj.resource

    def _default_ram_object(self) -> None:
        """Without memory-backend=, RAM is QEMU's implicit /objects/pc.ram (in use by
        the machine); the name is then reserved."""
        if self.cfg.memory_backend is not None:
            return
        if RAM_ID in self.objects.by_id:
            raise MachineError(f"object name '{RAM_ID}' is reserved for the default RAM "
                               "backend, it can't be used for any other purposes. Change "
                               "the object's 'id' to something else")
        self.objects.by_id[RAM_ID] = UserObject(
            "memory-backend-ram", RAM_ID, {"size": self.cfg.memory, "share": False},
            used_by="/machine")

    def _read_boot_files(self) -> BootFiles:
        kernel_path = self.cfg.kernel
        if kernel_path is None:
            from vmm.probe import elf_path
            try:
                kernel_path = str(elf_path())
            except FileNotFoundError as e:
                raise MachineError(str(e)) from None
        try:
            return read_boot_files(kernel_path, self.cfg.initrd)
        except BootError as e:
            raise MachineError(str(e)) from None

    def _setup_kvm(self, kvm_path: str) -> None:
        try:
            self.kvm = Kvm(kvm_path)
        except KvmError as e:
            raise MachineError(e.strerror or str(e)) from None
        from vmm._kvm import lib
        max_vcpus = self.kvm.check_extension(lib.KVM_CAP_MAX_VCPUS) or \
            self.kvm.check_extension(lib.KVM_CAP_NR_VCPUS) or 1
        if self.cfg.cpus > max_vcpus:
            raise MachineError(f"Number of SMP CPUs requested ({self.cfg.cpus}) exceeds the "
                               f"maximum supported by KVM ({max_vcpus})")
        self.vm = self.kvm.create_vm()
        self.vm.set_tss_addr(TSS_ADDR)
        self.vm.set_identity_map_addr(IDENTITY_MAP_ADDR)
        self.vm.create_irqchip()
        if self.cfg.pit:
            self.vm.create_pit2()
            self.vm.set_pit_reinject(self._pit_reinject())
        backing = self._ram_backing()
        try:
            self.memory = GuestMemory(self.cfg.memory, backing)
        except (ValueError, OSError) as e:
            raise MachineError(f"cannot set up guest memory 'pc.ram': {e}") from None
        self.memory.set_slots(self.vm)
        self.pio = Bus("pio")
        self.mmio = Bus("mmio")
        self.irq_counts: dict[int, int] = {}   # rising edges per GSI, for `info irq`
        self.ioevents = IoEvents(self.vm, lambda: self.loop, self.lock)

    def _pit_reinject(self) -> bool:
        """-global kvm-pit.lost_tick_policy: delay (KVM re-injects missed ticks, the
        default) or discard."""
        policy = self.cfg.globals.get("kvm-pit", {}).get("lost_tick_policy", "delay")
        if policy == "slew":
            raise MachineError("kvm-pit: lost tick policy not supported")
        if policy not in ("delay", "discard"):
            raise MachineError(f"Parameter 'lost_tick_policy' does not accept value "
                               f"'{policy}'")
        return policy == "delay"

    def set_irq(self, gsi: int, level: int) -> None:
        if level:
            self.irq_counts[gsi] = self.irq_counts.get(gsi, 0) + 1
        self.vm.irq_line(gsi, level)

    def _setup_devices(self) -> None:
        """The board's own devices, as QEMU's `pc` creates them, then -netdev and -device."""
        self.devices = DeviceManager(self)
        host = self.devices.add_builtin("i440FX-pcihost")
        self.devices.add_builtin("kvm-ioapic")
        self.i8042 = I8042(self.request_guest_reset, self.set_irq)
        # QEMU's numbering: the PS/2 keyboard is handler 0, the PS/2 mouse #2
        self.input.activate(self.input.register(input_layer.Handler(
            "QEMU PS/2 Keyboard", True, False, False, self.i8042.keys), index=0))
        self.input.register(input_layer.Handler(
            "QEMU PS/2 Mouse", False, True, False, self.i8042.pointer), index=2)
        self.pio.map(DATA_PORT, 1, self.i8042.port(DATA_PORT))
        self.pio.map(COMMAND_PORT, 1, self.i8042.port(COMMAND_PORT))
        self.rtc = Rtc(self.memory.below_4g, self.memory.above_4g, self.cfg.cpus,
                       set_irq=self.set_irq, timer_factory=self.device_timer,
                       alarm_wakeup=self._rtc_alarm)
        self.pio.map(0x70, 2, self.rtc)
        self.fw_cfg = FwCfg(self.memory.size, self.cfg.cpus, self.cfg.uuid,
                            layout.e820_map(self.memory.below_4g, self.memory.above_4g),
                            nographic=self.cfg.nographic)
        self.pio.map(fw_cfg.BASE, fw_cfg.LENGTH, self.fw_cfg)

        self.piix3 = Piix3IsaBridge()
        self.pci = PciBus(self.pio, self.mmio, self._route_intx, self.set_irq)
        self._chipset_function("i440FX", I440fxHostBridge(), host, 0, 0)
        isa = self._chipset_function("PIIX3", self.piix3, host, 1, 0)
        self.ide = Piix3Ide(self.memory, self.set_irq, self.lock, self._ide_io_error,
                            self.io_error_stop)
        for channel, (base, control, _irq) in zip(self.ide.channels, CHANNELS):
            self.pio.map(base, 8, CommandBlockPorts(channel))
            self.pio.map(control, 1, ControlPort(channel))
        self.on_resume(self.ide.retry_held)
        self._ide_device = self._chipset_function("piix3-ide", self.ide, host, 1, 1)
        if self.cfg.usb:                          # -usb: the PIIX3's own, at 01.2
            self._chipset_function("piix3-usb-uhci",
                                   PiixUhci(self.memory, self.device_timer), host, 1, 2)
        self.devices.add_builtin("mc146818rtc", self.rtc, parent=isa)
        if self.cfg.pit:
            self.devices.add_builtin("kvm-pit", parent=isa)
        self.devices.add_builtin("i8042", self.i8042, parent=isa)
        # ACPI: the PIIX4's power management function and PCI hotplug (as QEMU's pc,
        # neither exists with -no-acpi: no power button, no device_add)
        self.pm: AcpiPm | None = None
        self.pcihp: PciHotplug | None = None
        if self.cfg.acpi:
            self.pm = AcpiPm(lambda level: self.set_irq(SCI_IRQ, level),
                             self.request_guest_poweroff, sleep=self.request_guest_sleep)
            self._chipset_function("PIIX4_PM", self.pm, host, 1, 3)
            for base, length, block in self.pm.io_blocks():
                self.pio.map(base, length, block)
            self.pcihp = PciHotplug(self.pm.raise_gpe, self._eject_slot,
                                    self._hotpluggable_in)
            self.pio.map(PCIHP_BASE, PCIHP_LEN, self.pcihp)
        self.pci_ports = PciConfigPorts(self.pci, self.request_guest_reset)
        self.pio.map(CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN, self.pci_ports)

        serial_ids = list(self.cfg.serials)
        stdio_taken = any(self.cfg_chardev_backend(m.chardev) == "stdio"
                          for m in self.cfg.monitors)
        if not serial_ids and not self.cfg.nodefaults and not stdio_taken:
            self.chardevs.setdefault("serial0", StdioChardev("serial0"))
            serial_ids = ["serial0"]
        for chardev_id in serial_ids:
            try:
                self.devices.realize_builtin("isa-serial", parent=isa, chardev=chardev_id or None)
            except UserError as e:
                raise MachineError(str(e)) from None
        self.block = BlockLayer()
        self.block.active = not self.cfg.incoming       # the source owns the images
        for obj in self.objects.by_id.values():
            if obj.qom_type == "throttle-group":
                try:
                    self.block.add_throttle_group(obj.id, throttle_values(obj.props))
                except UserError as e:
                    raise MachineError(str(e)) from None
        for origin, options in self.cfg.blockdevs:
            try:
                self.block.add_blockdev(options)
            except UserError as e:
                raise MachineError(f"{origin}: {e}" + (f"\n{e.hint}" if e.hint else "")) \
                    from None
        for origin, opts, default_id in self.cfg.drives:
            try:
                self.block.add_drive(opts, default_id, snapshot=self.cfg.snapshot)
            except UserError as e:
                raise MachineError(f"{origin}: {e}" + (f"\n{e.hint}" if e.hint else "")) \
                    from None
        self._add_ide_disks()
        self.network = self._new_network()
        self._msi_routes: MsiRoutes | None = None
        for origin, opts in self.cfg.netdevs:
            try:
                if "id" not in opts:
                    raise NetError("Parameter 'id' is missing")
                hub_port = opts.pop("#hubport", None)      # -net TYPE: on the hub
                if hub_port is not None and {"queues", "fds", "vhostfds"} & set(opts):
                    raise NetError("Multiqueue tap cannot be used with hubs")
                self.network.add_netdev(opts["id"], opts.get("type", ""), opts)
                if hub_port is not None:
                    self.network.connect_to_hub(opts["id"], int(hub_port))
            except NetError as e:
                suffix = " for netdev" if str(e).startswith("Duplicate ID") else ""
                raise MachineError(f"{origin}: {e}{suffix}") from None
        for driver, props in self.cfg.globals.items():
            if qdev.lookup(driver) is None:
                for prop in props:
                    log.warning(f"warning: global {driver}.{prop} has invalid class name")
        for spec in self.cfg.devices:
            try:
                self.devices.create(spec.driver, spec.options, strict=spec.json,
                                    defaults=self.cfg.globals)
            except UserError as e:
                hint = f"\n{e.hint}" if e.hint else ""
                raise MachineError(f"{spec.origin}: {e}{hint}") from None
        for warning in self.network.unpeered_warnings():
            log.warning(warning)

    def _add_ide_disks(self) -> None:
        """-drive if=ide, -hda.. and -cdrom: an ide-hd or ide-cd for each, on the bus
        and unit its index says, named in QOM as QEMU's board names them."""
        path_index = self._unattached_ide_index()
        for origin, index, drive_id, media in sorted(self.cfg.ide_drives,
                                                     key=lambda entry: entry[1]):
            bus, unit = divmod(index, IDE_UNITS)
            try:
                if bus >= len(CHANNELS):
                    raise UserError(f"machine type does not support if=ide,bus={bus},"
                                    f"unit={unit}")
                path_index += 1
                self.devices.realize_builtin(
                    "ide-cd" if media == "cdrom" else "ide-hd", parent=self._ide_device,
                    bus=f"ide.{bus}", qom_path=f"/machine/unattached/device[{path_index}]",
                    drive=drive_id, unit=unit)
            except UserError as e:
                raise MachineError(f"{origin}: {e}" if origin else str(e)) from None

    def _unattached_ide_index(self) -> int:
        """QEMU's /machine/unattached index of piix3-ide: after the CPUs and the
        board's ISA devices (with defaults also VGA, the parallel port, the floppy
        and the NICs of -net/-nic, or the default one), whether kvmkit has them or not."""
        serials = sum(1 for d in self.devices if d.driver == "isa-serial")
        extras = 0
        if not self.cfg.nodefaults:
            # QEMU's default serial port exists even when the monitor has stdio
            # (on a null back end); kvmkit's is left out then.
            extras += not self.cfg.serials and not serials
            legacy_nics = sum(1 for spec in self.cfg.devices
                              if spec.origin.startswith(("-nic", "-net")))
            extras += 3 + (legacy_nics or 1)
        return self.cfg.cpus + 17 + serials + extras

    def _ide_io_error(self, drive, is_write: bool, error: OSError, action: str) -> None:
        self.emit_from_vcpu("BLOCK_IO_ERROR", drive.error_event(is_write, action, error))

    def _chipset_function(self, type_name: str, function, host: Device, slot: int,
                          number: int) -> Device:
        """One of the board's own PCI functions, at its fixed address."""
        self.pci.plug(function, slot, number)
        return self.devices.add_builtin(type_name, function, parent=host,
                                        addr=slot << 3 | number)

    def cfg_chardev_backend(self, chardev_id: str) -> str | None:
        spec = next((c for c in self.cfg.chardevs if c.id == chardev_id), None)
        return spec.backend if spec else None

    # -- what devices use from the board (vmm.qdev.Board) --------------------
    def host_input(self, receive: Callable[[bytes], None], data: bytes) -> None:
        """Input from a chardev for its front end (serial, virtio-console). While a
        migration comes in, the device's state is about to be replaced: the input
        waits for it instead of being wiped by it (bounded, as a UART's FIFO is)."""
        with self.lock:
            if self.runstate != "inmigrate":
                receive(data)
            elif sum(len(d) for _, d in self._held_input) < HELD_INPUT_LIMIT:
                self._held_input.append((receive, data))

    def emit_from_vcpu(self, event: str, data: dict | None) -> None:
        """An event raised on a vCPU thread, delivered on the loop."""
        self._from_vcpu(self.emit, event, data)

    def io_error_stop(self) -> None:
        """A device hit an I/O error whose policy is to stop (werror/rerror=stop):
        the VM pauses in the io-error state; `cont` retries the request."""
        self._from_vcpu(self.stop, "io-error")

    def on_resume(self, hook: Callable[[], None], add: bool = True) -> None:
        """Calls ``hook`` (under the machine lock) each time `cont` resumes the VM."""
        if add:
            self._resume_hooks.append(hook)
        elif hook in self._resume_hooks:
            self._resume_hooks.remove(hook)

    @property
    def msi_routes(self) -> MsiRoutes:
        if self._msi_routes is None:
            self._msi_routes = MsiRoutes(self.vm)
        return self._msi_routes

    def device_timer(self, callback: Callable[[], None]) -> DeviceTimer:
        """A timer for a device: fires on the loop, under the machine lock."""
        return DeviceTimer(lambda: self.loop, self.lock, callback)

    def screen(self) -> tuple[int, int, bytes] | None:
        """(width, height, RGB) of what the first display card shows; None without one."""
        return self.displays[0].core.render_cached() if self.displays else None

    def add_ram_hole(self, start: int, size: int) -> None:
        """Guest accesses to [start, start+size) reach the MMIO bus, not RAM (the
        legacy VGA window); once for a range."""
        if (start, start + size) not in self.memory.holes:
            self.memory.add_hole(self.vm, start, size)

    def plug_pci(self, function, device: Device) -> None:
        """Puts a PCI function where addr= says (QEMU's texts), or in a free slot."""
        devfn = device.props.get("addr", -1)
        slot, number = (None, 0) if devfn == -1 else (devfn >> 3, devfn & 7)
        occupant = self.pci.find(slot, number) if slot is not None else None
        if occupant is not None:
            taken = self.devices.of_object(occupant)
            owner = f"{taken.driver},id={taken.id or '(null)'}" if taken else "(null)"
            raise DeviceError(f"PCI: slot {slot} function {number} not available for "
                              f"{device.driver}, in use by {owner}")
        try:
            self.pci.plug(function, slot, number)
        except NoFreeSlot:
            raise DeviceError(f"PCI: no slot/function available for {device.driver}, all in "
                              "use or reserved") from None
        except ValueError as e:
            raise DeviceError(str(e)) from None
        device.props["addr"] = function.slot << 3 | function.function

    @property
    def balloon(self):
        """The balloon (a VirtioBalloon), if the machine has one."""
        device = next((d for d in self.devices
                       if qdev.implements(d.type, "virtio-balloon-pci-base")), None)
        return device.obj.backend if device else None

    # -- PCI hotplug (ACPI, vmm/devices/acpi_pcihp.py) -----------------------
    def hotplug_device(self, driver: str, options: dict) -> Device:
        """device_add of a PCI device: plugged now, announced to the guest by GPE."""
        with self.lock:
            if self.pcihp is None:          # -no-acpi: no hotplug controller at all
                raise DeviceError("Bus 'pci.0' does not support hotplugging")
            device = self.devices.create(driver, options, hotplug=True,
                                         defaults=self.cfg.globals)
            if not isinstance(device.obj, PciDevice):   # a USB device: its port tells
                return device
            if not self._firmware_pending and self.pcihp is not None:   # (before boot,
                self.pcihp.plugged(device.obj.slot)          # firmware will find it)
            return device

    def request_unplug(self, device: Device) -> None:
        """device_del: the guest is asked; its eject (or the next reset) removes it.
        A USB device goes at once: its port tells the guest, as QEMU's do."""
        with self.lock:
            if not isinstance(device.obj, PciDevice):
                path = self.devices.path(device)
                self.devices.remove(device)
                self.emit("DEVICE_DELETED", {"device": device.id, "path": path}
                          if device.id else {"path": path})
                return
            if self.pcihp is None:
                raise DeviceError("Bus 'pci.0' does not support hotplugging")
            slot = device.obj.slot
            # QEMU lets a request be repeated once the guest's clock has moved on since
            # the last one (it asks the guest again); a request made before the guest
            # ever ran never expires ("expires at virtual time 0").
            if slot in self._unplugs_before_first_run and slot in self.pcihp.pending_unplugs():
                raise DeviceError(f"Device {device.id} is already in the process of unplug")
            if not self._has_run:
                self._unplugs_before_first_run.add(slot)
            self.pcihp.unplug_requested(slot)

    def _on_slot(self, slot: int) -> list[Device]:
        return [d for d in self.devices.user_devices() if getattr(d.obj, "slot", -1) == slot]

    def _hotpluggable_in(self, slot: int) -> bool:
        return bool(self._on_slot(slot))

    def _eject_slot(self, slot: int) -> None:
        """The guest ejected `slot` (or a reset completes its unplug): remove it."""
        self._unplugs_before_first_run.discard(slot)
        for device in self._on_slot(slot):
            path = self.devices.path(device)
            self.pci.unplug(device.obj)
            self.devices.remove(device)
            if device.type.virtio:                 # QEMU deletes the virtio child first
                self.emit_from_vcpu("DEVICE_DELETED", {"path": f"{path}/virtio-backend"})
            data = {"device": device.id, "path": path} if device.id else {"path": path}
            self.emit_from_vcpu("DEVICE_DELETED", data)

    def _route_intx(self, slot: int, pin: int) -> int | None:
        if not 1 <= pin <= 4:
            return None
        return self.piix3.pirq_irq(slot_pirq(slot, pin))

    def _setup_vcpus(self) -> None:
        install_kick_handler()
        try:
            for name in self.cfg.cpu.ignored:
                log.warning(f"warning: CPU flag '{name}' is set by the guest OS, not by "
                            f"-cpu: ignored")
            table = model_cpuid(self.cfg.cpu, self.kvm.supported_cpuid(), log.warning,
                                feature_msrs=feature_msr_values(self.kvm.feature_msr))
        except CpuModelError as e:
            raise MachineError(str(e)) from None
        leaf1 = next((e for e in table if e.function == 1 and e.index == 0), None)
        self._cpu_signature = (leaf1.eax, leaf1.edx) if leaf1 else (0, 0)    # for SMBIOS
        self._mcg_cap = machine_check = mcg_cap(table, self.kvm.mce_cap_supported())
        self._saved_msrs = set(self.kvm.msr_index_list())
        self._initial_state = []
        for index in range(self.cfg.cpus):
            vcpu = self.vm.create_vcpu(index)
            vcpu.set_cpuid(cpustate.build_cpuid(table, index, self.cfg.cpus))
            if machine_check:
                vcpu.setup_mce(machine_check)
            cpustate.set_lapic_lints(vcpu)
            self._initial_state.append((vcpu.get_regs(), vcpu.get_sregs(), vcpu.get_xsave(),
                                        vcpu.get_lapic()))
            self.vcpus.append(VcpuThread(vcpu, self.pio, self.mmio, self.lock,
                                         self._vcpu_event))

    # -- reset and boot ----------------------------------------------------
    def _reset_to_boot_state(self) -> None:
        """Devices and vCPUs to their power-on state, and the kernel loaded."""
        self._reset_hardware()
        self.acpi_tables = acpi.write_tables(self.memory, self.cfg.cpus) \
            if self.cfg.acpi else None                       # -no-acpi: no tables
        rsdp = self.acpi_tables.rsdp_addr if self.acpi_tables is not None else 0
        self._write_smbios()
        try:
            self.boot_plan = load_kernel(self.memory, self.boot_files, self.cfg.append, rsdp)
        except BootError as e:
            raise MachineError(str(e)) from None
        bsp = self.vcpus[0].vcpu
        plan = self.boot_plan
        if plan.protocol in ("pvh", "multiboot"):
            self.memory.write(layout.BOOT_GDT, cpustate.gdt_bytes(cpustate.PROTECTED_MODE_GDT))
            magic = multiboot.BOOTLOADER_MAGIC if plan.protocol == "multiboot" else 0
            cpustate.set_protected_mode_state(bsp, plan.entry, layout.BOOT_GDT, eax=magic,
                                              ebx=plan.info_addr)
        else:
            cpustate.set_long_mode_state(bsp, self.boot_plan.entry, self.boot_plan.info_addr,
                                         layout.PML4, layout.BOOT_GDT, linux.BOOT_GDT_LIMIT)
        self._firmware_pending = True

    def _write_smbios(self) -> None:
        sockets, cores, threads = self.cfg.topology
        machine = "pc-i440fx-7.2" if self.cfg.machine_type == "pc" else self.cfg.machine_type
        board = smbios.Board(
            machine, MACHINE_TYPES[machine],
            None if self.cfg.uuid == "00000000-0000-0000-0000-000000000000" else self.cfg.uuid,
            sockets, cores, threads, *self._cpu_signature,
            self.memory.below_4g, self.memory.above_4g, bios_version=__version__)
        for addr, data in smbios.tables(self.cfg.smbios, board):
            self.memory.write(addr, data)

    def _reset_hardware(self) -> None:
        """Devices, vCPUs and what SeaBIOS leaves set up, as at power-on; RAM is kept."""
        from vmm._kvm import lib
        with self.lock:
            if self.pcihp is not None:
                for slot in self.pcihp.pending_unplugs():    # unplugs never acknowledged
                    self._eject_slot(slot)
                self.pcihp.reset()
            self.devices.reset()
            self.fw_cfg.reset()
            if self.pm is not None:
                self.pm.reset_pm()
        for index, runner in enumerate(self.vcpus):
            regs, sregs, xsave, lapic = self._initial_state[index]
            vcpu = runner.vcpu
            vcpu.set_sregs(sregs)
            vcpu.set_regs(regs)
            vcpu.set_xsave(xsave)
            vcpu.set_lapic(lapic)
            cpustate.reset_msrs(vcpu, self._saved_msrs, self._mcg_cap)
            vcpu.set_mp_state(lib.KVM_MP_STATE_RUNNABLE if index == 0
                              else lib.KVM_MP_STATE_UNINITIALIZED)
        firmware.write_ivt(self.memory)
        firmware.program_pics(self.vm)
        if self.cfg.pit:
            firmware.program_pit(self.vm)

    def _run_firmware(self) -> None:
        """What SeaBIOS would have done before the kernel: PCI resources and IRQ routing."""
        if self._firmware_pending:
            with self.lock:
                self.piix3.program_pirqs()
                self.pci.assign_resources()
                if self.pm is not None:       # SeaBIOS's piix4_pm_setup does this
                    self.pm.config[INTERRUPT_LINE] = SCI_IRQ
            self._firmware_pending = False

    # -- migration and snapshots ---------------------------------------------------
    @property
    def msr_indices(self) -> list[int]:
        """The MSRs this KVM saves and restores (each vCPU's state carries them)."""
        return sorted(self._saved_msrs)

    def save_state(self) -> dict:
        """Everything but RAM (vCPUs parked): vmm/migration/machine_state.py."""
        return machine_state.save(self)

    def load_state(self, state: object) -> None:
        machine_state.load(self, state)
        with self.lock:                 # what the guest had queued is taken again
            for device in self.devices:
                kick = getattr(device.obj, "kick_all", None)
                if kick is not None:
                    kick()
        self.saved_runstate = state.get("runstate") if isinstance(state, dict) else None
        self._firmware_pending = False          # the source's firmware has run
        self._has_run = True

    def drain_io(self) -> None:
        """After the vCPUs stopped: block requests in flight complete, and every
        drive's cache reaches its file (the destination reads the same files)."""
        self.ide.drain()
        for device in self.devices:
            drain = getattr(getattr(device.obj, "backend", None), "drain", None)
            if drain is not None:
                drain()
        self.block.flush_all()

    def mark_device_rings_dirty(self) -> None:
        """Migration's last pass: the rings devices write, sent again."""
        with self.lock:
            for device in self.devices:
                mark = getattr(device.obj, "mark_rings_dirty", None)
                if mark is not None:
                    mark()

    def start_incoming(self, uri: str, fd: int | None = None) -> None:
        """-incoming URI or migrate-incoming: listen (UserError if it cannot)."""
        listener = migration_channel.Listener(uri, fd)
        self.incoming = IncomingMigration(self, listener)
        self.incoming.start()

    def announce_self(self, initial: int, maximum: int, rounds: int, step: int,
                      interfaces: list[str] | None = None, timer_id: str | None = None) -> None:
        """QEMU's announce timer: ``rounds`` rounds of RARP from every NIC (or those
        named), the first at once, then ``initial`` ms later, each next one ``step``
        ms further apart (never more than ``maximum``). One timer per id: a new
        announcement with the same id (or none) replaces the last. Each round arms
        the next, so no count of rounds a client asks for costs more than one."""
        old = self._announce_timers.pop(timer_id, None)
        if old is not None:
            old.cancel()
        if rounds:
            self._announce_round(timer_id, (initial, maximum, rounds, step), interfaces, 0)

    def _announce_round(self, timer_id: str | None, params: tuple[int, int, int, int],
                        interfaces: list[str] | None, done: int) -> None:
        with self.lock:
            self.network.announce_self(interfaces)
        initial, maximum, rounds, step = params
        done += 1
        if done == rounds:                   # (as QEMU's count-down: a negative never ends)
            self._announce_timers.pop(timer_id, None)
            return
        delay = initial + (done - 1) * step
        if delay < 0 or delay > maximum:
            delay = maximum
        self._announce_timers[timer_id] = self.loop.call_later(
            max(delay, 0) / 1000, self._announce_round, timer_id, params, interfaces, done)

    def incoming_done(self) -> None:
        """The migration is in: the guest runs if it is to, else waits paused;
        the NICs announce where the guest is now, as QEMU's do."""
        self.announce_self(*self.migration_settings.announce)
        with self.lock:
            self.runstate = "paused"
            held, self._held_input = self._held_input, []
            for receive, data in held:          # what came while the state was loading
                receive(data)
        if self.saved_runstate not in (None, "running"):
            return                        # the source was stopped: so is the guest here
        if self.autostart:
            self.cont()

    def start_migration(self, uri: str, fd: int | None = None) -> None:
        migration_channel.check_uri(uri)
        self.migration = OutgoingMigration(self, lambda: migration_channel.connect(uri, fd),
                                           self.migration_settings)
        self.migration.start()

    # -- the loop ----------------------------------------------------------
    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        """Starts back ends and (parked) vCPU threads; call once on the loop's thread."""
        self.loop = loop
        self.exit_status = loop.create_future()
        for chardev in self.chardevs.values():
            chardev.start(loop)
        self.network.start(loop)
        for runner in self.vcpus:
            runner.start()

    def emit(self, event: str, data: dict | None = None) -> None:
        for listener in list(self.listeners):
            try:
                listener(event, data)
            except Exception:
                log.exception("event listener failed for %s", event)

    def _from_vcpu(self, func: Callable, *args) -> None:
        if self.loop is not None:
            self.loop.call_soon_threadsafe(func, *args)

    def _pause_calling_vcpu(self) -> None:
        current = threading.current_thread()
        for runner in self.vcpus:
            if runner.thread is current:
                runner.request_pause()

    # -- run control (loop thread) ------------------------------------------
    @property
    def running(self) -> bool:
        return self.runstate == "running"

    def _pause_all(self) -> None:
        for runner in self.vcpus:
            runner.request_pause()
        for runner in self.vcpus:
            runner.wait_parked()

    def _resume_all(self) -> None:
        self._has_run = True
        self._run_firmware()
        for runner in self.vcpus:
            runner.resume()

    def cont(self) -> None:
        if self.runstate == "inmigrate":                 # runs once the migration is in
            self.autostart = True
            return
        if self.runstate in NEEDS_RESET:
            raise RunStateError("Resetting the Virtual Machine is required")
        if self.runstate in ("running", "suspended"):     # only a wake-up ends S3
            return
        if hasattr(self, "block") and not self.block.active:  # after an outgoing migration
            self.block.activate()
        self.runstate = "running"
        with self.lock:
            for hook in list(self._resume_hooks):      # requests an I/O error held back
                hook()
        self._resume_all()
        self.emit("RESUME")

    def stop(self, state: str = "paused") -> None:
        """Pauses a running VM in ``state`` (paused, or io-error after an I/O error)."""
        if self.runstate == "inmigrate":          # it will not run once the migration is in
            self.autostart = False
            return
        if self.runstate != "running":
            return
        self._pause_all()
        self.runstate = state
        self.emit("STOP")

    @property
    def empty(self) -> bool:
        """-machine none: no CPUs, RAM or devices."""
        return self.cfg.machine_type == "none"

    def system_reset(self, guest: bool = False, reason: str = "host-qmp-system-reset") -> None:
        if self.empty:                      # nothing to reset, but it is reported
            self.emit("RESET", {"guest": guest, "reason": reason})
            return
        was_running = self.runstate == "running"
        self._pause_all()
        self._reset_to_boot_state()
        self.emit("RESET", {"guest": guest, "reason": reason})
        if was_running:
            self._resume_all()
        else:
            self.runstate = "prelaunch"

    def suspend(self) -> None:
        """ACPI S3: the vCPUs stop, RAM stays; a wake-up source brings the guest back."""
        if self.runstate != "running":
            return
        self._pause_all()
        with self.lock:
            self.rtc.cmos[SHUTDOWN_STATUS] = SHUTDOWN_STATUS_S3_RESUME  # QEMU's RTC does
        self.runstate = "suspended"
        self.emit("SUSPEND")

    def wakeup(self, reason: str = "other") -> None:
        """From S3: every device and vCPU reset, then what SeaBIOS's resume path does:
        the boot CPU enters the guest's FACS waking vector in real mode (no vector:
        SeaBIOS resets the machine). reason: 'rtc' (the RTC alarm) or 'other'."""
        if self.runstate != "suspended":
            raise RunStateError("Unable to wake up: guest is not in suspended state")
        if reason == "rtc" and not self.pm.rtc_wakeup_enabled:
            return
        vector = self._waking_vector()
        self.runstate = "running"
        if not vector:              # SeaBIOS finds no vector and resets the machine
            self.emit("WAKEUP")
            self._guest_reset()
            return
        self._reset_hardware()
        cpustate.set_real_mode_entry(self.vcpus[0].vcpu, vector)
        self._firmware_pending = True
        with self.lock:
            self.rtc.cmos[SHUTDOWN_STATUS] = 0
            self.pm.woke_up(reason)
        self._resume_all()
        self.emit("WAKEUP")

    def _waking_vector(self) -> int:
        if self.acpi_tables is None:
            return 0
        facs = self.acpi_tables.tables.get("FACS")
        if facs is None:
            return 0
        return self.memory.read_u32(facs[0] + acpi.FACS_WAKING_VECTOR)

    def _rtc_alarm(self) -> None:
        """The RTC's alarm fired (loop thread, machine lock held): wake up if asleep."""
        if self.runstate == "suspended":
            self._from_vcpu(self._wake_on_alarm)

    def _wake_on_alarm(self) -> None:
        if self.runstate == "suspended":       # system_wakeup may have come first
            self.wakeup("rtc")

    def system_powerdown(self) -> None:
        if self.pm is not None:             # -no-acpi, -machine none: no power button
            with self.lock:
                self.pm.press_power_button()
        self.emit("POWERDOWN")

    def shutdown(self, guest: bool, reason: str) -> None:
        """The guest (or a host request) powered the machine off."""
        self.emit("SHUTDOWN", {"guest": guest, "reason": reason})
        if self.cfg.no_shutdown and reason != "host-qmp-quit":
            if self.runstate == "running":
                self._pause_all()
                self.runstate = "shutdown"
                self.emit("STOP")
            return
        self.finish(0)

    def quit(self) -> None:
        self.shutdown(False, "host-qmp-quit")

    def halt(self) -> None:
        """Parks every vCPU (before the loop ends, so no kick races its teardown)."""
        self._pause_all()

    def finish(self, status: int) -> None:
        """Ends the VMM with ``status`` once the loop gets to it."""
        for runner in self.vcpus:
            runner.request_pause()
        if self.exit_status is not None and not self.exit_status.done():
            self.exit_status.set_result(status)

    # -- requests from vCPU threads -----------------------------------------
    def request_exit(self, status: int) -> None:
        self._pause_calling_vcpu()
        self._from_vcpu(self.finish, status)

    def request_guest_reset(self) -> None:
        self._pause_calling_vcpu()
        self._from_vcpu(self._guest_reset)

    def request_guest_poweroff(self) -> None:
        self._pause_calling_vcpu()
        self._from_vcpu(self.shutdown, True, "guest-shutdown")

    def request_guest_sleep(self, slp_typ: int) -> None:
        """PM1 control: S3 suspends; S4 is SUSPEND_DISK then a power-off, as QEMU's."""
        self._pause_calling_vcpu()
        if slp_typ == SLP_TYP_S3:
            self._from_vcpu(self.suspend)
        else:
            self._from_vcpu(self.emit, "SUSPEND_DISK")
            self._from_vcpu(self.shutdown, True, "guest-shutdown")

    def _guest_reset(self) -> None:
        if self.cfg.no_reboot:
            self.shutdown(True, "guest-reset")
        else:
            self.system_reset(guest=True, reason="guest-reset")

    def _vcpu_event(self, index: int, kind: str, info: dict) -> None:
        if kind == "triple-fault":
            self._from_vcpu(self._guest_reset)
        elif kind == "system-event" and info.get("type") == KVM_SYSTEM_EVENT_RESET:
            self._from_vcpu(self._guest_reset)
        elif kind == "system-event" and info.get("type") == KVM_SYSTEM_EVENT_SHUTDOWN:
            self._from_vcpu(self.shutdown, True, "guest-shutdown")
        elif kind == "debug":
            self._from_vcpu(self._debug_exit, index, info)
        else:
            self._from_vcpu(self._internal_error, index, kind, info)

    def _debug_exit(self, index: int, info: dict) -> None:
        """A breakpoint or single-step (vmm/gdbstub.py): the VM stops in 'debug' for
        gdb, or the vCPU runs on when the trap was the guest's own."""
        if self.runstate != "running":
            return
        if self.gdb is None or not self.gdb.on_debug_exit(index, info):
            self.vcpus[index].resume()
            return
        self._pause_all()
        self.runstate = "debug"
        self.emit("STOP")

    def _internal_error(self, index: int, kind: str, info: dict) -> None:
        if self.runstate == "internal-error":
            return
        self.report_internal_error(index, info)
        self._pause_all()
        self.runstate = "internal-error"
        self.emit("STOP")

    def report_internal_error(self, index: int, info: dict) -> None:
        lines = []
        if "suberror" in info:
            lines.append(f"KVM internal error. Suberror: {info['suberror']}")
            lines += [f"extra data[{i}]: 0x{v:016x}" for i, v in enumerate(info["data"])]
            if info["suberror"] == 1:
                lines.append("emulation failure")
        elif "fail-entry" in info:
            lines.append(f"KVM: entry failed, hardware error 0x{info['fail-entry']:x}")
        elif "errno" in info:
            lines.append(f"error: kvm run failed {os.strerror(info['errno'])}")
        else:
            lines.append(f"KVM: unhandled exit {info.get('exit-reason')}")
        try:
            regs = self.vcpus[index].vcpu.get_regs()
            lines.append(f"CPU#{index} RIP={regs.rip:016x} RSP={regs.rsp:016x} "
                         f"RFL={regs.rflags:08x}")
        except OSError:
            pass
        print("\n".join(lines), file=sys.stderr, flush=True)

    # -- queries -----------------------------------------------------------
    def cpu_state(self, index: int) -> dict:
        """A snapshot of one vCPU's architectural state (for `info registers`)."""
        def read(vcpu):
            return {"regs": vcpu.get_regs(), "sregs": vcpu.get_sregs(),
                    "fpu": cpustate.fpu_from_xsave(vcpu.get_xsave()),
                    "debugregs": vcpu.get_debugregs(), "mp_state": vcpu.get_mp_state()}
        return self.vcpus[index].inspect(read)

    def vcpu_thread_ids(self) -> list[int]:
        return [runner.native_id or 0 for runner in self.vcpus]

    def close(self) -> None:
        for runner in getattr(self, "vcpus", []):
            runner.stop()
        if hasattr(self, "devices"):
            self.devices.close()
        for chardev in self.chardevs.values():
            chardev.close()
        if hasattr(self, "network"):
            self.network.close()
        if hasattr(self, "block"):
            self.block.close()
        for runner in getattr(self, "vcpus", []):
            runner.vcpu.close()
        if hasattr(self, "vm"):
            self.vm.close()
        if hasattr(self, "memory"):
            self.memory.close()
        if hasattr(self, "kvm"):
            self.kvm.close()
        self.objects.close()



def _inherited_fd(name: str) -> int:
    """-netdev ...,fd=N on the command line: a descriptor the VMM was started with."""
    try:
        fd = int(name)
        os.fstat(fd)
        return fd
    except (ValueError, OSError):
        raise NetError(f"invalid file descriptor value '{name}'") from None
