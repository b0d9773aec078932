"""The PIIX3 IDE controller with an ATA disk and an ATAPI CD-ROM, driven by the
probe guest's driver (vmm/probe/src/ide.c) on QEMU 7.2 and kvmkit: IDENTIFY,
PIO and DMA transfers (LBA28 and LBA48) that the host file sees, an ISO read
through packet commands, media changed at the monitor as the guest sees it,
and a locked tray; then the same guest questions asked of both VMMs at once,
and the monitor's text for IDE machines compared with QEMU's."""

from __future__ import annotations

import os
import re
import time

import pytest
from guest import QEMU, QmpLine, kvmkit_command, machine_args, probe_elf, start_with_qmp

pytestmark = pytest.mark.kvm

SECTOR, CD_SECTOR = 512, 2048
NOT_READY, UNIT_ATTENTION = 2, 6


def disk_image(path, sectors: int = 8192):
    """Every sector names itself, so a read shows where it came from."""
    path.write_bytes(b"".join(f"sector{n:08d}-".encode().ljust(SECTOR, b".")
                              for n in range(sectors)))
    return path


def iso_image(path, blocks: int, tag: str):
    path.write_bytes(b"".join(f"{tag}{n:07d}-".encode().ljust(CD_SECTOR, b"#")
                              for n in range(blocks)))
    return path


def words(identify: dict) -> list[int]:
    text = identify["words"]
    return [int(text[i:i + 4], 16) for i in range(0, len(text), 4)]


def ata_string(ws: list[int]) -> str:
    return b"".join(bytes((w >> 8, w & 0xFF)) for w in ws).decode().strip()


def save_and_restore(vmm_kind: str, tmp_path, drives: list[str], prepare):
    """`virsh save`'s way: a guest with these drives, ``prepare(vm)`` run on it,
    then stopped and migrated to a file; restored in a new VMM and continued. The
    restored guest and its QMP (the caller closes the guest)."""
    from test_migration import qmp_status, start, wait_for_socket, wait_migration
    saved = tmp_path / "saved.vm"
    src_qmp, dst_qmp = str(tmp_path / "src.sock"), str(tmp_path / "dst.sock")
    src = start(vmm_kind, machine_args(extra=drives + [
        "-qmp", f"unix:{src_qmp},server=on,wait=off"]), str(tmp_path))
    try:
        src.wait_event("ready", timeout=60)
        prepare(src)
        source = QmpLine(src_qmp)
        source.execute("stop")
        assert source.execute("migrate", uri=f"exec:cat > {saved}") == {"return": {}}
        assert wait_migration(source)["status"] == "completed"
        source.execute("quit")
    finally:
        src.close()
    dst = start(vmm_kind, machine_args(extra=drives + [
        "-incoming", f"exec:cat {saved}", "-qmp", f"unix:{dst_qmp},server=on,wait=off"]),
        str(tmp_path))
    destination = wait_for_socket(dst, dst_qmp)
    while qmp_status(destination) == "inmigrate":
        time.sleep(0.1)
    destination.execute("cont")
    return dst, destination


