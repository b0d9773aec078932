"""VGA and cirrus-vga: QEMU's standard VGA (1234:1111) with Bochs VBE, and the
Cirrus CLGD 5446's PCI identity (1013:00b8) over the same VGA core.

The VGA core has the legacy registers (0x3B0-0x3DF), the memory window at
0xA0000-0xBFFFF in all four of its mappings, planar, odd/even and chain-4
access, the four write modes and both read modes. Video memory is kept as QEMU
keeps it: byte ``o`` of plane ``p`` is vram[4 * o + p], so chain-4 and VBE modes
see it as linear. Bochs VBE (ports 0x1CE/0x1CF, and BAR2 on the standard VGA)
sets linear modes of 8-32 bits per pixel in the BAR0 framebuffer.

kvmkit boots without firmware, so a reset leaves the card as a VGA BIOS leaves
it: in text mode 3 (80x25), with the 8x16 font in plane 2 when the host has one
(a PSF console font from Debian's kbd), else blank glyphs until the guest loads
a font, which it can always do the usual way. render() draws what the monitor
shows (screendump): text with the attribute palette and DAC, 16- and 256-colour
modes and VBE.

The cirrus-vga device answers with Cirrus's IDs and the VGA core only: its
blitter and extended (SR/GR/CR above the standard set) registers are absent, so
Cirrus drivers must fall back to VGA or VESA modes.
"""

from __future__ import annotations

import gzip
import os
import struct

from vmm.pci import PciDevice
from vmm.qdev import DeviceType, Prop, declare

VRAM_DEFAULT_MB = 16
WINDOW_BASE, WINDOW_SIZE = 0xA0000, 0x20000
VBE_INDEX_PORT = 0x1CE
VBE_ID5 = 0xB0C5
VBE_MAX_XRES, VBE_MAX_YRES, VBE_MAX_BPP = 16000, 12000, 32
VBE_ENABLED, VBE_GETCAPS, VBE_8BIT_DAC, VBE_LFB, VBE_NOCLEARMEM = 0x01, 0x02, 0x20, 0x40, 0x80
(VBE_ID, VBE_XRES, VBE_YRES, VBE_BPP, VBE_ENABLE, VBE_BANK, VBE_VIRT_WIDTH, VBE_VIRT_HEIGHT,
 VBE_X_OFFSET, VBE_Y_OFFSET, VBE_VIDEO_MEMORY_64K) = range(11)

# Mode 3 as a VGA BIOS leaves it (the published standard register values)
MODE3_MISC = 0x67
MODE3_SEQ = (0x03, 0x00, 0x03, 0x00, 0x02)
MODE3_CRTC = (0x5F, 0x4F, 0x50, 0x82, 0x55, 0x81, 0xBF, 0x1F, 0x00, 0x4F, 0x0D, 0x0E, 0x00,
              0x00, 0x00, 0x00, 0x9C, 0x8E, 0x8F, 0x28, 0x1F, 0x96, 0xB9, 0xA3, 0xFF)
MODE3_GC = (0x00, 0x00, 0x00, 0x00, 0x00, 0x10, 0x0E, 0x00, 0xFF)
MODE3_AC = (0x00, 0x01, 0x02, 0x03, 0x04, 0x05, 0x14, 0x07, 0x38, 0x39, 0x3A, 0x3B, 0x3C,
            0x3D, 0x3E, 0x3F, 0x0C, 0x00, 0x0F, 0x08, 0x00)
FONT_MAP_OFFSETS = (0x0000, 0x4000, 0x8000, 0xC000, 0x2000, 0x6000, 0xA000, 0xE000)
FONT_PATHS = ("/usr/share/consolefonts/default8x16.psf.gz",
              "/usr/share/consolefonts/Lat15-Fixed16.psf.gz",
              "/usr/share/kbd/consolefonts/default8x16.psfu.gz")


