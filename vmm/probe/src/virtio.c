/* Virtio 1.x PCI transport (virtio spec 4.1): find the device by its vendor
 * capabilities, negotiate features, set up split virtqueues, route MSI-X. */
#include "virtio.h"

#define CAP_COMMON 1
#define CAP_NOTIFY 2
#define CAP_ISR 3
#define CAP_DEVICE 4
/* common configuration registers */
#define DEV_FEATURE_SEL 0x00
#define DEV_FEATURE 0x04
#define DRV_FEATURE_SEL 0x08
#define DRV_FEATURE 0x0c
#define MSIX_CONFIG 0x10
#define NUM_QUEUES 0x12
#define STATUS 0x14
#define Q_SELECT 0x16
#define Q_SIZE 0x18
#define Q_MSIX 0x1a
#define Q_ENABLE 0x1c
#define Q_NOTIFY_OFF 0x1e
#define Q_DESC 0x20
#define Q_DRIVER 0x28
#define Q_DEVICE 0x30
#define S_ACK 1
#define S_DRIVER 2
#define S_DRIVER_OK 4
#define S_FEATURES_OK 8
#define S_FAILED 128

#define MAX_RINGS 24
static u8 rings[MAX_RINGS][4096 * 2] __attribute__((aligned(4096)));
static int rings_used;

static u64 bar_base(unsigned slot, unsigned fn, unsigned bar)
{
    u32 low = pci_read32(0, slot, fn, 0x10 + 4 * bar);
    if (low & 1)
        return 0;                               /* an I/O BAR: not for modern virtio */
    u64 base = low & ~15u;
    if (((low >> 1) & 3) == 2)
        base |= (u64)pci_read32(0, slot, fn, 0x14 + 4 * bar) << 32;
    return base;
}

static int is_virtio(u32 id, u32 subsys, u16 type)
{
    u16 vendor = id & 0xffff, device = id >> 16;
    if (vendor != 0x1af4)
        return 0;
    if (device == 0x1040 + type)
        return 1;                               /* modern-only */
    return device >= 0x1000 && device <= 0x103f && (subsys >> 16) == type;  /* transitional */
}

int virtio_find(u16 type, struct virtio_dev *dev)
{
    for (unsigned slot = 0; slot < 32; slot++) {
        u32 id = pci_read32(0, slot, 0, 0);
        if ((id & 0xffff) == 0xffff || !is_virtio(id, pci_read32(0, slot, 0, 0x2c), type))
            continue;
        memset(dev, 0, sizeof(*dev));
        dev->slot = slot;
        dev->type = type;
        unsigned off = pci_read32(0, slot, 0, 0x34) & 0xfc;
        for (int n = 0; off && n < 48; n++) {
            u32 head = pci_read32(0, slot, 0, off);
            u8 cap_id = head & 0xff;
            if (cap_id == 0x09) {
                u8 cfg_type = (head >> 24) & 0xff;
                u8 bar = pci_read32(0, slot, 0, off + 4) & 0xff;
                u64 addr = bar_base(slot, 0, bar) + pci_read32(0, slot, 0, off + 8);
                if (cfg_type == CAP_COMMON) dev->common = addr;
                else if (cfg_type == CAP_NOTIFY) {
                    dev->notify_base = addr;
                    dev->notify_mult = pci_read32(0, slot, 0, off + 16);
                } else if (cfg_type == CAP_ISR) dev->isr = addr;
                else if (cfg_type == CAP_DEVICE) dev->device = addr;
            } else if (cap_id == 0x11) {
                dev->msix_cap = off;
                dev->msix_size = ((head >> 16) & 0x7ff) + 1;
                u32 table = pci_read32(0, slot, 0, off + 4);
                dev->msix_table = bar_base(slot, 0, table & 7) + (table & ~7u);
            }
            off = (head >> 8) & 0xfc;
        }
        /* memory decoding and bus mastering on */
        u32 cmd = pci_read32(0, slot, 0, 4);
        pci_write32(0, slot, 0, 4, (cmd & 0xffff) | 0x6);
        return dev->common && dev->notify_base && dev->device ? 0 : -1;
    }
    return -1;
}

static void msix_route(struct virtio_dev *dev, unsigned entry, u8 vector)
{
    u64 e = dev->msix_table + 16 * entry;
    mmio_write32(e + 0, 0xfee00000);            /* to the BSP's local APIC, fixed delivery */
    mmio_write32(e + 4, 0);
    mmio_write32(e + 8, vector);
    mmio_write32(e + 12, 0);                    /* unmasked */
}

