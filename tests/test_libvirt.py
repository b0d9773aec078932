"""libvirt 9.0 manages kvmkit as it manages QEMU 7.2: the same virsh session, with
the probe guest as the domain's <kernel>, run once with each as the <emulator>.

The daemon is Debian's, in namespaces of the test's own (tests/libvirt_daemon.py).
Each step checks what the guest and the host see, not only virsh's word: the
guest's console reports the balloon and the NIC coming and going, the VMM's RSS
shows the memory given back, and the monitor answers through libvirt."""

from __future__ import annotations

import json
import os
import re
import shutil
import socket
import tempfile
import time
from pathlib import Path

import pytest
from conftest import REQUIRE_KVM, require_kvm, require_qemu
from guest import QEMU, kvmkit_command, probe_elf
from libvirt_daemon import Libvirtd, LibvirtUnavailable

MEMORY_MIB, BALLOON_TO_MIB = 512, 96
DOMAIN = """<domain type='kvm'>
  <name>{name}</name>
  <memory unit='MiB'>{memory}</memory>
  <currentMemory unit='MiB'>{memory}</currentMemory>
  <vcpu>1</vcpu>
  <os>
    <type arch='x86_64' machine='pc'>hvm</type>
    <kernel>{kernel}</kernel>
  </os>
  <features><acpi/></features>
  <on_poweroff>destroy</on_poweroff>
  <devices>
    <emulator>{emulator}</emulator>
    <serial type='unix'><source mode='bind' path='{console}'/></serial>
    <memballoon model='virtio'><stats period='1'/></memballoon>
  </devices>
</domain>
"""
NICS = {
    "user": "<interface type='user'><mac address='52:54:00:6b:76:01'/>"
            "<model type='virtio'/></interface>",
    "bridge": "<interface type='bridge'><mac address='52:54:00:6b:76:02'/>"
              "<source bridge='br0'/><model type='virtio'/></interface>",
    # macvtap on a veth: libvirt makes the link, opens /dev/tapN and passes its fd
    "direct": "<interface type='direct'><mac address='52:54:00:6b:76:03'/>"
              "<source dev='mvparent' mode='bridge'/><model type='virtio'/></interface>",
}


@pytest.fixture(scope="module")
def libvirtd(tmp_path_factory):
    require_kvm()
    try:
        daemon = Libvirtd(str(tmp_path_factory.mktemp("libvirtd") / "libvirtd.log"))
    except LibvirtUnavailable as e:
        if REQUIRE_KVM:
            pytest.fail(f"libvirt is needed in CI (the tests' install step adds it): {e}")
        pytest.skip(str(e))
    yield daemon
    daemon.close()


class Console:
    """The guest's COM1, a unix socket libvirt listens on: JSON lines."""

    def __init__(self, path: str) -> None:
        deadline = time.monotonic() + 30
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.1)
        self.sock.settimeout(60)
        self.buffer = b""

    def line(self) -> dict:
        while b"\n" not in self.buffer:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise AssertionError("the guest's console closed")
            self.buffer += chunk
        line, self.buffer = self.buffer.split(b"\n", 1)
        return json.loads(line)

    def wait_event(self, name: str) -> dict:
        while True:
            message = self.line()
            if message.get("event") == name:
                return message

    def write_and_flush(self, sector: int, text: str) -> None:
        """The probe writes a sector of its virtio-blk disk, then flushes it."""
        assert self.command(f"blk write {sector} {text}") == {"status": 0}
        assert self.command("blk flush") == {"status": 0}

    def command(self, text: str) -> dict:
        self.sock.sendall(text.encode() + b"\n")
        while True:
            message = self.line()
            if "event" not in message:
                return message


def _memstat(daemon: Libvirtd, name: str) -> dict[str, int]:
    return {k: int(v) for k, v in (line.split() for line in
                                   daemon.virsh("dommemstat", name).splitlines() if line)}


def _domain_xml(tmp_path, vmm: str, name: str, memory_mib: int) -> tuple[Path, str, str]:
    """The domain's XML with that VMM as its emulator: (its file, a directory for
    its sockets, the console socket's path)."""
    if vmm == "qemu":
        require_qemu()
    emulator = shutil.which(QEMU) if vmm == "qemu" else kvmkit_command()[0]
    sockets = tempfile.mkdtemp(prefix="lv-", dir="/tmp")         # sun_path is short
    console_path = os.path.join(sockets, "console.sock")
    xml = tmp_path / "domain.xml"
    xml.write_text(DOMAIN.format(name=name, memory=memory_mib, kernel=probe_elf(),
                                 emulator=emulator, console=console_path))
    return xml, sockets, console_path


