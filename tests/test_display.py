"""The display: -vga std|cirrus (VGA text mode, the legacy registers, Bochs VBE) and
screendump, with the probe guest writing the screen on kvmkit and on QEMU 7.2."""

from __future__ import annotations

import pytest
from guest import machine_args

from vmm.devices.vga import VgaCore

pytestmark = pytest.mark.kvm

TEXT = [(0, 0, 0x07, "kvmkit screendump"), (3, 10, 0x1E, "yellow on blue"),
        (24, 70, 0x4F, "last row!")]


def read_ppm(path) -> tuple[int, int, bytes]:
    data = open(path, "rb").read()
    magic, size, depth, pixels = data.split(b"\n", 3)
    width, height = (int(v) for v in size.split())
    assert magic == b"P6" and depth == b"255" and len(pixels) == width * height * 3
    return width, height, pixels


def read_png(path) -> tuple[int, int, bytes]:
    """Any PNG (QEMU's libpng filters its rows), decoded by Pillow; ours is checked
    to be the plain kind screendump writes: 8-bit RGB."""
    from PIL import Image

    with Image.open(path) as image:
        assert image.mode == "RGB"
        return image.size[0], image.size[1], image.tobytes()


def glyph(c: int) -> list[int]:
    """The probe's test font (vga.c)."""
    return [((c * 7 + r * 29) ^ (r << 4)) & 0xFF for r in range(16)]


def screen_text(width: int, pixels: bytes, rows: int = 25, columns: int = 80) -> list[str]:
    """Reads the characters back out of a 9x16-cell text screen drawn in the test
    font: a cell's foreground pixels spell its glyph."""
    fonts = {tuple(glyph(c)): c for c in range(256)}
    lines = []
    for row in range(rows):
        line = ""
        for col in range(columns):
            cell_rows = []
            for y in range(16):
                base = ((row * 16 + y) * width + col * 9) * 3
                px = [pixels[base + 3 * x:base + 3 * x + 3] for x in range(9)]
                background = pixels[((row * 16 + 15) * width + col * 9 + 8) * 3:][:3]
                cell_rows.append(sum(1 << (7 - x) for x in range(8) if px[x] != background))
            line += chr(fonts.get(tuple(cell_rows), ord("?")))
        lines.append(line)
    return lines


def write_screen(vm) -> None:
    assert vm.command("vga font") == {"vga": "font"}
    assert vm.command("vga cursor off") == {"vga": "cursor"}
    assert vm.command("vga clear 7") == {"vga": "clear"}
    for row, col, attr, text in TEXT:
        assert vm.command(f"vga text {row} {col} {attr} {text}")["chars"] == len(text)


@pytest.fixture
def shown(launch, tmp_path):
    """shown(vmm, vga) -> (width, height, RGB) of the probe's text screen."""
    from guest import QmpLine

    def run(kind: str, vga: str = "std", fmt: str = "ppm"):
        sock = str(tmp_path / f"{kind}-{vga}.sock")
        vm = launch(machine_args(extra=["-vga", vga, "-qmp", f"unix:{sock},server=on,wait=off"]),
                    kind)
        vm.wait_event("ready", timeout=60)
        write_screen(vm)
        path = tmp_path / f"{kind}-{vga}.{fmt}"
        reply = QmpLine(sock).execute("screendump", filename=str(path), format=fmt)
        assert reply == {"return": {}}
        return read_png(path) if fmt == "png" else read_ppm(path)
    return run


@pytest.mark.qemu
def test_text_screen_is_qemus_pixel_for_pixel(shown):
    """The probe loads a font and writes text in colours; screendump gives the same
    720x400 image on kvmkit and on QEMU 7.2, and the text reads back from it."""
    ours, theirs = shown("kvmkit"), shown("qemu")
    assert ours[:2] == theirs[:2] == (720, 400)
    assert ours == theirs
    lines = screen_text(720, ours[2])
    assert lines[0].startswith("kvmkit screendump ") and lines[3][10:24] == "yellow on blue"
    assert lines[24][70:] == "last row! "
    # yellow (0xE) on blue (0x1): the cell's first pixel is background blue
    cell = ((3 * 16) * 720 + 10 * 9) * 3
    assert ours[2][cell:cell + 3] == bytes((0, 0, 0xA8))


