/* virtio-balloon driver (virtio spec 5.5): follows the host's target by giving
 * pool pages back (inflateq) or taking them again (deflateq), a PFN array at a
 * time, and reports `actual`. The pool is RAM from 16 MiB up: what `touch` uses.
 * With VIRTIO_BALLOON_F_STATS_VQ it keeps one statistics buffer with the device
 * and refills it each time the device hands it back, as Linux does; with
 * VIRTIO_BALLOON_F_REPORTING, `report MIB` reports pool memory as free. */
#include "virtio.h"

#define BALLOON_TYPE 5
#define CONFIG_VECTOR 0x50
#define INFLATE_VECTOR 0x51
#define DEFLATE_VECTOR 0x52
#define STATS_VECTOR 0x53
#define REPORT_VECTOR 0x54
#define PFNS_PER_REQUEST 256
#define F_STATS_VQ (1UL << 1)
#define F_REPORTING (1UL << 5)
#define STATS_Q 2
#define REPORTING_Q 3
/* struct virtio_balloon_stat tags */
enum { S_SWAP_IN, S_SWAP_OUT, S_MAJFLT, S_MINFLT, S_MEMFREE, S_MEMTOT, S_AVAIL };
#define NSTATS 7

static struct virtio_dev dev;
static struct virtqueue inflateq, deflateq, statsq, reportq;
static struct { u16 tag; u64 val; } __attribute__((packed)) stats[NSTATS];
static u32 stats_updates;
static int stats_on, reporting_on;
static int present;
static int intx_on;                  /* config changes come as INTx (`balloon intx`) */
static u32 intx_seen;
static u32 inflated;                 /* pool pages currently given to the host */
static u32 pfns[PFNS_PER_REQUEST];

u32 balloon_inflated(void) { return inflated; }

/* What the statistics buffer says: a counter in minor faults shows each refill. */
static void fill_stats(void)
{
    u64 free_bytes = (pool_pages() - inflated) << 12;
    u64 values[NSTATS] = {0, 0, 0, ++stats_updates, free_bytes, ram_bytes, free_bytes};
    for (int i = 0; i < NSTATS; i++) {
        stats[i].tag = (u16)i;
        stats[i].val = values[i];
    }
}

void balloon_init(void)
{
    if (virtio_find(BALLOON_TYPE, &dev) ||
        virtio_start(&dev, F_STATS_VQ | F_REPORTING, CONFIG_VECTOR))
        return;
    if (virtio_queue(&dev, &inflateq, 0, INFLATE_VECTOR) ||
        virtio_queue(&dev, &deflateq, 1, DEFLATE_VECTOR))
        return;
    stats_on = (dev.features & F_STATS_VQ) && !virtio_queue(&dev, &statsq, STATS_Q, STATS_VECTOR);
    reporting_on = (dev.features & F_REPORTING) &&
                   !virtio_queue(&dev, &reportq, REPORTING_Q, REPORT_VECTOR);
    if (stats_on) {                    /* the first buffer goes before DRIVER_OK, as Linux's */
        fill_stats();
        vq_add(&statsq, stats, sizeof(stats), 0);
    }
    virtio_ready(&dev);
    present = 1;
}

static u32 target_pages(void) { return mmio_read32(dev.device + 0); }

static void move_pages(struct virtqueue *vq, u32 first, u32 count)
{
    for (u32 i = 0; i < count; i++)
        pfns[i] = (u32)(pool_page(first + i) >> 12);
    vq_send_wait(vq, pfns, count * 4, 0);
}

/* Moves toward the host's target; returns 1 if anything changed. */
static int adjust(void)
{
    u32 target = target_pages();
    u32 limit = pool_pages();
    if (target > limit)
        target = limit;
    if (target == inflated)
        return 0;
    while (inflated < target) {
        u32 n = target - inflated < PFNS_PER_REQUEST ? target - inflated : PFNS_PER_REQUEST;
        move_pages(&inflateq, inflated, n);
        inflated += n;
    }
    while (inflated > target) {
        u32 n = inflated - target < PFNS_PER_REQUEST ? inflated - target : PFNS_PER_REQUEST;
        move_pages(&deflateq, inflated - n, n);
        inflated -= n;
    }
    mmio_write32(dev.device + 4, inflated);    /* actual */
    return 1;
}

