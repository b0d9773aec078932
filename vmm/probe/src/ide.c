/* ATA and ATAPI driver for the PIIX3 IDE function (00:01.1): both legacy channels,
 * PIO (16-bit words, or dwords) and bus-master DMA through a PRD table, LBA28 and
 * LBA48. It polls the alternate status for PIO; a DMA transfer ends with the
 * channel's IRQ (14 or 15, through the IOAPIC), which it watches in memory. It
 * reports the bus master's interrupt bit, which the controller sets whenever the
 * channel raised its IRQ.
 *
 *   ide identify CH UNIT            IDENTIFY (or IDENTIFY PACKET for a CD-ROM): words
 *   ide signature CH UNIT           a software reset, then the signature registers
 *   ide read CH UNIT LBA N pio|dma|mult [48]       N sectors: sum and head
 *   ide write CH UNIT LBA N pio|dma|mult TEXT [48] N sectors of TEXT, then a sum
 *   ide flush CH UNIT | ide features CH UNIT F [COUNT] | ide cmd CH UNIT CMD
 *   ide trim CH UNIT LBA N          DATA SET MANAGEMENT (TRIM) of one range, by DMA
 *   ide bench CH UNIT MIB KIB       sequential DMA reads of KIB each: the time taken
 *   atapi CH UNIT OP ...            a packet command: inquiry, tur, sense, capacity,
 *                                   read LBA N pio|dma, lock 0|1, eject, load, gesn,
 *                                   toc, config, mode PAGE
 */
#include "probe.h"

#define ST_BSY 0x80
#define ST_DRDY 0x40
#define ST_DRQ 0x08
#define ST_ERR 0x01
#define BM_ACTIVE 0x01
#define BM_ERROR 0x02
#define BM_INT 0x04
#define DATA_MAX (2u << 20)
#define TIMEOUT_US 10000000

static const u16 command_ports[2] = {0x1f0, 0x170};
static const u16 control_ports[2] = {0x3f6, 0x376};
static u16 bm_base;
static u8 data[DATA_MAX] __attribute__((aligned(65536)));
static u32 prd[2 * 512] __attribute__((aligned(4096)));
static u16 words[256];

#define IDE_VECTOR 0x6c                 /* ide.0's IRQ 14; ide.1's IRQ 15 the next */

static int controller(void)
{
    if (bm_base)
        return 1;
    if (pci_read32(0, 1, 1, 0) != 0x70108086)
        return 0;
    u32 bar = pci_read32(0, 1, 1, 0x20) & ~3u;
    if (!bar) {                             /* no firmware assigned it: do it here */
        pci_write32(0, 1, 1, 0x20, 0xc000);
        bar = 0xc000;
    }
    pci_write32(0, 1, 1, 4, pci_read32(0, 1, 1, 4) | 0x5);   /* I/O and bus master */
    bm_base = (u16)bar;
    ioapic_route(14, IDE_VECTOR, 0, 0, 0);
    ioapic_route(15, IDE_VECTOR + 1, 0, 0, 0);
    return 1;
}

static u8 bm_read(unsigned ch, unsigned reg) { return inb(bm_base + 8 * ch + reg); }
static void bm_write(unsigned ch, unsigned reg, u8 v) { outb(bm_base + 8 * ch + reg, v); }

/* Waits for BSY to clear; the status (or 0xff after the timeout). With BSY clear,
 * DRQ says the next data block may move; a command that ended has none. */
static u8 wait_ready(unsigned ch)
{
    u64 end = now_us() + TIMEOUT_US;
    for (;;) {
        u8 st = inb(control_ports[ch]);
        if (!(st & ST_BSY))
            return st;
        if (now_us() > end)
            return 0xff;
    }
}

static void select_unit(unsigned ch, unsigned unit, u8 bits)
{
    outb(command_ports[ch] + 6, 0xa0 | (u8)(unit << 4) | bits);
    for (int i = 0; i < 4; i++)
        inb(control_ports[ch]);             /* 400 ns for the drive to answer */
}

/* The task file for an LBA28 or LBA48 command of `count` sectors. */
static void set_lba(unsigned ch, unsigned unit, u64 lba, u32 count, int lba48)
{
    u16 base = command_ports[ch];
    if (lba48) {
        select_unit(ch, unit, 0x40);
        outb(base + 2, (u8)(count >> 8));
        outb(base + 3, (u8)(lba >> 24));
        outb(base + 4, (u8)(lba >> 32));
        outb(base + 5, (u8)(lba >> 40));
    } else {
        select_unit(ch, unit, 0x40 | (u8)((lba >> 24) & 0x0f));
    }
    outb(base + 2, (u8)count);
    outb(base + 3, (u8)lba);
    outb(base + 4, (u8)(lba >> 8));
    outb(base + 5, (u8)(lba >> 16));
}

