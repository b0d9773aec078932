/* Realtek RTL8139 driver, normal mode as Linux's 8139too uses it: MAC from IDR0-5,
 * an 8 KiB receive ring (WRAP set, so a frame never splits), four transmit slots.
 * `netcplus` switches it to C+ mode as 8139cp drives it: descriptor rings for
 * receive and transmit, TxPoll, checksum and large-send offloads. `netmcast MAC`
 * sets the multicast hash bit Linux would for MAC. Polled, through the I/O BAR:
 * interrupts stay masked (IMR 0). */
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
#define MAR 0x08
#define TNPDS 0x20
#define TXPOLL 0xd9
#define CPCMD 0xe0
#define RDSAR 0xe4
#define RING 8192
/* C+ descriptors (opts1): */
#define DESC_OWN (1u << 31)
#define RING_END (1u << 30)
#define FIRST_FRAG (1u << 29)
#define LAST_FRAG (1u << 28)
#define LARGE_SEND (1u << 27)
#define IPCS (1u << 18)
#define TCPCS (1u << 16)
#define CP_RING 16
#define CP_BUF 2048

struct cp_desc { u32 opts1, opts2; u64 addr; };
static struct cp_desc cp_rx[CP_RING] __attribute__((aligned(256)));
static struct cp_desc cp_tx[CP_RING] __attribute__((aligned(256)));
static u8 cp_rx_buf[CP_RING][CP_BUF] __attribute__((aligned(64)));
static u8 cp_tx_buf[65600] __attribute__((aligned(64)));
static unsigned cp_rx_next, cp_tx_next;
static u32 cp_last_opts1;

static u16 io;
static u8 rx_ring[RING + 16 + 2048] __attribute__((aligned(16)));
static u8 tx_buf[4][2048] __attribute__((aligned(16)));
static unsigned tx_slot;
static u32 rx_cur;

static int link(void) { return !(inb(io + MSR) & 0x04); }      /* LINKB: 1 = down */

static void allmulti(void)             /* every MAR bit, and AM */
{
    outl(io + MAR, 0xffffffff);
    outl(io + MAR + 4, 0xffffffff);
    outl(io + RCR, inl(io + RCR) | 0x04);
}

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
    printf(", \"io\": \"0x%x\", \"cplus\": %s, \"cpcmd\": \"0x%x\"", io,
           inw(io + CPCMD) & 3 ? "true" : "false", inw(io + CPCMD));
}

/* -- C+ mode ------------------------------------------------------------------- */
static void cp_post(u32 len, u32 flags)
{
    unsigned i = cp_tx_next;
    cp_tx_next = (i + 1) % CP_RING;
    cp_tx[i].addr = (u64)cp_tx_buf;
    cp_tx[i].opts2 = 0;
    barrier();
    cp_tx[i].opts1 = DESC_OWN | FIRST_FRAG | LAST_FRAG | flags | len |
                     (i == CP_RING - 1 ? RING_END : 0);
    barrier();
    outb(io + TXPOLL, 0x40);                       /* normal-priority queue */
    for (int spins = 0; spins < 10000000 && (*(volatile u32 *)&cp_tx[i].opts1 & DESC_OWN);
         spins++)
        ;
}

static void cp_send(const u8 *frame, u32 len)
{
    memcpy(cp_tx_buf, frame, len);
    cp_post(len, 0);
}

/* IPv4 and TCP checksums by the card, and with mss large send (8139cp's way). */
static int cp_send_offload(const u8 *frame, u32 len, u32 l4, u32 hdr_len, u32 mss)
{
    (void)l4;
    (void)hdr_len;
    if (len > sizeof(cp_tx_buf) || (!mss && len > 1514) || mss > 0x7ff)
        return 0;
    memcpy(cp_tx_buf, frame, len);
    cp_post(len, mss ? LARGE_SEND | (mss << 16) : IPCS | TCPCS);
    return 1;
}