/* Called whenever the command loop wakes up (serial input, the 10 ms tick, or the
 * balloon's INTx after `balloon intx`): the host's target is compared with what is
 * inflated. QEMU's balloon has no MSI-X, so config changes are INTx or polling. */
void balloon_poll(void)
{
    if (!present)
        return;
    if (intx_on && irq_count[INTX_VECTOR] != intx_seen) {
        /* Reading the ISR acknowledges the device (its INTx line drops); then the
         * pin the interrupt stub masked can be opened again. */
        intx_seen = irq_count[INTX_VECTOR];
        u8 isr = mmio_read8(dev.isr);
        intx_done(INTX_VECTOR);
        printf("{\"event\": \"balloon-intx\", \"isr\": %u, \"count\": %u}\n", isr,
               intx_seen);
    }
    if (stats_on && vq_take_used(&statsq, 0)) {   /* the host wants fresh numbers */
        fill_stats();
        vq_add(&statsq, stats, sizeof(stats), 0);
    }
    if (adjust())
        printf("{\"event\": \"balloon\", \"target_pages\": %u, \"actual_pages\": %u}\n",
               target_pages(), inflated);
}

/* The legacy test takes the device over: this driver lets go of it. */
void balloon_stop(void)
{
    present = stats_on = reporting_on = 0;
}

void cmd_balloon(const char *args)
{
    if (!present) {
        printf("{\"present\": false}\n");
        return;
    }
    if (!strncmp(skip_spaces(args), "intx", 4)) {
        /* INTx through the IOAPIC: the pin is the IRQ the firmware put in the
         * interrupt line register, level-triggered, active high (as the MADT says) */
        unsigned irq = pci_read32(0, dev.slot, 0, 0x3c) & 0xff;
        intx_seen = irq_count[INTX_VECTOR];
        intx_on = 1;
        intx_route(irq, INTX_VECTOR);
        printf("{\"irq\": %u, \"vector\": %u}\n", irq, INTX_VECTOR);
        return;
    }
    printf("{\"present\": true, \"num_pages\": %u, \"actual\": %u, \"features\": \"0x%lx\"}\n",
           target_pages(), mmio_read32(dev.device + 4), dev.features);
}

void cmd_stats(const char *args)
{
    (void)args;
    printf("{\"enabled\": %s, \"updates\": %u, \"free\": %lu, \"total\": %lu, "
           "\"available\": %lu, \"minor_faults\": %lu}\n", stats_on ? "true" : "false",
           stats_updates, stats[S_MEMFREE].val, stats[S_MEMTOT].val, stats[S_AVAIL].val,
           stats[S_MINFLT].val);
}

/* Reports MIB MiB of the pool (after the inflated pages) as free, 1 MiB per buffer;
 * the host may discard them, so they read back as zero. */
void cmd_report(const char *args)
{
    u64 mib = 0;
    if (!reporting_on || !parse_u64(&args, &mib)) {
        printf("{\"error\": \"%s\"}\n", reporting_on ? "usage: report MIB"
                                                          : "free page reporting not negotiated");
        return;
    }
    u64 reported = 0;
    for (u64 i = 0; i < mib && (inflated + (i + 1) * 256) <= pool_pages(); i++) {
        u64 first = pool_page(inflated + i * 256), last = pool_page(inflated + i * 256 + 255);
        if (last - first != 255 * 4096)
            continue;                  /* not contiguous: across a hole in RAM */
        vq_send_wait(&reportq, (void *)first, 1 << 20, 1);
        reported++;
    }
    printf("{\"reported_mib\": %lu}\n", reported);
}