def test_disk_identify_pio_and_dma(launch, tmp_path, vmm_kind):
    image = disk_image(tmp_path / "disk.img")
    vm = launch(machine_args(extra=["-drive", f"file={image},format=raw,if=ide,discard=unmap"]),
                vmm_kind)
    vm.wait_event("ready", timeout=60)

    identify = vm.command("ide identify 0 0")
    assert identify["present"] and not identify["packet"] and identify["irq"] == 1
    w = words(identify)
    assert ata_string(w[27:47]) == "QEMU HARDDISK" and ata_string(w[10:20]) == "QM00001"
    assert ata_string(w[23:27]) == "2.5+"
    assert (w[1], w[3], w[6]) == (8, 16, 63)               # QEMU's guess for 4 MiB
    assert w[60] | w[61] << 16 == 8192 and w[100] == 8192   # LBA28 and LBA48 capacity
    assert w[83] & (1 << 10) and w[49] & (1 << 8)           # LBA48, DMA
    assert w[85] & (1 << 5)                                 # cache=writeback: cache on
    assert vm.command("ide identify 0 1")["present"] is False     # no slave

    # Reads by PIO, READ MULTIPLE and DMA, each with the IRQ and the registers
    # pointing past the transfer.
    for mode in ("pio", "mult", "dma"):
        read = vm.command(f"ide read 0 0 300 20 {mode}")
        assert read["head"].startswith("sector00000300-"), (mode, read)
        assert (read["status"], read["error"], read["irq"]) == (0x50, 0, 1)
        assert read["lba"] == [320 & 0xFF, 320 >> 8, 0]
    assert vm.command("ide read 0 0 5000 300 dma 48")["head"].startswith("sector00005000-")

    # Writes by PIO and by DMA (LBA48), which the host then finds in the file.
    assert vm.command("ide write 0 0 10 3 pio piowrite")["status"] == 0x50
    assert vm.command("ide write 0 0 6000 40 dma dmawrite 48")["status"] == 0x50
    assert vm.command("ide flush 0 0")["status"] == 0x50
    data = image.read_bytes()
    assert data[10 * SECTOR:13 * SECTOR] == (b"piowrite" * 192)[:3 * SECTOR]
    assert data[6000 * SECTOR:6040 * SECTOR] == (b"dmawrite" * 2560)[:40 * SECTOR]
    assert data[13 * SECTOR:13 * SECTOR + 15] == b"sector00000013-"
    assert vm.command("ide read 0 0 6000 40 pio 48")["head"].startswith("dmawrite")

    # TRIM (IDENTIFY offers it): with discard=unmap the range reads back as zeroes.
    assert w[169] & 1
    assert vm.command("ide trim 0 0 4096 64")["status"] == 0x50
    trimmed = vm.command("ide read 0 0 4096 2 pio")
    assert trimmed["head"] == "" and trimmed["status"] == 0x50
    assert image.read_bytes()[4096 * SECTOR:4160 * SECTOR] == bytes(64 * SECTOR)
    assert vm.command("ide trim 0 0 8190 4")["error"] == 0x04       # past the end

    # Past the end: aborted (ERR, ABRT) after the sectors that exist.
    past = vm.command("ide read 0 0 8190 4 dma")
    assert (past["status"], past["error"], past["irq"]) == (0x41, 0x04, 1)


def test_cdrom_reads_and_media_change(launch, tmp_path, vmm_kind):
    first = iso_image(tmp_path / "first.iso", 300, "first")
    second = iso_image(tmp_path / "second.iso", 700, "second")
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=["-cdrom", str(first),
                                    "-qmp", f"unix:{sock},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)

    assert vm.command("ide identify 1 0")["packet"] == 1
    inquiry = bytes.fromhex(vm.command("atapi 1 0 inquiry")["data"])
    assert inquiry[0] == 5 and inquiry[8:32] == b"QEMU    QEMU DVD-ROM    "
    assert vm.command("atapi 1 0 tur")["status"] == 0x50
    assert vm.command("atapi 1 0 capacity")["data"] == f"{299:08x}00000800"
    for mode in ("pio", "dma"):
        read = vm.command(f"atapi 1 0 read 17 30 {mode}")
        assert read["length"] == 30 * CD_SECTOR and read["irq"] == 1
        assert bytes.fromhex(read["data"]).startswith(b"first0000017-")

    assert qmp.execute("blockdev-change-medium", device="ide1-cd0",
                       filename=str(second), format="raw") == {"return": {}}
    moved = [e["data"] for e in qmp.events if e["event"] == "DEVICE_TRAY_MOVED"]
    assert moved == [{"device": "ide1-cd0", "id": "/machine/unattached/device[20]",
                      "tray-open": True},
                     {"device": "ide1-cd0", "id": "/machine/unattached/device[20]",
                      "tray-open": False}]
    # The guest is told: an event, then "no medium" once, then a unit attention.
    assert bytes.fromhex(vm.command("atapi 1 0 gesn")["data"])[4:6] == b"\x02\x02"
    not_ready = vm.command("atapi 1 0 tur")
    assert (not_ready["status"], not_ready["error"] >> 4) == (0x41, NOT_READY)
    attention = vm.command("atapi 1 0 tur")
    assert attention["error"] >> 4 == UNIT_ATTENTION
    sense = bytes.fromhex(vm.command("atapi 1 0 sense")["data"])
    assert (sense[2], sense[12]) == (UNIT_ATTENTION, 0x28)
    assert vm.command("atapi 1 0 tur")["status"] == 0x50
    assert vm.command("atapi 1 0 capacity")["data"] == f"{699:08x}00000800"
    assert bytes.fromhex(vm.command("atapi 1 0 read 650 1 dma")["data"]).startswith(
        b"second0000650-")
    info = qmp.execute("query-block")["return"][0]
    assert info["inserted"]["file"] == str(second) and info["tray_open"] is False


def test_locked_tray_refuses_eject_until_forced(launch, tmp_path, vmm_kind):
    iso = iso_image(tmp_path / "disc.iso", 64, "disc")
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=["-drive", f"file={iso},format=raw,if=ide,media=cdrom,"
                                    "index=1",
                                    "-qmp", f"unix:{sock},server=on,wait=off"]), vmm_kind)
    vm.wait_event("ready", timeout=60)
    qmp = QmpLine(sock)
    assert vm.command("atapi 0 1 lock 1")["status"] == 0x50
    assert qmp.execute("query-block")["return"][0]["locked"] is True
    refused = qmp.execute("eject", device="ide0-cd1")
    assert refused["error"]["desc"] == ("Device 'ide0-cd1' is locked and force was not "
                                        "specified, wait for tray to open and try again")
    assert bytes.fromhex(vm.command("atapi 0 1 gesn")["data"])[4] == 1   # eject request
    assert vm.command("atapi 0 1 tur")["status"] == 0x50                  # still there
    eject = vm.command("atapi 0 1 eject")        # the guest cannot either: it is locked
    assert (eject["status"], eject["error"] >> 4) == (0x41, NOT_READY)
    assert qmp.execute("eject", device="ide0-cd1", force=True) == {"return": {}}
    info = qmp.execute("query-block")["return"][0]
    assert "inserted" not in info and info["tray_open"] is True and info["locked"] is False
    gone = vm.command("atapi 0 1 tur")
    assert (gone["status"], gone["error"] >> 4) == (0x41, NOT_READY)
    assert qmp.hmp("info block").splitlines()[:3] == [
        "ide0-cd1: [not inserted]", "    Attached to:      /machine/unattached/device[20]",
        "    Removable device: not locked, tray open"]
    # The guest closes the tray again: an event the monitor reports.
    assert vm.command("atapi 0 1 load")["status"] == 0x50
    assert qmp.execute("query-block")["return"][0]["tray_open"] is False
    assert [e["data"]["tray-open"] for e in qmp.events
            if e["event"] == "DEVICE_TRAY_MOVED"] == [True, False]


