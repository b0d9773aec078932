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
from dataclasses import dataclass

from vmm import cpu as cpustate
from vmm.boot import acpi, firmware, layout, linux, multiboot
from vmm.boot.loader import BootError, BootFiles, load_kernel, read_boot_files
from vmm.bus import Bus
from vmm.chardev import (
    Chardev,
    ChardevError,
    FileChardev,
    MuxChardev,
    NullChardev,
    PtyChardev,
    SocketChardev,
    StdioChardev,
)
from vmm.config import ChardevSpec, MachineConfig
from vmm.cpu_models import CpuModelError, mcg_cap, model_cpuid
from vmm.device_models import DeviceError, resolve, validate
from vmm.devices import fw_cfg
from vmm.devices.acpi_pcihp import PCIHP_BASE, PCIHP_LEN, PciHotplug
from vmm.devices.acpi_pm import SCI_IRQ, SLP_TYP_S3, AcpiPm
from vmm.devices.debug_exit import IsaDebugExit
from vmm.devices.e1000 import E1000
from vmm.devices.fw_cfg import FwCfg
from vmm.devices.i440fx import (
    CONFIG_ADDRESS_PORT,
    CONFIG_PORTS_LEN,
    I440fxHostBridge,
    NullBarDevice,
    PciConfigPorts,
    Piix3Ide,
    Piix3IsaBridge,
    slot_pirq,
)
from vmm.devices.i8042 import COMMAND_PORT, DATA_PORT, I8042
from vmm.devices.pc_testdev import PcTestdev
from vmm.devices.pci_testdev import PciTestdev
from vmm.devices.rtc import SHUTDOWN_STATUS, SHUTDOWN_STATUS_S3_RESUME, Rtc
from vmm.devices.rtl8139 import Rtl8139
from vmm.devices.serial import COM_PORTS, Serial16550
from vmm.devices.virtio_balloon import VirtioBalloon
from vmm.devices.virtio_blk import VirtioBlk
from vmm.devices.virtio_console import VirtioConsole
from vmm.devices.virtio_net import VirtioNet
from vmm.devices.virtio_rng import VirtioRng
from vmm.drives import drives_from_config
from vmm.ioevents import IoEvents
from vmm.kvm import Kvm, KvmError
from vmm.memory import GuestMemory
from vmm.msix import MsiRoutes
from vmm.net.network import NetError, Network, Nic, parse_mac
from vmm.pci import INTERRUPT_LINE, PciBus
from vmm.qemuopts import OptsError, parse_bool, parse_int
from vmm.timer import DeviceTimer
from vmm.vcpu import VcpuThread, install_kick_handler
from vmm.virtio.pci import VirtioPciDevice

log = logging.getLogger(__name__)

TSS_ADDR = 0xFFFBD000
IDENTITY_MAP_ADDR = 0xFFFBC000
KVM_SYSTEM_EVENT_SHUTDOWN = 1
KVM_SYSTEM_EVENT_RESET = 2
Listener = Callable[[str, "dict | None"], None]


class MachineError(Exception):
    """Cannot build or start the machine; the message is for the user."""


class RunStateError(Exception):
    """A run-control request the current state refuses (QEMU's text)."""


NEEDS_RESET = ("internal-error", "shutdown", "guest-panicked")


@dataclass
class DeviceInstance:
    """A device made from -device (or device_add): what QOM and the monitor show."""

    driver: str
    id: str | None
    props: dict
    device: object
    hotplugged: bool = False


class SerialPort:
    def __init__(self, index: int, iobase: int, irq: int, uart: Serial16550,
                 chardev: Chardev | None) -> None:
        self.index, self.iobase, self.irq = index, iobase, irq
        self.uart, self.chardev = uart, chardev


