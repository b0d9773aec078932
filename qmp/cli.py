"""`kvmkit`: parse QEMU-style options, build the machine and its monitors, run the loop.

It sits at the top of the layers (vmm -> monitor -> qmp), so it lives here.
A user error prints one line (``kvmkit: ...``) and exits 1; never a traceback.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import os
import signal
import sys
import threading

from vmm import __version__, qdev
from vmm.config import MACHINE_TYPES, USAGE, VGA_HELP, ConfigError, MachineConfig, parse_args
from vmm.cpu_models import help_text as cpu_help

PROG = "kvmkit"
TERMINATING_SIGNALS = {signal.SIGTERM, signal.SIGINT, signal.SIGHUP}
KVM_DEVICE = "/dev/kvm"
QEMU_COMPAT_VERSION = "7.2.22"


def help_banner() -> str:
    """-h's first line names the QEMU version kvmkit follows, in QEMU's words: test
    harnesses (kvm-unit-tests) check for 'QEMU' and read the version from it."""
    return f"QEMU emulator version {QEMU_COMPAT_VERSION} ({PROG} {__version__})\n"


def version_text() -> str:
    return (f"{PROG} version {__version__} (QEMU {QEMU_COMPAT_VERSION} compatible monitor)\n"
            "A KVM virtual machine monitor in Python.")


_timestamps = False            # -msg timestamp=on: messages start with the UTC time


def _prefix() -> str:
    if not _timestamps:
        return ""
    now = datetime.datetime.now(datetime.UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.%fZ ")


class _MessageFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return f"{_prefix()}{PROG}: {record.getMessage()}"


def error(message: str) -> int:
    try:
        print(f"{_prefix()}{PROG}: {message}", file=sys.stderr, flush=True)
    except OSError:         # no one reads stderr any more: the message cannot stop us
        pass
    return 1


DEFAULT_CONSOLE = "kvmkit-console.log"


def default_arguments() -> list[str]:
    """`kvmkit` alone: the probe guest with a balloon and a NIC on user networking
    (QEMU's default network), the HMP monitor here, the guest console in a file."""
    return ["-m", "256", "-nodefaults", "-serial", f"file:{DEFAULT_CONSOLE}",
            "-monitor", "stdio", "-device", "isa-debug-exit",
            "-device", "virtio-balloon-pci,id=balloon0",
            "-netdev", "user,id=n0", "-device", "virtio-net-pci,netdev=n0,id=net0"]


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    if not args:
        args = default_arguments()
        print(f"{PROG}: booting the probe guest; its console is in ./{DEFAULT_CONSOLE}",
              file=sys.stderr, flush=True)
    try:
        cfg = parse_args(args)
    except ConfigError as e:
        return error(str(e))
    if cfg.show_version:
        print(version_text())
        return 0
    if cfg.show_help:
        print(help_banner() + USAGE, end="")
        return 0
    if cfg.list_machines:
        print("Supported machines are:")
        for name, desc in MACHINE_TYPES.items():
            print(f"{name:<20} {desc}")
        return 0
    if cfg.list_cpus:
        print(cpu_help(), end="")
        return 0
    if cfg.show_vga_help:
        print(VGA_HELP, end="")
        return 0
    if cfg.list_devices:
        print(qdev.device_help(), end="")
        return 0
    if cfg.device_help is not None:
        device_type = qdev.lookup(cfg.device_help)
        if device_type is None:          # QEMU prints this and exits 0
            error(f"-device {cfg.device_help},help: Device '{cfg.device_help}' not found")
            return 0
        print(qdev.help_text(device_type), end="")
        return 0
    if cfg.logfile:
        try:
            logging.basicConfig(filename=cfg.logfile, level=logging.INFO)
        except OSError as e:
            return error(f"Error opening logfile {cfg.logfile}: {e.strerror}")
    else:
        global _timestamps
        _timestamps = cfg.msg_timestamp
        handler = logging.StreamHandler()
        handler.setFormatter(_MessageFormatter())
        logging.basicConfig(level=logging.WARNING, handlers=[handler])
    for warning in cfg.warnings:
        logging.getLogger("vmm.config").warning(warning)
    # The signals that end kvmkit are taken by one thread (sigwaitinfo tells who sent
    # them): blocked here, before any thread starts, so every thread inherits that.
    # (restored afterwards: main() may run inside another program, such as a test)
    previous = signal.pthread_sigmask(signal.SIG_BLOCK, TERMINATING_SIGNALS)
    try:
        if cfg.daemonize:
            return _daemonize_and_run(cfg)
        return _build_and_run(cfg)
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, previous)


