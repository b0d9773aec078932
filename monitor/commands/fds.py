"""getfd/closefd: file descriptors a client passes with SCM_RIGHTS, kept by name."""

from __future__ import annotations

import os

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import STR, Member


@command("getfd", args=[Member("fdname", STR)])
def getfd(ctx, fdname):
    session = ctx.session
    if not session.received_fds:
        raise QmpError("No file descriptor supplied via SCM_RIGHTS")
    fd = session.received_fds.pop(0)
    if fdname and fdname[0].isdigit():
        os.close(fd)
        raise QmpError("Parameter 'fdname' expects a name not starting with a digit")
    old = session.fds.pop(fdname, None)
    if old is not None:
        os.close(old)
    session.fds[fdname] = fd


@command("closefd", args=[Member("fdname", STR)])
def closefd(ctx, fdname):
    fd = ctx.session.fds.pop(fdname, None)
    if fd is None:
        raise QmpError(f"File descriptor named '{fdname}' not found")
    os.close(fd)
