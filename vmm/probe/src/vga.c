/* VGA text mode, driven as a console driver without a BIOS drives it:
 *   vga font           loads a test font into plane 2 (the sequencer/graphics
 *                      controller sequence Linux's vgacon uses): glyph c, row r is
 *                      the byte (c * 7 + r * 29) ^ (r << 4), distinct for every c
 *   vga clear ATTR     fills the 80x25 screen with spaces of colour ATTR
 *   vga text ROW COL ATTR TEXT   writes TEXT at ROW, COL in colour ATTR
 *   vga cursor on|off  shows or hides the hardware cursor (CRTC 0x0A)
 *   vga vbe W H        Bochs VBE: a W x H, 32-bit linear mode, filled through the
 *                      card's BAR0 with a pattern (pixel x, y = 0x00RRGGBB with
 *                      R = x * 4, G = y * 4, B = (x ^ y) & 0xff)
 * Each answers {"vga": "..."}; the screen itself is read by the host (screendump). */
#include "probe.h"

#define TEXT_BASE 0xb8000ull
#define FONT_BASE 0xa0000ull
#define COLUMNS 80
#define ROWS 25

static void seq(u8 index, u8 value) { outb(0x3c4, index); outb(0x3c5, value); }
static void gc(u8 index, u8 value) { outb(0x3ce, index); outb(0x3cf, value); }

static void load_font(void)
{
    seq(0x00, 0x01);                  /* synchronous reset */
    seq(0x02, 0x04);                  /* write plane 2 only */
    seq(0x04, 0x07);                  /* sequential addressing */
    seq(0x00, 0x03);
    gc(0x04, 0x02);                   /* read plane 2 */
    gc(0x05, 0x00);                   /* write mode 0, no odd/even */
    gc(0x06, 0x00);                   /* A0000, 128 KiB, no odd/even */
    for (unsigned c = 0; c < 256; c++)
        for (unsigned r = 0; r < 32; r++)
            mmio_write8(FONT_BASE + c * 32 + r, r < 16 ? (u8)(((c * 7 + r * 29) ^ (r << 4))) : 0);
    seq(0x00, 0x01);                  /* back to text mode access */
    seq(0x02, 0x03);
    seq(0x04, 0x03);
    seq(0x00, 0x03);
    gc(0x04, 0x00);
    gc(0x05, 0x10);
    gc(0x06, 0x0e);
}

void cmd_vga(const char *args)
{
    const char *a = skip_spaces(args);
    u64 row, col, attr;
    if (!strncmp(a, "font", 4)) {
        load_font();
        printf("{\"vga\": \"font\"}\n");
    } else if (!strncmp(a, "clear", 5)) {
        a += 5;
        if (!parse_u64(&a, &attr))
            attr = 0x07;
        for (unsigned i = 0; i < COLUMNS * ROWS; i++)
            mmio_write16(TEXT_BASE + 2 * i, (u16)(attr << 8 | ' '));
        printf("{\"vga\": \"clear\"}\n");
    } else if (!strncmp(a, "text", 4)) {
        a += 4;
        if (!parse_u64(&a, &row) || !parse_u64(&a, &col) || !parse_u64(&a, &attr)) {
            printf("{\"error\": \"vga text ROW COL ATTR TEXT\"}\n");
            return;
        }
        a = skip_spaces(a);
        unsigned n = 0;
        for (u64 at = row * COLUMNS + col; a[n] && at < COLUMNS * ROWS; n++, at++)
            mmio_write16(TEXT_BASE + 2 * at, (u16)(attr << 8 | (u8)a[n]));
        printf("{\"vga\": \"text\", \"chars\": %u}\n", n);
    } else if (!strncmp(a, "cursor", 6)) {
        a = skip_spaces(a + 6);
        outb(0x3d4, 0x0a);
        u8 start = inb(0x3d5);
        outb(0x3d5, !strncmp(a, "off", 3) ? (start | 0x20) : (start & ~0x20));
        printf("{\"vga\": \"cursor\"}\n");
    } else if (!strncmp(a, "vbe", 3)) {
        a += 3;
        u64 w, h;
        if (!parse_u64(&a, &w) || !parse_u64(&a, &h) || w > 256 || h > 256) {
            printf("{\"error\": \"vga vbe W H (at most 256 x 256)\"}\n");
            return;
        }
        u64 fb = 0;
        for (unsigned slot = 0; slot < 32 && !fb; slot++) {
            u32 id = pci_read32(0, slot, 0, 0);
            if (id == 0x11111234 || id == 0x00b81013) {
                pci_write32(0, slot, 0, 4, pci_read32(0, slot, 0, 4) | 2);
                fb = pci_read32(0, slot, 0, 0x10) & ~0xfu;
            }
        }
        if (!fb) {
            printf("{\"error\": \"no VGA\"}\n");
            return;
        }
        static const u16 regs[][2] = {{4, 0}, {1, 0}, {2, 0}, {3, 32}, {4, 0x41}};
        for (unsigned i = 0; i < 5; i++) {
            u16 value = regs[i][1];
            if (regs[i][0] == 1) value = (u16)w;
            if (regs[i][0] == 2) value = (u16)h;
            outw(0x1ce, regs[i][0]);
            outw(0x1cf, value);
        }
        for (u64 y = 0; y < h; y++)
            for (u64 x = 0; x < w; x++)
                mmio_write32(fb + 4 * (y * w + x),
                             (u32)(((x * 4) & 0xff) << 16 | ((y * 4) & 0xff) << 8 | ((x ^ y) & 0xff)));
        outw(0x1ce, 0);
        printf("{\"vga\": \"vbe\", \"id\": %u, \"fb\": %u}\n", inw(0x1cf), fb != 0);
    } else {
        printf("{\"error\": \"vga font|clear|text|cursor|vbe\"}\n");
    }
}