def _build_and_run(cfg: MachineConfig, ready_fd: int | None = None) -> int:
    from vmm.machine import Machine, MachineError

    try:
        machine = Machine(cfg, kvm_path=KVM_DEVICE)
    except MachineError as e:
        return error(str(e))
    try:
        servers = _monitors(machine, cfg)
    except ValueError as e:
        machine.close()
        return error(str(e))
    try:
        if cfg.pidfile:
            try:
                with open(cfg.pidfile, "w") as f:
                    f.write(f"{os.getpid()}\n")
            except OSError as e:
                return error(f"cannot create PID file: {e.strerror}")
        return asyncio.run(_run(machine, servers, ready_fd))
    finally:
        machine.close()
        if cfg.pidfile:
            try:
                os.unlink(cfg.pidfile)
            except OSError:
                pass


def _confine(cfg: MachineConfig) -> str | None:
    """Set-up is done: -chroot, -runas, then -sandbox's seccomp filter (on every
    thread). An error message if one cannot be had."""
    from vmm import privileges, seccomp

    try:
        if cfg.sandbox is not None:
            seccomp.library()
        privileges.drop(cfg.chroot, cfg.runas)
        if cfg.sandbox is not None:
            seccomp.install(cfg.sandbox)
    except (privileges.PrivilegeError, seccomp.SandboxError) as e:
        return e.strerror
    return None


def _monitors(machine, cfg: MachineConfig) -> list:
    """A monitor per -qmp/-monitor/-mon, all over one Monitor (QMP or HMP readline)."""
    from monitor.monitor import Monitor
    from monitor.readline import ReadlineServer
    from qmp.server import QmpServer
    from vmm.chardev import MuxChardev

    if not cfg.monitors:
        return []
    monitor = Monitor(machine)
    servers = []
    for spec in cfg.monitors:
        chardev = machine.chardevs.get(spec.chardev)
        if chardev is None:
            raise ValueError(f"-mon chardev={spec.chardev}: chardev '{spec.chardev}' not found")
        if chardev.receiver is not None and not isinstance(chardev, MuxChardev):
            raise ValueError(f"chardev '{spec.chardev}' is already in use")
        if spec.mode == "control":
            servers.append(QmpServer(monitor, chardev, spec.pretty))
        else:
            servers.append(ReadlineServer(monitor, chardev))
    return servers


async def _run(machine, servers: list, ready_fd: int | None) -> int:
    loop = asyncio.get_running_loop()
    if machine.cfg.vnc is not None:        # listening before any monitor (chardev) can ask
        failure = await _start_vnc(machine, machine.cfg.vnc)
        if failure is not None:
            return error(failure)
    machine.attach(loop)
    failure = _start_incoming(machine) or await _loadvm(machine)
    if failure is not None:
        return error(failure)
    for server in servers:
        server.start()
    for option in machine.cfg.traces:
        from vmm import trace
        try:
            trace.enable_from_option(option)
        except OSError as e:
            return error(f"-trace {option}: {e.strerror}: {e.filename}")
    if machine.cfg.gdb:
        failure = await _start_gdb(machine, machine.cfg.gdb)
        if failure is not None:
            return error(failure)

    def on_signal(signum: int, pid: int) -> None:
        sender = f" from pid {pid} ({_program_of(pid)})" if pid > 0 else ""
        error(f"terminating on signal {signum}{sender}")
        machine.shutdown(False, "host-signal")
        machine.finish(0)

    finished = threading.Event()

    def wait_for_signals() -> None:
        while True:
            info = signal.sigwaitinfo(TERMINATING_SIGNALS)
            if finished.is_set():
                return
            loop.call_soon_threadsafe(on_signal, info.si_signo, info.si_pid)

    waiter = threading.Thread(target=wait_for_signals, name="signals", daemon=True)
    waiter.start()
    failure = _confine(machine.cfg)
    if failure is not None:
        return error(failure)
    if not machine.cfg.start_paused:
        machine.cont()
    if ready_fd is not None:
        os.write(ready_fd, b"\0")
        os.close(ready_fd)
        _detach_stdio()
    status = await machine.exit_status
    machine.halt()
    finished.set()                       # the signal thread ends on a signal of its own
    signal.pthread_kill(waiter.ident, signal.SIGHUP)
    return status