static u32 sum_bytes(const u8 *p, u32 n)
{
    u32 s = 0;
    for (u32 i = 0; i < n; i++)
        s = s * 31 + p[i];
    return s;
}

static void print_text(const u8 *p, u32 n)
{
    for (u32 i = 0; i < n && p[i]; i++)
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\')
            printf("%c", p[i]);
}

/* The end of a command: status, error, whether the IRQ came (acknowledged). */
static void print_end(unsigned ch)
{
    u8 bm = bm_read(ch, 2);
    u8 err = inb(command_ports[ch] + 1);
    u8 st = inb(command_ports[ch] + 7);      /* acknowledges the interrupt */
    bm_write(ch, 2, BM_INT | BM_ERROR);
    printf("\"status\": %u, \"error\": %u, \"irq\": %u, \"bm\": %u", st, err,
           (bm & BM_INT) ? 1 : 0, bm);
}

/* The end of a DMA transfer: the channel's interrupt (watched in memory, at native
 * speed), or the bus master no longer active (a transfer that ends without one),
 * or the timeout. */
static void wait_dma(unsigned ch, u32 irqs_before)
{
    u64 end = now_us() + TIMEOUT_US;
    for (u32 spins = 1;; spins++) {
        if (irq_count[IDE_VECTOR + ch] != irqs_before)
            return;
        if (spins % (1u << 22) == 0) {        /* a few milliseconds */
            u8 bm = bm_read(ch, 2);
            if ((bm & BM_INT) || !(bm & BM_ACTIVE) || now_us() > end)
                return;
        }
    }
}

/* One PRD per 64 KiB of `bytes` from `data` (the last marked end of table). */
static void build_prds(u32 bytes)
{
    unsigned n = 0;
    for (u32 off = 0; off < bytes; off += 65536, n++) {
        u32 len = bytes - off < 65536 ? bytes - off : 65536;
        prd[2 * n] = (u32)(u64)(data + off);
        prd[2 * n + 1] = (len & 0xffff) | (off + len >= bytes ? 0x80000000u : 0);
    }
}

/* A DMA command over `bytes` of `data`: returns the final status. */
static u8 run_dma(unsigned ch, u8 command, u32 bytes, int to_memory)
{
    build_prds(bytes);
    outl(bm_base + 8 * ch + 4, (u32)(u64)prd);
    bm_write(ch, 2, BM_INT | BM_ERROR);
    bm_write(ch, 0, to_memory ? 0x08 : 0x00);
    u32 irqs = irq_count[IDE_VECTOR + ch];
    outb(command_ports[ch] + 7, command);
    bm_write(ch, 0, to_memory ? 0x09 : 0x01);
    wait_dma(ch, irqs);
    bm_write(ch, 0, 0);
    return inb(control_ports[ch]);
}

static u8 pio_in(unsigned ch, u8 *p, u32 bytes)
{
    u8 st = wait_ready(ch);
    if (st & ST_ERR || !(st & ST_DRQ))
        return st;
    for (u32 i = 0; i < bytes; i += 2) {
        u16 w = inw(command_ports[ch]);
        p[i] = (u8)w;
        p[i + 1] = (u8)(w >> 8);
    }
    return st;
}

static void cmd_identify(unsigned ch, unsigned unit)
{
    select_unit(ch, unit, 0);
    outb(command_ports[ch] + 7, 0xec);
    u8 st = wait_ready(ch);
    int packet = 0;
    if (st & ST_ERR) {
        u8 lcyl = inb(command_ports[ch] + 4), hcyl = inb(command_ports[ch] + 5);
        if (lcyl == 0x14 && hcyl == 0xeb) {  /* a packet device */
            packet = 1;
            outb(command_ports[ch] + 7, 0xa1);
            st = wait_ready(ch);
        }
    }
    if (st == 0xff || st & ST_ERR || !(st & ST_DRQ)) {
        printf("{\"present\": false, ");
        print_end(ch);
        printf("}\n");
        return;
    }
    for (int i = 0; i < 256; i++)
        words[i] = inw(command_ports[ch]);
    printf("{\"present\": true, \"packet\": %d, \"words\": \"", packet);
    for (int i = 0; i < 256; i++)
        printf("%04x", words[i]);
    printf("\", ");
    print_end(ch);
    printf("}\n");
}

