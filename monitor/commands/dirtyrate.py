"""calc-dirty-rate and query-dirty-rate (vmm/dirtyrate.py), and the vCPU dirty-page
limits, which need KVM's dirty ring: kvmkit, like QEMU without dirty-ring-size,
has none to limit with."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import INT, UINT64, Enum, ListOf, Member, Struct
from vmm.dirtyrate import DirtyRate

MEASURE_MODE = Enum("DirtyRateMeasureMode", ("page-sampling", "dirty-ring", "dirty-bitmap"))
DEFAULT_SAMPLE_PAGES = 512
NO_DIRTY_RING = ("dirty page limit feature requires KVM with accelerator property "
                 "'dirty-ring-size' set'")


def _state(machine) -> DirtyRate:
    if not hasattr(machine, "dirty_rate"):
        machine.dirty_rate = DirtyRate()
    return machine.dirty_rate


@command("calc-dirty-rate", args=[Member("calc-time", INT), Member("sample-pages", INT, True),
                                  Member("mode", MEASURE_MODE, True)])
def calc_dirty_rate(ctx, calc_time, sample_pages=None, mode="page-sampling"):
    state = _state(ctx.machine)
    if state.status == "measuring":
        raise QmpError("the dirty rate is already being measured.")
    if not 1 <= calc_time <= 60:
        raise QmpError("calc-time is out of range[1, 60].")
    if sample_pages is not None:
        if mode == "dirty-ring":
            raise QmpError("either sample-pages or dirty-ring can be specified.")
        if not 128 <= sample_pages <= 16384:
            raise QmpError("sample-pages is out of range[128, 16384].")
    if mode == "dirty-ring":                      # KVM's dirty ring is not in use
        raise QmpError("mode dirty-ring is not enabled, use other method instead.")
    migration = ctx.machine.migration
    if mode == "dirty-bitmap" and migration is not None and migration.running:
        raise QmpError("dirty-bitmap mode cannot measure while a migration logs dirty pages")
    state.start(ctx.machine, calc_time, sample_pages or DEFAULT_SAMPLE_PAGES, mode)


@command("query-dirty-rate", returns=Struct("DirtyRateInfo", (
    Member("dirty-rate", INT, True),
    Member("status", Enum("DirtyRateStatus", ("unstarted", "measuring", "measured"))),
    Member("start-time", INT), Member("calc-time", INT), Member("sample-pages", UINT64),
    Member("mode", MEASURE_MODE),
    Member("vcpu-dirty-rate", ListOf(Struct("DirtyRateVcpu", (
        Member("id", INT), Member("dirty-rate", INT)))), True))))
def query_dirty_rate(ctx):
    return _state(ctx.machine).result()


@command("set-vcpu-dirty-limit", args=[Member("cpu-index", INT, True),
                                       Member("dirty-rate", UINT64)])
def set_vcpu_dirty_limit(ctx, dirty_rate, cpu_index=None):
    raise QmpError(NO_DIRTY_RING)


@command("cancel-vcpu-dirty-limit", args=[Member("cpu-index", INT, True)])
def cancel_vcpu_dirty_limit(ctx, cpu_index=None):
    """Nothing is limited, so there is nothing to cancel (QEMU answers the same)."""


@command("query-vcpu-dirty-limit", returns=ListOf(Struct("DirtyLimitInfo", (
    Member("cpu-index", INT), Member("limit-rate", UINT64), Member("current-rate", UINT64)))))
def query_vcpu_dirty_limit(ctx):
    return []