def test_png_and_cirrus_show_the_same_screen(shown):
    std = shown("kvmkit", "std", "png")
    cirrus = shown("kvmkit", "cirrus", "ppm")
    assert std == cirrus and screen_text(720, std[2])[3][10:24] == "yellow on blue"


def test_vbe_linear_mode_renders_the_framebuffer():
    core = VgaCore(vram_mb=4)
    for index, value in ((1, 64), (2, 32), (3, 32), (4, 0x41)):     # 64x32x32, LFB
        core.vbe_write(index, value)
    assert core.vbe_read(0) == 0xB0C5 and core.vbe_read(1) == 64
    core.vram[4 * (5 * 64 + 7):4 * (5 * 64 + 7) + 4] = bytes((0x30, 0x20, 0x10, 0))   # BGRX
    width, height, rgb = core.render()
    assert (width, height) == (64, 32)
    assert rgb[3 * (5 * 64 + 7):3 * (5 * 64 + 7) + 3] == bytes((0x10, 0x20, 0x30))
    core.vbe_write(4, 0x02)                                        # GETCAPS, disabled
    assert (core.vbe_read(1), core.vbe_read(2), core.vbe_read(3)) == (16000, 12000, 32)
    assert core.render()[:2] == (640, 200)      # VBE off: the VGA registers VBE set
    core.reset()
    assert core.render()[:2] == (720, 400)      # reset: text mode 3, as a BIOS leaves it


def test_planar_write_modes_and_latches():
    core = VgaCore(vram_mb=1)
    core.port_write(0x3C4, 4), core.port_write(0x3C5, 0x06)        # planar, no chain-4
    core.port_write(0x3CE, 5), core.port_write(0x3CF, 0x00)        # write mode 0
    core.port_write(0x3CE, 6), core.port_write(0x3CF, 0x05)        # graphics, A0000 64K
    core.port_write(0x3C4, 2), core.port_write(0x3C5, 0x0F)        # all planes
    core.port_write(0x3CE, 1), core.port_write(0x3CF, 0x05)        # set/reset planes 0, 2
    core.port_write(0x3CE, 0), core.port_write(0x3CF, 0x01)        # ... plane 0 to ones
    core.mem_write(0x10, 0xAA)
    assert bytes(core.vram[0x40:0x44]) == bytes((0xFF, 0xAA, 0x00, 0xAA))
    core.port_write(0x3CE, 1), core.port_write(0x3CF, 0x00)
    core.port_write(0x3CE, 5), core.port_write(0x3CF, 0x01)        # write mode 1: latches
    assert core.mem_read(0x10) == 0xFF                             # read plane 0, latch
    core.mem_write(0x20, 0)
    assert bytes(core.vram[0x80:0x84]) == bytes((0xFF, 0xAA, 0x00, 0xAA))


@pytest.mark.qemu
@pytest.mark.parametrize("extra", [[], ["-vga", "std"]])
def test_screendump_errors_are_qemus(tmp_path, extra):
    from guest import QEMU, kvmkit_command, qmp_answers

    commands = [("screendump", {"filename": str(tmp_path / "x.ppm"), "device": "nosuch"}),
                ("screendump", {"filename": "/nonexistent/dir/x.ppm"})]
    ours = qmp_answers(kvmkit_command() + extra, str(tmp_path / "k.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm"] + extra, str(tmp_path / "q.sock"), commands)
    assert ours == theirs


