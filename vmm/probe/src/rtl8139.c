/* Realtek RTL8139 driver, normal mode as Linux's 8139too uses it: MAC from IDR0-5,
 * an 8 KiB receive ring (WRAP set, so a frame never splits), four transmit slots.
 * Polled, through the I/O BAR: interrupts stay masked (IMR 0). */
#include "nic.h"

#define IDR 0x00
#define TSD 0x10
#define TSAD 0x20
#define RBSTART 0x30
#define CR 0x37
#define CAPR 0x38
#define IMR 0x3c
#define ISR 0x3e
#define RCR 0x44
#define MSR 0x58
#define RING 8192

static u16 io;
static u8 rx_ring[RING + 16 + 2048] __attribute__((aligned(16)));
static u8 tx_buf[4][2048] __attribute__((aligned(16)));
static unsigned tx_slot;
static u32 rx_cur;

static int link(void) { return !(inb(io + MSR) & 0x04); }      /* LINKB: 1 = down */

static void send(const u8 *frame, u32 len)
{
    unsigned n = tx_slot;
    tx_slot = (tx_slot + 1) % 4;
    memcpy(tx_buf[n], frame, len);
    outl(io + TSAD + 4 * n, (u32)(u64)tx_buf[n]);
    outl(io + TSD + 4 * n, len);                  /* size, OWN clear: the card sends */
    for (int spins = 0; spins < 10000000 && !(inl(io + TSD + 4 * n) & (1u << 15)); spins++)
        ;
}

static int poll(u8 **frame, u32 *len)
{
    if (inb(io + CR) & 0x01)                       /* BUFE: nothing to read */
        return 0;
    u16 status = *(volatile u16 *)(rx_ring + rx_cur);
    u16 size = *(volatile u16 *)(rx_ring + rx_cur + 2);
    if (!(status & 1) || size < 4)
        return 0;
    *frame = rx_ring + rx_cur + 4;
    *len = size - 4;                               /* without the CRC */
    return 1;
}

static void recycle(u8 *frame)
{
    u16 size = *(u16 *)(frame - 2);
    rx_cur = (rx_cur + size + 4 + 3) & ~3u;
    rx_cur %= RING;
    outw(io + CAPR, (u16)(rx_cur - 16));           /* what 8139too writes */
}

static void info(void)
{
    printf(", \"io\": \"0x%x\"", io);
}

int rtl8139_probe(struct nic *nic)
{
    unsigned slot;
    for (slot = 0; slot < 32; slot++)
        if (pci_read32(0, slot, 0, 0) == 0x813910ec)
            break;
    if (slot == 32)
        return 0;
    io = (u16)(pci_read32(0, slot, 0, 0x10) & ~3u);
    u32 cmd = pci_read32(0, slot, 0, 4);
    pci_write32(0, slot, 0, 4, (cmd & 0xffff) | 0x5);    /* I/O, bus master */
    outb(io + CR, 0x10);                                   /* reset */
    for (int i = 0; i < 100000 && (inb(io + CR) & 0x10); i++)
        ;
    for (int i = 0; i < 6; i++)
        nic->mac[i] = inb(io + IDR + i);
    outw(io + IMR, 0);
    outl(io + RBSTART, (u32)(u64)rx_ring);
    outl(io + RCR, 0x02 | 0x08 | 0x80);                    /* APM, AB, WRAP; 8 KiB */
    outb(io + CR, 0x0c);                                   /* RE, TE */
    rx_cur = 0;
    tx_slot = 0;
    static const struct nic ops = {"rtl8139", 0, {0}, link, send, poll, recycle, info,
                                   0, 0, 0};
    return nic_attach(nic, &ops, slot);
}
