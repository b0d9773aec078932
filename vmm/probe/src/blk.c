/* virtio-blk driver (virtio spec 5.2): one-sector reads and writes, flush, discard
 * and write-zeroes, the capacity from config and the raw config itself; each
 * request is header, data and status in one chain. `blk bench` keeps a number of
 * requests in flight (each slot its own three descriptors) and times them. */
#include "virtio.h"

#define BLK_TYPE 2
#define BLK_VECTOR 0x5f
#define F_BLK_SIZE (1UL << 6)
#define F_FLUSH (1UL << 9)
#define F_CONFIG_WCE (1UL << 11)
#define F_DISCARD (1UL << 13)
#define F_WRITE_ZEROES (1UL << 14)

struct blk_header { u32 type, reserved; u64 sector; };

static struct virtio_dev dev;
static struct virtqueue q;
static int present;
static struct blk_header header;
static u8 sector_buf[512] __attribute__((aligned(512)));
static u8 status;

static int blk_init(void)
{
    if (present)
        return 1;
    if (virtio_find(BLK_TYPE, &dev) || virtio_start(&dev, F_BLK_SIZE | F_FLUSH | F_CONFIG_WCE | F_DISCARD | F_WRITE_ZEROES,
                     0x5e) ||
        virtio_queue(&dev, &q, 0, BLK_VECTOR))
        return 0;
    virtio_ready(&dev);
    present = 1;
    return 1;
}

static u8 request(u32 type, u64 sector, int with_data, int data_in)
{
    header.type = type;
    header.reserved = 0;
    header.sector = sector;
    status = 0xff;
    void *bufs[3] = {&header, sector_buf, &status};
    u32 lens[3] = {sizeof(header), sizeof(sector_buf), 1};
    int writable[3] = {0, data_in, 1};
    if (!with_data) {                       /* header and status only */
        bufs[1] = &status;
        lens[1] = 1;
        writable[1] = 1;
    }
    vq_chain_wait(&q, with_data ? 3 : 2, bufs, lens, writable);
    return status;
}

#define BENCH_POOL (4u << 20)
#define BENCH_SLOTS 16
static u8 bench_pool[BENCH_POOL] __attribute__((aligned(4096)));
static struct blk_header bench_headers[BENCH_SLOTS];
static u8 bench_status[BENCH_SLOTS];
static u8 bench_busy[BENCH_SLOTS];          /* posted, and not yet taken back */

/* bench r|w rand|seq BYTES DEPTH COUNT: COUNT requests of BYTES each, DEPTH at a
 * time, at random (aligned) or consecutive offsets; the time they took. */
static void bench(const char *p)
{
    int writing = *p == 'w';
    p = skip_spaces(p + 1);
    int random = *p == 'r';
    while (*p && *p != ' ')
        p++;
    u64 bytes = 4096, depth = 1, count = 100;
    parse_u64(&p, &bytes);
    parse_u64(&p, &depth);
    parse_u64(&p, &count);
    u64 capacity = (u64)mmio_read32(dev.device) | (u64)mmio_read32(dev.device + 4) << 32;
    u64 units = capacity * 512 / bytes;
    if (!bytes || bytes % 512 || !depth || depth > BENCH_SLOTS || depth * bytes > BENCH_POOL ||
        !units || depth * 3 > q.size) {
        printf("{\"error\": \"bad bench parameters\"}\n");
        return;
    }
    u64 seed = 0x9e3779b97f4a7c15UL, next_unit = 0, issued = 0, done = 0, errors = 0;
    for (u64 i = 0; i < bytes * depth; i++)
        bench_pool[i] = (u8)(i * 131 + 7);
    u64 start = now_us();
    while (done < count) {
        while (issued < count && issued - done < depth) {
            u16 slot = (u16)(issued % depth);
            for (u16 s = 0; s < depth; s++)          /* a slot whose request is back */
                if (!bench_busy[(slot + s) % depth]) {
                    slot = (u16)((slot + s) % depth);
                    break;
                }
            u64 unit;
            if (random) {
                seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
                unit = seed % units;
            } else {
                unit = next_unit++ % units;
            }
            bench_headers[slot].type = writing ? 1 : 0;
            bench_headers[slot].reserved = 0;
            bench_headers[slot].sector = unit * bytes / 512;
            bench_status[slot] = 0xfe;
            bench_busy[slot] = 1;
            u16 d = (u16)(slot * 3);
            vq_set_desc(&q, d, &bench_headers[slot], sizeof(struct blk_header), 0, 1);
            vq_set_desc(&q, (u16)(d + 1), bench_pool + slot * bytes, (u32)bytes, !writing, 1);
            vq_set_desc(&q, (u16)(d + 2), &bench_status[slot], 1, 1, 0);
            vq_post_head(&q, d);
            issued++;
            if (issued == count || issued - done == depth)
                vq_kick(&q);
        }
        u16 head;
        for (u32 spins = 0;; spins++) {
            u32 generation = irq_generation;
            if (vq_take_used_id(&q, &head))
                break;
            if (spins > 2000000)
                wait_for_irq(generation);
        }
        errors += bench_status[head / 3] != 0;
        bench_busy[head / 3] = 0;
        done++;
    }
    u64 elapsed = now_us() - start;
    /* what the ring's own allocator hands out next must not be a bench slot's */
    q.next_desc = 0;
    printf("{\"status\": %lu, \"ops\": %lu, \"us\": %lu}\n", errors, count, elapsed);
}

