/* PCI hotplug through QEMU's ACPI interface (PIIX4 acpi-pci-hotplug at 0xae00), doing
 * what the DSDT's _E01/PCNT and _EJ0/PCEJ methods do: when GPE0 bit 1 is set, read
 * the up and down slot bitmaps, give new devices their BARs (the firmware is long
 * gone) and start their driver, and eject what the host wants removed by writing
 * the slot to B0EJ. The GPE arrives as the SCI (IRQ 9, level-triggered, through
 * the IOAPIC as INTx vector 0xe1); clearing the GPE status lowers it.
 * `hotplug manual` leaves removal requests unanswered. */
#include "probe.h"

#define GPE0_STS 0xafe0
#define GPE0_EN 0xafe2
#define SCI_IRQ 9
#define SCI_VECTOR 0xe1
#define PCIHP_UP 0xae00
#define PCIHP_DOWN 0xae04
#define PCIHP_EJECT 0xae08
#define PCIHP_RMV 0xae0c
#define GPE_PCIHP 2

static int present, manual;
static u32 sci_seen;
static u64 mmio_next = 0xe0000000UL;   /* hot-added BARs go here, far from firmware's */
static u32 io_next = 0xd000;

void hotplug_init(void)
{
    present = inl(PCIHP_RMV) != 0xffffffffu;
    if (!present)
        return;
    intx_route(SCI_IRQ, SCI_VECTOR);
    outw(GPE0_EN, inw(GPE0_EN) | GPE_PCIHP);          /* hotplug events raise the SCI */
}

/* Sizes and places each BAR of a new function, then turns decoding on. */
static void assign_bars(unsigned slot)
{
    for (unsigned bar = 0; bar < 6; bar++) {
        unsigned off = 0x10 + 4 * bar;
        u32 orig = pci_read32(0, slot, 0, off);
        pci_write32(0, slot, 0, off, 0xffffffffu);
        u32 mask = pci_read32(0, slot, 0, off);
        if (!mask) {
            pci_write32(0, slot, 0, off, orig);
            continue;
        }
        if (mask & 1) {
            u32 size = (~(mask & ~3u) + 1) & 0xffff;
            io_next = (io_next + size - 1) & ~(size - 1);
            pci_write32(0, slot, 0, off, io_next);
            io_next += size;
            continue;
        }
        int is64 = ((mask >> 1) & 3) == 2;
        u64 full = mask & ~15u;
        if (is64) {
            pci_write32(0, slot, 0, off + 4, 0xffffffffu);
            full |= (u64)pci_read32(0, slot, 0, off + 4) << 32;
        } else {
            full |= 0xffffffff00000000UL;
        }
        u64 size = ~full + 1;
        mmio_next = (mmio_next + size - 1) & ~(size - 1);
        pci_write32(0, slot, 0, off, (u32)mmio_next);
        if (is64)
            pci_write32(0, slot, 0, off + 4, (u32)(mmio_next >> 32));
        mmio_next += size;
        bar += is64;
    }
    u32 cmd = pci_read32(0, slot, 0, 4);
    pci_write32(0, slot, 0, 4, (cmd & 0xffff) | 0x7);       /* I/O, memory, bus master */
}

void hotplug_poll(void)
{
    if (!present || irq_count[SCI_VECTOR] == sci_seen)
        return;
    sci_seen = irq_count[SCI_VECTOR];
    int pending = inw(GPE0_STS) & GPE_PCIHP;
    outw(GPE0_STS, GPE_PCIHP);                             /* acknowledge: SCI drops */
    intx_done(SCI_VECTOR);
    if (!pending)
        return;
    u32 up = inl(PCIHP_UP), down = inl(PCIHP_DOWN);
    for (unsigned slot = 0; slot < 32; slot++) {
        if (up & (1u << slot)) {
            u32 id = pci_read32(0, slot, 0, 0);
            assign_bars(slot);
            printf("{\"event\": \"pci-added\", \"slot\": %u, \"vendor\": \"%04x\", "
                   "\"device\": \"%04x\"}\n", slot, id & 0xffff, id >> 16);
            net_init();                                     /* a NIC, if it is one */
        }
        if (down & (1u << slot)) {
            printf("{\"event\": \"pci-removal-requested\", \"slot\": %u}\n", slot);
            if (manual)
                continue;
            net_forget(slot);
            outl(PCIHP_EJECT, 1u << slot);
            printf("{\"event\": \"pci-ejected\", \"slot\": %u}\n", slot);
        }
    }
}

/* hotplug [manual|auto]: whether removal requests are answered (auto, the default). */
void cmd_hotplug(const char *args)
{
    const char *p = skip_spaces(args);
    if (!strncmp(p, "manual", 6))
        manual = 1;
    else if (!strncmp(p, "auto", 4))
        manual = 0;
    printf("{\"present\": %s, \"removable\": \"0x%x\", \"manual\": %s, \"scis\": %u}\n",
           present ? "true" : "false", present ? inl(PCIHP_RMV) : 0, manual ? "true" : "false",
           irq_count[SCI_VECTOR]);
}