def test_screen_and_ram_migrate_with_the_vga_window(tmp_path, launch):
    """The VGA's registers and video memory go with a migration, and guest RAM on
    both sides of the window KVM no longer maps (0xA0000) is still dirty-logged."""
    from guest import QmpLine
    from test_migration import wait_for_socket, wait_migration

    def args(name: str) -> list[str]:
        return machine_args(memory_mib=64, extra=[
            "-vga", "std", "-qmp", f"unix:{tmp_path}/{name}.sock,server=on,wait=off"])
    src = launch(args("src"))
    src.wait_event("ready", timeout=60)
    write_screen(src)
    source = QmpLine(str(tmp_path / "src.sock"))
    assert source.execute("screendump", filename=str(tmp_path / "before.ppm")) == \
        {"return": {}}
    assert src.command("touch 8 5", timeout=60)["errors"] == 0
    dst = launch(args("dst") + ["-incoming", f"unix:{tmp_path}/stream.sock"])
    target = wait_for_socket(dst, str(tmp_path / "dst.sock"))
    assert source.execute("migrate", uri=f"unix:{tmp_path}/stream.sock") == {"return": {}}
    assert wait_migration(source)["status"] == "completed"
    assert dst.command("check 8 5", timeout=60)["errors"] == 0
    assert target.execute("screendump", filename=str(tmp_path / "after.ppm")) == \
        {"return": {}}
    assert read_ppm(tmp_path / "after.ppm") == read_ppm(tmp_path / "before.ppm")
    assert screen_text(720, read_ppm(tmp_path / "after.ppm")[2])[24][70:79] == "last row!"


def test_the_vga_window_splits_ram_slots_and_their_dirty_log():
    """KVM maps RAM around the window in two slots; the dirty log of the region is
    the two slots' logs at their places, nothing for the window itself."""
    from vmm.memory import GuestMemory

    class Vm:
        def __init__(self):
            self.slots: dict[int, tuple[int, int]] = {}

        def set_user_memory_region(self, slot, gpa, size, host, flags=0):
            if size:
                self.slots[slot] = (gpa, size)
            else:
                self.slots.pop(slot, None)

        def get_dirty_log(self, slot, bitmap):
            pages = self.slots[slot][1] // 4096          # every page of the slot dirty
            for page in range(pages):
                bitmap[page // 8] |= 1 << (page % 8)

    memory, vm = GuestMemory(4 << 20), Vm()
    memory.set_slots(vm)
    assert vm.slots == {0: (0, 4 << 20)}
    memory.add_hole(vm, 0xA0000, 0x20000)
    assert vm.slots == {0: (0, 0xA0000), 1: (0xC0000, (4 << 20) - 0xC0000)}
    bitmap = bytearray(4 << 20 >> 12 >> 3)
    memory.get_dirty_log(vm, 0, bitmap)
    dirty = [page for page in range(len(bitmap) * 8) if bitmap[page // 8] >> (page % 8) & 1]
    assert dirty == list(range(0xA0)) + list(range(0xC0, 0x400))


@pytest.mark.qemu
def test_vbe_linear_mode_is_qemus_pixel_for_pixel(launch, tmp_path):
    """The probe sets a 64x48, 32-bit Bochs VBE mode and fills the framebuffer
    through BAR0: screendump shows the same picture on kvmkit and on QEMU 7.2."""
    from guest import QmpLine

    shots = {}
    for kind in ("kvmkit", "qemu"):
        sock = str(tmp_path / f"{kind}-vbe.sock")
        vm = launch(machine_args(extra=["-vga", "std", "-qmp",
                                        f"unix:{sock},server=on,wait=off"]), kind)
        vm.wait_event("ready", timeout=60)
        assert vm.command("vga vbe 64 48", timeout=60) == {"vga": "vbe", "id": 0xB0C5,
                                                           "fb": 1}
        path = tmp_path / f"{kind}-vbe.ppm"
        assert QmpLine(sock).execute("screendump", filename=str(path)) == {"return": {}}
        shots[kind] = read_ppm(path)
    assert shots["kvmkit"] == shots["qemu"]
    width, height, rgb = shots["kvmkit"]
    assert (width, height) == (64, 48)
    x, y = 10, 20
    assert rgb[3 * (y * 64 + x):3 * (y * 64 + x) + 3] == bytes((40, 80, x ^ y))
