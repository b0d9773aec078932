/* Intel 82540EM (e1000) driver: MAC from the EEPROM (EERD), 16-descriptor legacy
 * receive and transmit rings, link from STATUS. Polled: interrupts stay masked,
 * since this guest's CPL0 stubs do not acknowledge a level-triggered INTx. */
#include "nic.h"

#define CTRL 0x0000
#define STATUS 0x0008
#define EECD 0x0010
#define EERD 0x0014
#define IMC 0x00d8
#define RCTL 0x0100
#define TCTL 0x0400
#define RDBAL 0x2800
#define RDBAH 0x2804
#define RDLEN 0x2808
#define RDH 0x2810
#define RDT 0x2818
#define TDBAL 0x3800
#define TDBAH 0x3804
#define TDLEN 0x3808
#define TDH 0x3810
#define TDT 0x3818
#define RING 16
#define BUF_SIZE 2048

struct rx_desc { u64 addr; u16 length, csum; u8 status, errors; u16 special; };
struct tx_desc { u64 addr; u16 length; u8 cso, cmd, status, css; u16 special; };

static u64 regs;
static struct rx_desc rx_ring[RING] __attribute__((aligned(128)));
static struct tx_desc tx_ring[RING] __attribute__((aligned(128)));
static u8 rx_buf[RING][BUF_SIZE] __attribute__((aligned(64)));
static u8 tx_buf[BUF_SIZE] __attribute__((aligned(64)));
static unsigned rx_next, tx_next;

static u32 rd(u32 reg) { return mmio_read32(regs + reg); }
static void wr(u32 reg, u32 v) { mmio_write32(regs + reg, v); }

static u16 eeprom_word(unsigned addr)
{
    wr(EERD, (addr << 8) | 1);
    for (int i = 0; i < 100000; i++) {
        u32 v = rd(EERD);
        if (v & (1u << 4))
            return (u16)(v >> 16);
    }
    return 0xffff;
}

static int link(void) { return (rd(STATUS) >> 1) & 1; }
static void allmulti(void) { wr(RCTL, rd(RCTL) | (1u << 4)); }       /* MPE */

static void send(const u8 *frame, u32 len)
{
    unsigned i = tx_next;
    memcpy(tx_buf, frame, len);
    tx_ring[i].addr = (u64)tx_buf;
    tx_ring[i].length = (u16)len;
    tx_ring[i].cmd = 0x01 | 0x02 | 0x08;              /* EOP, IFCS, RS */
    tx_ring[i].status = 0;
    tx_next = (i + 1) % RING;
    barrier();
    wr(TDT, tx_next);
    for (int spins = 0; spins < 10000000 && !(*(volatile u8 *)&tx_ring[i].status & 1); spins++)
        ;
}

/* TCP/IPv4 checksum offload, and with mss TCP segmentation: a context descriptor
 * (checksum ranges; TSE, MSS and header length) and one data descriptor (DEXT). For
 * TSO the IP checksum and total length are zero and the TCP field holds the
 * pseudo-header sum without a length: the card fills each segment's in (Linux's way). */
static u8 tso_buf[65600] __attribute__((aligned(64)));

static int send_offload(const u8 *frame, u32 len, u32 l4, u32 hdr_len, u32 mss)
{
    if (len > sizeof(tso_buf) || (!mss && len > 1514))
        return 0;
    memcpy(tso_buf, frame, len);
    if (mss) {
        tso_buf[16] = tso_buf[17] = 0;           /* IP total length */
        tso_buf[24] = tso_buf[25] = 0;           /* IP header checksum */
    }
    unsigned i = tx_next;
    u8 *ctx = (u8 *)&tx_ring[i];
    memset(ctx, 0, 16);
    ctx[0] = 14;                                 /* IPCSS */
    ctx[1] = 14 + 10;                            /* IPCSO */
    ctx[2] = (u8)(l4 - 1);                       /* IPCSE */
    ctx[4] = (u8)l4;                             /* TUCSS */
    ctx[5] = (u8)(l4 + 16);                      /* TUCSO; TUCSE 0: to the end */
    *(u32 *)(ctx + 8) = mss ? len - hdr_len : 0;  /* PAYLEN, DTYP 0: context */
    ctx[11] = 0x01 | 0x02 | 0x20 | (mss ? 0x04 : 0);   /* TCP, IPv4, DEXT, TSE */
    ctx[13] = (u8)hdr_len;
    *(u16 *)(ctx + 14) = (u16)mss;
    unsigned d = (i + 1) % RING;
    u8 *data = (u8 *)&tx_ring[d];
    memset(data, 0, 16);
    *(u64 *)data = (u64)tso_buf;
    *(u32 *)(data + 8) = len | (1u << 20);       /* DTALEN, DTYP 1: data */
    data[11] = 0x01 | 0x02 | 0x08 | 0x20 | (mss ? 0x04 : 0);  /* EOP IFCS RS DEXT TSE */
    data[13] = mss ? 0x03 : 0x02;                /* POPTS: IXSM (TSO), TXSM */
    tx_next = (d + 1) % RING;
    barrier();
    wr(TDT, tx_next);
    for (int spins = 0; spins < 10000000 && !(*(volatile u8 *)&data[12] & 1); spins++)
        ;
    return 1;
}