@pytest.mark.qemu
def test_guest_sees_the_same_controller_as_on_qemu(tmp_path):
    """Word for word and byte for byte: IDENTIFY of both kinds, the signatures after
    a reset, transfers and their registers, and the packet commands' replies."""
    commands = ["ide identify 0 0", "ide identify 1 0", "ide identify 0 1",
                "ide signature 0 0", "ide signature 1 0", "ide read 0 0 5 2 pio",
                "ide read 0 0 5 40 mult", "ide read 0 0 7 3 dma 48",
                "ide read 0 0 8190 10 pio", "ide features 0 0 3 70", "ide identify 0 0",
                "ide features 0 0 130 0", "ide identify 0 0", "ide features 0 0 2 0",
                "ide features 0 0 99 0", "ide identify 0 0",
                "ide cmd 0 0 229 0", "ide cmd 0 0 248 0", "ide cmd 0 0 1 0",
                "ide trim 0 0 100 8", "ide trim 0 0 8190 4", "ide read 0 0 1 1 pio",
                "atapi 1 0 inquiry", "atapi 1 0 tur", "atapi 1 0 sense", "atapi 1 0 capacity",
                "atapi 1 0 read 3 2 pio", "atapi 1 0 read 3 40 dma", "atapi 1 0 toc",
                "atapi 1 0 config", "atapi 1 0 gesn", "atapi 1 0 mode 42", "atapi 1 0 mode 1",
                "atapi 1 0 mode 63", "atapi 1 0 read 60 10 pio", "atapi 1 0 sense"]
    answers = {}
    for name, command in (("qemu", [QEMU, "-accel", "kvm"]), ("kvmkit", kvmkit_command())):
        from guest import Vmm
        image = disk_image(tmp_path / f"{name}.img")
        iso = iso_image(tmp_path / f"{name}.iso", 64, "cd")
        vm = Vmm(command + machine_args(extra=["-hda", str(image), "-cdrom", str(iso)]))
        try:
            vm.wait_event("ready", timeout=60)
            answers[name] = [vm.command(c, timeout=60) for c in commands]
        finally:
            vm.close()
    for command, theirs, ours in zip(commands, answers["qemu"], answers["kvmkit"]):
        assert ours == theirs, command


