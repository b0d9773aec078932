/* virtio-net driver (virtio spec 5.1): MAC from config, link status (with its
 * config interrupt through MSI-X when the device has it), and frames both ways
 * through receiveq 0 and transmitq 1. Every buffer starts with the 12-byte
 * virtio_net_hdr of VIRTIO_F_VERSION_1, all zero: no offloads are asked for. */
#include "virtio.h"

#define NET_TYPE 1
#define F_MAC (1UL << 5)
#define F_STATUS (1UL << 16)
#define F_CTRL_VQ (1UL << 17)
#define F_CTRL_RX (1UL << 18)
#define CTRL_VECTOR 0x5b
#define CONFIG_VECTOR 0x58
#define RX_VECTOR 0x59
#define TX_VECTOR 0x5a
#define HDR 12
#define RX_BUFFERS 16
#define BUF_SIZE 2048

static struct virtio_dev dev;
static struct virtqueue rxq, txq, ctrlq;
static int ctrl_on;
static int present, link_known, link_up;
static u8 mac[6];
static u8 rx_buf[RX_BUFFERS][BUF_SIZE] __attribute__((aligned(64)));
static u8 tx_buf[BUF_SIZE] __attribute__((aligned(64)));

static int read_link(void)
{
    if (!(dev.features & F_STATUS))
        return 1;
    return mmio_read16(dev.device + 6) & 1;
}

void net_init(void)
{
    if (present)
        return;
    if (virtio_find(NET_TYPE, &dev) ||
        virtio_start(&dev, F_MAC | F_STATUS | F_CTRL_VQ | F_CTRL_RX, CONFIG_VECTOR))
        return;
    if (virtio_queue(&dev, &rxq, 0, RX_VECTOR) || virtio_queue(&dev, &txq, 1, TX_VECTOR))
        return;
    ctrl_on = (dev.features & F_CTRL_RX) && !virtio_queue(&dev, &ctrlq, 2, CTRL_VECTOR);
    for (int i = 0; i < 6; i++)
        mac[i] = mmio_read8(dev.device + i);
    virtio_ready(&dev);
    /* Receive buffers: as many as the ring (capped at 64 entries) has room for. */
    for (u16 i = 0; i < RX_BUFFERS && i < rxq.size; i++)
        vq_add(&rxq, rx_buf[i], BUF_SIZE, 1);
    link_up = read_link();
    link_known = 1;
    present = 1;
}

static void print_mac(const u8 *m)
{
    printf("\"%02x:%02x:%02x:%02x:%02x:%02x\"", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* The NIC in `slot` is being ejected: forget it. */
void net_forget(unsigned slot)
{
    if (present && dev.slot == slot)
        present = link_known = 0;
}

/* Called when the command loop wakes: a link change is an event line. */
void net_poll(void)
{
    if (!present || !link_known)
        return;
    int now = read_link();
    if (now != link_up) {
        link_up = now;
        printf("{\"event\": \"link\", \"up\": %s, \"config_irqs\": %u}\n",
               now ? "true" : "false", irq_count[CONFIG_VECTOR]);
    }
}

void cmd_net(const char *args)
{
    (void)args;
    if (!present) {
        printf("{\"present\": false}\n");
        return;
    }
    printf("{\"present\": true, \"mac\": ");
    print_mac(mac);
    printf(", \"link\": %s, \"features\": \"0x%lx\", \"msix\": %u, \"config_irqs\": %u, "
           "\"rx_irqs\": %u, \"tx_irqs\": %u}\n", read_link() ? "true" : "false", dev.features,
           dev.msix_size, irq_count[CONFIG_VECTOR], irq_count[RX_VECTOR], irq_count[TX_VECTOR]);
}

static int hex_byte(const char *s, u8 *out)
{
    u8 v = 0;
    for (int i = 0; i < 2; i++) {
        char c = s[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        v = (u8)(v * 16 + d);
    }
    *out = v;
    return 1;
}

/* netsend DSTMAC(12 hex digits) ETHERTYPE TEXT: one frame, padded to 60 bytes. */
void cmd_netsend(const char *args)
{
    const char *p = skip_spaces(args);
    u64 type = 0;
    u8 *frame = tx_buf + HDR;
    memset(tx_buf, 0, sizeof(tx_buf));
    for (int i = 0; i < 6; i++)
        if (!present || !hex_byte(p + 2 * i, &frame[i])) {
            printf("{\"error\": \"%s\"}\n", present ? "usage: netsend DSTMAC TYPE TEXT"
                                                    : "no virtio-net device");
            return;
        }
    p += 12;
    if (!parse_u64(&p, &type)) {
        printf("{\"error\": \"usage: netsend DSTMAC TYPE TEXT\"}\n");
        return;
    }
    memcpy(frame + 6, mac, 6);
    frame[12] = (u8)(type >> 8);
    frame[13] = (u8)type;
    p = skip_spaces(p);
    size_t n = strlen(p);
    if (n > 1400)
        n = 1400;
    memcpy(frame + 14, p, n);
    u32 len = 14 + (u32)n < 60 ? 60 : 14 + (u32)n;
    vq_send_wait(&txq, tx_buf, HDR + len, 0);
    printf("{\"sent\": %u}\n", len);
}

/* netrecv [MS]: the next frame received within MS milliseconds (default 2000). */
void cmd_netrecv(const char *args)
{
    u64 ms = 2000, len = 0;
    parse_u64(&args, &ms);
    if (!present) {
        printf("{\"error\": \"no virtio-net device\"}\n");
        return;
    }
    u64 end = now_us() + ms * 1000;
    u32 written;
    while (!vq_take_used(&rxq, &written)) {
        if (now_us() > end) {
            printf("{\"frame\": null}\n");
            return;
        }
    }
    u16 id = (u16)rxq.used->ring[(u16)(rxq.last_used - 1) % rxq.size].id;
    u8 *buf = (u8 *)rxq.desc[id].addr;
    u8 *f = buf + HDR;
    len = written > HDR ? written - HDR : 0;
    printf("{\"len\": %lu, \"dst\": ", len);
    print_mac(f);
    printf(", \"src\": ");
    print_mac(f + 6);
    printf(", \"type\": \"0x%02x%02x\", \"payload\": \"", f[12], f[13]);
    for (u64 i = 14; i < len && i < 14 + 64; i++)
        if (f[i] >= 0x20 && f[i] < 0x7f && f[i] != '"' && f[i] != '\\')
            printf("%c", f[i]);
    printf("\"}\n");
    vq_add(&rxq, buf, BUF_SIZE, 1);          /* the buffer goes back to the device */
}

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
