"""object-add / object-del (user-creatable objects, vmm/objects.py) and the fd set
commands (add-fd, remove-fd, query-fdsets, vmm/fdsets.py)."""

from __future__ import annotations

import os

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import ANY, BOOL, INT, STR, UINT32, Builtin, Enum, ListOf, Member, Struct, Union
from vmm import fdsets
from vmm import objects as user_objects
from vmm.errors import UserError

_SCHEMA_TYPES = {"bool": BOOL, "string": STR, "int": INT, "uint32": UINT32,
                 "link<thread-context>": STR,
                 "uint16List": ListOf(Builtin("uint16", "int")), "ThrottleLimits": Struct(
    "ThrottleLimits", tuple(Member(f"{limit}{suffix}", INT, True)
                            for limit in user_objects.THROTTLE_LIMITS
                            for suffix in ("", "-max", "-max-length"))
    + (Member("iops-size", INT, True),))}
OBJECT_TYPE = Enum("ObjectType", tuple(user_objects.TYPES))
OBJECT_BASE = (Member("qom-type", OBJECT_TYPE), Member("id", STR))
# QEMU's ObjectOptions: a flat union on qom-type, a branch per type kvmkit makes
OBJECT_OPTIONS = Union("ObjectOptions", OBJECT_BASE, "qom-type", tuple(
    (name, Struct(f"{name}-options", tuple(
        Member(p.name, Enum(p.type, p.values) if p.values else _SCHEMA_TYPES.get(p.type, ANY),
               True) for p in props)))
    for name, props in user_objects.TYPES.items()))


@command("object-add", args=OBJECT_BASE, variants=OBJECT_OPTIONS)
def object_add(ctx, props, qom_type, id):
    obj = ctx.machine.objects.add({"qom-type": qom_type, "id": id, **props}, strict=True)
    if obj.qom_type == "throttle-group":
        try:
            ctx.machine.block.add_throttle_group(obj.id,
                                                 user_objects.throttle_values(obj.props))
        except UserError as e:               # its limits are refused: no object either
            ctx.machine.objects.delete(obj.id)
            raise QmpError(str(e)) from None


@command("object-del", args=[Member("id", STR)])
def object_del(ctx, id):
    try:
        obj = ctx.machine.objects.delete(id)
    except user_objects.ObjectError as e:
        raise QmpError(str(e)) from None
    if obj.qom_type == "throttle-group":
        ctx.machine.block.remove_throttle_group(obj.id)


ADD_FD_INFO = Struct("AddfdInfo", (Member("fdset-id", INT), Member("fd", INT)))


@command("add-fd", args=[Member("fdset-id", INT, True), Member("opaque", STR, True)],
         returns=ADD_FD_INFO)
def add_fd(ctx, fdset_id=None, opaque=None):
    session = ctx.session
    if not session.received_fds:
        raise QmpError("No file descriptor supplied via SCM_RIGHTS")
    fd = session.received_fds.pop(0)
    if fdset_id is not None and fdset_id < 0:
        os.close(fd)
        raise QmpError("Parameter 'fdset-id' expects a non-negative value")
    new_set, new_fd = fdsets.add(fd, fdset_id, opaque)
    return {"fdset-id": new_set, "fd": new_fd}


@command("remove-fd", args=[Member("fdset-id", INT), Member("fd", INT, True)])
def remove_fd(ctx, fdset_id, fd=None):
    set_id = fdset_id
    if not fdsets.remove(set_id, fd):
        what = f"fdset-id:{set_id}" + (f", fd:{fd}" if fd is not None else "")
        raise QmpError(f"File descriptor named '{what}' not found")


@command("query-fdsets", returns=ListOf(Struct("FdsetInfo", (
    Member("fdset-id", INT), Member("fds", ListOf(Struct("FdsetFdInfo", (
        Member("fd", INT), Member("opaque", STR, True)))))))))
def query_fdsets(ctx):
    return fdsets.query()


@command("query-iothreads", returns=ListOf(Struct("IOThreadInfo", (
    Member("id", STR), Member("thread-id", INT), Member("poll-max-ns", INT),
    Member("poll-grow", INT), Member("poll-shrink", INT), Member("aio-max-batch", INT)))))
def query_iothreads(ctx):
    return [{"id": obj.id, "thread-id": obj.resource.thread_id,
             "poll-max-ns": obj.props.get("poll-max-ns", 32768),
             "poll-grow": obj.props.get("poll-grow", 0),
             "poll-shrink": obj.props.get("poll-shrink", 0),
             "aio-max-batch": obj.props.get("aio-max-batch", 0)}
            for obj in ctx.machine.objects.by_id.values() if obj.qom_type == "iothread"]
