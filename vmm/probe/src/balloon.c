/* virtio-balloon driver (virtio spec 5.5): follows the host's target by giving
 * pool pages back (inflateq) or taking them again (deflateq), a PFN array at a
 * time, and reports `actual`. The pool is RAM from 16 MiB up: what `touch` uses. */
#include "virtio.h"

#define BALLOON_TYPE 5
#define CONFIG_VECTOR 0x50
#define INFLATE_VECTOR 0x51
#define DEFLATE_VECTOR 0x52
#define PFNS_PER_REQUEST 256

static struct virtio_dev dev;
static struct virtqueue inflateq, deflateq;
static int present;
static u32 inflated;                 /* pool pages currently given to the host */
static u32 pfns[PFNS_PER_REQUEST];

u32 balloon_inflated(void) { return inflated; }

void balloon_init(void)
{
    if (virtio_find(BALLOON_TYPE, &dev) || virtio_start(&dev, 0, CONFIG_VECTOR))
        return;
    if (virtio_queue(&dev, &inflateq, 0, INFLATE_VECTOR) ||
        virtio_queue(&dev, &deflateq, 1, DEFLATE_VECTOR))
        return;
    virtio_ready(&dev);
    present = 1;
    lapic_timer_start(TIMER_VECTOR, 10 * 1000 * 1000);
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

/* Called whenever the command loop wakes up (serial input, or the 10 ms timer the
 * balloon starts): the host's target is compared with what is inflated. Config
 * interrupts need not be taken: QEMU's balloon has no MSI-X, and its INTx is level-
 * triggered, which this guest's minimal CPL0 stubs do not acknowledge. */
void balloon_poll(void)
{
    if (!present)
        return;
    if (adjust())
        printf("{\"event\": \"balloon\", \"target_pages\": %u, \"actual_pages\": %u}\n",
               target_pages(), inflated);
}

void cmd_balloon(const char *args)
{
    (void)args;
    if (!present) {
        printf("{\"present\": false}\n");
        return;
    }
    printf("{\"present\": true, \"num_pages\": %u, \"actual\": %u, \"features\": \"0x%lx\"}\n",
           target_pages(), mmio_read32(dev.device + 4), dev.features);
}
