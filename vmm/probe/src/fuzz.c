/* `fuzz SEED STEPS TARGET...`: hostile register traffic at PCI functions, to see
 * that the VMM survives what a broken or malicious driver does. TARGET is a slot
 * (function 0) or SLOT.FN; a PIIX IDE function also gets its legacy ports.
 *
 * Each step, from a xorshift generator seeded with SEED (so a run is replayed by
 * its seed), is a read or a write of 1, 2, 4 (or, on memory BARs, 8) bytes at a
 * random offset of a random BAR, or of configuration space, with values biased
 * towards the interesting ones (0, 1, all ones, small numbers). Configuration
 * writes leave the command register, the BARs and the ROM BAR alone: moving a
 * device over the guest's own memory would end the test, not test the VMM.
 * Prints {"seed": S, "steps": N, "writes": W, "regions": R} when done. */
#include "probe.h"

#define MAX_REGIONS 16

struct region { u64 base; u64 size; int io; };

static u64 state;

static u64 next_random(void)
{
    state ^= state << 13;
    state ^= state >> 7;
    state ^= state << 17;
    return state;
}

static u64 interesting(unsigned width)
{
    u64 r = next_random(), mask = width == 8 ? ~0UL : (1UL << (8 * width)) - 1;
    switch (r % 8) {
    case 0: return 0;
    case 1: return 1;
    case 2: return mask;
    case 3: return (r >> 8) % 16;
    case 4: return (r >> 8) & 0xff;
    default: return (r >> 3) & mask;
    }
}

static unsigned random_width(int io)
{
    unsigned w = 1u << (next_random() % (io ? 3 : 4));
    return w;
}

static u32 cfg_address(unsigned slot, unsigned fn, unsigned off)
{
    return 0x80000000u | slot << 11 | fn << 8 | (off & 0xfc);
}

static void cfg_access(unsigned slot, unsigned fn, unsigned *writes)
{
    unsigned width = random_width(1), off = (unsigned)(next_random() % 256) & ~(width - 1);
    int write = next_random() & 1;
    if (write && ((off < 6 && off + width > 4) || (off < 0x28 && off + width > 0x10) ||
                  (off < 0x34 && off + width > 0x30)))
        write = 0;
    outl(0xcf8, cfg_address(slot, fn, off));
    u16 port = (u16)(0xcfc + (off & 3));
    if (!write) {
        if (width == 1) (void)inb(port); else if (width == 2) (void)inw(port); else (void)inl(port);
        return;
    }
    u64 v = interesting(width);
    if (width == 1) outb(port, (u8)v); else if (width == 2) outw(port, (u16)v); else outl(port, (u32)v);
    (*writes)++;
}

static void region_access(const struct region *r, unsigned *writes)
{
    unsigned width = random_width(r->io);
    while (width > 1 && width > r->size)
        width >>= 1;
    u64 off = (next_random() % r->size) & ~(u64)(width - 1);
    int write = next_random() % 3 != 0;
    u64 v = interesting(width);
    if (r->io) {
        u16 port = (u16)(r->base + off);
        if (write) {
            if (width == 1) outb(port, (u8)v); else if (width == 2) outw(port, (u16)v);
            else outl(port, (u32)v);
        } else {
            if (width == 1) (void)inb(port); else if (width == 2) (void)inw(port);
            else (void)inl(port);
        }
    } else {
        u64 a = r->base + off;
        if (write) {
            if (width == 1) mmio_write8(a, (u8)v); else if (width == 2) mmio_write16(a, (u16)v);
            else if (width == 4) mmio_write32(a, (u32)v); else mmio_write64(a, v);
        } else {
            if (width == 1) (void)mmio_read8(a); else if (width == 2) (void)mmio_read16(a);
            else if (width == 4) (void)mmio_read32(a); else (void)mmio_read64(a);
        }
    }
    *writes += (unsigned)write;
}

/* The function's assigned BARs (and a PIIX IDE's legacy ports) into regions. */
static unsigned find_regions(unsigned slot, unsigned fn, struct region *out, unsigned n)
{
    for (unsigned i = 0; i < 6 && n < MAX_REGIONS; i++) {
        u32 low = pci_read32(0, slot, fn, 0x10 + 4 * i);
        int io = low & 1, is64 = !io && ((low >> 1) & 3) == 2;
        u64 base = io ? (low & ~3u) : (low & ~15u);
        if (is64)
            base |= (u64)pci_read32(0, slot, fn, 0x14 + 4 * i) << 32;
        u64 size = pci_bar_size(slot, fn, i, low, is64);
        if (base && size) {
            out[n].base = base;
            out[n].size = size > 0x10000 ? 0x10000 : size;
            out[n].io = io;
            n++;
        }
        i += (unsigned)is64;
    }
    u32 class = pci_read32(0, slot, fn, 0x08) >> 16;
    if (class == 0x0101 && n + 4 <= MAX_REGIONS) {       /* IDE: compatibility ports */
        static const struct region legacy[4] = {
            {0x1f0, 8, 1}, {0x3f6, 1, 1}, {0x170, 8, 1}, {0x376, 1, 1}};
        for (unsigned i = 0; i < 4; i++)
            out[n++] = legacy[i];
    }
    return n;
}

void cmd_fuzz(const char *args)
{
    u64 seed = 0, steps = 0, slot;
    struct region regions[MAX_REGIONS];
    unsigned targets[8][2], ntargets = 0, nregions = 0, writes = 0;
    const char *p = args;
    if (!parse_u64(&p, &seed) || !parse_u64(&p, &steps)) {
        printf("{\"error\": \"usage: fuzz SEED STEPS SLOT[.FN]...\"}\n");
        return;
    }
    while (ntargets < 8 && parse_u64(&p, &slot) && slot < 32) {
        u64 fn = 0;
        if (*p == '.') {
            p++;
            parse_u64(&p, &fn);
        }
        if ((pci_read32(0, (unsigned)slot, (unsigned)fn, 0) & 0xffff) == 0xffff)
            continue;
        targets[ntargets][0] = (unsigned)slot;
        targets[ntargets][1] = (unsigned)(fn & 7);
        nregions = find_regions((unsigned)slot, (unsigned)(fn & 7), regions, nregions);
        ntargets++;
    }
    if (!ntargets) {
        printf("{\"error\": \"no such PCI function\"}\n");
        return;
    }
    state = seed ? seed : 0x9e3779b97f4a7c15UL;
    for (u64 i = 0; i < steps; i++) {
        u64 r = next_random();
        if (!nregions || r % 8 == 0) {
            unsigned t = (unsigned)((r >> 3) % ntargets);
            cfg_access(targets[t][0], targets[t][1], &writes);
        } else {
            region_access(&regions[(r >> 3) % nregions], &writes);
        }
    }
    printf("{\"seed\": %lu, \"steps\": %lu, \"writes\": %u, \"regions\": %u}\n", seed, steps,
           writes, nregions);
}
