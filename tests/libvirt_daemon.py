"""A libvirtd of the tests' own: Debian's libvirt 9.0 system daemon, started in a
mount and network namespace of its own, so nothing on the host changes.

In that namespace /run, /var/lib, /var/log, /var/cache and /etc/libvirt are
empty tmpfs mounts holding only this daemon's configuration and state, /sys
shows the namespace's own links (libvirt reads a macvtap's ifindex there), a
bridge br0 and a veth pair mvparent/mvpeer are there for guests' NICs, and
/etc/passwd and /etc/group are copies with the 'libvirt-qemu' account libvirt
looks up (bind-mounted over the host's inside the namespace only). The daemon
runs emulators as root with no security driver, cgroups or per-VM namespaces,
none of which a test needs. virsh runs inside the same namespaces (nsenter).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

SETUP = r"""
set -e
for d in /run /var/lib /var/log /var/cache /etc/libvirt; do mount -t tmpfs tmpfs "$d"; done
mkdir -p /run/libvirt /var/lib/libvirt /var/log/libvirt /var/cache/libvirt
cp /etc/passwd /etc/group /run/
echo "libvirt-qemu:x:64055:64055::/var/lib/libvirt:/usr/sbin/nologin" >> /run/passwd
echo "libvirt-qemu:x:64055:" >> /run/group
echo "kvm:x:64056:" >> /run/group
mount --bind /run/passwd /etc/passwd
mount --bind /run/group /etc/group
cat > /etc/libvirt/libvirtd.conf <<EOF
unix_sock_group = "root"
unix_sock_rw_perms = "0770"
auth_unix_rw = "none"
log_outputs = "3:stderr"
EOF
cat > /etc/libvirt/qemu.conf <<EOF
user = "root"
group = "root"
dynamic_ownership = 0
remember_owner = 0
security_driver = "none"
cgroup_controllers = [ ]
namespaces = [ ]
stdio_handler = "file"
EOF
mount -t sysfs sysfs /sys
ip link set lo up
ip link add br0 type bridge
ip link set br0 up
ip link add mvparent type veth peer name mvpeer
ip link set mvparent up
ip link set mvpeer up
exec libvirtd -f /etc/libvirt/libvirtd.conf
"""


class LibvirtUnavailable(Exception):
    pass


class Libvirtd:
    def __init__(self, log_path: str) -> None:
        for tool in ("libvirtd", "virsh", "unshare", "nsenter", "ip"):
            if shutil.which(tool) is None:
                raise LibvirtUnavailable(f"{tool} is not installed")
        if os.geteuid() != 0:
            raise LibvirtUnavailable("the system libvirtd needs root")
        self.log = open(log_path, "wb")
        self.proc = subprocess.Popen(
            ["unshare", "--mount", "--net", "--propagation", "private", "sh", "-c", SETUP],
            stdout=self.log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        self.transcript: list[str] = []
        deadline = time.monotonic() + 30
        while True:
            if self.proc.poll() is not None:
                raise LibvirtUnavailable(f"libvirtd exited: {open(log_path).read()[-2000:]}")
            if self._virsh("version").returncode == 0:
                break
            if time.monotonic() > deadline:
                self.close()
                raise LibvirtUnavailable("libvirtd did not answer within 30 s")
            time.sleep(0.2)

    def _virsh(self, *args: str, timeout: float = 120) -> subprocess.CompletedProcess:
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "-n",
                               "virsh", "-c", "qemu:///system", *args],
                              capture_output=True, text=True, timeout=timeout)

    def virsh(self, *args: str, check: bool = True) -> str:
        """Runs one virsh command; its line and output go into the transcript."""
        result = self._virsh(*args)
        output = (result.stdout + result.stderr).rstrip()
        self.transcript.append(f"$ virsh {' '.join(args)}\n{output}")
        if check and result.returncode != 0:
            raise AssertionError(f"virsh {' '.join(args)} failed:\n{output}")
        return result.stdout

    def in_namespace(self, *argv: str) -> str:
        return subprocess.run(["nsenter", "-t", str(self.proc.pid), "-m", "-n", *argv],
                              capture_output=True, text=True, timeout=30).stdout

    def close(self) -> None:
        """Ends any guest still running (libvirtd leaves them), then the daemon."""
        if self.proc.poll() is None:
            for name in self._virsh("list", "--name").stdout.split():
                self._virsh("destroy", name)
        self.proc.terminate()
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.log.close()