/* Selects a unit once the channel takes it: while a reset runs, a busy channel
 * ignores the select (QEMU may still be resetting when the probe asks), and a
 * selected absent slave reads as not busy, so the select is read back until it
 * took; then the unit's status once it is no longer busy. */
static u8 select_when_idle(unsigned ch, unsigned unit)
{
    u64 end = now_us() + TIMEOUT_US;
    for (;;) {
        select_unit(ch, unit, 0);
        if (((inb(command_ports[ch] + 6) >> 4) & 1) == unit)
            return wait_ready(ch);
        if (now_us() > end)
            return 0xff;
    }
}

static void cmd_signature(unsigned ch, unsigned unit)
{
    outb(control_ports[ch], 0x04);            /* SRST */
    delay_us(10);
    outb(control_ports[ch], 0x00);
    select_when_idle(ch, 0);                  /* the master ends the reset */
    u8 st = select_when_idle(ch, unit);
    u16 b = command_ports[ch];
    printf("{\"status\": %u, \"alt\": %u, \"error\": %u, \"nsector\": %u, \"sector\": %u, "
           "\"lcyl\": %u, \"hcyl\": %u, \"select\": %u}\n", st, inb(control_ports[ch]),
           inb(b + 1), inb(b + 2), inb(b + 3), inb(b + 4), inb(b + 5), inb(b + 6));
}

static int mode_of(const char *p)
{
    p = skip_spaces(p);
    if (!strncmp(p, "dma", 3)) return 1;
    if (!strncmp(p, "mult", 4)) return 2;
    return 0;
}

static const char *next_word(const char *p)
{
    p = skip_spaces(p);
    while (*p && *p != ' ')
        p++;
    return p;
}

static void cmd_rw(unsigned ch, unsigned unit, const char *p, int write)
{
    u64 lba = 0, count = 0;
    parse_u64(&p, &lba);
    parse_u64(&p, &count);
    int mode = mode_of(p);
    p = next_word(p);
    const char *text = "";
    size_t text_len = 0;
    if (write) {
        text = skip_spaces(p);
        p = next_word(p);
        text_len = (size_t)(p - text);
    }
    int lba48 = !strncmp(skip_spaces(p), "48", 2);
    if (!count || count * 512 > DATA_MAX || (!lba48 && count > 256)) {
        printf("{\"error\": \"bad count\"}\n");
        return;
    }
    u32 bytes = (u32)count * 512;
    if (write)
        for (u32 i = 0; i < bytes; i++)
            data[i] = text_len ? (u8)text[i % text_len] : 0;
    else
        memset(data, 0xee, bytes);
    set_lba(ch, unit, lba, (u32)count, lba48);
    u8 st;
    if (mode == 1) {
        u8 command = write ? (lba48 ? 0x35 : 0xca) : (lba48 ? 0x25 : 0xc8);
        st = run_dma(ch, command, bytes, !write);
    } else {
        u32 block = mode == 2 ? 16 * 512 : 512;      /* MULTIPLE: 16 sectors per DRQ */
        u8 command = mode == 2 ? (write ? (lba48 ? 0x39 : 0xc5) : (lba48 ? 0x29 : 0xc4))
                               : (write ? (lba48 ? 0x34 : 0x30) : (lba48 ? 0x24 : 0x20));
        outb(command_ports[ch] + 7, command);
        st = 0;
        for (u32 off = 0; off < bytes; off += block) {
            u32 n = bytes - off < block ? bytes - off : block;
            if (write) {
                st = wait_ready(ch);
                if (st & ST_ERR || !(st & ST_DRQ))
                    break;
                for (u32 i = 0; i < n; i += 4)
                    outl(command_ports[ch], (u32)data[off + i] | (u32)data[off + i + 1] << 8 |
                         (u32)data[off + i + 2] << 16 | (u32)data[off + i + 3] << 24);
            } else {
                st = pio_in(ch, data + off, n);
                if (st & ST_ERR || !(st & ST_DRQ))
                    break;
            }
        }
        st = wait_ready(ch);
    }
    u16 b = command_ports[ch];
    printf("{\"sum\": %u, \"head\": \"", sum_bytes(data, bytes));
    print_text(data, 32);
    printf("\", \"lba\": [%u, %u, %u], ", inb(b + 3), inb(b + 4), inb(b + 5));
    print_end(ch);
    printf("}\n");
    (void)st;
}