@pytest.mark.qemu
def test_monitor_shows_ide_as_qemu_does(tmp_path):
    """A disk and three CD-ROMs (one a -device): info block, info
    qtree, query-block and the media commands' answers, as QEMU's. Each VMM has
    its own images of the same names (its working directory)."""
    procs = []
    for name in ("q", "k"):
        (tmp_path / name).mkdir()
        disk_image(tmp_path / name / "disk.img", 2048)
        iso_image(tmp_path / name / "disc.iso", 64, "disc")
        common = ["-m", "128", "-nodefaults", "-display", "none", "-kernel", probe_elf(),
                  "-drive", "file=disk.img,format=raw,if=ide,cache=writethrough",
                  "-drive", "file=disc.iso,format=raw,if=ide,index=1,media=cdrom",
                  "-cdrom", "disc.iso", "-drive", "if=none,id=spare,file=disc.iso,"
                  "format=raw,readonly=on", "-device", "ide-cd,drive=spare,id=cd9,bus=ide.1"]
        argv = [QEMU, "-accel", "kvm", *common] if name == "q" else kvmkit_command() + common
        directory = str(tmp_path / name)
        procs.append(start_with_qmp(argv, str(tmp_path / f"{name}.sock"),
                                    preexec_fn=lambda d=directory: os.chdir(d)))
    node = re.compile(r"#block\d+")
    try:
        q, k = QmpLine(str(tmp_path / "q.sock")), QmpLine(str(tmp_path / "k.sock"))
        assert node.sub("#block", k.hmp("info block")) == node.sub("#block", q.hmp("info block"))

        def ide_part(text: str) -> str:
            return text[text.index("      dev: piix3-ide"):text.index("      dev: PIIX3")]
        deadline = time.monotonic() + 20          # until SeaBIOS has placed the BMDMA BAR
        while "0xffffffffffffffff" in (theirs := ide_part(q.hmp("info qtree"))):
            assert time.monotonic() < deadline
            time.sleep(0.2)
        assert ide_part(k.hmp("info qtree")) == theirs
        asks = [("query-block", {}), ("eject", {"id": "cd9"}), ("eject", {"device": "nope"}),
                ("eject", {"device": "ide0-hd0"}), ("blockdev-open-tray", {"id": "cd9"}),
                ("blockdev-close-tray", {"id": "cd9"}), ("blockdev-open-tray", {}),
                ("blockdev-change-medium", {"id": "cd9", "filename": "/nonexistent"}),
                ("blockdev-insert-medium", {"id": "cd9", "node-name": "none"}),
                ("blockdev-remove-medium", {"id": "cd9"}), ("query-block", {}),
                ("device_add", {"driver": "ide-hd", "drive": "spare", "bus": "ide.1"}),
                ("device_add", {"driver": "ide-cd", "bus": "ide.0", "unit": 3})]
        for name, args in asks:
            ours, theirs = k.execute(name, **args), q.execute(name, **args)
            assert node.sub("#block", str(ours)) == node.sub("#block", str(theirs)), name
        for line in ("eject ide1-cd0", "change ide0-cd1 /nonexistent", "eject -f nope",
                     "change", "info block ide1-cd0", "change ide1-cd0 disc.iso raw",
                     "info block"):
            assert node.sub("#block", k.hmp(line)) == node.sub("#block", q.hmp(line)), line
    finally:
        for proc in procs:
            proc.kill()
            proc.wait()