def _boot(libvirtd: Libvirtd, xml: Path, name: str, console_path: str) -> tuple[Console, dict]:
    """define, start --paused (so the console is there from the first line), resume:
    the guest's console and its ready event."""
    libvirtd.virsh("define", str(xml))
    libvirtd.virsh("start", name, "--paused")
    console = Console(console_path)
    libvirtd.virsh("resume", name)
    return console, console.wait_event("ready")


@pytest.mark.parametrize("vmm", ["qemu", "kvmkit"])
def test_virsh_manages_the_vmm(libvirtd, tmp_path, vmm):
    name = f"probe-{vmm}"
    xml, sockets, console_path = _domain_xml(tmp_path, vmm, name, MEMORY_MIB)
    virsh = libvirtd.virsh
    libvirtd.transcript.clear()
    try:
        console, ready = _boot(libvirtd, xml, name, console_path)
        assert ready["memory_mib"] >= MEMORY_MIB - 1
        # libvirt asks both for its default seccomp sandbox, and both run under it
        command_line = libvirtd.in_namespace("cat", f"/var/log/libvirt/qemu/{name}.log")
        assert "-sandbox on,obsolete=deny,elevateprivileges=deny,spawn=deny," \
               "resourcecontrol=deny" in command_line, command_line[-3000:]
        pid = int(libvirtd.in_namespace("cat", f"/run/libvirt/qemu/{name}.pid"))
        assert "Seccomp:\t2" in open(f"/proc/{pid}/status").read()
        info = virsh("dominfo", name)
        assert re.search(r"State:\s+running", info), info
        assert re.search(rf"Max memory:\s+{MEMORY_MIB * 1024} KiB", info), info

        # the monitor, through libvirt, in both languages
        assert virsh("qemu-monitor-command", name, "--hmp", "info status").strip() == \
            "VM status: running"
        reply = json.loads(virsh("qemu-monitor-command", name, '{"execute":"query-status"}'))
        assert reply["return"] == {"status": "running", "singlestep": False, "running": True}

        # setmem --live inflates the guest's balloon; the host gets the memory back
        assert console.command("touch 400 7")["errors"] == 0
        before = _memstat(libvirtd, name)
        assert before["actual"] == MEMORY_MIB * 1024
        virsh("setmem", name, f"{BALLOON_TO_MIB}M", "--live")
        event = console.wait_event("balloon")
        assert event["actual_pages"] == (MEMORY_MIB - BALLOON_TO_MIB) * 256
        deadline = time.monotonic() + 10
        while (after := _memstat(libvirtd, name))["actual"] != BALLOON_TO_MIB * 1024:
            assert time.monotonic() < deadline, after
            time.sleep(0.2)
        assert before["rss"] - after["rss"] >= 300 * 1024, (before, after)
        assert "usable" in after and "last_update" in after      # the guest's own stats

        # a virtio NIC, plugged and unplugged while running: user networking, a tap
        # on a bridge and a macvtap link (libvirt opens the tap and hands it over
        # with getfd)
        for kind, nic in NICS.items():
            nic_xml = tmp_path / f"nic-{kind}.xml"
            nic_xml.write_text(nic)
            virsh("attach-device", name, str(nic_xml), "--live")
            added = console.wait_event("pci-added")
            assert (added["vendor"], added["device"]) == ("1af4", "1000")
            assert re.search(rf"{kind}\s+.*virtio\s+52:54:00:6b:76:0", virsh("domiflist", name))
            network = virsh("qemu-monitor-command", name, "--hmp", "info network")
            assert "model=virtio-net-pci" in network and \
                f"type={'user' if kind == 'user' else 'tap'}" in network, network
            virsh("detach-device", name, str(nic_xml), "--live")
            assert console.wait_event("pci-ejected")["slot"] == added["slot"]
            deadline = time.monotonic() + 10
            while "virtio" in virsh("domiflist", name):
                assert time.monotonic() < deadline, "the NIC never left libvirt's list"
                time.sleep(0.2)

        virsh("suspend", name)
        assert virsh("domstate", name).strip() == "paused"
        assert json.loads(virsh("qemu-monitor-command", name, '{"execute":"query-status"}')
                          )["return"]["status"] == "paused"
        virsh("resume", name)
        assert virsh("domstate", name).strip() == "running"
        assert console.command("touch 1 8")["errors"] == 0         # the guest runs again

        virsh("destroy", name)
        assert virsh("domstate", name).strip() == "shut off"
        virsh("undefine", name)
        assert name not in virsh("list", "--all", "--name").split()
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        Path(tmp_path / "virsh-transcript.txt").write_text("\n".join(libvirtd.transcript))
        shutil.rmtree(sockets, ignore_errors=True)


