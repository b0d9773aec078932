"""query-stats and query-stats-schemas: KVM's own counters for the VM and each
vCPU (vmm/kvm_stats.py), as QEMU 7.2 reports them (libvirt's domstats reads them)."""

from __future__ import annotations

from monitor.commands.core import cpu_qom_path
from monitor.registry import command
from monitor.types import ANY, INT, STR, Enum, ListOf, Member, Struct, Union
from vmm.kvm_stats import KvmStats, open_stats

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


def _sources(machine, target: str) -> list[tuple[str | None, KvmStats, bool]]:
    """(qom-path, statistics, whether to close them after) for the VM or each vCPU.
    A vCPU's were opened before it first ran (vmm/vcpu.py): a vCPU ioctl waits while
    the vCPU is in KVM_RUN, which a halted guest may never leave."""
    if target == "vm":
        stats = open_stats(machine.vm.fd)
        return [(None, stats, True)] if stats is not None else []
    return [(cpu_qom_path(i), runner.stats, False)            # the last first, as QEMU
            for i, runner in reversed(list(enumerate(machine.vcpus)))
            if runner.stats is not None]


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
    for path, stats, owned in _sources(ctx.machine, target):
        try:
            if wanted is not None and path not in wanted:
                continue
            values = stats.values(names)
        finally:
            if owned:
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
        if sources:
            schemas.append({"provider": "kvm", "target": target,
                            "stats": [s.schema() for s in sources[0][1].stats]})
        for _path, stats, owned in sources:
            if owned:
                stats.close()
    return schemas