def _ega_palette() -> list[tuple[int, int, int]]:
    """The 64-entry EGA-compatible DAC palette a BIOS loads for text modes (6 bits)."""
    def level(high: int, low: int) -> int:
        return 0x2A * high + 0x15 * low
    return [(level(i >> 2 & 1, i >> 5 & 1), level(i >> 1 & 1, i >> 4 & 1),
             level(i & 1, i >> 3 & 1)) for i in range(64)]


def load_psf_font(paths=FONT_PATHS) -> list[bytes] | None:
    """256 glyphs of 16 rows from the first PSF (1 or 2) console font found."""
    for path in paths:
        if not os.path.exists(path):
            continue
        try:
            with (gzip.open if path.endswith(".gz") else open)(path, "rb") as f:
                data = f.read()
        except OSError:
            continue
        if data[:2] == b"\x36\x04" and data[3] == 16:                       # PSF1
            return [data[4 + 16 * c:4 + 16 * c + 16] for c in range(256)]
        if data[:4] == b"\x72\xb5\x4a\x86":                                 # PSF2
            size, count, glyph_bytes, height, width = struct.unpack_from("<IIIII", data, 8)[
                :1] + struct.unpack_from("<IIII", data, 16)
            if height == 16 and width <= 8 and count >= 256:
                return [data[size + glyph_bytes * c:size + glyph_bytes * c + 16]
                        for c in range(256)]
    return None


def _c6_to_8(value: int) -> int:
    """A 6-bit DAC component on 8 bits, the low bit repeated below, as QEMU draws it."""
    value &= 0x3F
    low = value & 1
    return (value << 2) | (low << 1) | low