class Machine:
    def __init__(self, cfg: MachineConfig, kvm_path: str = "/dev/kvm") -> None:
        self.cfg = cfg
        self.lock = threading.RLock()
        self.listeners: list[Listener] = []
        self.runstate = "prelaunch"
        self.loop: asyncio.AbstractEventLoop | None = None
        self.exit_status: asyncio.Future[int] | None = None
        self._firmware_pending = True
        self._has_run = False                  # QEMU's virtual clock has not started
        self._unplugs_before_first_run: set[int] = set()
        self.boot_files = self._read_boot_files()
        self.chardevs: dict[str, Chardev] = {}
        try:
            for spec in cfg.chardevs:
                self.chardevs[spec.id] = self._make_chardev(spec)
            self._setup_kvm(kvm_path)
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

    def _make_chardev(self, spec: ChardevSpec) -> Chardev:
        chardev = self._make_backend(spec)
        if spec.options.get("mux") == "on":
            mux = MuxChardev(spec.id, chardev)
            mux.on_terminate = lambda: self.finish(0)
            return mux
        return chardev

    def _make_backend(self, spec: ChardevSpec) -> Chardev:
        o = spec.options
        try:
            if spec.backend == "stdio":
                return StdioChardev(spec.id, signal=parse_bool("signal", o.get("signal", "on")))
            if spec.backend == "file":
                return FileChardev(spec.id, o["path"],
                                   append=parse_bool("append", o.get("append", "off")))
            if spec.backend == "pty":
                return PtyChardev(spec.id)
            if spec.backend == "socket":
                server = parse_bool("server", o.get("server", "off"))
                wait = parse_bool("wait", o.get("wait", "on"))
                if "fd" in o:
                    return SocketChardev(spec.id, listen_fd=parse_int("fd", o["fd"]),
                                         wait=wait)
                if "path" in o:
                    return SocketChardev(spec.id, path=o["path"], server=server, wait=wait)
                return SocketChardev(spec.id, host=o.get("host", "0.0.0.0"),
                                     port=parse_int("port", o.get("port", "")), server=server,
                                     wait=wait)
            return NullChardev(spec.id)
        except (ChardevError, OptsError) as e:
            raise MachineError(f"-chardev {spec.backend},id={spec.id}: {e}") from None

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
        try:
            self.memory = GuestMemory(self.cfg.memory)
        except (ValueError, OSError) as e:
            raise MachineError(f"cannot set up guest memory 'pc.ram': {e}") from None
        for slot, region in enumerate(self.memory.regions):
            self.vm.set_user_memory_region(slot, region.gpa, region.size,
                                           self.memory.host_address(region))
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
        self.serials: list[SerialPort] = []
        self.debug_exits: list[IsaDebugExit] = []
        self.device_instances: list[DeviceInstance] = []
        self.balloon: VirtioBalloon | None = None
        self.i8042 = I8042(self.request_guest_reset)
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
        self.pci.plug(I440fxHostBridge(), 0, 0)
        self.pci.plug(self.piix3, 1, 0)
        ide = Piix3Ide()
        ide.add_bar(4, 16, "io", NullBarDevice())
        self.pci.plug(ide, 1, 1)
        self.pm = AcpiPm(lambda level: self.set_irq(SCI_IRQ, level), self.request_guest_poweroff,
                         sleep=self.request_guest_sleep)
        self.pci.plug(self.pm, 1, 3)
        for base, length, block in self.pm.io_blocks():
            self.pio.map(base, length, block)
        self.pcihp = PciHotplug(self.pm.raise_gpe, self._eject_slot, self._hotpluggable_in)
        self.pio.map(PCIHP_BASE, PCIHP_LEN, self.pcihp)
        self.pio.map(CONFIG_ADDRESS_PORT, CONFIG_PORTS_LEN,
                     PciConfigPorts(self.pci, self.request_guest_reset))

        serial_ids = list(self.cfg.serials)
        stdio_taken = any(self.cfg_chardev_backend(m.chardev) == "stdio"
                          for m in self.cfg.monitors)
        if not serial_ids and not self.cfg.nodefaults and not stdio_taken:
            self.chardevs.setdefault("serial0", StdioChardev("serial0"))
            serial_ids = ["serial0"]
        for chardev_id in serial_ids:
            self._add_serial(chardev_id or None, -1, -1, -1)
        self.drives = drives_from_config(self.cfg.drives)
        self.network = Network(self.lock, _inherited_fd,
                               lambda name, data: self._from_vcpu(self.emit, name, data))
        self._msi_routes: MsiRoutes | None = None
        for origin, opts in self.cfg.netdevs:
            try:
                if "id" not in opts:
                    raise NetError("Parameter 'id' is missing")
                hub_port = opts.pop("#hubport", None)      # -net TYPE: on the hub
                self.network.add_netdev(opts["id"], opts.get("type", ""), opts)
                if hub_port is not None:
                    self.network.connect_to_hub(opts["id"], int(hub_port))
            except NetError as e:
                suffix = " for netdev" if str(e).startswith("Duplicate ID") else ""
                raise MachineError(f"{origin}: {e}{suffix}") from None
        chardev_ids = set(self.chardevs)
        for spec in self.cfg.devices:
            try:
                defaults = self.cfg.globals.get(resolve(spec.driver), {})
                props = validate(spec.driver, {**defaults, **spec.options}, chardev_ids)
                self._add_device(resolve(spec.driver), props)
            except DeviceError as e:
                hint = f"\n{e.hint}" if e.hint else ""
                raise MachineError(f"{spec.origin}: {e}{hint}") from None
        for warning in self.network.unpeered_warnings():
            log.warning(warning)

    def cfg_chardev_backend(self, chardev_id: str) -> str | None:
        spec = next((c for c in self.cfg.chardevs if c.id == chardev_id), None)
        return spec.backend if spec else None

    @property
    def _builders(self) -> dict[str, Callable[[dict], object]]:
        """The -device models built from their properties alone."""
        return {"virtio-balloon-pci": self._add_balloon, "virtio-net-pci": self._add_virtio_net,
                "virtio-rng-pci": self._add_virtio_rng, "virtio-blk-pci": self._add_virtio_blk,
                "virtio-serial-pci": self._add_virtio_serial,
                "virtconsole": self._add_virtconsole,
                "e1000": lambda props: self._add_emulated_nic("e1000", E1000, props),
                "rtl8139": lambda props: self._add_emulated_nic("rtl8139", Rtl8139, props)}

    def _add_device(self, driver: str, props: dict) -> None:
        if props.get("id") is not None and any(d.id == props["id"]
                                               for d in self.device_instances):
            raise DeviceError(f"Duplicate device ID '{props['id']}'")
        device: object
        if driver == "isa-serial":
            device = self._add_serial(props["chardev"], props["index"], props["iobase"],
                                      props["irq"])
        elif driver in self._builders:
            device = self._builders[driver](props)
        elif driver == "pc-testdev":
            device = PcTestdev(self.set_irq, self.memory.flush_page)
            try:
                device.map(self.pio, self.mmio)
            except ValueError as e:
                raise DeviceError(str(e)) from None
        elif driver == "pci-testdev":
            device = PciTestdev(self.ioevents)
            device.qdev_id = props.get("id") or ""
            self._plug_pci(device, driver, props)
        elif driver == "isa-debug-exit":
            device = IsaDebugExit(self.request_exit)
            try:
                self.pio.map(props["iobase"], props["iosize"], device)
            except ValueError as e:
                raise DeviceError(str(e)) from None
            self.debug_exits.append(device)
        else:
            raise DeviceError(f"'{driver}' is not a valid device model name")
        self.device_instances.append(DeviceInstance(driver, props.get("id"), props, device))

    def _virtio_pci(self, backend, class_code: int, props: dict, vectors: int = 0):
        """A virtio device on its PCI transport, wired as the others (not yet placed)."""
        try:
            transport = VirtioPciDevice(backend, self.memory, class_code,
                                        legacy=props["disable-legacy"] != "on",
                                        modern=not props["disable-modern"],
                                        msix_vectors=vectors,
                                        msi_routes=self.msi_routes if vectors else None)
        except ValueError as e:
            raise DeviceError(str(e)) from None
        transport.qdev_id = props.get("id") or ""
        transport.ioevents = self.ioevents
        return transport

    def _add_balloon(self, props: dict):
        if self.balloon is not None:
            raise DeviceError("There is already a balloon device")
        balloon = VirtioBalloon(
            self.memory, self.cfg.memory, self._balloon_changed, self.device_timer,
            deflate_on_oom=props["deflate-on-oom"],
            free_page_reporting=props["free-page-reporting"],
            page_poison=props["page-poison"])
        try:
            balloon.set_stats_interval(props["guest-stats-polling-interval"])
        except ValueError as e:
            raise DeviceError(str(e)) from None
        transport = self._virtio_pci(balloon, 0x00FF00, props)
        self._plug_pci(transport, "virtio-balloon-pci", props)
        self.balloon = balloon
        return transport

    def _add_virtio_net(self, props: dict):
        def make(mac: bytes, name: str, backend):
            pairs = len(getattr(backend, "queues", ())) or 1     # a tap's queues=N
            if props["vectors"] is None:
                props["vectors"] = 2 * pairs + 2
            net = VirtioNet(mac, lambda: self.network.rx_filter_changed(name), pairs, props)
            transport = self._virtio_pci(net, 0x020000, props, props["vectors"])
            transport.add_rom(0x40000)           # where QEMU has efi-virtio.rom
            return transport, net
        return self._add_nic("virtio-net-pci", "virtio-net-device", props, make,
                             path_suffix="/virtio-backend")

    def _add_virtio_blk(self, props: dict):
        drive = self.drives.get(props.get("drive") or "")
        if drive is None:
            raise DeviceError("Parameter 'drive' is missing" if not props.get("drive") else
                              f"Property 'virtio-blk-pci.drive' can't find value "
                              f"'{props['drive']}'")
        if drive.attached_to:
            raise DeviceError(f"Property 'virtio-blk-pci.drive' can't take value "
                              f"'{drive.drive_id}', it's in use")
        # QEMU's defaults: a request queue per vCPU, and an MSI-X vector for each and
        # for the configuration.
        queues = props["num-queues"] if props["num-queues"] is not None else self.cfg.cpus
        if queues < 1:
            raise DeviceError("num-queues property must be larger than 0")
        if queues > 1024:                    # VIRTIO_QUEUE_MAX
            raise DeviceError("num-queues property must not be larger than 1024")
        if props["vectors"] is None:
            props["vectors"] = queues + 1
        try:
            blk = VirtioBlk(drive, props.get("serial") or "", queues)
        except OSError as e:
            raise DeviceError(f"Could not open '{drive.path}': {e.strerror}") from None
        transport = self._virtio_pci(blk, 0x010000, props, props["vectors"])
        self._plug_pci(transport, "virtio-blk-pci", props)
        drive.attached_to = self._device_path(props.get("id")) + "/virtio-backend"
        return transport

    def _add_virtio_serial(self, props: dict):
        console = VirtioConsole(props["max_ports"])
        transport = self._virtio_pci(console, 0x078000, props, props["vectors"])
        self._plug_pci(transport, "virtio-serial-pci", props)
        return transport

    def _add_virtconsole(self, props: dict):
        """The console port (nr 0) of the first virtio-serial bus."""
        bus = next((i.device.backend for i in self.device_instances
                    if i.driver == "virtio-serial-pci"), None)
        if bus is None:
            raise DeviceError("No 'virtio-serial-bus' bus found for device 'virtconsole'")
        if bus.output is not None:
            raise DeviceError("virtio-serial-bus: A port already exists at id 0")
        chardev = self.chardevs.get(props.get("chardev") or "")
        if chardev is not None:
            bus.output = chardev.write
            chardev.attach(lambda data: self._locked(bus.receive, data))
        else:
            bus.output = lambda data: None
        return bus

    def _locked(self, func: Callable, *args) -> None:
        with self.lock:
            func(*args)

    def _add_virtio_rng(self, props: dict):
        rng = VirtioRng(props["max-bytes"], props["period"])
        transport = self._virtio_pci(rng, 0x00FF00, props, props["vectors"])
        self._plug_pci(transport, "virtio-rng-pci", props)
        return transport

    def _add_emulated_nic(self, model: str, cls, props: dict):
        """e1000 or rtl8139: the PCI function is the NIC itself."""
        def make(mac: bytes, name: str, backend):
            nic = cls(self.memory, mac)
            return nic, nic
        return self._add_nic(model, model, props, make)

    def _add_nic(self, model: str, owner: str, props: dict, make, path_suffix: str = ""):
        """A NIC: its MAC (QEMU's default if none), its back end, its PCI function."""
        mac = parse_mac(props["mac"]) if props.get("mac") else self.network.default_mac()
        if mac is None:
            raise DeviceError(f"Property '{owner}.mac' doesn't take value '{props['mac']}'")
        props["mac"] = ":".join(f"{b:02x}" for b in mac)    # what QOM and qtree show
        try:
            netdev = props.get("netdev")
            backend = (self.network.hub_port(netdev) or
                       self.network.find_backend(netdev, owner)) if netdev else None
            queue_names = self.network.nic_names(props.get("id"), model, backend)
            name = queue_names[0]
            pci_device, nic = make(mac, name, backend)
        except (NetError, ValueError) as e:
            raise DeviceError(str(e)) from None
        pci_device.qdev_id = props.get("id") or ""
        self._plug_pci(pci_device, model, props)
        self.network.attach_nic(Nic(name, model, mac, nic, backend, queue_names=queue_names,
                                    path=self._device_path(props.get("id")) + path_suffix))
        return pci_device

    def _device_path(self, qdev_id: str | None, position: int | None = None) -> str:
        """The QOM path (see monitor/qom.py) of device_instances[position], or of the
        device being added when position is None."""
        if qdev_id:
            return f"/machine/peripheral/{qdev_id}"
        earlier = self.device_instances if position is None else \
            self.device_instances[:position]
        return f"/machine/peripheral-anon/device[{sum(1 for d in earlier if not d.id)}]"

    @property
    def msi_routes(self) -> MsiRoutes:
        if self._msi_routes is None:
            self._msi_routes = MsiRoutes(self.vm)
        return self._msi_routes

    def device_timer(self, callback: Callable[[], None]) -> DeviceTimer:
        """A timer for a device: fires on the loop, under the machine lock."""
        return DeviceTimer(lambda: self.loop, self.lock, callback)

    # -- PCI hotplug (ACPI, vmm/devices/acpi_pcihp.py) -----------------------
    def hotplug_device(self, driver: str, options: dict[str, str]) -> None:
        """device_add of a PCI device: plugged now, announced to the guest by GPE."""
        with self.lock:
            props = validate(driver, options, set(self.chardevs))
            self._add_device(resolve(driver), props)
            instance = self.device_instances[-1]
            instance.hotplugged = True
            if not self._firmware_pending:       # before boot, firmware will find it
                self.pcihp.plugged(instance.device.slot)

    def request_unplug(self, instance: DeviceInstance) -> None:
        """device_del: the guest is asked; its eject (or the next reset) removes it."""
        with self.lock:
            slot = instance.device.slot
            # QEMU lets a request be repeated once the guest's clock has moved on since
            # the last one (it asks the guest again); a request made before the guest
            # ever ran never expires ("expires at virtual time 0").
            if slot in self._unplugs_before_first_run and slot in self.pcihp.pending_unplugs():
                raise DeviceError(f"Device {instance.id} is already in the process of unplug")
            if not self._has_run:
                self._unplugs_before_first_run.add(slot)
            self.pcihp.unplug_requested(slot)

    def _hotpluggable_in(self, slot: int) -> bool:
        return any(getattr(i.device, "slot", -1) == slot for i in self.device_instances)

    def _eject_slot(self, slot: int) -> None:
        """The guest ejected `slot` (or a reset completes its unplug): remove it."""
        self._unplugs_before_first_run.discard(slot)
        for instance in [i for i in self.device_instances
                         if getattr(i.device, "slot", -1) == slot]:
            path = self._device_path(instance.id, self.device_instances.index(instance))
            device = instance.device
            self.pci.unplug(device)
            self.device_instances.remove(instance)
            backend = getattr(device, "backend", None)      # a virtio device, if it is one
            if backend is self.balloon:
                self.balloon = None
            for name, nic in list(self.network.nics.items()):
                if nic.device is backend or nic.device is device:
                    self.network.detach_nic(name)
            if isinstance(device, VirtioPciDevice):   # QEMU deletes the virtio child first
                self._from_vcpu(self.emit, "DEVICE_DELETED", {"path": f"{path}/virtio-backend"})
            data = {"device": instance.id, "path": path} if instance.id else {"path": path}
            self._from_vcpu(self.emit, "DEVICE_DELETED", data)

    def _plug_pci(self, device, driver: str, props: dict) -> None:
        """Puts a PCI function where bus=/addr= say (QEMU's texts), or in a free slot."""
        if props.get("bus") not in (None, "pci.0"):
            raise DeviceError(f"Bus '{props['bus']}' not found")
        slot, function = None, 0
        if props.get("addr") is not None:
            text = props["addr"]
            try:
                slot_text, _, function_text = text.partition(".")
                slot = int(slot_text, 16)
                function = int(function_text, 16) if function_text else 0
            except ValueError:
                slot = -1
            if not (0 <= slot < 32 and 0 <= function < 8):
                raise DeviceError(f"Property '{driver}.addr' doesn't take value '{text}'")
        if slot is not None and self.pci.find(slot, function) is not None:
            taken = next((i for i in self.device_instances
                          if i.device is self.pci.find(slot, function)), None)
            owner = f"{taken.driver},id={taken.id or '(null)'}" if taken else "a chipset function"
            raise DeviceError(f"PCI: slot {slot} function {function} not available for "
                              f"{driver}, in use by {owner}")
        try:
            self.pci.plug(device, slot, function)
        except ValueError as e:
            raise DeviceError(str(e)) from None

    def _balloon_changed(self, actual: int) -> None:
        """The guest updated `actual` (on a vCPU thread): BALLOON_CHANGE on the loop."""
        self._from_vcpu(self.emit, "BALLOON_CHANGE", {"actual": actual})

    def _add_serial(self, chardev_id: str | None, index: int, iobase: int,
                    irq: int) -> SerialPort:
        used = {s.index for s in self.serials}
        if index < 0:
            index = next((i for i in range(len(COM_PORTS)) if i not in used), -1)
            if index < 0:
                raise DeviceError("Max. supported number of ISA serial ports is 4.")
        elif index >= len(COM_PORTS) or index in used:
            raise DeviceError(f"Invalid serial port index {index}")
        default_base, default_irq = COM_PORTS[index]
        iobase = default_base if iobase < 0 else iobase
        irq = default_irq if irq < 0 else irq
        chardev = self.chardevs.get(chardev_id) if chardev_id else None
        output = chardev.write if chardev else (lambda data: None)
        uart = Serial16550(output, lambda level, irq=irq: self.set_irq(irq, level))
        try:
            self.pio.map(iobase, 8, uart)
        except ValueError as e:
            raise DeviceError(str(e)) from None
        if chardev is not None:
            chardev.attach(lambda data, uart=uart: self._serial_input(uart, data))
        port = SerialPort(index, iobase, irq, uart, chardev)
        self.serials.append(port)
        return port

    def _serial_input(self, uart: Serial16550, data: bytes) -> None:
        with self.lock:
            uart.receive(data)

    def _route_intx(self, slot: int, pin: int) -> int | None:
        if not 1 <= pin <= 4:
            return None
        return self.piix3.pirq_irq(slot_pirq(slot, pin))

    def _setup_vcpus(self) -> None:
        install_kick_handler()
        try:
            table = model_cpuid(self.cfg.cpu, self.kvm.supported_cpuid(), log.warning)
        except CpuModelError as e:
            raise MachineError(str(e)) from None
        self._mcg_cap = machine_check = mcg_cap(table, self.kvm.mce_cap_supported())
        self._saved_msrs = set(self.kvm.msr_index_list())
        self.vcpus: list[VcpuThread] = []
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
        self.acpi_tables = acpi.write_tables(self.memory, self.cfg.cpus)
        try:
            self.boot_plan = load_kernel(self.memory, self.boot_files, self.cfg.append,
                                         self.acpi_tables.rsdp_addr)
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

    def _reset_hardware(self) -> None:
        """Devices, vCPUs and what SeaBIOS leaves set up, as at power-on; RAM is kept."""
        from vmm._kvm import lib
        with self.lock:
            for slot in self.pcihp.pending_unplugs():    # unplugs never acknowledged
                self._eject_slot(slot)
            self.pcihp.reset()
            for serial in self.serials:
                serial.uart.reset()
            self.i8042.reset()
            self.rtc.reset()
            self.fw_cfg.reset()
            self.pm.reset_pm()
            for device in self.pci.sorted_devices():
                device.reset()
            self.piix3.reset()
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
                self.pm.config[INTERRUPT_LINE] = SCI_IRQ  # SeaBIOS's piix4_pm_setup does this
            self._firmware_pending = False

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
        if self.runstate in NEEDS_RESET:
            raise RunStateError("Resetting the Virtual Machine is required")
        if self.runstate in ("running", "suspended"):     # only a wake-up ends S3
            return
        self.runstate = "running"
        self._resume_all()
        self.emit("RESUME")

    def stop(self) -> None:
        if self.runstate != "running":
            return
        self._pause_all()
        self.runstate = "paused"
        self.emit("STOP")

    def system_reset(self, guest: bool = False, reason: str = "host-qmp-system-reset") -> None:
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
        else:
            self._from_vcpu(self._internal_error, index, kind, info)

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
        for chardev in self.chardevs.values():
            chardev.close()
        if hasattr(self, "network"):
            self.network.close()
        for runner in getattr(self, "vcpus", []):
            runner.vcpu.close()
        if hasattr(self, "vm"):
            self.vm.close()
        if hasattr(self, "memory"):
            self.memory.close()
        if hasattr(self, "kvm"):
            self.kvm.close()



def _inherited_fd(name: str) -> int:
    """-netdev ...,fd=N on the command line: a descriptor the VMM was started with."""
    try:
        fd = int(name)
        os.fstat(fd)
        return fd
    except (ValueError, OSError):
        raise NetError(f"invalid file descriptor value '{name}'") from None
