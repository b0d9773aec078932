"""qom-list, qom-get, qom-set over the machine's QOM view (monitor/qom.py)."""

from __future__ import annotations

from monitor import qom
from monitor.registry import command
from monitor.types import ANY, STR, ListOf, Member, Struct

OBJECT_PROPERTY_INFO = Struct("ObjectPropertyInfo", (
    Member("name", STR), Member("type", STR), Member("description", STR, True),
    Member("default-value", ANY, True)))


@command("qom-list", args=[Member("path", STR)], returns=ListOf(OBJECT_PROPERTY_INFO))
def qom_list(ctx, path):
    return qom.qom_list(ctx.machine, path)


@command("qom-get", args=[Member("path", STR), Member("property", STR)], returns=ANY)
def qom_get(ctx, path, property):
    return qom.qom_get(ctx.machine, path, property)


@command("qom-set", args=[Member("path", STR), Member("property", STR), Member("value", ANY)])
def qom_set(ctx, path, property, value):
    qom.qom_set(ctx.machine, path, property, value)