class VgaCore:
    """The registers, video memory and rendering of a VGA with Bochs VBE."""

    def __init__(self, vram_mb: int = VRAM_DEFAULT_MB) -> None:
        self.vram = bytearray(vram_mb << 20)
        self.font = load_psf_font()
        self.writes = 0                     # counts the guest's writes (see render_cached)
        self._cache: tuple[int, tuple[int, int, bytes]] | None = None
        self.reset()

    # -- state -------------------------------------------------------------
    def reset(self) -> None:
        self.writes = getattr(self, "writes", 0) + 1
        self.misc = MODE3_MISC
        self.seq_index, self.seq = 0, bytearray(MODE3_SEQ) + bytes(3)
        self.gc_index, self.gc = 0, bytearray(MODE3_GC) + bytes(7)
        self.crtc_index, self.crtc = 0, bytearray(MODE3_CRTC) + bytes(7)
        self.ac_index, self.ac_flip, self.ac = 0x20, False, bytearray(MODE3_AC) + bytes(11)
        self.dac = bytearray(768)
        for i, rgb in enumerate(_ega_palette()):
            self.dac[3 * i:3 * i + 3] = bytes(rgb)
        self.dac_read, self.dac_write, self.dac_state, self.dac_sub = 0, 0, 0, 0
        self.dac_mask = 0xFF
        self.latch = 0
        self.status_toggle = 0
        self.vbe_index = 0
        self.vbe = [VBE_ID5, 0, 0, 0, 0, 0, 0, 0, 0, 0, len(self.vram) >> 16]
        self.vram[:0x40000] = bytes(0x40000)
        if self.font:
            for c, glyph in enumerate(self.font):
                for row, bits in enumerate(glyph):
                    self.vram[4 * (c * 32 + row) + 2] = bits

    def save_state(self) -> dict:
        return {"regs": [self.misc, bytes(self.seq), bytes(self.gc), bytes(self.crtc),
                         bytes(self.ac), bytes(self.dac), self.seq_index, self.gc_index,
                         self.crtc_index, self.ac_index, self.ac_flip, self.dac_read,
                         self.dac_write, self.dac_state, self.dac_sub, self.dac_mask,
                         self.latch, self.vbe_index, list(self.vbe)],
                "vram": bytes(self.vram)}

    def load_state(self, state: dict) -> None:
        (self.misc, seq, gc, crtc, ac, dac, self.seq_index, self.gc_index, self.crtc_index,
         self.ac_index, self.ac_flip, self.dac_read, self.dac_write, self.dac_state,
         self.dac_sub, self.dac_mask, self.latch, self.vbe_index, vbe) = state["regs"]
        self.seq, self.gc, self.crtc = bytearray(seq), bytearray(gc), bytearray(crtc)
        self.ac, self.dac, self.vbe = bytearray(ac), bytearray(dac), list(vbe)
        self.vram[:] = state["vram"]
        self.writes += 1

    # -- I/O ports 0x3C0-0x3DF (and 0x3B4/0x3B5/0x3BA in mono mode) ---------
    def _color(self) -> bool:
        return bool(self.misc & 1)

    def port_read(self, port: int) -> int:
        if port in (0x3B4, 0x3B5, 0x3BA) and self._color() or \
                port in (0x3D4, 0x3D5, 0x3DA) and not self._color():
            return 0xFF
        if port == 0x3C0:
            return self.ac_index
        if port == 0x3C1:
            return self.ac[self.ac_index & 0x1F] if (self.ac_index & 0x1F) < 21 else 0
        if port == 0x3C2:
            return 0x10                          # input status 0: switch sense
        if port == 0x3C4:
            return self.seq_index
        if port == 0x3C5:
            return self.seq[self.seq_index] if self.seq_index < 5 else 0
        if port == 0x3C6:
            return self.dac_mask
        if port == 0x3C7:
            return self.dac_state
        if port == 0x3C8:
            return self.dac_write
        if port == 0x3C9:
            value = self.dac[self.dac_read * 3 + self.dac_sub]
            self.dac_sub += 1
            if self.dac_sub == 3:
                self.dac_sub, self.dac_read = 0, (self.dac_read + 1) & 0xFF
            return value
        if port == 0x3CC:
            return self.misc
        if port == 0x3CE:
            return self.gc_index
        if port == 0x3CF:
            return self.gc[self.gc_index] if self.gc_index < 9 else 0
        if port in (0x3B4, 0x3D4):
            return self.crtc_index
        if port in (0x3B5, 0x3D5):
            return self.crtc[self.crtc_index] if self.crtc_index < 25 else 0
        if port in (0x3BA, 0x3DA):               # input status 1: retrace bits toggle
            self.ac_flip = False
            self.status_toggle ^= 0x09
            return self.status_toggle
        return 0xFF

    def port_write(self, port: int, value: int) -> None:
        self.writes += 1
        value &= 0xFF
        if port in (0x3B4, 0x3B5, 0x3BA) and self._color() or \
                port in (0x3D4, 0x3D5, 0x3DA) and not self._color():
            return
        if port == 0x3C0:
            if not self.ac_flip:
                self.ac_index = value & 0x3F
            elif (self.ac_index & 0x1F) < 21:
                self.ac[self.ac_index & 0x1F] = value
            self.ac_flip = not self.ac_flip
        elif port == 0x3C2:
            self.misc = value
        elif port == 0x3C4:
            self.seq_index = value & 7
        elif port == 0x3C5 and self.seq_index < 5:
            self.seq[self.seq_index] = value
        elif port == 0x3C6:
            self.dac_mask = value
        elif port == 0x3C7:
            self.dac_read, self.dac_sub, self.dac_state = value, 0, 3
        elif port == 0x3C8:
            self.dac_write, self.dac_sub, self.dac_state = value, 0, 0
        elif port == 0x3C9:
            self.dac[self.dac_write * 3 + self.dac_sub] = value & 0x3F
            self.dac_sub += 1
            if self.dac_sub == 3:
                self.dac_sub, self.dac_write = 0, (self.dac_write + 1) & 0xFF
        elif port == 0x3CE:
            self.gc_index = value & 0xF
        elif port == 0x3CF and self.gc_index < 9:
            self.gc[self.gc_index] = value
        elif port in (0x3B4, 0x3D4):
            self.crtc_index = value & 0x3F
        elif port in (0x3B5, 0x3D5) and self.crtc_index < 25:
            if self.crtc_index <= 7 and self.crtc[0x11] & 0x80:     # write-protected
                if self.crtc_index == 7:
                    self.crtc[7] = (self.crtc[7] & ~0x10) | (value & 0x10)
                return
            self.crtc[self.crtc_index] = value

    # -- Bochs VBE ----------------------------------------------------------
    def vbe_read(self, index: int) -> int:
        if index >= len(self.vbe):
            return 0
        if self.vbe[VBE_ENABLE] & VBE_GETCAPS and index in (VBE_XRES, VBE_YRES, VBE_BPP):
            return {VBE_XRES: VBE_MAX_XRES, VBE_YRES: VBE_MAX_YRES, VBE_BPP: VBE_MAX_BPP}[index]
        return self.vbe[index]

    def vbe_write(self, index: int, value: int) -> None:
        self.writes += 1
        value &= 0xFFFF
        if index == VBE_ID:
            if 0xB0C0 <= value <= VBE_ID5:
                self.vbe[VBE_ID] = value
        elif index == VBE_BPP:
            self.vbe[VBE_BPP] = value if value in (4, 8, 15, 16, 24, 32) else 8
        elif index in (VBE_XRES, VBE_YRES, VBE_BANK, VBE_X_OFFSET, VBE_Y_OFFSET):
            self.vbe[index] = value
        elif index == VBE_VIRT_WIDTH:
            self.vbe[VBE_VIRT_WIDTH] = value
        elif index == VBE_ENABLE:
            was = self.vbe[VBE_ENABLE] & VBE_ENABLED
            self.vbe[VBE_ENABLE] = value
            if value & VBE_ENABLED and not was:
                self.vbe[VBE_VIRT_WIDTH] = self.vbe[VBE_XRES]
                self.vbe[VBE_VIRT_HEIGHT] = self.vbe[VBE_YRES]
                self.vbe[VBE_X_OFFSET] = self.vbe[VBE_Y_OFFSET] = 0
                if not value & VBE_NOCLEARMEM:
                    size = self._vbe_stride() * self.vbe[VBE_YRES]
                    self.vram[:min(size, len(self.vram))] = bytes(min(size, len(self.vram)))
                self.gc[6] = (self.gc[6] & ~0x0C) | 0x05        # graphics, A0000 64K
                self.seq[4] |= 0x08                              # chain-4
                self.crtc[0x17] |= 3

    def _vbe_bytes_per_pixel(self) -> int:
        return (self.vbe[VBE_BPP] + 7) // 8

    def _vbe_stride(self) -> int:
        """Bytes per line of the virtual screen (15 bpp takes 16 bits a pixel)."""
        bpp = self.vbe[VBE_BPP]
        width = self.vbe[VBE_VIRT_WIDTH] or self.vbe[VBE_XRES]
        return width * (16 if bpp == 15 else bpp) // 8

    # -- the memory window --------------------------------------------------
    def _window(self, offset: int) -> int | None:
        """``offset`` from 0xA0000 relative to the mapped window, or None outside it."""
        base, size = ((0, 0x20000), (0, 0x10000), (0x10000, 0x8000), (0x18000, 0x8000))[
            self.gc[6] >> 2 & 3]
        return offset - base if base <= offset < base + size else None

    def mem_read(self, offset: int) -> int:
        addr = self._window(offset)
        if addr is None:
            return 0xFF
        if self.vbe[VBE_ENABLE] & VBE_ENABLED:
            index = (self.vbe[VBE_BANK] << 16) + addr
            return self.vram[index] if index < len(self.vram) else 0xFF
        if self.seq[4] & 0x08:                                       # chain-4
            return self.vram[addr]
        if self.gc[5] & 0x10:                                        # odd/even
            plane = (self.gc[4] & 2) | (addr & 1)
            return self.vram[((addr & ~1) << 1) | plane]
        self.latch = int.from_bytes(self.vram[4 * addr:4 * addr + 4], "little")
        if not self.gc[5] & 0x08:                                    # read mode 0
            return self.latch >> (8 * (self.gc[4] & 3)) & 0xFF
        compare, care = self.gc[2] & 0xF, self.gc[7] & 0xF          # read mode 1
        result = 0
        for bit in range(8):
            pixel = sum((self.latch >> (8 * p + bit) & 1) << p for p in range(4))
            if (pixel ^ compare) & care == 0:
                result |= 1 << bit
        return result

    def mem_write(self, offset: int, value: int) -> None:
        self.writes += 1
        addr = self._window(offset)
        if addr is None:
            return
        value &= 0xFF
        if self.vbe[VBE_ENABLE] & VBE_ENABLED:
            index = (self.vbe[VBE_BANK] << 16) + addr
            if index < len(self.vram):
                self.vram[index] = value
            return
        mask = self.seq[2] & 0xF
        if self.seq[4] & 0x08:                                       # chain-4
            if mask & (1 << (addr & 3)):
                self.vram[addr] = value
            return
        if self.gc[5] & 0x10:                                        # odd/even
            plane = (self.gc[4] & 2) | (addr & 1)
            if mask & (1 << plane):
                self.vram[((addr & ~1) << 1) | plane] = value
            return
        self._planar_write(addr, value, mask)

    def _planar_write(self, addr: int, value: int, mask: int) -> None:
        mode = self.gc[5] & 3
        bit_mask = self.gc[8]
        if mode == 1:
            word = self.latch
        else:
            if mode == 0:
                rotate = self.gc[3] & 7
                value = ((value >> rotate) | (value << (8 - rotate))) & 0xFF
                word = value * 0x01010101
                enable = self.gc[1] & 0xF
                set_reset = sum(0xFF << (8 * p) for p in range(4) if self.gc[0] >> p & 1)
                spread = sum(0xFF << (8 * p) for p in range(4) if enable >> p & 1)
                word = (word & ~spread) | (set_reset & spread)
            elif mode == 2:
                word = sum(0xFF << (8 * p) for p in range(4) if value >> p & 1)
            else:                                                    # mode 3
                rotate = self.gc[3] & 7
                value = ((value >> rotate) | (value << (8 - rotate))) & 0xFF
                bit_mask &= value
                word = sum(0xFF << (8 * p) for p in range(4) if self.gc[0] >> p & 1)
            op = self.gc[3] >> 3 & 3
            if op == 1:
                word &= self.latch
            elif op == 2:
                word |= self.latch
            elif op == 3:
                word ^= self.latch
            full = bit_mask * 0x01010101
            word = (word & full) | (self.latch & ~full)
        for plane in range(4):
            if mask >> plane & 1:
                self.vram[4 * addr + plane] = word >> (8 * plane) & 0xFF

    # -- what the screen shows -----------------------------------------------
    def _palette_rgb(self, index: int) -> bytes:
        index &= self.dac_mask
        r, g, b = self.dac[3 * index:3 * index + 3]
        if self.vbe[VBE_ENABLE] & VBE_8BIT_DAC:
            return bytes((r, g, b))
        return bytes((_c6_to_8(r), _c6_to_8(g), _c6_to_8(b)))

    def _attribute_color(self, color: int) -> bytes:
        ac = self.ac[color & 0xF]
        if self.ac[0x10] & 0x80:
            index = (ac & 0x0F) | ((self.ac[0x14] & 0x0F) << 4)
        else:
            index = (ac & 0x3F) | ((self.ac[0x14] & 0x0C) << 4)
        return self._palette_rgb(index)

    def render_cached(self) -> tuple[int, int, bytes]:
        """render(), drawn again only once the guest has written to the card."""
        if self._cache is None or self._cache[0] != self.writes:
            self._cache = (self.writes, self.render())
        return self._cache[1]

    def render(self) -> tuple[int, int, bytes]:
        """(width, height, RGB bytes) of the screen as the card shows it now."""
        if self.vbe[VBE_ENABLE] & VBE_ENABLED:
            return self._render_vbe()
        if self.gc[6] & 1:
            return self._render_graphics()
        return self._render_text()

    def _render_vbe(self) -> tuple[int, int, bytes]:
        width, height, bpp = self.vbe[VBE_XRES], self.vbe[VBE_YRES], self.vbe[VBE_BPP]
        stride = self._vbe_stride()
        start = self.vbe[VBE_Y_OFFSET] * stride + self.vbe[VBE_X_OFFSET] * \
            self._vbe_bytes_per_pixel()
        out = bytearray()
        palette = [self._palette_rgb(i) for i in range(256)] if bpp <= 8 else None
        for y in range(height):
            row = self.vram[start + y * stride:start + y * stride + width * 4]
            if bpp == 32:
                pixels = bytearray(width * 3)
                pixels[0::3], pixels[1::3], pixels[2::3] = row[2::4][:width], \
                    row[1::4][:width], row[0::4][:width]
                out += pixels
            elif bpp == 24:
                pixels = bytearray(width * 3)
                row = row[:width * 3]
                pixels[0::3], pixels[1::3], pixels[2::3] = row[2::3], row[1::3], row[0::3]
                out += pixels
            elif bpp in (15, 16):
                for (v,) in struct.iter_unpack("<H", row[:width * 2]):
                    if bpp == 16:
                        r, g, b = v >> 11, v >> 5 & 0x3F, v & 0x1F
                        out += bytes(((r << 3) | (r >> 2), (g << 2) | (g >> 4),
                                      (b << 3) | (b >> 2)))
                    else:
                        r, g, b = v >> 10 & 0x1F, v >> 5 & 0x1F, v & 0x1F
                        out += bytes(((r << 3) | (r >> 2), (g << 3) | (g >> 2),
                                      (b << 3) | (b >> 2)))
            else:
                out += b"".join(palette[v] for v in row[:width])
        return width, height, bytes(out)

    def _crtc_geometry(self) -> tuple[int, int]:
        """(displayed character clocks per line, displayed scan lines)."""
        lines = self.crtc[0x12] | (self.crtc[7] >> 1 & 1) << 8 | (self.crtc[7] >> 6 & 1) << 9
        return self.crtc[1] + 1, lines + 1

    def _start_address(self) -> int:
        return self.crtc[0x0C] << 8 | self.crtc[0x0D]

    def _render_graphics(self) -> tuple[int, int, bytes]:
        columns, lines = self._crtc_geometry()
        double_scan = 2 if self.crtc[9] & 0x80 or self.crtc[9] & 0x1F else 1
        height = lines // double_scan
        stride = self.crtc[0x13] * 2
        start = self._start_address()
        out = bytearray()
        if self.gc[5] & 0x40:                        # 256 colours (mode 13h)
            width = columns * 4
            palette = [self._palette_rgb(i) for i in range(256)]
            for y in range(height):
                base = 4 * (start + y * stride)
                pixels = self.vram[base:base + width * 2]
                out += b"".join(palette[pixels[x]] for x in range(0, width * 2, 2)) \
                    if not self.seq[4] & 0x08 else b"".join(palette[v] for v in pixels[:width])
            return width, height, bytes(out)
        width = columns * 8                          # 16 colours, planar
        colors = [self._attribute_color(i) for i in range(16)]
        for y in range(height):
            base = start + y * stride
            for byte in range(columns):
                planes = self.vram[4 * (base + byte):4 * (base + byte) + 4]
                for bit in range(7, -1, -1):
                    out += colors[sum((planes[p] >> bit & 1) << p for p in range(4))
                                  & self.ac[0x12]]
        return width, height, bytes(out)

    def _render_text(self) -> tuple[int, int, bytes]:
        columns, lines = self._crtc_geometry()
        char_height = (self.crtc[9] & 0x1F) + 1
        rows = lines // char_height
        char_width = 8 if self.seq[1] & 1 else 9
        select = self.seq[3]
        font_a = FONT_MAP_OFFSETS[((select >> 5) & 1) << 2 | (select >> 2) & 3]
        font_b = FONT_MAP_OFFSETS[((select >> 4) & 1) << 2 | select & 3]
        colors = [self._attribute_color(i) for i in range(16)]
        blink = bool(self.ac[0x10] & 0x08)
        line_graphics = bool(self.ac[0x10] & 0x04)
        stride = self.crtc[0x13] * 2
        start = self._start_address()
        width, height = columns * char_width, rows * char_height
        out = bytearray(width * height * 3)
        for row in range(rows):
            for col in range(columns):
                cell = 4 * ((start + row * stride + col) & 0xFFFF)
                ch, attr = self.vram[cell], self.vram[cell + 1]
                fg = colors[attr & 0x0F if font_a == font_b or not attr & 8 else attr & 7]
                font = font_b if attr & 8 and font_a != font_b else font_a
                bg = colors[(attr >> 4) & (7 if blink else 0xF)]
                glyph_base = 4 * (font + ch * 32)
                for y in range(char_height):
                    bits = self.vram[glyph_base + 4 * y + 2]
                    ninth = bits & 1 if line_graphics and 0xC0 <= ch <= 0xDF else 0
                    pos = ((row * char_height + y) * width + col * char_width) * 3
                    pixels = b"".join(fg if bits >> (7 - x) & 1 else bg for x in range(8))
                    if char_width == 9:
                        pixels += fg if ninth else bg
                    out[pos:pos + 3 * char_width] = pixels
        return width, height, bytes(out)


