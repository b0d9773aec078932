/* The legacy virtio interface (virtio 0.9.5; "transitional" devices' I/O BAR0), on
 * the balloon: reset, host features, one queue by page frame number with the
 * legacy ring layout, DRIVER_OK, then one page inflated and `actual` written,
 * all through the I/O registers. The modern driver is stopped first (the device
 * is reset under it), so `legacy` is a test of its own. */
#include "virtio.h"

#define HOST_FEATURES 0x00
#define GUEST_FEATURES 0x04
#define QUEUE_PFN 0x08
#define QUEUE_SIZE 0x0c
#define QUEUE_SELECT 0x0e
#define QUEUE_NOTIFY 0x10
#define DEVICE_STATUS 0x12
#define ISR 0x13
#define CONFIG 0x14                       /* without MSI-X */
#define LEGACY_RING_PAGES 2               /* 128 entries: descriptors+avail, then used */

static u8 ring[LEGACY_RING_PAGES * 4096] __attribute__((aligned(4096)));
static u32 pfn_buf[1];
static u8 page[4096] __attribute__((aligned(4096)));

void balloon_stop(void);

void cmd_legacy(const char *args)
{
    (void)args;
    unsigned slot;
    u16 io = 0;
    for (slot = 0; slot < 32; slot++) {
        u32 id = pci_read32(0, slot, 0, 0);
        if (id == 0x10021af4) {                      /* transitional balloon */
            io = (u16)(pci_read32(0, slot, 0, 0x10) & ~3u);
            break;
        }
    }
    if (!io) {
        printf("{\"error\": \"no transitional virtio-balloon\"}\n");
        return;
    }
    balloon_stop();
    u32 cmd = pci_read32(0, slot, 0, 4);
    pci_write32(0, slot, 0, 4, (cmd & 0xffff) | 0x5);  /* I/O, bus master */
    outb(io + DEVICE_STATUS, 0);
    outb(io + DEVICE_STATUS, 1 | 2);                 /* ACKNOWLEDGE, DRIVER */
    u32 host = inl(io + HOST_FEATURES);
    outl(io + GUEST_FEATURES, 0);
    outw(io + QUEUE_SELECT, 0);
    u16 size = inw(io + QUEUE_SIZE);
    if (size != 128) {
        printf("{\"error\": \"queue size %u\"}\n", size);
        return;
    }
    memset(ring, 0, sizeof(ring));
    struct vring_desc *desc = (void *)ring;
    volatile u16 *avail = (void *)(ring + 16 * size);
    volatile u16 *used_idx = (void *)(ring + 4096 + 2);   /* used ring: the next page */
    outl(io + QUEUE_PFN, (u32)((u64)ring >> 12));
    outb(io + DEVICE_STATUS, 1 | 2 | 4);             /* DRIVER_OK */
    u32 num_pages = inl(io + CONFIG);
    page[0] = 0x5a;
    pfn_buf[0] = (u32)((u64)page >> 12);
    desc[0].addr = (u64)pfn_buf;
    desc[0].len = 4;
    avail[2] = 0;                                    /* ring[0] = descriptor 0 */
    barrier();
    avail[1] = 1;                                    /* idx */
    barrier();
    outw(io + QUEUE_NOTIFY, 0);
    for (u32 spins = 0; *used_idx == 0 && spins < 100000000; spins++)
        ;
    outl(io + CONFIG + 4, 1);                        /* actual: one page */
    printf("{\"host_features\": \"0x%x\", \"queue_size\": %u, \"num_pages\": %u, "
           "\"used\": %u, \"page_after\": %u, \"isr\": %u}\n", host, size, num_pages,
           *used_idx, page[0], inb(io + ISR));
}
