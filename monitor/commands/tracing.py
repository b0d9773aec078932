"""trace-event-get-state and trace-event-set-state over kvmkit's trace events
(vmm/trace.py), with QEMU's patterns and errors."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import BOOL, INT, STR, Enum, ListOf, Member, Struct
from vmm import trace

TRACE_STATE = Enum("TraceEventState", ("unavailable", "disabled", "enabled"))


def events_named(ctx, pattern: str, vcpu: int | None) -> list[trace.TraceEvent]:
    """QEMU's selection: the vCPU must exist; a name must name an event, a pattern
    ('*', '?') may match none; per vCPU, only vCPU events count, and kvmkit's (as
    QEMU 7.2's) are none of them."""
    if vcpu is not None and vcpu % (1 << 32) >= len(ctx.machine.vcpus):
        raise QmpError(f"invalid vCPU index {vcpu % (1 << 32)}")
    is_pattern = any(c in pattern for c in "*?")
    found = trace.matching(pattern)
    if not found and not is_pattern:
        raise QmpError(f'unknown event "{pattern}"')
    if vcpu is not None:
        if not is_pattern:
            raise QmpError(f'event "{pattern}" is not vCPU-specific')
        return []
    return found


@command("trace-event-get-state", args=[Member("name", STR), Member("vcpu", INT, True)],
         returns=ListOf(Struct("TraceEventInfo", (
             Member("name", STR), Member("state", TRACE_STATE), Member("vcpu", BOOL)))))
def trace_event_get_state(ctx, name, vcpu=None):
    return [{"name": e.name, "state": "enabled" if e.enabled else "disabled", "vcpu": False}
            for e in events_named(ctx, name, vcpu)]


@command("trace-event-set-state", args=[Member("name", STR), Member("enable", BOOL),
                                        Member("ignore-unavailable", BOOL, True),
                                        Member("vcpu", INT, True)])
def trace_event_set_state(ctx, name, enable, ignore_unavailable=False, vcpu=None):
    for event in events_named(ctx, name, vcpu):
        event.enabled = enable
