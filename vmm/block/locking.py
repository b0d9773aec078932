"""Image locking as QEMU's file-posix does it, so kvmkit and QEMU keep each other
(and themselves) from writing an image another user relies on.

Open-file-description locks on single bytes of the image: byte 100+i is
read-locked while the user holds permission i, byte 200+i while it refuses to
share permission i with others. Before locking, each side checks the other's
bytes, so a conflict is found whichever process came first.
"""

from __future__ import annotations

import fcntl
import os
import struct

from vmm.errors import UserError

PERM_BASE, SHARED_BASE = 100, 200
# QEMU's BLK_PERM_* bits, in order, with the names its errors use
PERMISSIONS = ("consistent read", "write", "write unchanged", "resize")
CONSISTENT_READ, WRITE, WRITE_UNCHANGED, RESIZE = (1 << i for i in range(4))
ALL = (1 << len(PERMISSIONS)) - 1


def _flock(kind: int, start: int) -> bytes:
    return struct.pack("hhqqi4x", kind, os.SEEK_SET, start, 1, 0)


def _held_by_another(fd: int, start: int) -> bool:
    """Whether some other open file holds a lock on that byte (F_OFD_GETLK asks as if
    we wanted to write-lock it)."""
    answer = fcntl.fcntl(fd, fcntl.F_OFD_GETLK, _flock(fcntl.F_WRLCK, start))
    return struct.unpack("hhqqi4x", answer)[0] != fcntl.F_UNLCK


def lock(fd: int, path: str, perm: int, shared: int) -> None:
    """Takes ``perm`` on the image and refuses others what ``shared`` leaves out;
    UserError with QEMU's words if another user conflicts."""
    hint = f"Is another process using the image [{path}]?"
    for bit, name in enumerate(PERMISSIONS):
        if perm & (1 << bit) and _held_by_another(fd, SHARED_BASE + bit):
            raise UserError(f'Failed to get "{name}" lock', hint=hint)
        if not shared & (1 << bit) and _held_by_another(fd, PERM_BASE + bit):
            raise UserError(f'Failed to get shared "{name}" lock', hint=hint)
    for bit in range(len(PERMISSIONS)):       # what it no longer holds is let go
        held = fcntl.F_RDLCK if perm & (1 << bit) else fcntl.F_UNLCK
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(held, PERM_BASE + bit))
        refused = fcntl.F_RDLCK if not shared & (1 << bit) else fcntl.F_UNLCK
        fcntl.fcntl(fd, fcntl.F_OFD_SETLK, _flock(refused, SHARED_BASE + bit))
