/* virtio-blk driver (virtio spec 5.2): one-sector reads and writes, flush, discard
 * and write-zeroes, the capacity from config and the raw config itself; each
 * request is header, data and status in one chain. */
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
    } else if (!strncmp(p, "flush", 5)) {
        printf("{\"status\": %u}\n", request(4, 0, 0, 0));
    } else {
        printf("{\"error\": \"usage: blk [read S | write S TEXT | flush | discard S N | "
               "zeroes S N [unmap] | wce 0|1 | config]\"}\n");
    }
}
