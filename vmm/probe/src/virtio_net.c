/* virtio-net driver (virtio spec 5.1): MAC from config, link status (with its
 * config interrupt through MSI-X when the device has it), frames both ways
 * through receiveq/transmitq pairs, and rx mode, queue pairs through the control
 * queue. Every buffer starts with the 12-byte virtio_net_hdr of VIRTIO_F_VERSION_1.
 * By default no offloads are asked for and the header is all zero; `netoffload on`
 * renegotiates with checksum and TSO offloads both ways and mergeable receive
 * buffers, and `netmq PAIRS` with VIRTIO_NET_F_MQ and that many queue pairs. */
#include "nic.h"
#include "virtio.h"

#define NET_TYPE 1
#define F_CSUM (1UL << 0)
#define F_GUEST_CSUM (1UL << 1)
#define F_MAC (1UL << 5)
#define F_GUEST_TSO4 (1UL << 7)
#define F_HOST_TSO4 (1UL << 11)
#define F_MRG_RXBUF (1UL << 15)
#define F_STATUS (1UL << 16)
#define F_CTRL_VQ (1UL << 17)
#define F_CTRL_RX (1UL << 18)
#define F_MQ (1UL << 22)
#define BASE_FEATURES (F_MAC | F_STATUS | F_CTRL_VQ | F_CTRL_RX)
#define OFFLOAD_FEATURES (F_CSUM | F_GUEST_CSUM | F_HOST_TSO4 | F_GUEST_TSO4 | F_MRG_RXBUF)
#define HDR_F_NEEDS_CSUM 1
#define GSO_TCPV4 1
#define CONFIG_VECTOR 0x58
#define RX_VECTOR 0x59                 /* pair 0's; its tx vector is the next */
#define CTRL_VECTOR 0x5b
#define MORE_VECTORS 0x70              /* pair p > 0: rx 0x70 + 2(p-1), tx the next */
#define MAX_PAIRS 4
#define HDR 12
#define RX_BUFFERS 32
#define BUF_SIZE 2048
#define BIG 65600

struct net_hdr { u8 flags, gso_type; u16 hdr_len, gso_size, csum_start, csum_offset, num_buffers; };

static struct virtio_dev dev;
static struct virtqueue rxq[MAX_PAIRS], txq[MAX_PAIRS], ctrlq;
static unsigned pairs = 1, tx_pair, rx_next;
static u64 wanted = BASE_FEATURES;
static int ctrl_on;
static u32 rx_count[MAX_PAIRS];
static u8 rx_buf[MAX_PAIRS][RX_BUFFERS][BUF_SIZE] __attribute__((aligned(64)));
static u8 tx_buf[HDR + BIG] __attribute__((aligned(64)));
static u8 big_rx[BIG] __attribute__((aligned(64)));  /* a merged frame, gathered */
static struct net_hdr last_hdr;
/* The buffers of the frame poll() handed out, to give back in recycle(). */
static u8 *held[RX_BUFFERS];
static unsigned held_count, held_pair;

static int link(void)
{
    if (!(dev.features & F_STATUS))
        return 1;
    return mmio_read16(dev.device + 6) & 1;
}

static void send(const u8 *frame, u32 len)
{
    memset(tx_buf, 0, HDR);
    memcpy(tx_buf + HDR, frame, len);
    vq_send_wait(&txq[tx_pair], tx_buf, HDR + len, 0);
}

/* One frame with its checksum (and, with mss, its segmentation) left to the device:
 * `frame` has the TCP pseudo-header sum (with the TCP length) in its checksum field. */
static int send_offload(const u8 *frame, u32 len, u32 l4, u32 hdr_len, u32 mss)
{
    u64 need = F_CSUM | (mss ? F_HOST_TSO4 : 0);
    if ((dev.features & need) != need || len > BIG)
        return 0;
    struct net_hdr *h = (struct net_hdr *)tx_buf;
    memset(h, 0, HDR);
    h->flags = HDR_F_NEEDS_CSUM;
    h->csum_start = (u16)l4;
    h->csum_offset = 16;
    if (mss && len - hdr_len > mss) {
        h->gso_type = GSO_TCPV4;
        h->gso_size = (u16)mss;
        h->hdr_len = (u16)hdr_len;
    }
    memcpy(tx_buf + HDR, frame, len);
    vq_send_wait(&txq[tx_pair], tx_buf, HDR + len, 0);
    return 1;
}

/* netblast: `count` copies of what send_offload put in tx_buf last (or of `frame`
 * with a zero header), keeping the transmit ring full; returns elapsed microseconds. */