void cmd_blk(const char *args)
{
    const char *p = skip_spaces(args);
    u64 sector = 0;
    if (!blk_init()) {
        printf("{\"present\": false}\n");
        return;
    }
    if (!*p) {
        printf("{\"present\": true, \"sectors\": %lu, \"features\": \"0x%lx\"}\n",
               (u64)mmio_read32(dev.device) | (u64)mmio_read32(dev.device + 4) << 32,
               dev.features);
    } else if (!strncmp(p, "read", 4)) {
        p += 4;
        parse_u64(&p, &sector);
        memset(sector_buf, 0, sizeof(sector_buf));
        u8 s = request(0, sector, 1, 1);
        printf("{\"status\": %u, \"text\": \"", s);
        for (int i = 0; i < 48 && sector_buf[i]; i++)
            if (sector_buf[i] >= 0x20 && sector_buf[i] < 0x7f && sector_buf[i] != '"' &&
                sector_buf[i] != '\\')
                printf("%c", sector_buf[i]);
        printf("\"}\n");
    } else if (!strncmp(p, "write", 5)) {
        p += 5;
        parse_u64(&p, &sector);
        p = skip_spaces(p);
        memset(sector_buf, 0, sizeof(sector_buf));
        size_t n = strlen(p);
        memcpy(sector_buf, p, n < sizeof(sector_buf) ? n : sizeof(sector_buf));
        printf("{\"status\": %u}\n", request(1, sector, 1, 0));
    } else if (!strncmp(p, "discard", 7) || !strncmp(p, "zeroes", 6)) {
        /* discard S N | zeroes S N [unmap]: one segment after the header */
        int zeroes = p[0] == 'z';
        static struct { u64 sector; u32 count, flags; } segment;
        u64 count = 0;
        p += zeroes ? 6 : 7;
        parse_u64(&p, &sector);
        parse_u64(&p, &count);
        segment.sector = sector;
        segment.count = (u32)count;
        segment.flags = !strncmp(skip_spaces(p), "unmap", 5) ? 1 : 0;
        header.type = zeroes ? 13 : 11;
        header.reserved = 0;
        header.sector = 0;
        status = 0xff;
        void *bufs[3] = {&header, &segment, &status};
        u32 lens[3] = {sizeof(header), sizeof(segment), 1};
        int writable[3] = {0, 0, 1};
        vq_chain_wait(&q, 3, bufs, lens, writable);
        printf("{\"status\": %u}\n", status);
    } else if (!strncmp(p, "wce", 3)) {              /* wce 0|1: CONFIG_WCE */
        p += 3;
        u64 on = 1;
        parse_u64(&p, &on);
        mmio_write8(dev.device + 32, (u8)on);
        printf("{\"writeback\": %u}\n", mmio_read8(dev.device + 32));
    } else if (!strncmp(p, "config", 6)) {          /* the raw config, as hex */
        printf("{\"offered\": \"0x%lx\", \"config\": \"", virtio_offered(&dev));
        for (int i = 0; i < 60; i++)
            printf("%02x", mmio_read8(dev.device + i));
        printf("\"}\n");
    } else if (!strncmp(p, "bench", 5)) {
        bench(skip_spaces(p + 5));
    } else if (!strncmp(p, "flush", 5)) {
        printf("{\"status\": %u}\n", request(4, 0, 0, 0));
    } else {
        printf("{\"error\": \"usage: blk [read S | write S TEXT | flush | discard S N | "
               "zeroes S N [unmap] | wce 0|1 | config | bench r|w rand|seq BYTES DEPTH "
               "COUNT]\"}\n");
    }
}