@pytest.mark.parametrize("vmm", ["qemu", "kvmkit"])
def test_virsh_save_and_restore(libvirtd, tmp_path, vmm):
    """`virsh save` (stop, getfd, migrate to the fd, through libvirt's iohelper) and
    `virsh restore` (-incoming defer, migrate-incoming): the guest's memory is back
    and it runs on."""
    name = f"saved-{vmm}"
    xml, sockets, console_path = _domain_xml(tmp_path, vmm, name, 256)
    saved = tmp_path / "domain.save"
    virsh = libvirtd.virsh
    libvirtd.transcript.clear()
    try:
        console, _ = _boot(libvirtd, xml, name, console_path)
        assert console.command("touch 64 6")["errors"] == 0
        virsh("save", name, str(saved))
        assert virsh("domstate", name).strip() == "shut off"
        assert saved.stat().st_size > 64 << 20
        virsh("restore", str(saved))
        assert virsh("domstate", name).strip() == "running"
        console = Console(console_path)
        assert console.command("check 64 6")["errors"] == 0
        assert console.command("touch 1 2")["errors"] == 0         # and it runs on
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        Path(tmp_path / "virsh-transcript.txt").write_text("\n".join(libvirtd.transcript))
        shutil.rmtree(sockets, ignore_errors=True)


def _enum(caps, path: str, name: str) -> set[str]:
    element = caps.find(f"{path}/enum[@name='{name}']")
    return {v.text for v in element.findall("value")} if element is not None else set()


def test_domcapabilities_report_what_kvmkit_has(libvirtd):
    """What libvirt derives from kvmkit's answers (its types, properties, schema and
    CPU models) is what kvmkit has. (libvirt adds on its own what it assumes every
    QEMU has: firmware loaders, cdrom/floppy/lun disks on ide/fdc/scsi, host device
    kinds, 9p filesystems, channels.)"""
    import xml.etree.ElementTree as ET

    caps = ET.fromstring(libvirtd.virsh("domcapabilities", "--emulatorbin",
                                        kvmkit_command()[0]))
    assert caps.findtext("machine") == "pc-i440fx-7.2"
    assert caps.findtext("domain") == "kvm"
    assert _enum(caps, "memoryBacking", "sourceType") == {"file", "anonymous", "memfd"}
    assert _enum(caps, "devices/graphics", "type") == {"vnc"}
    assert _enum(caps, "devices/video", "modelType") == {"none", "vga", "cirrus"}
    assert _enum(caps, "devices/rng", "backendModel") == {"random", "builtin"}
    assert not _enum(caps, "devices/disk", "bus") & {"usb", "sata"}
    assert _enum(caps, "devices/hostdev", "pciBackend") == set()   # no VFIO
    assert caps.find("features/backup").get("supported") == "yes"    # block jobs, bitmaps
    for element in ("devices/tpm", "devices/redirdev", "features/sev", "features/sgx",
                    "features/vmcoreinfo", "features/genid"):
        assert caps.find(element).get("supported") == "no", element
    custom = caps.find("cpu/mode[@name='custom']")
    models = {m.text for m in custom.findall("model")}
    assert {"qemu64", "Opteron_G1", "SandyBridge", "EPYC", "Skylake-Client"} <= models


IDE_DISKS = """    <disk type='file' device='disk'>
      <driver name='qemu' type='raw'/><source file='{disk}'/><target dev='hda' bus='ide'/>
    </disk>
    <disk type='file' device='cdrom'>
      <driver name='qemu' type='raw'/><source file='{iso}'/><target dev='hdc' bus='ide'/>
      <readonly/>
    </disk>
  </devices>"""