class _Ports:
    """0x3B0-0x3DF: the VGA registers."""

    def __init__(self, core: VgaCore, base: int) -> None:
        self.core, self.base = core, base

    def bus_read(self, offset: int, size: int) -> int:
        return sum(self.core.port_read(self.base + offset + i) << (8 * i) for i in range(size))

    def bus_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self.core.port_write(self.base + offset + i, value >> (8 * i) & 0xFF)


class _VbePorts:
    """0x1CE (index) and 0x1CF (data): Bochs VBE, 16 bits wide."""

    def __init__(self, core: VgaCore) -> None:
        self.core = core

    def bus_read(self, offset: int, size: int) -> int:
        if offset == 0:
            return self.core.vbe_index
        return self.core.vbe_read(self.core.vbe_index)

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if offset == 0 and size == 2:
            self.core.vbe_index = value & 0xFFFF
        elif offset == 0:
            self.core.vbe_index = value & 0xFF
        else:
            self.core.vbe_write(self.core.vbe_index, value)


class _Window:
    """0xA0000-0xBFFFF, a byte at a time."""

    def __init__(self, core: VgaCore) -> None:
        self.core = core

    def bus_read(self, offset: int, size: int) -> int:
        return sum(self.core.mem_read(offset + i) << (8 * i) for i in range(size))

    def bus_write(self, offset: int, size: int, value: int) -> None:
        for i in range(size):
            self.core.mem_write(offset + i, value >> (8 * i) & 0xFF)