async def _start_gdb(machine, device: str) -> str | None:
    from vmm.gdbstub import GdbServer

    machine.gdb = GdbServer(machine)
    try:
        await machine.gdb.start(device)
    except OSError as e:
        return f"-gdb {device}: Failed to bind socket: {e.strerror}"
    return None


async def _start_vnc(machine, spec) -> str | None:
    from vmm.vnc import VncServer

    name = f"QEMU ({machine.cfg.name})" if machine.cfg.name else "QEMU"
    machine.vnc = VncServer(spec, machine.screen, machine.input, machine.lock, machine.emit,
                            name, lambda: bool(machine.i8042.keyboard.leds & 4))
    try:
        await machine.vnc.start()
    except OSError as e:
        where = spec.path or f"{spec.host}:{spec.port - 5900}"
        return f"Failed to start VNC server: Failed to bind socket on {where}: {e.strerror}"
    return None


def _start_incoming(machine) -> str | None:
    """-incoming URI: listen for the source now (defer: migrate-incoming will);
    returns QEMU's message if that cannot be."""
    from vmm.errors import UserError

    uri = machine.cfg.incoming
    if not uri or uri == "defer":
        return None
    fd = None
    if uri.startswith("fd:"):
        name = uri[3:]
        if not name.isdigit():
            return f"File descriptor named '{name}' has not been found"
        fd = int(name)
    try:
        machine.start_incoming(uri, fd)
    except UserError as e:
        return str(e)
    return None


async def _loadvm(machine) -> str | None:
    """-loadvm NAME: the snapshot, before the guest first runs."""
    from monitor.commands.snapshots import load_snapshot
    from vmm.errors import UserError

    if not machine.cfg.loadvm:
        return None
    try:
        await load_snapshot(machine, machine.cfg.loadvm)
    except UserError as e:
        return str(e)
    return None


def _program_of(pid: int) -> str:
    """The sender's argv[0], as QEMU names it in its terminating message."""
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read().split(b"\0")[0].decode(errors="replace")
    except OSError:
        return "<unknown process>"


def _detach_stdio() -> None:
    devnull = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(devnull, fd)
    os.close(devnull)


def _daemonize_and_run(cfg: MachineConfig) -> int:
    # -nographic sends the default serial port and monitor to stdio: with
    # -nodefaults, or both given elsewhere, there are none and it changes nothing
    if cfg.nographic and not cfg.nodefaults and not (cfg.serials and cfg.monitors):
        return error("-nographic cannot be used with -daemonize")
    uses_stdio = any(c.backend == "stdio" for c in cfg.chardevs) or (
        not cfg.serials and not cfg.nodefaults)
    if uses_stdio:
        return error("-daemonize cannot be used with a stdio character device")
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid:
        os.close(write_fd)
        ok = os.read(read_fd, 1)
        if ok == b"\0":
            return 0
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status) or 1
    os.close(read_fd)
    os.setsid()
    return _build_and_run(cfg, ready_fd=write_fd)


def entry_point() -> None:
    sys.exit(main())
