"""query-command-line-options: the options kvmkit parses key=value lists for
(vmm/config.py), with the keys each takes, as QEMU's QemuOpts lists them.
An empty parameter list means any key (QEMU's -device, -netdev, -object)."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import STR, Enum, ListOf, Member, Struct

_S, _B, _N, _Z = "string", "boolean", "number", "size"
OPTIONS: dict[str, tuple[tuple[str, str], ...]] = {
    "machine": (("type", _S), ("accel", _S), ("usb", _B), ("memory-backend", _S),
                ("dump-guest-core", _B), ("mem-merge", _B), ("kernel_irqchip", _B),
                ("pit", _B)),
    "accel": (("accel", _S),),
    "memory": (("size", _Z), ("slots", _N), ("maxmem", _Z)),
    "smp-opts": (("cpus", _N), ("sockets", _N), ("dies", _N), ("cores", _N),
                 ("threads", _N), ("maxcpus", _N)),
    "name": (("guest", _S), ("process", _S), ("debug-threads", _B)),
    "rtc": (("base", _S), ("clock", _S), ("driftfix", _S)),
    "overcommit": (("mem-lock", _B), ("cpu-pm", _B)),
    "msg": (("timestamp", _B), ("guest-name", _B)),
    "add-fd": (("fd", _N), ("set", _N), ("opaque", _S)),
    "chardev": (("backend", _S), ("path", _S), ("host", _S), ("port", _S), ("fd", _S),
                ("server", _B), ("wait", _B), ("mux", _B), ("append", _B), ("signal", _B)),
    "mon": (("mode", _S), ("chardev", _S), ("pretty", _B)),
    "sandbox": (("enable", _B), ("obsolete", _S), ("elevateprivileges", _S), ("spawn", _S),
                ("resourcecontrol", _S)),
    "drive": (), "device": (), "netdev": (), "object": (), "global": (),
    "": (),                       # (QEMU 7.2 has a group of that name, with no keys)
}
PARAMETER = Struct("CommandLineParameterInfo", (
    Member("name", STR), Member("type", Enum("CommandLineParameterType",
                                             ("string", "boolean", "number", "size"))),
    Member("help", STR, True), Member("default", STR, True)))


@command("query-command-line-options", args=[Member("option", STR, True)],
         returns=ListOf(Struct("CommandLineOptionInfo", (
             Member("option", STR), Member("parameters", ListOf(PARAMETER))))))
def query_command_line_options(ctx, option=None):
    if option is not None and option not in OPTIONS:
        raise QmpError(f"invalid option name: {option}")
    return [{"option": name, "parameters": [{"name": key, "type": kind}
                                            for key, kind in params]}
            for name, params in OPTIONS.items() if option in (None, name)]
