"""-sandbox on[,obsolete=][,elevateprivileges=][,spawn=][,resourcecontrol=]: a
seccomp filter on every thread, as QEMU 7.2's (softmmu/qemu-seccomp.c), through
libseccomp (cffi, ABI mode on Debian's libseccomp2; no headers needed).

The filter is a deny list, in QEMU's groups:
  default    reboot, swapon, mount, kexec_load, ... (always)
  obsolete   readdir, _sysctl, uselib, ... (unless obsolete=allow)
  privileged setuid and its kin (elevateprivileges=deny; =children also sets
             no_new_privs)
  spawn      fork, vfork, execve(at), setns, unshare, and clone unless it makes a
             thread (its flags checked as QEMU checks them; clone3 answers ENOSYS
             so that the C library falls back to clone)
  resourcecontrol  setpriority, sched_set* (EPERM, as QEMU)

QEMU kills the process on a denied call of the first four groups. kvmkit kills on
the default and obsolete groups, which nothing in kvmkit calls, but refuses the
privileged and spawn calls with EPERM: what would spawn at run time is a monitor
command (migrate exec:, a tap script of netdev_add, a guestfwd cmd:), and that
command then fails with an error while the guest and the monitor go on.

kvmkit installs the filter once set-up is done (devices, taps, sockets open), on
all threads at once (TSYNC).
"""

from __future__ import annotations

import errno
from dataclasses import dataclass

from cffi import FFI

_ffi = FFI()
_ffi.cdef("""
typedef void *scmp_filter_ctx;
struct scmp_arg_cmp { unsigned int arg; int op; uint64_t datum_a; uint64_t datum_b; };
scmp_filter_ctx seccomp_init(uint32_t def_action);
void seccomp_release(scmp_filter_ctx ctx);
int seccomp_attr_set(scmp_filter_ctx ctx, int attr, uint32_t value);
int seccomp_syscall_resolve_name(const char *name);
int seccomp_rule_add_array(scmp_filter_ctx ctx, uint32_t action, int syscall,
                           unsigned int arg_cnt, const struct scmp_arg_cmp *arg_array);
int seccomp_load(scmp_filter_ctx ctx);
""")
ACT_KILL_PROCESS, ACT_ALLOW = 0x80000000, 0x7FFF0000
SCMP_CMP_NE, SCMP_CMP_MASKED_EQ = 1, 7
SCMP_FLTATR_CTL_TSYNC = 4
NR_SCMP_ERROR = -1
PR_SET_NO_NEW_PRIVS = 38
SCHED_IDLE = 5
CSIGNAL = 0xFF
CLONE = {"VM": 0x100, "FS": 0x200, "FILES": 0x400, "SIGHAND": 0x800, "PIDFD": 0x1000,
         "PTRACE": 0x2000, "VFORK": 0x4000, "PARENT": 0x8000, "THREAD": 0x10000,
         "NEWNS": 0x20000, "SYSVSEM": 0x40000, "SETTLS": 0x80000,
         "PARENT_SETTID": 0x100000, "CHILD_CLEARTID": 0x200000, "UNTRACED": 0x800000,
         "NEWCGROUP": 0x2000000, "NEWUTS": 0x4000000, "NEWIPC": 0x8000000,
         "NEWUSER": 0x10000000, "NEWPID": 0x20000000, "NEWNET": 0x40000000,
         "IO": 0x80000000}
# what a thread is made with; clone without one of these (or with a FORBIDDEN one)
# makes a process
THREAD_FLAGS = ("VM", "FS", "FILES", "SIGHAND", "THREAD", "SYSVSEM", "SETTLS",
                "PARENT_SETTID", "CHILD_CLEARTID")
FORBIDDEN_FLAGS = ("PIDFD", "PTRACE", "VFORK", "PARENT", "NEWNS", "UNTRACED", "NEWCGROUP",
                   "NEWUTS", "NEWIPC", "NEWUSER", "NEWPID", "NEWNET", "IO")

DEFAULT, OBSOLETE, PRIVILEGED, SPAWN, RESOURCECTL = "default", "obsolete", "privileged", \
    "spawn", "resourcecontrol"
DENIED = {
    DEFAULT: ("reboot", "swapon", "swapoff", "syslog", "mount", "umount", "kexec_load",
              "afs_syscall", "break", "ftime", "getpmsg", "gtty", "lock", "mpx", "prof",
              "profil", "putpmsg", "security", "stty", "tuxcall", "ulimit", "vserver"),
    OBSOLETE: ("readdir", "_sysctl", "bdflush", "create_module", "get_kernel_syms",
               "query_module", "sgetmask", "ssetmask", "sysfs", "uselib", "ustat"),
    PRIVILEGED: ("setuid", "setgid", "setpgid", "setsid", "setreuid", "setregid",
                 "setresuid", "setresgid", "setfsuid", "setfsgid"),
    SPAWN: ("fork", "vfork", "execve", "execveat", "setns", "unshare"),
    RESOURCECTL: ("setpriority", "sched_setparam", "sched_setaffinity"),
}