@pytest.mark.parametrize("vmm", ["qemu", "kvmkit"])
def test_virsh_ide_disk_and_cdrom_change_media(libvirtd, tmp_path, vmm):
    """A domain with an IDE disk and CD-ROM (libvirt's -blockdev nodes under
    -device ide-hd/ide-cd): the guest uses both; `virsh change-media` swaps the
    CD (open tray, remove, insert, close: the guest sees the new medium) and
    ejects it."""
    name = f"ide-{vmm}"
    xml, sockets, console_path = _domain_xml(tmp_path, vmm, name, 128)
    disk, first, second = tmp_path / "disk.img", tmp_path / "first.iso", tmp_path / "second.iso"
    disk.write_bytes(b"".join(f"sector{n:08d}-".encode().ljust(512, b".") for n in range(2048)))
    for path, tag, blocks in ((first, "first", 32), (second, "second", 48)):
        path.write_bytes(b"".join(f"{tag}{n:07d}-".encode().ljust(2048, b"#")
                                  for n in range(blocks)))
    xml.write_text(xml.read_text().replace("  </devices>", IDE_DISKS.format(
        disk=disk, iso=first)))
    virsh = libvirtd.virsh
    libvirtd.transcript.clear()
    try:
        console, _ = _boot(libvirtd, xml, name, console_path)
        assert console.command("ide read 0 0 100 4 dma")["head"].startswith("sector00000100-")
        assert bytes.fromhex(console.command("atapi 1 0 read 3 1 pio")["data"]).startswith(
            b"first0000003-")
        virsh("change-media", name, "hdc", str(second), "--update")
        assert console.command("atapi 1 0 tur")["error"] >> 4 == 2         # not ready,
        assert console.command("atapi 1 0 tur")["error"] >> 4 == 6         # then changed
        assert bytes.fromhex(console.command("atapi 1 0 sense")["data"])[12] == 0x28
        assert console.command("atapi 1 0 capacity")["data"] == f"{47:08x}00000800"
        assert bytes.fromhex(console.command("atapi 1 0 read 40 1 dma")["data"]).startswith(
            b"second0000040-")
        virsh("change-media", name, "hdc", "--eject")
        assert console.command("atapi 1 0 tur")["error"] >> 4 == 2
        assert f"{second}" not in virsh("domblklist", name)
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        Path(tmp_path / "virsh-transcript.txt").write_text("\n".join(libvirtd.transcript))
        shutil.rmtree(sockets, ignore_errors=True)


VIRTIO_DISK = """    <disk type='file' device='disk'>
      <driver name='qemu' type='qcow2'/><source file='{disk}'/><target dev='vda' bus='virtio'/>
    </disk>
  </devices>"""


def _qemu_img_info(image: Path) -> dict:
    import subprocess
    return json.loads(subprocess.run(["qemu-img", "info", "-U", "--output=json", str(image)],
                                     check=True, capture_output=True, text=True).stdout)


def _own_clusters(image: Path) -> set[int]:
    """The 64 KiB clusters an image holds data for itself (qemu-img map, depth 0)."""
    import subprocess
    out = json.loads(subprocess.run(["qemu-img", "map", "-U", "--output=json", str(image)],
                                    check=True, capture_output=True, text=True).stdout)
    return {offset // 65536 for extent in out if extent["depth"] == 0 and extent["data"]
            for offset in range(extent["start"], extent["start"] + extent["length"], 65536)}


def _guest_text(image: Path, sector: int) -> bytes:
    """What the guest wrote at a sector, read through the image's chain."""
    import subprocess
    raw = image.with_suffix(".raw")
    subprocess.run(["qemu-img", "convert", "-U", "-O", "raw", str(image), str(raw)],
                   check=True)
    data = raw.read_bytes()[sector * 512:(sector + 1) * 512]
    raw.unlink()
    return data.rstrip(b"\0")


