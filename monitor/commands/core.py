"""Negotiation, versions and the machine queries (QEMU's schema member order)."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import REGISTRY, command
from monitor.types import ANY, BOOL, INT, STR, Enum, ListOf, Member, Struct, Union
from vmm import __version__

QEMU_VERSION = (7, 2, 22)
PACKAGE = f"kvmkit {__version__}"

QMP_CAPABILITY = Enum("QMPCapability", ("oob",))
RUN_STATE = Enum("RunState", (
    "debug", "inmigrate", "internal-error", "io-error", "paused", "postmigrate", "prelaunch",
    "finish-migrate", "restore-vm", "running", "save-vm", "shutdown", "suspended", "watchdog",
    "guest-panicked", "colo"))
SHUTDOWN_CAUSE = Enum("ShutdownCause", (
    "none", "host-error", "host-qmp-quit", "host-qmp-system-reset", "host-signal", "host-ui",
    "guest-shutdown", "guest-reset", "guest-panic", "subsystem-reset", "snapshot-load"))
SYS_EMU_TARGET = Enum("SysEmuTarget", ("x86_64",))

VERSION_TRIPLE = Struct("VersionTriple", (Member("major", INT), Member("minor", INT),
                                          Member("micro", INT)))
VERSION_INFO = Struct("VersionInfo", (Member("qemu", VERSION_TRIPLE), Member("package", STR)))
STATUS_INFO = Struct("StatusInfo", (Member("running", BOOL), Member("singlestep", BOOL),
                                    Member("status", RUN_STATE)))
CPU_PROPS = Struct("CpuInstanceProperties", (
    Member("node-id", INT, True), Member("socket-id", INT, True), Member("die-id", INT, True),
    Member("cluster-id", INT, True), Member("core-id", INT, True),
    Member("thread-id", INT, True)))

REGISTRY.event("SHUTDOWN", [Member("guest", BOOL), Member("reason", SHUTDOWN_CAUSE)])
REGISTRY.event("POWERDOWN")
REGISTRY.event("RESET", [Member("guest", BOOL), Member("reason", SHUTDOWN_CAUSE)])
REGISTRY.event("STOP")
REGISTRY.event("SUSPEND")
REGISTRY.event("SUSPEND_DISK")
REGISTRY.event("WAKEUP")
REGISTRY.event("RESUME")


def version_info() -> dict:
    major, minor, micro = QEMU_VERSION
    return {"qemu": {"major": major, "minor": minor, "micro": micro}, "package": PACKAGE}


@command("qmp_capabilities", args=[Member("enable", ListOf(QMP_CAPABILITY), True)])
def qmp_capabilities(ctx, enable=None):
    """Leaves negotiation mode (the QMP session handles the mode switch)."""
    session = ctx.session
    if session.negotiated:
        raise QmpError("Capabilities negotiation is already complete, command ignored",
                       "CommandNotFound")
    session.capabilities = set(enable or [])
    session.negotiated = True


@command("query-version", returns=VERSION_INFO)
def query_version(ctx):
    return version_info()


@command("query-commands", returns=ListOf(Struct("CommandInfo", (Member("name", STR),))))
def query_commands(ctx):
    return [{"name": name} for name in ctx.monitor.registry.command_names()]


# QEMU's qapi/introspect.json
_FEATURES = Member("features", ListOf(STR), True)
SCHEMA_INFO = Union(
    "SchemaInfo",
    (Member("name", STR), Member("meta-type", Enum("SchemaMetaType", (
        "builtin", "enum", "array", "object", "alternate", "command", "event"))), _FEATURES),
    "meta-type", (
        ("builtin", Struct("SchemaInfoBuiltin", (Member("json-type", Enum("JSONType", (
            "string", "number", "int", "boolean", "null", "object", "array", "value"))),))),
        ("enum", Struct("SchemaInfoEnum", (
            Member("members", ListOf(Struct("SchemaInfoEnumMember",
                                            (Member("name", STR), _FEATURES)))),
            Member("values", ListOf(STR))))),
        ("array", Struct("SchemaInfoArray", (Member("element-type", STR),))),
        ("object", Struct("SchemaInfoObject", (
            Member("members", ListOf(Struct("SchemaInfoObjectMember", (
                Member("name", STR), Member("type", STR), Member("default", ANY, True),
                _FEATURES)))),
            Member("tag", STR, True),
            Member("variants", ListOf(Struct("SchemaInfoObjectVariant", (
                Member("case", STR), Member("type", STR)))), True)))),
        ("alternate", Struct("SchemaInfoAlternate", (Member("members", ListOf(Struct(
            "SchemaInfoAlternateMember", (Member("type", STR),)))),))),
        ("command", Struct("SchemaInfoCommand", (
            Member("arg-type", STR), Member("ret-type", STR), Member("allow-oob", BOOL, True)))),
        ("event", Struct("SchemaInfoEvent", (Member("arg-type", STR),)))))


@command("query-qmp-schema", returns=ListOf(SCHEMA_INFO))
def query_qmp_schema(ctx):
    return ctx.monitor.registry.schema()


@command("query-status", returns=STATUS_INFO)
def query_status(ctx):
    state = ctx.machine.runstate
    return {"running": state == "running", "singlestep": False, "status": state}


@command("query-name", returns=Struct("NameInfo", (Member("name", STR, True),)))
def query_name(ctx):
    name = ctx.machine.cfg.name
    return {} if name is None else {"name": name}


@command("query-uuid", returns=Struct("UuidInfo", (Member("UUID", STR),)))
def query_uuid(ctx):
    return {"UUID": ctx.machine.cfg.uuid}


@command("query-kvm", returns=Struct("KvmInfo", (Member("enabled", BOOL),
                                                 Member("present", BOOL))))
def query_kvm(ctx):
    return {"enabled": True, "present": True}


@command("query-target", returns=Struct("TargetInfo", (Member("arch", SYS_EMU_TARGET),)))
def query_target(ctx):
    return {"arch": "x86_64"}


MACHINE_INFO = Struct("MachineInfo", (
    Member("name", STR), Member("alias", STR, True), Member("is-default", BOOL, True),
    Member("cpu-max", INT), Member("hotpluggable-cpus", BOOL),
    Member("numa-mem-supported", BOOL), Member("deprecated", BOOL),
    Member("default-cpu-type", STR, True), Member("default-ram-id", STR, True)))


@command("query-machines", returns=ListOf(MACHINE_INFO))
def query_machines(ctx):
    return [{"name": "pc-i440fx-7.2", "alias": "pc", "is-default": True, "cpu-max": 255,
             "hotpluggable-cpus": False, "numa-mem-supported": False, "deprecated": False,
             "default-cpu-type": "qemu64-x86_64-cpu", "default-ram-id": "pc.ram"},
            # the empty machine: no RAM of its own in kvmkit, so no default-ram-id
            {"name": "none", "cpu-max": 1, "hotpluggable-cpus": False,
             "numa-mem-supported": False, "deprecated": False}]


def cpu_qom_path(index: int) -> str:
    """A CPU's QOM path: QEMU's pc makes the kvmvapic (device[1]) right after the first
    CPU, so the others are one further on."""
    return f"/machine/unattached/device[{index if index == 0 else index + 1}]"


def cpu_props(index: int) -> dict:
    return {"socket-id": index, "core-id": 0, "thread-id": 0}


@command("query-cpus-fast", returns=ListOf(Struct("CpuInfoFast", (
    Member("cpu-index", INT), Member("qom-path", STR), Member("thread-id", INT),
    Member("props", CPU_PROPS, True), Member("target", SYS_EMU_TARGET)))))
def query_cpus_fast(ctx):
    return [{"cpu-index": i, "qom-path": cpu_qom_path(i), "thread-id": tid,
             "props": cpu_props(i), "target": "x86_64"}
            for i, tid in enumerate(ctx.machine.vcpu_thread_ids())]


@command("query-hotpluggable-cpus", returns=ListOf(Struct("HotpluggableCPU", (
    Member("type", STR), Member("vcpus-count", INT), Member("props", CPU_PROPS),
    Member("qom-path", STR, True)))))
def query_hotpluggable_cpus(ctx):
    model = ctx.machine.cfg.cpu.model
    return [{"type": f"{model}-x86_64-cpu", "vcpus-count": 1, "props": cpu_props(i),
             "qom-path": cpu_qom_path(i)}
            for i in range(len(ctx.machine.vcpus))]


@command("query-memory-size-summary", returns=Struct("MemoryInfo", (
    Member("base-memory", INT), Member("plugged-memory", INT, True))))
def query_memory_size_summary(ctx):
    return {"base-memory": ctx.machine.cfg.memory, "plugged-memory": 0}
