/* virtio-console driver (virtio spec 5.3), single-port (no MULTIPORT): `console
 * write TEXT` sends on transmitq0, `console read [MS]` prints what arrived in the
 * receive buffers it keeps posted on receiveq0. */
#include "virtio.h"

#define CONSOLE_TYPE 3
#define RX_BUFFERS 4

static struct virtio_dev dev;
static struct virtqueue rxq, txq;
static int present;
static u8 rx_buf[RX_BUFFERS][256];
static u8 tx_buf[256];

static int console_init(void)
{
    if (present)
        return 1;
    if (virtio_find(CONSOLE_TYPE, &dev) || virtio_start(&dev, 0, 0x61) ||
        virtio_queue(&dev, &rxq, 0, 0x62) || virtio_queue(&dev, &txq, 1, 0x63))
        return 0;
    virtio_ready(&dev);
    for (int i = 0; i < RX_BUFFERS; i++)
        vq_add(&rxq, rx_buf[i], sizeof(rx_buf[i]), 1);
    present = 1;
    return 1;
}

void cmd_console(const char *args)
{
    const char *p = skip_spaces(args);
    if (!console_init()) {
        printf("{\"present\": false}\n");
        return;
    }
    if (!strncmp(p, "write", 5)) {
        p = skip_spaces(p + 5);
        size_t n = strlen(p);
        if (n > sizeof(tx_buf) - 1)
            n = sizeof(tx_buf) - 1;
        memcpy(tx_buf, p, n);
        tx_buf[n] = '\n';
        vq_send_wait(&txq, tx_buf, (u32)n + 1, 0);
        printf("{\"written\": %u}\n", (unsigned)n + 1);
    } else if (!strncmp(p, "read", 4)) {
        p += 4;
        u64 ms = 2000;
        parse_u64(&p, &ms);
        u64 end = now_us() + ms * 1000;
        u32 len;
        while (!vq_take_used(&rxq, &len))
            if (now_us() > end) {
                printf("{\"text\": null}\n");
                return;
            }
        u16 id = (u16)rxq.used->ring[(u16)(rxq.last_used - 1) % rxq.size].id;
        u8 *b = (u8 *)rxq.desc[id].addr;
        printf("{\"text\": \"");
        for (u32 i = 0; i < len; i++)
            if (b[i] >= 0x20 && b[i] < 0x7f && b[i] != '"' && b[i] != '\\')
                printf("%c", b[i]);
        printf("\"}\n");
        vq_add(&rxq, b, 256, 1);
    } else {
        printf("{\"present\": true, \"max_ports\": %u}\n", mmio_read32(dev.device + 4));
    }
}