int virtio_start(struct virtio_dev *dev, u64 wanted, u8 config_vector)
{
    u64 c = dev->common;
    mmio_write8(c + STATUS, 0);                 /* reset */
    while (mmio_read8(c + STATUS))
        ;
    mmio_write8(c + STATUS, S_ACK);
    mmio_write8(c + STATUS, S_ACK | S_DRIVER);
    mmio_write32(c + DEV_FEATURE_SEL, 0);
    u64 offered = mmio_read32(c + DEV_FEATURE);
    mmio_write32(c + DEV_FEATURE_SEL, 1);
    offered |= (u64)mmio_read32(c + DEV_FEATURE) << 32;
    dev->features = offered & (wanted | VIRTIO_F_VERSION_1);
    mmio_write32(c + DRV_FEATURE_SEL, 0);
    mmio_write32(c + DRV_FEATURE, (u32)dev->features);
    mmio_write32(c + DRV_FEATURE_SEL, 1);
    mmio_write32(c + DRV_FEATURE, (u32)(dev->features >> 32));
    mmio_write8(c + STATUS, S_ACK | S_DRIVER | S_FEATURES_OK);
    if (!(mmio_read8(c + STATUS) & S_FEATURES_OK)) {
        mmio_write8(c + STATUS, S_FAILED);
        return -1;
    }
    if (dev->msix_cap) {
        u32 head = pci_read32(0, dev->slot, 0, dev->msix_cap);
        pci_write32(0, dev->slot, 0, dev->msix_cap, head | (1u << 31));   /* MSI-X enable */
        msix_route(dev, 0, config_vector);
        mmio_write16(c + MSIX_CONFIG, 0);
    }
    return 0;
}

int virtio_queue(struct virtio_dev *dev, struct virtqueue *vq, u16 index, u8 vector)
{
    u64 c = dev->common;
    if (rings_used >= MAX_RINGS || index >= mmio_read16(c + NUM_QUEUES))
        return -1;
    mmio_write16(c + Q_SELECT, index);
    u16 size = mmio_read16(c + Q_SIZE);
    if (!size)
        return -1;
    if (size > VQ_MAX)
        size = VQ_MAX;
    mmio_write16(c + Q_SIZE, size);
    /* A queue set up again (a driver renegotiating) keeps its ring memory. */
    u8 *ring = vq->desc ? (u8 *)vq->desc : rings[rings_used++];
    memset(ring, 0, sizeof(rings[0]));
    memset(vq, 0, sizeof(*vq));
    vq->index = index;
    vq->size = size;
    vq->vector = vector;
    vq->desc = (void *)ring;
    vq->avail = (void *)(ring + 16 * VQ_MAX);
    vq->used = (void *)(ring + 4096);
    mmio_write64(c + Q_DESC, (u64)vq->desc);
    mmio_write64(c + Q_DRIVER, (u64)vq->avail);
    mmio_write64(c + Q_DEVICE, (u64)vq->used);
    if (dev->msix_cap) {
        /* Entry 0 is the config vector; queues past the table share its last entry
         * (virtio-rng and virtio-serial have 2 vectors, not one per queue). */
        unsigned entry = 1u + index < dev->msix_size ? 1u + index : dev->msix_size - 1;
        msix_route(dev, entry, vector);
        mmio_write16(c + Q_MSIX, (u16)entry);
    }
    vq->notify = dev->notify_base + (u64)mmio_read16(c + Q_NOTIFY_OFF) * dev->notify_mult;
    mmio_write16(c + Q_ENABLE, 1);
    return 0;
}

void virtio_ready(struct virtio_dev *dev)
{
    mmio_write8(dev->common + STATUS, S_ACK | S_DRIVER | S_FEATURES_OK | S_DRIVER_OK);
}

/* Makes the chain at descriptor `head` available, without a kick. */
static void vq_post_chain(struct virtqueue *vq, u16 head)
{
    vq->avail->ring[vq->avail->idx % vq->size] = head;
    barrier();
    vq->avail->idx++;
    barrier();
}

void vq_kick(struct virtqueue *vq) { mmio_write16(vq->notify, vq->index); }

/* Makes the chain at descriptor `head` available and kicks the device. */
static void vq_publish(struct virtqueue *vq, u16 head)
{
    vq_post_chain(vq, head);
    vq_kick(vq);
}