static u64 blast(const u8 *frame, u32 len, u32 count, int reuse_header)
{
    struct virtqueue *q = &txq[tx_pair];
    if (!reuse_header) {
        memset(tx_buf, 0, HDR);
        memcpy(tx_buf + HDR, frame, len);
    }
    u64 start = now_us();
    u32 queued = 0, done = 0, in_flight = 0;
    while (done < count) {
        if (queued < count && in_flight < q->size) {
            while (queued < count && in_flight < q->size) {
                vq_post(q, tx_buf, HDR + len, 0);
                queued++;
                in_flight++;
            }
            vq_kick(q);
        }
        while (vq_take_used(q, 0)) {
            done++;
            in_flight--;
        }
    }
    return now_us() - start;
}

static int take_rx(unsigned p, u32 *written)
{
    if (!vq_take_used(&rxq[p], written))
        return 0;
    u16 id = (u16)rxq[p].used->ring[(u16)(rxq[p].last_used - 1) % rxq[p].size].id;
    held[held_count++] = (u8 *)rxq[p].desc[id].addr;
    return 1;
}

/* Buffers given back but not yet announced with a kick, per pair: kicks are MMIO
 * exits, so recycle() batches them, and poll() kicks what is left when it finds
 * nothing, so the device never waits on buffers it was not told about. */
#define KICK_BATCH 8
static unsigned unkicked[MAX_PAIRS];

static void kick_rx(unsigned p)
{
    if (unkicked[p]) {
        unkicked[p] = 0;
        vq_kick(&rxq[p]);
    }
}

static int poll(u8 **frame, u32 *len)
{
    u32 written;
    for (unsigned n = 0; n < pairs; n++) {
        unsigned p = (rx_next + n) % pairs;
        held_count = 0;
        if (!take_rx(p, &written))
            continue;
        rx_next = (p + 1) % pairs;
        held_pair = p;
        rx_count[p]++;
        memcpy(&last_hdr, held[0], HDR);
        u16 buffers = (dev.features & F_MRG_RXBUF) ? last_hdr.num_buffers : 1;
        *frame = held[0] + HDR;
        *len = written > HDR ? written - HDR : 0;
        if (buffers > 1) {         /* gather the rest of a merged frame */
            u32 total = *len;
            memcpy(big_rx, *frame, total);
            for (u32 spins = 0; held_count < buffers && held_count < RX_BUFFERS &&
                                spins < 10000000; spins++) {
                if (!take_rx(p, &written))
                    continue;      /* published one by one: the rest is on its way */
                if (total + written <= BIG) {
                    memcpy(big_rx + total, held[held_count - 1], written);
                    total += written;
                }
            }
            *frame = big_rx;
            *len = total;
        }
        return 1;
    }
    for (unsigned p = 0; p < pairs; p++)
        kick_rx(p);
    return 0;
}

static void recycle(u8 *frame)
{
    (void)frame;
    for (unsigned i = 0; i < held_count; i++)
        vq_post(&rxq[held_pair], held[i], BUF_SIZE, 1);
    unkicked[held_pair] += held_count;
    held_count = 0;
    if (unkicked[held_pair] >= KICK_BATCH)
        kick_rx(held_pair);
}

static void rx_meta(void)
{
    printf(", \"hdr\": {\"flags\": %u, \"gso_type\": %u, \"gso_size\": %u, \"hdr_len\": %u, "
           "\"num_buffers\": %u}", last_hdr.flags, last_hdr.gso_type, last_hdr.gso_size,
           last_hdr.hdr_len, last_hdr.num_buffers);
}

static void info(void)
{
    printf(", \"features\": \"0x%lx\", \"msix\": %u, \"num_queues\": %u, \"pairs\": %u, "
           "\"config_irqs\": %u, \"rx_irqs\": %u, \"tx_irqs\": %u, \"rx_per_pair\": [",
           dev.features, dev.msix_size, mmio_read16(dev.common + 0x12), pairs,
           irq_count[CONFIG_VECTOR], irq_count[RX_VECTOR], irq_count[RX_VECTOR + 1]);
    for (unsigned p = 0; p < pairs; p++)
        printf("%s%u", p ? ", " : "", rx_count[p]);
    printf("]");
}

/* VRING_AVAIL_F_NO_INTERRUPT on every receive queue: this guest's interrupt path
 * is emulated instruction by instruction here, so a sink polls instead. */
static void rx_irqs(int on)
{
    for (unsigned p = 0; p < pairs; p++)
        rxq[p].avail->flags = on ? 0 : 1;
}

static const struct nic ops = {"virtio-net", 0, {0}, link, send, poll, recycle, info,
                               send_offload, blast, rx_meta, rx_irqs, 0};  /* promiscuous until told */

