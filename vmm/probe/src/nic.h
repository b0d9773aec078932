/* What the network commands (net.c) need from a NIC driver. */
#ifndef NIC_H
#define NIC_H
#include "probe.h"

struct nic {
    const char *model;
    unsigned slot;
    u8 mac[6];
    int (*link)(void);                       /* 1 if the link is up */
    void (*send)(const u8 *frame, u32 len);  /* waits until the device took it */
    int (*poll)(u8 **frame, u32 *len);       /* 1 and the next received frame, if any */
    void (*recycle)(u8 *frame);              /* gives a received buffer back */
    void (*info)(void);                      /* driver-specific JSON members */
    /* Optional (NULL where the card has none): a TCP/IPv4 frame whose checksum, and
     * with mss its segmentation, the card does; 0 if it cannot. */
    int (*send_offload)(const u8 *frame, u32 len, u32 l4, u32 hdr_len, u32 mss);
    /* Sends `count` copies of a frame as fast as the card takes them; microseconds.
     * reuse: the frame send_offload sent last, with its offloads. */
    u64 (*blast)(const u8 *frame, u32 len, u32 count, int reuse);
    void (*rx_meta)(void);                   /* JSON members about the last frame */
    void (*rx_irqs)(int on);                 /* receive interrupts on or off (polling) */
    void (*allmulti)(void);                  /* take every multicast frame (IPv6's groups) */
};

/* A driver's probe fills nic->mac, then hands over its operations; returns 1. */
static inline int nic_attach(struct nic *nic, const struct nic *ops, unsigned slot)
{
    u8 mac[6];
    memcpy(mac, nic->mac, 6);
    *nic = *ops;
    memcpy(nic->mac, mac, 6);
    nic->slot = slot;
    return 1;
}

/* net.c, for protocols on top of the NIC (dhcp.c) */
int net_present(void);
const struct nic *net_nic(void);
void net_replace_ops(const struct nic *ops);
const u8 *net_mac(void);
void net_send_frame(const u8 *frame, u32 len);
int net_poll_frame(u8 **frame, u32 *len);
void net_recycle(u8 *frame);

int virtio_net_probe(struct nic *nic);
int e1000_probe(struct nic *nic);
int rtl8139_probe(struct nic *nic);
#endif
