"""File descriptor sets: descriptors given with -add-fd or QMP add-fd, grouped in
numbered sets, which a path /dev/fdset/N opens instead of a file (libvirt opens
log files and disks itself and hands them over this way). Process-wide, as QEMU's."""

from __future__ import annotations

import os
import threading
from dataclasses import dataclass, field

PREFIX = "/dev/fdset/"


class FdSetError(OSError):
    pass


@dataclass
class FdSet:
    id: int
    fds: dict[int, str | None] = field(default_factory=dict)    # fd -> opaque
    dups: set[int] = field(default_factory=set)                  # opened from the set


_sets: dict[int, FdSet] = {}
_lock = threading.Lock()


def add(fd: int, set_id: int | None = None, opaque: str | None = None) -> tuple[int, int]:
    """Puts fd in set ``set_id`` (a new set when None); returns (set id, fd)."""
    with _lock:
        if set_id is None:
            set_id = 0
            while set_id in _sets:
                set_id += 1
        fdset = _sets.setdefault(set_id, FdSet(set_id))
        fdset.fds[fd] = opaque
        return set_id, fd


def remove(set_id: int, fd: int | None = None) -> bool:
    """Closes fd (every fd of the set when None); False if nothing matched."""
    with _lock:
        fdset = _sets.get(set_id)
        if fdset is None or (fd is not None and fd not in fdset.fds):
            return False
        for victim in [fd] if fd is not None else list(fdset.fds):
            del fdset.fds[victim]
            os.close(victim)
        if not fdset.fds and not fdset.dups:
            del _sets[set_id]
        return True


def query() -> list[dict]:
    with _lock:
        out = []
        for fdset in sorted(_sets.values(), key=lambda s: s.id):
            fds = []
            for fd, opaque in fdset.fds.items():
                entry: dict = {"fd": fd}
                if opaque is not None:
                    entry["opaque"] = opaque
                fds.append(entry)
            out.append({"fdset-id": fdset.id, "fds": fds})
        return out


def open_path(path: str, flags: int, mode: int = 0o666) -> int:
    """os.open, but /dev/fdset/N duplicates the set's descriptor whose access mode
    matches ``flags`` (as QEMU's qemu_open)."""
    if not path.startswith(PREFIX):
        return os.open(path, flags, mode)
    try:
        set_id = int(path[len(PREFIX):], 10)
    except ValueError:
        raise FdSetError(22, "Invalid argument") from None
    with _lock:
        fdset = _sets.get(set_id)
        if fdset is None:
            raise FdSetError(2, "No such file or directory")
        wanted = flags & os.O_ACCMODE
        for fd in fdset.fds:
            if _access_mode(fd) == wanted:
                new = os.dup(fd)
                fdset.dups.add(new)
                return new
    raise FdSetError(13, "Permission denied")


def _access_mode(fd: int) -> int:
    import fcntl
    return fcntl.fcntl(fd, fcntl.F_GETFL) & os.O_ACCMODE