static int poll(u8 **frame, u32 *len)
{
    barrier();
    if (!(*(volatile u8 *)&rx_ring[rx_next].status & 1))
        return 0;
    *frame = (u8 *)rx_ring[rx_next].addr;
    *len = rx_ring[rx_next].length;
    return 1;
}

static void recycle(u8 *frame)
{
    (void)frame;
    rx_ring[rx_next].status = 0;
    barrier();
    wr(RDT, rx_next);                                  /* the slot goes back to the card */
    rx_next = (rx_next + 1) % RING;
}

/* The EEPROM through EECD's Microwire pins, as Linux's e1000 reads an 82540's:
 * CS up, opcode 110 and a 6-bit address out on DI (clocked by SK), 16 bits in on
 * DO, then standby (CS down, a clock, CS up) before the next word. */
#define EE_SK 0x01
#define EE_CS 0x02
#define EE_DI 0x04
#define EE_DO 0x08

static void ee_clock(u32 *eecd, int up)
{
    *eecd = up ? *eecd | EE_SK : *eecd & ~EE_SK;
    wr(EECD, *eecd);
}

static void ee_shift_out(u32 *eecd, u16 data, int count)
{
    *eecd &= ~EE_DO;
    for (u32 mask = 1u << (count - 1); mask; mask >>= 1) {
        *eecd = (data & mask) ? *eecd | EE_DI : *eecd & ~EE_DI;
        wr(EECD, *eecd);
        ee_clock(eecd, 1);
        ee_clock(eecd, 0);
    }
    *eecd &= ~EE_DI;
    wr(EECD, *eecd);
}

static u16 ee_shift_in(u32 *eecd)
{
    u16 data = 0;
    *eecd = rd(EECD) & ~(EE_DO | EE_DI);
    for (int i = 0; i < 16; i++) {
        ee_clock(eecd, 1);
        data = (u16)(data << 1 | ((rd(EECD) & EE_DO) ? 1 : 0));
        ee_clock(eecd, 0);
    }
    return data;
}

static u16 microwire_sum(void)
{
    u32 eecd = rd(EECD) & ~(EE_DI | EE_SK);
    wr(EECD, eecd);
    eecd |= EE_CS;
    wr(EECD, eecd);
    u16 sum = 0;
    for (u16 w = 0; w < 64; w++) {
        ee_shift_out(&eecd, 6, 3);                       /* READ */
        ee_shift_out(&eecd, w, 6);
        sum = (u16)(sum + ee_shift_in(&eecd));
        eecd &= ~(EE_CS | EE_SK);                         /* standby */
        wr(EECD, eecd);
        ee_clock(&eecd, 1);
        eecd |= EE_CS;
        wr(EECD, eecd);
        ee_clock(&eecd, 0);
    }
    eecd &= ~(EE_CS | EE_DI);                             /* release */
    wr(EECD, eecd);
    ee_clock(&eecd, 1);
    ee_clock(&eecd, 0);
    return sum;
}

/* The EEPROM's 64 words must sum to 0xBABA: what Linux checks before anything, by
 * EERD and (as Linux does on this chip) by Microwire. */
static void info(void)
{
    u16 sum = 0;
    for (unsigned w = 0; w < 64; w++)
        sum = (u16)(sum + eeprom_word(w));
    printf(", \"eeprom_sum\": \"0x%x\", \"eeprom_sum_microwire\": \"0x%x\"", sum,
           microwire_sum());
}

int e1000_probe(struct nic *nic)
{
    unsigned slot;
    for (slot = 0; slot < 32; slot++)
        if (pci_read32(0, slot, 0, 0) == 0x100e8086)
            break;
    if (slot == 32)
        return 0;
    regs = pci_read32(0, slot, 0, 0x10) & ~15u;
    u32 cmd = pci_read32(0, slot, 0, 4);
    pci_write32(0, slot, 0, 4, (cmd & 0xffff) | 0x6);    /* memory, bus master */
    wr(CTRL, rd(CTRL) | (1u << 26));                     /* reset */
    delay_us(1000);
    wr(IMC, 0xffffffffu);
    for (unsigned w = 0; w < 3; w++) {
        u16 v = eeprom_word(w);
        nic->mac[2 * w] = (u8)v;
        nic->mac[2 * w + 1] = (u8)(v >> 8);
    }
    memset(rx_ring, 0, sizeof(rx_ring));
    memset(tx_ring, 0, sizeof(tx_ring));
    for (unsigned i = 0; i < RING; i++)
        rx_ring[i].addr = (u64)rx_buf[i];
    wr(RDBAL, (u32)(u64)rx_ring);
    wr(RDBAH, (u32)((u64)rx_ring >> 32));
    wr(RDLEN, sizeof(rx_ring));
    wr(RDH, 0);
    wr(RDT, RING - 1);
    wr(TDBAL, (u32)(u64)tx_ring);
    wr(TDBAH, (u32)((u64)tx_ring >> 32));
    wr(TDLEN, sizeof(tx_ring));
    wr(TDH, 0);
    wr(TDT, 0);
    rx_next = tx_next = 0;
    wr(RCTL, (1u << 1) | (1u << 15) | (1u << 26));     /* EN, BAM, SECRC; 2 KiB buffers */
    wr(TCTL, (1u << 1) | (1u << 3));                    /* EN, PSP */
    static const struct nic ops = {"e1000", 0, {0}, link, send, poll, recycle, info,
                                   send_offload, 0, 0, 0, allmulti};
    return nic_attach(nic, &ops, slot);
}