@pytest.mark.parametrize("args, message", [
    (["-drive", "file=IMG,format=raw,if=ide,unit=2"], "unit 2 too big (max is 1)"),
    (["-drive", "file=IMG,format=raw,if=ide,bus=2"],
     "machine type does not support if=ide,bus=2,unit=0"),
    (["-drive", "if=ide,index=0"], "Device needs media, but drive is empty"),
    (["-hda", "IMG", "-drive", "file=IMG,format=raw,index=0,media=cdrom"],
     "drive with bus=0, unit=0 (index=0) exists"),
    (["-drive", "file=IMG,format=raw,media=disk2"], "'disk2' invalid media"),
    (["-device", "ide-hd"], "No drive specified"),
    (["-drive", "if=none,id=x,file=IMG,format=raw", "-device", "ide-hd,drive=x,unit=2"],
     "Can't create IDE unit 2, bus supports only 2 units"),
    (["-drive", "if=none,id=x,file=IMG,format=raw,readonly=on", "-device", "ide-hd,drive=x"],
     "Block node is read-only"),
])
def test_command_line_errors_are_qemus(tmp_path, args, message):
    import subprocess
    image = disk_image(tmp_path / "disk.img", 64)
    argv = [a.replace("IMG", str(image)) for a in args]
    out = subprocess.run(kvmkit_command() + ["-nodefaults", "-display", "none", "-S", *argv],
                         capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert out.returncode == 1 and message in out.stderr, out.stderr


def test_disk_and_cdrom_state_survive_save_and_restore(tmp_path, vmm_kind):
    """`virsh save`/`restore` of a guest with an IDE disk and a locked CD-ROM: the
    lock, the medium and both drives' data are the same after the restore."""
    image = disk_image(tmp_path / "disk.img", 2048)
    iso = iso_image(tmp_path / "disc.iso", 64, "disc")

    def prepare(vm):
        assert vm.command("ide write 0 0 100 8 dma before-save")["status"] == 0x50
        assert vm.command("atapi 1 0 lock 1")["status"] == 0x50

    dst, destination = save_and_restore(vmm_kind, tmp_path, [
        "-drive", f"file={image},format=raw,if=ide", "-cdrom", str(iso)], prepare)
    try:
        cd = next(b for b in destination.execute("query-block")["return"]
                  if b["device"] == "ide1-cd0")
        assert cd["locked"] is True and cd["inserted"]["file"] == str(iso)
        assert destination.execute("eject", device="ide1-cd0")["error"]["desc"].startswith(
            "Device 'ide1-cd0' is locked")
        assert dst.command("ide read 0 0 100 8 pio")["head"].startswith("before-save")
        assert dst.command("ide read 0 0 200 4 dma")["head"].startswith("sector00000200-")
        assert bytes.fromhex(dst.command("atapi 1 0 read 9 1 pio")["data"]).startswith(
            b"disc0000009-")
    finally:
        dst.close()


@pytest.mark.qemu
@pytest.mark.parametrize("extra", [[], ["-smp", "2", "-serial", "null", "-serial", "null"]])
def test_default_cdrom_is_qemus(tmp_path, extra):
    """Without -nodefaults both VMMs have an empty CD-ROM, ide1-cd0, named in QOM
    as QEMU's board names it."""
    answers = []
    for name, argv in (("q", [QEMU, "-accel", "kvm"]), ("k", kvmkit_command())):
        sock = str(tmp_path / f"{name}.sock")
        proc = start_with_qmp(argv + ["-S", "-display", "none", "-m", "128", *extra], sock)
        try:
            blocks = QmpLine(sock).execute("query-block")["return"]
            answers.append(next(b for b in blocks if b["device"] == "ide1-cd0"))
        finally:
            proc.kill()
            proc.wait()
    assert answers[1] == answers[0]
    assert "inserted" not in answers[0] and answers[0]["tray_open"] is False


def test_a_hostile_guest_cannot_break_the_controller(launch, tmp_path):
    """Random task file writes, commands, data port traffic and bus-master
    programming (PRD tables outside RAM among them) on both channels: kvmkit stays
    up, its I/O threads keep serving, and after a software reset the disk and the
    CD-ROM work as before."""
    import random
    image = disk_image(tmp_path / "disk.img", 2048)
    iso = iso_image(tmp_path / "disc.iso", 64, "disc")
    sock = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=["-hda", str(image), "-cdrom", str(iso),
                                    "-qmp", f"unix:{sock},server=on,wait=off"]))
    vm.wait_event("ready", timeout=60)
    assert vm.command("ide identify 0 0")["present"]
    assert vm.command("outl 0xcf8 0x80000920") == {"ok": True}          # BAR4 of 00:01.1
    bm = int(vm.command("inl 0xcfc")["value"], 16) & ~3
    rng = random.Random(16)
    commands = (0x20, 0x24, 0x25, 0x30, 0x35, 0xC4, 0xC5, 0xC8, 0xCA, 0xEC, 0xA1, 0xA0,
                0x06, 0xEF, 0x91, 0x08, 0xE7, 0x27, 0xF8, 0x90, 0xC6)
    for _ in range(400):
        ch = rng.randrange(2)
        base, control, bm_base = (0x1F0, 0x3F6, bm) if ch == 0 else (0x170, 0x376, bm + 8)
        op = rng.randrange(9)
        if op == 0:
            line = f"outb {base + rng.randrange(1, 7)} {rng.randrange(256)}"
        elif op == 1:
            line = f"outb {base + 7} {rng.choice(commands + (rng.randrange(256),))}"
        elif op == 2:
            line = f"outw {base} {rng.randrange(65536)}"
        elif op == 3:
            line = f"inw {base}"
        elif op == 4:
            line = f"inb {base + rng.randrange(8)}"
        elif op == 5:
            line = f"outb {control} {rng.choice((0, 2, 4, 0x80, rng.randrange(256)))}"
        elif op == 6:
            line = f"outb {bm_base} {rng.choice((0, 1, 8, 9, rng.randrange(256)))}"
        elif op == 7:
            line = f"outb {bm_base + 2} {rng.randrange(256)}"
        else:               # the PRD table: in the probe's free RAM, or not RAM at all
            line = f"outl {bm_base + 4} {rng.choice((0x1000000, 0x1800000, 0xF0000000))}"
        assert "error" not in vm.command(line, timeout=30), line
    qmp = QmpLine(sock)
    assert qmp.execute("query-status")["return"]["status"] == "running"
    for ch in (0, 1):
        vm.command(f"outb {0x3F6 if ch == 0 else 0x376} 0")      # interrupts on
        vm.command(f"outb {bm + 8 * ch} 0")                        # bus master stopped
        assert vm.command(f"ide signature {ch} 0")["error"] == 1
    assert vm.command("ide read 0 0 40 8 dma")["head"].startswith("sector00000040-")
    assert vm.command("ide read 0 0 9 2 pio")["head"].startswith("sector00000009-")
    assert bytes.fromhex(vm.command("atapi 1 0 read 5 2 dma")["data"]).startswith(
        b"disc0000005-")
    assert "Traceback" not in vm.stderr