static void cmd_simple(unsigned ch, unsigned unit, u8 command, u8 feature, u8 count)
{
    select_unit(ch, unit, 0);
    outb(command_ports[ch] + 1, feature);
    outb(command_ports[ch] + 2, count);
    outb(command_ports[ch] + 7, command);
    wait_ready(ch);
    printf("{\"nsector\": %u, ", inb(command_ports[ch] + 2));
    print_end(ch);
    printf("}\n");
}

static void cmd_bench(unsigned ch, unsigned unit, const char *p)
{
    u64 mib = 0, kib = 0;
    parse_u64(&p, &mib);
    parse_u64(&p, &kib);
    if (!mib || !kib || kib * 1024 > DATA_MAX) {
        printf("{\"error\": \"bad size\"}\n");
        return;
    }
    u32 sectors = (u32)kib * 2;
    u64 total = mib * 2048, errors = 0;
    u64 start = now_us();
    for (u64 lba = 0; lba < total; lba += sectors) {
        set_lba(ch, unit, lba, sectors, 1);
        u8 st = run_dma(ch, 0x25, sectors * 512, 1);
        inb(command_ports[ch] + 7);
        if (st & ST_ERR)
            errors++;
    }
    printf("{\"mib\": %lu, \"us\": %lu, \"errors\": %lu}\n", mib, now_us() - start, errors);
}

/* DATA SET MANAGEMENT (TRIM): one 512-byte block of ranges, the first LBA COUNT. */
static void cmd_trim(unsigned ch, unsigned unit, const char *p)
{
    u64 lba = 0, count = 0;
    parse_u64(&p, &lba);
    parse_u64(&p, &count);
    memset(data, 0, 512);
    u64 entry = (lba & 0xffffffffffffUL) | count << 48;
    memcpy(data, &entry, 8);
    select_unit(ch, unit, 0x40);
    outb(command_ports[ch] + 1, 0x01);      /* TRIM */
    outb(command_ports[ch] + 2, 1);         /* one block of ranges */
    run_dma(ch, 0x06, 512, 0);
    printf("{");
    print_end(ch);
    printf("}\n");
}

/* CH UNIT from *p (moved past them); 0 after printing the error if there is no
 * controller or they are out of range. */
static int channel_and_unit(const char **p, u64 *ch, u64 *unit)
{
    if (!controller()) {
        printf("{\"error\": \"no PIIX3 IDE\"}\n");
        return 0;
    }
    parse_u64(p, ch);
    parse_u64(p, unit);
    if (*ch > 1 || *unit > 1) {
        printf("{\"error\": \"bad channel or unit\"}\n");
        return 0;
    }
    return 1;
}

void cmd_ide(const char *args)
{
    const char *op = skip_spaces(args);
    const char *p = next_word(op);
    u64 ch = 0, unit = 0;
    if (!channel_and_unit(&p, &ch, &unit))
        return;
    if (!strncmp(op, "identify", 8)) cmd_identify(ch, unit);
    else if (!strncmp(op, "signature", 9)) cmd_signature(ch, unit);
    else if (!strncmp(op, "read", 4)) cmd_rw(ch, unit, p, 0);
    else if (!strncmp(op, "write", 5)) cmd_rw(ch, unit, p, 1);
    else if (!strncmp(op, "flush", 5)) cmd_simple(ch, unit, 0xe7, 0, 0);
    else if (!strncmp(op, "bench", 5)) cmd_bench(ch, unit, p);
    else if (!strncmp(op, "trim", 4)) cmd_trim(ch, unit, p);
    else if (!strncmp(op, "features", 8) || !strncmp(op, "cmd", 3)) {
        u64 a = 0, b = 0;
        parse_u64(&p, &a);
        parse_u64(&p, &b);
        if (op[0] == 'f')
            cmd_simple(ch, unit, 0xef, (u8)a, (u8)b);
        else
            cmd_simple(ch, unit, (u8)a, 0, (u8)b);
    } else
        printf("{\"error\": \"unknown ide command\"}\n");
}

/* -- ATAPI ------------------------------------------------------------------------- */
static u8 packet_buf[12];

