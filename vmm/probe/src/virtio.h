/* Virtio 1.x over PCI (modern capabilities), split rings, MSI-X: the driver side. */
#ifndef VIRTIO_H
#define VIRTIO_H
#include "probe.h"

#define VIRTIO_F_VERSION_1 (1UL << 32)
#define VQ_MAX 64

struct vring_desc { u64 addr; u32 len; u16 flags; u16 next; };
struct vring_avail { u16 flags; u16 idx; u16 ring[VQ_MAX]; u16 used_event; };
struct vring_used_elem { u32 id; u32 len; };
struct vring_used { u16 flags; u16 idx; struct vring_used_elem ring[VQ_MAX]; u16 avail_event; };

struct virtqueue {
    u16 index, size, next_desc, last_used;
    u8 vector;
    u64 notify;
    struct vring_desc *desc;
    struct vring_avail *avail;
    struct vring_used *used;
};

struct virtio_dev {
    unsigned slot, fn;
    u16 type;                      /* virtio device type: 2 net? no: 1 net, 2 block, 5 balloon */
    u64 common, notify_base, isr, device;
    u32 notify_mult;
    u64 msix_table;
    unsigned msix_cap, msix_size;
    u64 features;
};

int virtio_find(u16 type, struct virtio_dev *dev);
int virtio_start(struct virtio_dev *dev, u64 wanted, u8 config_vector);
int virtio_queue(struct virtio_dev *dev, struct virtqueue *vq, u16 index, u8 vector);
void virtio_ready(struct virtio_dev *dev);
/* Puts one buffer on the ring and kicks the device, without waiting. */
void vq_add(struct virtqueue *vq, void *buf, u32 len, int writable);
/* The same without the kick; vq_kick then tells the device about all posted. */
void vq_post(struct virtqueue *vq, void *buf, u32 len, int writable);
void vq_kick(struct virtqueue *vq);
/* Takes one used buffer if the device returned one: 1 and its length, else 0. */
int vq_take_used(struct virtqueue *vq, u32 *len);
/* Chains of fixed descriptors, for requests that complete out of order: sets one
 * descriptor (chained to the next when `more`), posts a chain by its head, and
 * takes a used chain's head. */
void vq_set_desc(struct virtqueue *vq, u16 d, void *buf, u32 len, int writable, int more);
void vq_post_head(struct virtqueue *vq, u16 head);
int vq_take_used_id(struct virtqueue *vq, u16 *id);
/* A device-readable request and a device-writable reply in one chain; waits for it. */
u32 vq_request_wait(struct virtqueue *vq, void *out, u32 out_len, void *in, u32 in_len);
/* A chain of n buffers (device-writable where writable[i]); waits for it. */
u32 vq_chain_wait(struct virtqueue *vq, int n, void **bufs, u32 *lens, const int *writable);
/* Sends one buffer (device-readable unless `writable`), waits until it is used. */
u32 vq_send_wait(struct virtqueue *vq, void *buf, u32 len, int writable);
/* What the device offers (both feature words). */
u64 virtio_offered(const struct virtio_dev *dev);
void cmd_virtio(const char *args);

#endif