def _errno(number: int) -> int:
    return 0x00050000 | (number & 0xFFFF)


ACTIONS = {DEFAULT: ACT_KILL_PROCESS, OBSOLETE: ACT_KILL_PROCESS,
           PRIVILEGED: _errno(errno.EPERM), SPAWN: _errno(errno.EPERM),
           RESOURCECTL: _errno(errno.EPERM)}


# -sandbox's options: the group each denies, and the values it takes
OPTION_GROUPS = {"obsolete": (OBSOLETE, ("deny", "allow")),
                 "elevateprivileges": (PRIVILEGED, ("allow", "deny", "children")),
                 "spawn": (SPAWN, ("allow", "deny")),
                 "resourcecontrol": (RESOURCECTL, ("allow", "deny"))}


class SandboxError(OSError):
    pass


@dataclass
class SandboxOptions:
    """-sandbox's groups: which are denied, and elevateprivileges=children."""

    groups: frozenset[str] = frozenset({DEFAULT, OBSOLETE})
    no_new_privs: bool = False


def parse_options(opts: dict[str, str]) -> SandboxOptions:
    """obsolete=, elevateprivileges=, spawn=, resourcecontrol= as QEMU's parse_sandbox;
    raises ValueError with QEMU's message."""
    groups = {DEFAULT, OBSOLETE}
    no_new_privs = False
    for key, (group, allowed) in OPTION_GROUPS.items():
        value = opts.get(key)
        if value is None:
            continue
        if value not in allowed:
            raise ValueError(f"invalid argument for {key}")
        if value == "allow":
            groups.discard(group)
        else:
            groups.add(group)
        no_new_privs |= value == "children"
    return SandboxOptions(frozenset(groups), no_new_privs)


_lib = None


def library():
    """libseccomp, loaded once (before a chroot hides it)."""
    global _lib
    if _lib is None:
        try:
            _lib = _ffi.dlopen("libseccomp.so.2")
        except OSError:
            raise SandboxError(0, "-sandbox needs libseccomp (Debian: apt-get install "
                                  "libseccomp2)") from None
    return _lib


def install(options: SandboxOptions) -> None:
    """Loads the filter on every thread of the process; SandboxError if it cannot."""
    lib = library()
    if options.no_new_privs:
        import ctypes
        if ctypes.CDLL(None, use_errno=True).prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0):
            raise SandboxError(0, "failed to set no_new_privs aborting")
    ctx = lib.seccomp_init(ACT_ALLOW)
    if ctx == _ffi.NULL:
        raise SandboxError(0, "failed to initialize seccomp context")
    try:
        _check(lib.seccomp_attr_set(ctx, SCMP_FLTATR_CTL_TSYNC, 1),
               "failed to set seccomp thread synchronization")
        for group in (DEFAULT, OBSOLETE, PRIVILEGED, SPAWN, RESOURCECTL):
            if group in options.groups:
                _add_group(lib, ctx, group)
        _check(lib.seccomp_load(ctx), "failed to load seccomp syscall filter in kernel")
    finally:
        lib.seccomp_release(ctx)


def _check(rc: int, message: str) -> None:
    if rc < 0:
        raise SandboxError(-rc, f"{message}: {errno.errorcode.get(-rc, -rc)}")


def _add_group(lib, ctx, group: str) -> None:
    action = ACTIONS[group]
    for name in DENIED[group]:
        _add(lib, ctx, action, name)
    if group == RESOURCECTL:          # sched_setscheduler, but not to SCHED_IDLE
        _add(lib, ctx, action, "sched_setscheduler", [(1, SCMP_CMP_NE, SCHED_IDLE, 0)])
    if group == SPAWN:
        # clone that does not make a thread: no flag but the exit signal, a thread
        # flag missing, or a flag no thread has
        _add(lib, ctx, action, "clone", [(0, SCMP_CMP_MASKED_EQ, ~CSIGNAL & 2**64 - 1, 0)])
        for flag in THREAD_FLAGS:
            _add(lib, ctx, action, "clone", [(0, SCMP_CMP_MASKED_EQ, CLONE[flag], 0)])
        for flag in FORBIDDEN_FLAGS:
            _add(lib, ctx, action, "clone", [(0, SCMP_CMP_MASKED_EQ, CLONE[flag],
                                              CLONE[flag])])
        _add(lib, ctx, _errno(errno.ENOSYS), "clone3")


def _add(lib, ctx, action: int, name: str, args: list[tuple] | None = None) -> None:
    number = lib.seccomp_syscall_resolve_name(name.encode())
    if number == NR_SCMP_ERROR:          # not a system call libseccomp knows
        return
    compares = _ffi.new("struct scmp_arg_cmp[]", [
        {"arg": arg, "op": op, "datum_a": a, "datum_b": b} for arg, op, a, b in args or []])
    _check(lib.seccomp_rule_add_array(ctx, action, number, len(args or []), compares),
           "failed to add seccomp denylist rules")