class _Framebuffer:
    """BAR0: video memory, linear."""

    def __init__(self, core: VgaCore) -> None:
        self.core = core

    def bus_read(self, offset: int, size: int) -> int:
        return int.from_bytes(self.core.vram[offset:offset + size], "little")

    def bus_write(self, offset: int, size: int, value: int) -> None:
        self.core.writes += 1
        self.core.vram[offset:offset + size] = (value & ((1 << (8 * size)) - 1)).to_bytes(
            size, "little")


class _MmioRegisters:
    """BAR2 of the standard VGA: the VGA ports at 0x400, the VBE registers at 0x500,
    QEMU's extended registers at 0x600 (size and endianness)."""

    def __init__(self, core: VgaCore) -> None:
        self.core = core

    def bus_read(self, offset: int, size: int) -> int:
        if 0x400 <= offset < 0x420:
            return sum(self.core.port_read(0x3C0 + offset - 0x400 + i) << (8 * i)
                       for i in range(size))
        if 0x500 <= offset < 0x500 + 2 * len(self.core.vbe):
            return self.core.vbe_read((offset - 0x500) // 2)
        if offset == 0x600:
            return 8                                  # size of the extended region
        return 0 if offset == 0x604 else 0xFFFFFFFF   # little-endian framebuffer

    def bus_write(self, offset: int, size: int, value: int) -> None:
        if 0x400 <= offset < 0x420:
            for i in range(size):
                self.core.port_write(0x3C0 + offset - 0x400 + i, value >> (8 * i) & 0xFF)
        elif 0x500 <= offset < 0x500 + 2 * len(self.core.vbe):
            self.core.vbe_write((offset - 0x500) // 2, value)


class PciVga(PciDevice):
    mtree_name = "vga"

    def __init__(self, vendor: int, device: int, revision: int, vram_mb: int,
                 mmio_bar: bool) -> None:
        super().__init__(vendor, device, 0x030000, revision=revision)
        self.core = VgaCore(vram_mb)
        self.add_bar(0, len(self.core.vram), "mem32", _Framebuffer(self.core),
                     prefetchable=True)
        if mmio_bar:
            self.add_bar(2, 0x1000, "mem32", _MmioRegisters(self.core))

    def reset(self) -> None:
        self.core.reset()
        super().reset()

    def save_state(self) -> dict:
        return {"pci": super().save_state(), "vga": self.core.save_state()}

    def load_state(self, state: dict) -> None:
        super().load_state(state["pci"])
        self.core.load_state(state["vga"])


def _realize(board, device, vendor: int, device_id: int, revision: int, mmio_bar: bool):
    vram_mb = device.props.get("vgamem_mb", VRAM_DEFAULT_MB)
    vga = PciVga(vendor, device_id, revision, vram_mb, mmio_bar)
    vga.qdev_id = device.id or ""
    board.plug_pci(vga, device)
    board.pio.map(0x3B0, 0x30, _Ports(vga.core, 0x3B0))
    board.pio.map(VBE_INDEX_PORT, 2, _VbePorts(vga.core))
    board.add_ram_hole(WINDOW_BASE, WINDOW_SIZE)
    board.mmio.map(WINDOW_BASE, WINDOW_SIZE, _Window(vga.core))
    displays = getattr(board, "displays", None)
    if displays is not None:
        displays.append(vga)
    return vga


def _unrealize(board, device) -> None:
    board.pio.unmap(0x3B0)
    board.pio.unmap(VBE_INDEX_PORT)
    board.mmio.unmap(WINDOW_BASE)


declare(DeviceType("pci-vga", "pci-device", abstract=True))
declare(DeviceType("VGA", "pci-vga", category="Display", hotpluggable=False,
                   realize=lambda board, device: _realize(board, device, 0x1234, 0x1111, 2,
                                                          True),
                   unrealize=_unrealize, props=(
                       Prop("vgamem_mb", "uint32", VRAM_DEFAULT_MB),
                       Prop("mmio", "bool", True, "on/off", honoured=False),
                       Prop("qemu-extended-regs", "bool", True, "on/off", honoured=False),
                       Prop("edid", "bool", True, "on/off", honoured=False),
                       Prop("big-endian-framebuffer", "bool", None, qdev=False,
                            honoured=False),
                       Prop("xres", "uint32", 0, honoured=False),
                       Prop("yres", "uint32", 0, honoured=False),
                       Prop("xmax", "uint32", 0, honoured=False),
                       Prop("ymax", "uint32", 0, honoured=False),
                       Prop("refresh_rate", "uint32", 0, honoured=False),
                       Prop("global-vmstate", "bool", False, honoured=False))))
declare(DeviceType("cirrus-vga", "pci-device", category="Display", hotpluggable=False,
                   description="Cirrus CLGD 54xx VGA",
                   realize=lambda board, device: _realize(board, device, 0x1013, 0x00B8, 0,
                                                          False),
                   unrealize=_unrealize, props=(
                       Prop("vgamem_mb", "uint32", 4),
                       Prop("blitter", "bool", True, honoured=False),
                       Prop("global-vmstate", "bool", False, honoured=False))))
