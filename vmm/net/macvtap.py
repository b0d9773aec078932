"""macvtap: a VM's NIC straight on a host interface, without a bridge.

A macvtap link sits on a parent interface (eth0, a veth, a bond) with a MAC of
its own; the kernel gives it a character device, /dev/tapN (N its ifindex),
which reads and writes frames exactly as a tap does (vnet header, offloads,
several queues by opening it again). libvirt's <interface type='direct'> makes
one and passes the open fds as -netdev tap,fd=N or fds=A:B; this module does the
same for tests and for users without libvirt (pyroute2 for the link):

    kvmkit-macvtap eth0 [--mode bridge] [--mac MAC] [--queues N] -- \\
        kvmkit ... -netdev tap,id=n0,fds={fds} -device virtio-net-pci,netdev=n0

runs the command with the fds open (passing on the signals it gets), then removes
the link.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import tempfile

MODES = ("vepa", "bridge", "private", "passthru", "source")


class MacvtapError(OSError):
    pass


def create(parent: str, name: str, mode: str = "bridge", mac: str | None = None) -> int:
    """A macvtap link `name` on `parent`, up; its ifindex."""
    from pyroute2 import IPRoute

    if mode not in MODES:
        raise MacvtapError(0, f"macvtap mode '{mode}' is not one of {', '.join(MODES)}")
    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=parent)
        if not found:
            raise MacvtapError(0, f"parent interface '{parent}' does not exist")
        extra = {"address": mac} if mac else {}
        try:
            ipr.link("add", ifname=name, kind="macvtap", link=found[0],
                     macvtap_mode=mode, **extra)
            index = ipr.link_lookup(ifname=name)[0]
            ipr.link("set", index=index, state="up")
        except Exception as e:          # pyroute2's NetlinkError and its kin
            raise MacvtapError(0, f"could not create macvtap '{name}' on '{parent}': "
                                  f"{e}") from None
    return index


def remove(name: str) -> None:
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        found = ipr.link_lookup(ifname=name)
        if found:
            ipr.link("del", index=found[0])


def device_path(name: str) -> str:
    """/dev/tapN of link `name`; where devtmpfs has none (or one of another
    namespace's link of the same ifindex), a node of its own in a private
    directory, made from the device number sysfs gives."""
    sys_dir = f"/sys/class/net/{name}/macvtap"
    try:
        entry = os.listdir(sys_dir)[0]
        with open(f"{sys_dir}/{entry}/dev") as f:
            major, minor = (int(part) for part in f.read().strip().split(":"))
    except (OSError, IndexError, ValueError):
        raise MacvtapError(0, f"'{name}' is not a macvtap link") from None
    wanted = os.makedev(major, minor)
    path = f"/dev/{entry}"
    try:
        if os.stat(path).st_rdev == wanted:
            return path
    except OSError:
        pass
    path = os.path.join(tempfile.mkdtemp(prefix="kvmkit-macvtap."), entry)
    os.mknod(path, 0o600 | 0o020000, wanted)         # S_IFCHR
    return path


def open_queues(name: str, queues: int = 1) -> list[int]:
    """The link's character device opened once per queue (the kernel gives each
    open a queue of its own), as fds a child process inherits."""
    path = device_path(name)
    fds = []
    try:
        for _ in range(queues):
            fds.append(os.open(path, os.O_RDWR))
    except OSError as e:
        for fd in fds:
            os.close(fd)
        raise MacvtapError(e.errno, f"could not open {path}: {e.strerror}") from None
    return fds


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="kvmkit-macvtap",
        usage="%(prog)s PARENT [options] -- COMMAND...",
        description="Run a command with a new macvtap link's fds open: {fds} in its "
                    "arguments becomes A:B (one per queue), {fd} the first one.")
    parser.add_argument("parent", help="the host interface the link sits on")
    parser.add_argument("--name", default=f"kvmkit-mvt{os.getpid() % 10000}")
    parser.add_argument("--mode", default="bridge", choices=MODES)
    parser.add_argument("--mac", help="the link's (and so the guest's) MAC address")
    parser.add_argument("--queues", type=int, default=1)
    argv = sys.argv[1:] if argv is None else argv
    split = argv.index("--") if "--" in argv else len(argv)
    args, command = parser.parse_args(argv[:split]), argv[split + 1:]
    if not command:
        parser.error("no command to run (give it after --)")
    try:
        create(args.parent, args.name, args.mode, args.mac)
        try:
            fds = open_queues(args.name, args.queues)
        except MacvtapError:
            remove(args.name)
            raise
    except MacvtapError as e:
        print(f"kvmkit-macvtap: {e.strerror}", file=sys.stderr)
        return 1
    joined = ":".join(str(fd) for fd in fds)
    command = [part.replace("{fds}", joined).replace("{fd}", str(fds[0]))
               for part in command]
    try:
        child = subprocess.Popen(command, pass_fds=fds)
        for fd in fds:                  # the command holds the link open now
            os.close(fd)
        fds = []
        for number in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
            signal.signal(number, lambda sig, _frame: child.send_signal(sig))
        return child.wait()
    finally:
        for fd in fds:
            os.close(fd)
        remove(args.name)


if __name__ == "__main__":
    sys.exit(main())
