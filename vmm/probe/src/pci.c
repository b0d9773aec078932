/* PCI enumeration through configuration mechanism #1 (ports 0xcf8/0xcfc). */
#include "probe.h"

static u32 address(unsigned bus, unsigned slot, unsigned fn, unsigned off)
{
    return 0x80000000u | bus << 16 | slot << 11 | fn << 8 | (off & 0xfc);
}

u32 pci_read32(unsigned bus, unsigned slot, unsigned fn, unsigned off)
{
    outl(0xcf8, address(bus, slot, fn, off));
    return inl(0xcfc);
}

void pci_write32(unsigned bus, unsigned slot, unsigned fn, unsigned off, u32 v)
{
    outl(0xcf8, address(bus, slot, fn, off));
    outl(0xcfc, v);
}

/* Size a BAR the standard way: decoding off, write ones, read the mask back. */
u64 pci_bar_size(unsigned slot, unsigned fn, unsigned index, u32 low, int is64)
{
    unsigned off = 0x10 + 4 * index;
    u32 cmd = pci_read32(0, slot, fn, 0x04);
    pci_write32(0, slot, fn, 0x04, cmd & ~3u);
    pci_write32(0, slot, fn, off, 0xffffffff);
    u64 mask = pci_read32(0, slot, fn, off);
    pci_write32(0, slot, fn, off, low);
    if (!(mask & ((low & 1) ? ~3u : ~15u))) {
        pci_write32(0, slot, fn, 0x04, cmd);
        return 0;                       /* not implemented */
    }
    if (is64) {
        u32 high = pci_read32(0, slot, fn, off + 4);
        pci_write32(0, slot, fn, off + 4, 0xffffffff);
        mask |= (u64)pci_read32(0, slot, fn, off + 4) << 32;
        pci_write32(0, slot, fn, off + 4, high);
    } else {
        mask |= 0xffffffff00000000UL;
    }
    pci_write32(0, slot, fn, 0x04, cmd);
    mask &= (low & 1) ? ~3UL : ~15UL;
    if (low & 1)
        mask |= 0xffffffffffff0000UL;
    return mask ? ~mask + 1 : 0;
}

static void print_function(unsigned slot, unsigned fn, u32 id)
{
    u32 class_rev = pci_read32(0, slot, fn, 0x08);
    u32 subsys = pci_read32(0, slot, fn, 0x2c);
    u32 intr = pci_read32(0, slot, fn, 0x3c);
    u32 status_cmd = pci_read32(0, slot, fn, 0x04);
    printf("{\"bdf\": \"00:%02x.%u\", \"vendor\": \"%04x\", \"device\": \"%04x\", "
           "\"class\": \"%06x\", \"revision\": %u, \"subsystem_vendor\": \"%04x\", "
           "\"subsystem\": \"%04x\", \"irq_line\": %u, \"irq_pin\": %u, \"bars\": [",
           slot, fn, id & 0xffff, id >> 16, class_rev >> 8, class_rev & 0xff,
           subsys & 0xffff, subsys >> 16, intr & 0xff, (intr >> 8) & 0xff);
    int first = 1;
    u32 header = (pci_read32(0, slot, fn, 0x0c) >> 16) & 0x7f;
    for (unsigned i = 0; header == 0 && i < 6; i++) {
        u32 low = pci_read32(0, slot, fn, 0x10 + 4 * i);
        int io = low & 1, is64 = !io && ((low >> 1) & 3) == 2;
        u64 size = pci_bar_size(slot, fn, i, low, is64);
        if (size) {
            u64 base = io ? (low & ~3u) : (low & ~15u);
            if (is64)
                base |= (u64)pci_read32(0, slot, fn, 0x14 + 4 * i) << 32;
            printf("%s{\"index\": %u, \"type\": \"%s\", \"address\": \"0x%lx\", \"size\": %lu}",
                   first ? "" : ", ", i, io ? "io" : is64 ? "mem64" : "mem32", base, size);
            first = 0;
        }
        if (is64)
            i++;
    }
    printf("], \"capabilities\": [");
    if (status_cmd & (1u << 20)) {
        unsigned off = pci_read32(0, slot, fn, 0x34) & 0xfc;
        for (int n = 0; off && n < 48; n++) {
            u32 cap = pci_read32(0, slot, fn, off);
            printf("%s{\"offset\": %u, \"id\": %u}", n ? ", " : "", off, cap & 0xff);
            off = (cap >> 8) & 0xfc;
        }
    }
    printf("]}");
}

void cmd_pci(const char *args)
{
    (void)args;
    int count = 0;
    printf("{\"devices\": [");
    for (unsigned slot = 0; slot < 32; slot++) {
        for (unsigned fn = 0; fn < 8; fn++) {
            u32 id = pci_read32(0, slot, fn, 0);
            if ((id & 0xffff) == 0xffff) {
                if (fn == 0)
                    break;
                continue;
            }
            if (count++)
                printf(", ");
            print_function(slot, fn, id);
            if (fn == 0 && !(pci_read32(0, slot, 0, 0x0c) & 0x800000))
                break;
        }
    }
    printf("]}\n");
}
