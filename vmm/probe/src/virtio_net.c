/* virtio-net driver (virtio spec 5.1): MAC from config, link status (with its
 * config interrupt through MSI-X when the device has it), frames both ways
 * through receiveq 0 and transmitq 1, and rx mode through the control queue.
 * Every buffer starts with the 12-byte virtio_net_hdr of VIRTIO_F_VERSION_1,
 * all zero: no offloads are asked for. */
#include "nic.h"
#include "virtio.h"

#define NET_TYPE 1
#define F_MAC (1UL << 5)
#define F_STATUS (1UL << 16)
#define F_CTRL_VQ (1UL << 17)
#define F_CTRL_RX (1UL << 18)
#define CONFIG_VECTOR 0x58
#define RX_VECTOR 0x59
#define TX_VECTOR 0x5a
#define CTRL_VECTOR 0x5b
#define HDR 12
#define RX_BUFFERS 16
#define BUF_SIZE 2048

static struct virtio_dev dev;
static struct virtqueue rxq, txq, ctrlq;
static int ctrl_on;
static u8 rx_buf[RX_BUFFERS][BUF_SIZE] __attribute__((aligned(64)));
static u8 tx_buf[BUF_SIZE] __attribute__((aligned(64)));

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
    vq_send_wait(&txq, tx_buf, HDR + len, 0);
}

static int poll(u8 **frame, u32 *len)
{
    u32 written;
    if (!vq_take_used(&rxq, &written))
        return 0;
    u16 id = (u16)rxq.used->ring[(u16)(rxq.last_used - 1) % rxq.size].id;
    *frame = (u8 *)rxq.desc[id].addr + HDR;
    *len = written > HDR ? written - HDR : 0;
    return 1;
}

static void recycle(u8 *frame)
{
    vq_add(&rxq, frame - HDR, BUF_SIZE, 1);
}

static void info(void)
{
    printf(", \"features\": \"0x%lx\", \"msix\": %u, \"config_irqs\": %u, \"rx_irqs\": %u, "
           "\"tx_irqs\": %u", dev.features, dev.msix_size, irq_count[CONFIG_VECTOR],
           irq_count[RX_VECTOR], irq_count[TX_VECTOR]);
}

int virtio_net_probe(struct nic *nic)
{
    if (virtio_find(NET_TYPE, &dev) ||
        virtio_start(&dev, F_MAC | F_STATUS | F_CTRL_VQ | F_CTRL_RX, CONFIG_VECTOR))
        return 0;
    if (virtio_queue(&dev, &rxq, 0, RX_VECTOR) || virtio_queue(&dev, &txq, 1, TX_VECTOR))
        return 0;
    ctrl_on = (dev.features & F_CTRL_RX) && !virtio_queue(&dev, &ctrlq, 2, CTRL_VECTOR);
    for (int i = 0; i < 6; i++)
        nic->mac[i] = mmio_read8(dev.device + i);
    virtio_ready(&dev);
    /* Receive buffers: as many as the ring (capped at 64 entries) has room for. */
    for (u16 i = 0; i < RX_BUFFERS && i < rxq.size; i++)
        vq_add(&rxq, rx_buf[i], BUF_SIZE, 1);
    static const struct nic ops = {"virtio-net", 0, {0}, link, send, poll, recycle, info};
    return nic_attach(nic, &ops, dev.slot);
}

unsigned virtio_net_config_irqs(void) { return irq_count[CONFIG_VECTOR]; }

/* netrxmode promisc|allmulti 0|1: VIRTIO_NET_CTRL_RX through the control queue. */
void cmd_netrxmode(const char *args)
{
    static u8 request[3], ack;
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
    request[0] = 0;                            /* VIRTIO_NET_CTRL_RX */
    request[1] = (u8)cmd;
    request[2] = (u8)on;
    ack = 0xff;
    vq_request_wait(&ctrlq, request, 3, &ack, 1);
    printf("{\"ack\": %u}\n", ack);
}
