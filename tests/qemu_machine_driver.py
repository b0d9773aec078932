"""Run by test_qemu_machine.py under a QEMUMachine of QEMU's own: launches the VMM
as QEMUMachine does, talks to it, and prints what happened as one JSON line.

    python qemu_machine_driver.py BINARY WIRING SOCK_DIR [ARGS...]

WIRING is 'default' (how this QEMUMachine wires QMP by default) or 'path' (it
listens on a socket path and the VMM connects out)."""

import json
import os
import sys
import time

from qemu.machine import QEMUMachine


def main() -> None:
    binary, wiring, sock_dir, *args = sys.argv[1:]
    extra = {"monitor_address": os.path.join(sock_dir, "monitor.sock")} \
        if wiring == "path" else {}
    vm = QEMUMachine(binary, args=args, base_temp_dir=sock_dir, log_dir=sock_dir, **extra)
    vm.set_console()
    report = {}
    vm.launch()
    try:
        report["command_line"] = list(vm._qemu_full_args)
        console, seen, deadline = vm.console_socket, b"", time.monotonic() + 30
        while b'"ready"' not in seen and time.monotonic() < deadline:
            chunk = console.recv(4096)
            if not chunk:
                break
            seen += chunk
        report["console"] = seen.decode(errors="replace")
        report["status"] = vm.qmp("query-status")
        report["bad_command"] = vm.qmp("no-such-command")
        report["hmp"] = vm.qmp("human-monitor-command", **{"command-line": "info status"})
        vm.qmp("stop")
        report["stop_event"] = vm.event_wait("STOP", timeout=10)
        report["paused"] = vm.qmp("query-status")
        vm.qmp("cont")
        report["resume_event"] = vm.event_wait("RESUME", timeout=10)
        report["events_left"] = [e["event"] for e in vm.get_qmp_events()]
    finally:
        vm.shutdown()
    report["exitcode"] = vm.exitcode()
    print(json.dumps(report))


if __name__ == "__main__":
    main()