/* Resets the device and sets it up with `wanted` features and `want_pairs` pairs. */
static int setup(unsigned want_pairs)
{
    if (virtio_find(NET_TYPE, &dev) || virtio_start(&dev, wanted, CONFIG_VECTOR))
        return 0;
    pairs = (dev.features & F_MQ) ? want_pairs : 1;
    for (unsigned p = 0; p < pairs; p++) {
        u8 vector = (u8)(p ? MORE_VECTORS + 2 * (p - 1) : RX_VECTOR);
        if (virtio_queue(&dev, &rxq[p], (u16)(2 * p), vector) ||
            virtio_queue(&dev, &txq[p], (u16)(2 * p + 1), (u8)(vector + 1)))
            return 0;
    }
    /* The control queue comes after every pair the device has (max_virtqueue_pairs). */
    u16 max_pairs = (dev.features & F_MQ) ? mmio_read16(dev.device + 8) : 1;
    ctrl_on = (dev.features & F_CTRL_VQ) &&
        !virtio_queue(&dev, &ctrlq, (u16)(2 * max_pairs), CTRL_VECTOR);
    virtio_ready(&dev);
    /* Receive buffers: as many as the ring (capped at 64 entries) has room for. */
    for (unsigned p = 0; p < pairs; p++) {
        rx_count[p] = unkicked[p] = 0;
        for (u16 i = 0; i < RX_BUFFERS && i < rxq[p].size; i++)
            vq_add(&rxq[p], rx_buf[p][i], BUF_SIZE, 1);
    }
    rx_next = tx_pair = held_count = 0;
    return 1;
}

int virtio_net_probe(struct nic *nic)
{
    if (!setup(1))
        return 0;
    for (int i = 0; i < 6; i++)
        nic->mac[i] = mmio_read8(dev.device + i);
    return nic_attach(nic, &ops, dev.slot);
}

unsigned virtio_net_config_irqs(void) { return irq_count[CONFIG_VECTOR]; }

static u8 ctrl_request(u8 klass, u8 cmd, const void *data, u32 len)
{
    static u8 request[16], ack;
    request[0] = klass;
    request[1] = cmd;
    memcpy(request + 2, data, len);
    ack = 0xff;
    vq_request_wait(&ctrlq, request, 2 + len, &ack, 1);
    return ack;
}

/* netrxmode promisc|allmulti 0|1: VIRTIO_NET_CTRL_RX through the control queue. */
void cmd_netrxmode(const char *args)
{
    const char *p = skip_spaces(args);
    u64 on = 0;
    int cmd = !strncmp(p, "promisc", 7) ? 0 : !strncmp(p, "allmulti", 8) ? 1 : -1;
    if (cmd >= 0)
        p += cmd == 0 ? 7 : 8;
    if (!ctrl_on || cmd < 0 || !parse_u64(&p, &on)) {
        printf("{\"error\": \"%s\"}\n", ctrl_on ? "usage: netrxmode promisc|allmulti 0|1"
                                                : "no control queue");
        return;
    }
    u8 value = (u8)on;
    printf("{\"ack\": %u}\n", ctrl_request(0, (u8)cmd, &value, 1));
}

static void print_setup(void)
{
    printf("{\"features\": \"0x%lx\", \"pairs\": %u, \"num_queues\": %u}\n", dev.features,
           pairs, mmio_read16(dev.common + 0x12));
}

/* netoffload on|off: renegotiates with (or without) the offload features. */
void cmd_netoffload(const char *args)
{
    const char *p = skip_spaces(args);
    wanted = !strncmp(p, "on", 2) ? wanted | OFFLOAD_FEATURES : wanted & ~OFFLOAD_FEATURES;
    if (!setup(pairs)) {
        printf("{\"error\": \"no virtio-net device\"}\n");
        return;
    }
    print_setup();
}

/* netmq PAIRS [TXPAIR]: renegotiates with VIRTIO_NET_F_MQ, tells the device how many
 * pairs to use (VIRTIO_NET_CTRL_MQ), and sends on pair TXPAIR from now on. */
void cmd_netmq(const char *args)
{
    u64 want = 1, txp = 0;
    parse_u64(&args, &want);
    parse_u64(&args, &txp);
    if (want < 1 || want > MAX_PAIRS) {
        printf("{\"error\": \"usage: netmq PAIRS [TXPAIR], PAIRS up to %u\"}\n", MAX_PAIRS);
        return;
    }
    wanted |= F_MQ;
    if (!setup((unsigned)want)) {
        printf("{\"error\": \"no virtio-net device\"}\n");
        return;
    }
    u16 n = (u16)pairs;
    u8 ack = ctrl_on ? ctrl_request(4, 0, &n, 2) : 0xff;      /* MQ_VQ_PAIRS_SET */
    tx_pair = txp < pairs ? (unsigned)txp : 0;
    printf("{\"features\": \"0x%lx\", \"pairs\": %u, \"num_queues\": %u, \"ack\": %u}\n",
           dev.features, pairs, mmio_read16(dev.common + 0x12), ack);
}
