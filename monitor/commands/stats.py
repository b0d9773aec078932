"""query-stats and query-stats-schemas: KVM's own counters for the VM and each
vCPU (vmm/kvm_stats.py), as QEMU 7.2 reports them (libvirt's domstats reads them)."""

from __future__ import annotations

from monitor.commands.core import cpu_qom_path
from monitor.registry import command
from monitor.types import ANY, INT, STR, Enum, ListOf, Member, Struct, Union
from vmm.kvm_stats import open_stats

STATS_TARGET = Enum("StatsTarget", ("vm", "vcpu"))
STATS_PROVIDER = Enum("StatsProvider", ("kvm",))
STATS_REQUEST = Struct("StatsRequest", (Member("provider", STATS_PROVIDER),
                                        Member("names", ListOf(STR), True)))
STATS_FILTER_BASE = (Member("target", STATS_TARGET),
                     Member("providers", ListOf(STATS_REQUEST), True))
STATS_FILTER = Union("StatsFilter", STATS_FILTER_BASE, "target", (
    ("vcpu", Struct("StatsVCPUFilter", (Member("vcpus", ListOf(STR), True),))),))
STATS_RESULT = Struct("StatsResult", (
    Member("provider", STATS_PROVIDER), Member("qom-path", STR, True),
    Member("stats", ListOf(Struct("Stats", (Member("name", STR), Member("value", ANY)))))))
STATS_SCHEMA = Struct("StatsSchema", (
    Member("provider", STATS_PROVIDER), Member("target", STATS_TARGET),
    Member("stats", ListOf(Struct("StatsSchemaValue", (
        Member("name", STR), Member("type", Enum("StatsType", (
            "cumulative", "instant", "peak", "linear-histogram", "log2-histogram"))),
        Member("unit", Enum("StatsUnit", ("bytes", "seconds", "cycles", "boolean")), True),
        Member("base", INT, True), Member("exponent", INT),
        Member("bucket-size", INT, True)))))))


def _sources(machine, target: str) -> list[tuple[str | None, int]]:
    """(qom-path, fd to ask) for the VM or for each vCPU."""
    if target == "vm":
        return [(None, machine.vm.fd)]
    return [(cpu_qom_path(i), runner.vcpu.fd)                 # the last first, as QEMU
            for i, runner in reversed(list(enumerate(machine.vcpus)))]


@command("query-stats", args=STATS_FILTER_BASE, variants=STATS_FILTER,
         returns=ListOf(STATS_RESULT))
def query_stats(ctx, target, props, providers=None):
    names = None
    if providers is not None:
        kvm = [p for p in providers if p["provider"] == "kvm"]
        if not kvm:
            return []
        if any("names" in p for p in kvm):
            names = [n for p in kvm for n in p.get("names", [])]
    wanted = props.get("vcpus")
    results = []
    for path, fd in _sources(ctx.machine, target):
        if wanted is not None and path not in wanted:
            continue
        stats = open_stats(fd)
        if stats is None:
            continue
        try:
            values = stats.values(names)
        finally:
            stats.close()
        if names is not None and not values:
            continue
        results.append({"provider": "kvm", "stats": values,
                        **({"qom-path": path} if path is not None else {})})
    return results


@command("query-stats-schemas", args=[Member("provider", STATS_PROVIDER, True)],
         returns=ListOf(STATS_SCHEMA))
def query_stats_schemas(ctx, provider=None):
    schemas = []
    for target in ("vcpu", "vm"):
        sources = _sources(ctx.machine, target)
        if not sources:
            continue
        stats = open_stats(sources[0][1])
        if stats is None:
            continue
        try:
            schemas.append({"provider": "kvm", "target": target,
                            "stats": [s.schema() for s in stats.stats]})
        finally:
            stats.close()
    return schemas