def test_a_transfer_halfway_through_survives_save_and_restore(tmp_path, vmm_kind):
    """Saved with a PIO read half read on ide.0 and a DMA read waiting for the bus
    master's START on ide.1: after the restore the guest reads on from the same
    word, and the DMA runs when started."""
    image = disk_image(tmp_path / "disk.img", 2048)
    second = disk_image(tmp_path / "second.img", 2048)
    prd, buffer = 0x2000000, 0x2001000
    bm = 0

    def prepare(vm):
        nonlocal bm
        assert vm.command("ide identify 0 0")["present"]           # the controller set up
        assert vm.command("outl 0xcf8 0x80000920") == {"ok": True}
        bm = int(vm.command("inl 0xcfc")["value"], 16) & ~3
        # ide.0: READ SECTORS of sector 77, four words taken
        for line in ("outb 0x1f6 0xe0", "outb 0x1f2 1", "outb 0x1f3 77", "outb 0x1f4 0",
                     "outb 0x1f5 0", "outb 0x1f7 0x20"):
            vm.command(line)
        deadline = time.monotonic() + 10       # the sector is read: BSY off, DRQ on
        while int(vm.command("inb 0x3f6")["value"], 16) & 0x88 != 0x08:
            assert time.monotonic() < deadline
        words = [int(vm.command("inw 0x1f0")["value"], 16) for _ in range(4)]
        assert b"".join(w.to_bytes(2, "little") for w in words) == b"sector00"
        # ide.1: READ DMA of sector 300 into `buffer`, not started
        for line in (f"writel {prd} {buffer}", f"writel {prd + 4} {0x80000200}",
                     f"outl {bm + 12} {prd}", f"outb {bm + 10} 6", f"outb {bm + 8} 8",
                     "outb 0x176 0xe0", "outb 0x172 1", "outb 0x173 44", "outb 0x174 1",
                     "outb 0x175 0", "outb 0x177 0xc8"):
            vm.command(line)

    dst, _ = save_and_restore(vmm_kind, tmp_path, [
        "-drive", f"file={image},format=raw,if=ide,index=0",
        "-drive", f"file={second},format=raw,if=ide,index=2"], prepare)
    try:
        words = [int(dst.command("inw 0x1f0")["value"], 16) for _ in range(4)]
        assert b"".join(w.to_bytes(2, "little") for w in words) == b"000077-."
        assert dst.command(f"outb {bm + 8} 9") == {"ok": True}      # START
        deadline = time.monotonic() + 10
        while int(dst.command(f"inb {bm + 10}")["value"], 16) & 1:  # still active
            assert time.monotonic() < deadline

        def read(address: int) -> bytes:
            return int(dst.command(f"readl {address}")["value"], 16).to_bytes(4, "little")
        assert read(buffer) + read(buffer + 4) + read(buffer + 8) + read(buffer + 12) == \
            b"sector00000300-."
        assert int(dst.command("inb 0x177")["value"], 16) == 0x50
    finally:
        dst.close()