static int cp_poll(u8 **frame, u32 *len)
{
    u32 opts1 = *(volatile u32 *)&cp_rx[cp_rx_next].opts1;
    if (opts1 & DESC_OWN)
        return 0;
    cp_last_opts1 = opts1;
    *frame = cp_rx_buf[cp_rx_next];
    *len = (opts1 & 0x1fff) > 4 ? (opts1 & 0x1fff) - 4 : 0;     /* without the CRC */
    return 1;
}

static void cp_give(unsigned i)
{
    cp_rx[i].addr = (u64)cp_rx_buf[i];
    cp_rx[i].opts2 = 0;
    barrier();
    cp_rx[i].opts1 = DESC_OWN | CP_BUF | (i == CP_RING - 1 ? RING_END : 0);
}

static void cp_recycle(u8 *frame)
{
    (void)frame;
    cp_give(cp_rx_next);
    cp_rx_next = (cp_rx_next + 1) % CP_RING;
}

static void cp_rx_meta(void)
{
    printf(", \"opts1\": \"0x%x\"", cp_last_opts1);
}

/* netcplus: reset, then C+ mode as 8139cp starts it (CpCmd before the rings and Cmd). */
void cmd_netcplus(const char *args)
{
    (void)args;
    const struct nic *nic = net_nic();
    if (!net_present() || strcmp(nic->model, "rtl8139")) {
        printf("{\"error\": \"no rtl8139\"}\n");
        return;
    }
    outb(io + CR, 0x10);
    for (int i = 0; i < 100000 && (inb(io + CR) & 0x10); i++)
        ;
    outw(io + CPCMD, 0x08 | 0x20 | 0x02 | 0x01);     /* PCIMulRW RxChkSum CpRxOn CpTxOn */
    memset(cp_tx, 0, sizeof(cp_tx));
    for (unsigned i = 0; i < CP_RING; i++)
        cp_give(i);
    cp_rx_next = cp_tx_next = 0;
    outl(io + RDSAR, (u32)(u64)cp_rx);
    outl(io + RDSAR + 4, (u32)((u64)cp_rx >> 32));
    outl(io + TNPDS, (u32)(u64)cp_tx);
    outl(io + TNPDS + 4, (u32)((u64)cp_tx >> 32));
    outb(io + CR, 0x0c);                             /* RxOn, TxOn */
    outl(io + RCR, 0x02 | 0x08);                     /* APM, AB */
    outw(io + IMR, 0);
    static const struct nic cp_ops = {"rtl8139", 0, {0}, link, cp_send, cp_poll, cp_recycle,
                                      info, cp_send_offload, 0, cp_rx_meta, 0, allmulti};
    net_replace_ops(&cp_ops);
    printf("{\"cpcmd\": \"0x%x\"}\n", inw(io + CPCMD));
}

/* Linux's ether_crc: the big-endian Ethernet CRC whose top 6 bits index MAR. */
static u32 ether_crc(const u8 *data, int length)
{
    u32 crc = 0xffffffffu;
    for (int i = 0; i < length; i++) {
        u8 octet = data[i];
        for (int bit = 0; bit < 8; bit++, octet >>= 1)
            crc = (crc << 1) ^ (((crc >> 31) ^ (octet & 1)) ? 0x04c11db7u : 0);
    }
    return crc;
}

/* netmcast MAC(12 hex digits): accept that multicast address (its hash bit) too. */
void cmd_netmcast(const char *args)
{
    const char *p = skip_spaces(args);
    u8 mac[6];
    for (int i = 0; i < 12; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0 || !io) {
            printf("{\"error\": \"usage: netmcast MAC (an rtl8139)\"}\n");
            return;
        }
        mac[i / 2] = (u8)(i % 2 ? mac[i / 2] * 16 + d : d);
    }
    u32 bit = ether_crc(mac, 6) >> 26;
    outb(io + MAR + (bit >> 3), (u8)(inb(io + MAR + (bit >> 3)) | (1u << (bit & 7))));
    outl(io + RCR, inl(io + RCR) | 0x04);            /* AM */
    printf("{\"bit\": %u}\n", bit);
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
                                   0, 0, 0, 0, allmulti};
    return nic_attach(nic, &ops, slot);
}