@pytest.mark.parametrize("vmm", ["qemu", "kvmkit"])
def test_virsh_snapshot_commit_pull_and_copy(libvirtd, tmp_path, vmm):
    """libvirt's block operations on a running guest's qcow2 disk, each done with
    -blockdev's commands (block-stream, blockdev-create, transaction,
    block-commit, blockdev-mirror and the job verbs): a pull of the backing
    chain, a disk-only external snapshot, an active commit with pivot and a copy
    with pivot. The guest's writes land in the image each step says."""
    import subprocess
    name = f"blockjobs-{vmm}"
    xml, sockets, console_path = _domain_xml(tmp_path, vmm, name, 128)
    base, disk = tmp_path / "base.qcow2", tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(base), "8M"], check=True)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", "write -P 0x5a 0 1M", str(base)],
                   check=True, capture_output=True)
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2",
                    str(disk)], check=True)
    xml.write_text(xml.read_text().replace("  </devices>", VIRTIO_DISK.format(disk=disk)))
    overlay, copy = tmp_path / "overlay.qcow2", tmp_path / "copy.qcow2"
    virsh = libvirtd.virsh
    libvirtd.transcript.clear()
    try:
        console, _ = _boot(libvirtd, xml, name, console_path)

        write = console.write_and_flush
        write(6000, "before-snapshot")
        virsh("blockpull", name, "vda", "--wait")
        assert console.command("blk flush") == {"status": 0}     # QEMU's L2 cache too
        assert "backing-filename" not in _qemu_img_info(disk)
        assert _guest_text(disk, 10) == b"\x5a" * 512
        virsh("snapshot-create-as", name, "s1", "--disk-only", "--no-metadata",
              "--diskspec", f"vda,file={overlay}")
        assert str(overlay) in virsh("domblklist", name)
        write(6100, "in-the-overlay")
        assert _qemu_img_info(overlay)["backing-filename"] == str(disk)
        assert _guest_text(disk, 6100) == b""
        virsh("blockcommit", name, "vda", "--active", "--pivot", "--wait")
        assert console.command("blk flush") == {"status": 0}
        assert str(disk) in virsh("domblklist", name)
        assert _guest_text(disk, 6100) == b"in-the-overlay"
        virsh("blockcopy", name, "vda", str(copy), "--wait", "--pivot", "--transient-job")
        assert str(copy) in virsh("domblklist", name)
        write(6200, "after-the-copy")
        assert [_guest_text(copy, s) for s in (6000, 6100, 6200)] == \
            [b"before-snapshot", b"in-the-overlay", b"after-the-copy"]
        assert _guest_text(disk, 6200) == b""
    finally:
        virsh("destroy", name, check=False)
        virsh("undefine", name, check=False)
        Path(tmp_path / "virsh-transcript.txt").write_text("\n".join(libvirtd.transcript))
        shutil.rmtree(sockets, ignore_errors=True)


BACKUP = """<domainbackup mode='push'>{incremental}
  <disks><disk name='vda' type='file'><target file='{target}'/><driver type='qcow2'/></disk>
  </disks>
</domainbackup>"""


@pytest.mark.parametrize("vmm", ["qemu", "kvmkit"])
def test_virsh_full_and_incremental_backup(libvirtd, tmp_path, vmm):
    """`virsh backup-begin` in push mode, as OpenStack-style tooling takes backups:
    a full backup, a checkpoint (a persistent dirty bitmap in the qcow2 image), the
    guest writes, then an incremental backup holding just what it wrote."""
    import subprocess
    name = f"backup-{vmm}"
    xml, sockets, console_path = _domain_xml(tmp_path, vmm, name, 128)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "8M"], check=True)
    xml.write_text(xml.read_text().replace("  </devices>", VIRTIO_DISK.format(disk=disk)))
    full, incremental = tmp_path / "full.qcow2", tmp_path / "incremental.qcow2"
    virsh = libvirtd.virsh
    libvirtd.transcript.clear()

    def backup(target: Path, since: str = "") -> None:
        spec = tmp_path / f"{target.stem}.xml"
        spec.write_text(BACKUP.format(target=target, incremental=(
            f"<incremental>{since}</incremental>" if since else "")))
        virsh("backup-begin", name, str(spec))
        deadline = time.monotonic() + 60
        while "Backup" in virsh("domjobinfo", name):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert "Completed" in virsh("domjobinfo", name, "--completed")

    try:
        console, _ = _boot(libvirtd, xml, name, console_path)

        write = console.write_and_flush
        write(100, "in-the-full-backup")
        virsh("checkpoint-create-as", name, "cp1")
        backup(full)
        write(9000, "after-the-checkpoint")
        backup(incremental, since="cp1")
        assert _guest_text(full, 100) == b"in-the-full-backup"
        assert _guest_text(full, 9000) == b""
        assert _guest_text(incremental, 9000) == b"after-the-checkpoint"
        # the incremental image holds the cluster written since cp1, not the others
        # (it may back onto another image, which then supplies them)
        own = _own_clusters(incremental)
        assert (9000 * 512) // 65536 in own and (100 * 512) // 65536 not in own
    finally:
        virsh("destroy", name, check=False)
        virsh("checkpoint-delete", name, "cp1", "--metadata", check=False)
        virsh("undefine", name, "--checkpoints-metadata", check=False)
        Path(tmp_path / "virsh-transcript.txt").write_text("\n".join(libvirtd.transcript))
        shutil.rmtree(sockets, ignore_errors=True)
