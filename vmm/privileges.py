"""-chroot DIR and -runas USER (or UID:GID): once set-up is done (/dev/kvm, taps,
sockets and files open), kvmkit gives up what it no longer needs, as QEMU's
os_setup_post does: into the chroot, then down to the user, then checked that
the way back (setuid(0)) is shut.

kvmkit is Python: what it would import on demand later (a monitor command's
module, the codecs a reply needs) must be loaded before the chroot hides the
files, so every module of kvmkit's own packages is imported first.
"""

from __future__ import annotations

import importlib
import os
import pkgutil
import pwd
from dataclasses import dataclass

PACKAGES = ("vmm", "monitor", "qmp")
# standard modules kvmkit imports inside functions
STDLIB = ("json", "encodings.idna", "encodings.utf_8", "encodings.latin_1", "uuid",
          "tempfile", "shutil", "subprocess", "ctypes", "ctypes.util", "decimal",
          "fractions")


class PrivilegeError(OSError):
    pass


@dataclass
class RunAs:
    uid: int
    gid: int
    name: str | None            # for the supplementary groups (initgroups)


def parse_runas(text: str) -> RunAs:
    """USER, or UID:GID (QEMU 7.2 takes both); QEMU's error otherwise."""
    if ":" in text:
        uid, _, gid = text.partition(":")
        if uid.isdigit() and gid.isdigit():
            return RunAs(int(uid), int(gid), None)
    try:
        entry = pwd.getpwnam(text)
    except KeyError:
        raise PrivilegeError(0, f"User \"{text}\" doesn't exist") from None
    return RunAs(entry.pw_uid, entry.pw_gid, entry.pw_name)


def preload() -> None:
    """Imports every module of kvmkit's packages (and the standard ones it loads
    lazily), so that a chroot cannot break a command that runs later."""
    for package_name in PACKAGES:
        package = importlib.import_module(package_name)
        for info in pkgutil.walk_packages(package.__path__, f"{package_name}."):
            if ".probe." in info.name or info.name.endswith(("_build", "__main__")):
                continue
            try:
                importlib.import_module(info.name)
            except Exception:           # an optional back end's library: not needed
                pass
    for name in STDLIB:
        try:
            importlib.import_module(name)
        except ImportError:
            pass
    from vmm.net import slirp
    try:                      # -netdev user at run time: libslirp is loaded now
        slirp._library()
    except OSError:
        pass


def drop(chroot: str | None, runas: RunAs | None) -> None:
    """Into `chroot` (if any), then to `runas` (if any); PrivilegeError on failure."""
    if chroot is not None:
        preload()                 # (a chroot hides the files; a new user does not)
        try:
            os.chroot(chroot)
            os.chdir("/")
        except OSError as e:
            raise PrivilegeError(e.errno, f"cannot chroot to {chroot}: {e.strerror}") \
                from None
    if runas is None:
        return
    try:
        os.setgid(runas.gid)
        os.setgroups(os.getgrouplist(runas.name, runas.gid) if runas.name else [runas.gid])
    except OSError as e:
        raise PrivilegeError(e.errno, f"Failed to setgid({runas.gid}): {e.strerror}") \
            from None
    try:
        os.setuid(runas.uid)
    except OSError as e:
        raise PrivilegeError(e.errno, f"Failed to setuid({runas.uid}): {e.strerror}") \
            from None
    if runas.uid != 0:
        try:
            os.setuid(0)
        except OSError:
            return
        raise PrivilegeError(0, "Dropping privileges failed")