/* A packet command; the reply (up to DATA_MAX) lands in data. Returns its length. */
static u32 atapi_run(unsigned ch, unsigned unit, int dma, u32 expect)
{
    u16 b = command_ports[ch];
    select_unit(ch, unit, 0);
    outb(b + 1, dma ? 1 : 0);
    outb(b + 4, 0xfe);                      /* byte count limit: 0xfffe */
    outb(b + 5, 0xff);
    if (dma) {
        build_prds(expect ? expect : 512);
        outl(bm_base + 8 * ch + 4, (u32)(u64)prd);
        bm_write(ch, 2, BM_INT | BM_ERROR);
        bm_write(ch, 0, 0x08);
    }
    outb(b + 7, 0xa0);
    u8 st = wait_ready(ch);
    if (st & ST_ERR || !(st & ST_DRQ))
        return 0;
    for (int i = 0; i < 12; i += 2)
        outw(b, (u16)(packet_buf[i] | packet_buf[i + 1] << 8));
    if (dma) {
        u32 irqs = irq_count[IDE_VECTOR + ch];
        bm_write(ch, 0, 0x09);
        wait_dma(ch, irqs);
        bm_write(ch, 0, 0);
        wait_ready(ch);
        return expect;
    }
    u32 got = 0;
    for (;;) {
        st = wait_ready(ch);
        if (st == 0xff || st & ST_ERR || !(st & ST_DRQ))
            break;
        u32 n = inb(b + 4) | (u32)inb(b + 5) << 8;
        for (u32 i = 0; i < n; i += 2) {
            u16 w = inw(b);
            if (got + i + 1 < DATA_MAX) {
                data[got + i] = (u8)w;
                data[got + i + 1] = (u8)(w >> 8);
            }
        }
        got += n;
    }
    return got;
}

static void atapi_print(unsigned ch, u32 got, u32 show)
{
    printf("{\"length\": %u, \"sum\": %u, \"data\": \"", got, sum_bytes(data, got));
    for (u32 i = 0; i < got && i < show; i++)
        printf("%02x", data[i]);
    printf("\", \"reason\": %u, ", inb(command_ports[ch] + 2) & 3);
    print_end(ch);
    printf("}\n");
}

void cmd_atapi(const char *args)
{
    const char *p = skip_spaces(args);
    u64 ch = 0, unit = 0;
    if (!channel_and_unit(&p, &ch, &unit))
        return;
    const char *op = skip_spaces(p);
    p = next_word(op);
    memset(packet_buf, 0, sizeof(packet_buf));
    memset(data, 0, 4096);
    int dma = 0;
    u32 expect = 0, show = 64;
    if (!strncmp(op, "inquiry", 7)) {
        packet_buf[0] = 0x12; packet_buf[4] = 96;
    } else if (!strncmp(op, "tur", 3)) {
        packet_buf[0] = 0x00;
    } else if (!strncmp(op, "sense", 5)) {
        packet_buf[0] = 0x03; packet_buf[4] = 18;
    } else if (!strncmp(op, "capacity", 8)) {
        packet_buf[0] = 0x25;
    } else if (!strncmp(op, "read", 4)) {
        u64 lba = 0, count = 0;
        parse_u64(&p, &lba);
        parse_u64(&p, &count);
        dma = mode_of(p) == 1;
        if (!count || count * 2048 > DATA_MAX) {
            printf("{\"error\": \"bad count\"}\n");
            return;
        }
        packet_buf[0] = 0x28;
        packet_buf[2] = (u8)(lba >> 24); packet_buf[3] = (u8)(lba >> 16);
        packet_buf[4] = (u8)(lba >> 8); packet_buf[5] = (u8)lba;
        packet_buf[7] = (u8)(count >> 8); packet_buf[8] = (u8)count;
        expect = (u32)count * 2048;
        show = 32;
    } else if (!strncmp(op, "lock", 4)) {
        u64 on = 1;
        parse_u64(&p, &on);
        packet_buf[0] = 0x1e; packet_buf[4] = (u8)on;
    } else if (!strncmp(op, "eject", 5) || !strncmp(op, "load", 4)) {
        packet_buf[0] = 0x1b; packet_buf[4] = op[0] == 'e' ? 0x02 : 0x03;
    } else if (!strncmp(op, "gesn", 4)) {
        packet_buf[0] = 0x4a; packet_buf[1] = 1; packet_buf[4] = 1 << 4; packet_buf[8] = 8;
    } else if (!strncmp(op, "toc", 3)) {
        packet_buf[0] = 0x43; packet_buf[8] = 100;
    } else if (!strncmp(op, "config", 6)) {
        packet_buf[0] = 0x46; packet_buf[8] = 32;
    } else if (!strncmp(op, "mode", 4)) {
        u64 page = 0x2a;
        parse_u64(&p, &page);
        packet_buf[0] = 0x5a; packet_buf[2] = (u8)page; packet_buf[8] = 64;
    } else {
        printf("{\"error\": \"unknown atapi command\"}\n");
        return;
    }
    u32 got = atapi_run(ch, unit, dma, expect);
    atapi_print(ch, got, show);
}