static u16 vq_desc(struct virtqueue *vq, void *buf, u32 len, u16 flags)
{
    u16 d = vq->next_desc;
    vq->next_desc = (u16)((d + 1) % vq->size);
    vq->desc[d].addr = (u64)buf;
    vq->desc[d].len = len;
    vq->desc[d].flags = flags;
    vq->desc[d].next = vq->next_desc;
    return d;
}

void vq_add(struct virtqueue *vq, void *buf, u32 len, int writable)
{
    vq_publish(vq, vq_desc(vq, buf, len, writable ? 2 : 0));
}

void vq_post(struct virtqueue *vq, void *buf, u32 len, int writable)
{
    vq_post_chain(vq, vq_desc(vq, buf, len, writable ? 2 : 0));
}

void vq_set_desc(struct virtqueue *vq, u16 d, void *buf, u32 len, int writable, int more)
{
    vq->desc[d].addr = (u64)buf;
    vq->desc[d].len = len;
    vq->desc[d].flags = (u16)((writable ? 2 : 0) | (more ? 1 : 0));
    vq->desc[d].next = (u16)(d + 1);
}

void vq_post_head(struct virtqueue *vq, u16 head) { vq_post_chain(vq, head); }

int vq_take_used_id(struct virtqueue *vq, u16 *id)
{
    barrier();
    if (*(volatile u16 *)&vq->used->idx == vq->last_used)
        return 0;
    *id = (u16)vq->used->ring[vq->last_used % vq->size].id;
    vq->last_used++;
    return 1;
}

int vq_take_used(struct virtqueue *vq, u32 *len)
{
    barrier();
    if (*(volatile u16 *)&vq->used->idx == vq->last_used)
        return 0;
    if (len)
        *len = vq->used->ring[vq->last_used % vq->size].len;
    vq->last_used++;
    return 1;
}

/* The device answers from its own thread: spin (native speed at CPL3, no exits)
 * before falling back to sleeping until an interrupt or timer tick. */
static u32 vq_wait_used(struct virtqueue *vq)
{
    u32 written = 0;
    for (u32 spins = 0;; spins++) {
        u32 generation = irq_generation;
        if (vq_take_used(vq, &written))
            return written;
        if (spins > 2000000)
            wait_for_irq(generation);
    }
}

u32 vq_send_wait(struct virtqueue *vq, void *buf, u32 len, int writable)
{
    vq_add(vq, buf, len, writable);
    return vq_wait_used(vq);
}

u32 vq_request_wait(struct virtqueue *vq, void *out, u32 out_len, void *in, u32 in_len)
{
    void *bufs[2] = {out, in};
    u32 lens[2] = {out_len, in_len};
    int writable[2] = {0, 1};
    return vq_chain_wait(vq, 2, bufs, lens, writable);
}

u32 vq_chain_wait(struct virtqueue *vq, int n, void **bufs, u32 *lens, const int *writable)
{
    u16 head = vq->next_desc;
    for (int i = 0; i < n; i++)
        vq_desc(vq, bufs[i], lens[i], (u16)((writable[i] ? 2 : 0) | (i + 1 < n ? 1 : 0)));
    vq_publish(vq, head);
    return vq_wait_used(vq);
}

u64 virtio_offered(const struct virtio_dev *dev)
{
    mmio_write32(dev->common + DEV_FEATURE_SEL, 0);
    u64 features = mmio_read32(dev->common + DEV_FEATURE);
    mmio_write32(dev->common + DEV_FEATURE_SEL, 1);
    return features | (u64)mmio_read32(dev->common + DEV_FEATURE) << 32;
}

void cmd_virtio(const char *args)
{
    (void)args;
    static const u16 types[] = {1, 2, 3, 4, 5};
    int first = 1;
    printf("{\"devices\": [");
    for (unsigned i = 0; i < sizeof(types) / sizeof(*types); i++) {
        struct virtio_dev dev;
        if (virtio_find(types[i], &dev))
            continue;
        u64 features = virtio_offered(&dev);
        printf("%s{\"bdf\": \"00:%02x.0\", \"type\": %u, \"features\": \"0x%lx\", "
               "\"num_queues\": %u, \"msix\": %u}", first ? "" : ", ", dev.slot, dev.type,
               features, mmio_read16(dev.common + NUM_QUEUES), dev.msix_size);
        first = 0;
    }
    printf("]}\n");
}
