/* The network commands, on whichever NIC the guest found (virtio-net first, then
 * e1000, then rtl8139): `net` (model, MAC, link), `netsend DSTMAC TYPE TEXT`, `netrecv [MS]`,
 * and a `link` event line when the link changes. */
#include "nic.h"

#define FRAME_MAX 1514

static struct nic nic;
static int present, link_up;
static u8 frame_buf[FRAME_MAX];

unsigned virtio_net_config_irqs(void);

void net_init(void)
{
    if (present)
        return;
    memset(&nic, 0, sizeof(nic));
    present = virtio_net_probe(&nic) || e1000_probe(&nic) || rtl8139_probe(&nic);
    if (present)
        link_up = nic.link();
}

/* For other protocols (dhcp.c): the NIC's frames, without JSON. */
int net_present(void) { return present; }
const struct nic *net_nic(void) { return &nic; }

/* A driver switching modes (rtl8139 to C+) hands over new operations. */
void net_replace_ops(const struct nic *ops) { nic_attach(&nic, ops, nic.slot); }
const u8 *net_mac(void) { return nic.mac; }
void net_send_frame(const u8 *f, u32 len) { nic.send(f, len < 60 ? 60 : len); }
int net_poll_frame(u8 **f, u32 *len) { return nic.poll(f, len); }
void net_recycle(u8 *f) { nic.recycle(f); }

/* The NIC in `slot` is being ejected: forget it. */
void net_forget(unsigned slot)
{
    if (present && nic.slot == slot)
        present = 0;
}

static void print_mac(const u8 *m)
{
    printf("\"%02x:%02x:%02x:%02x:%02x:%02x\"", m[0], m[1], m[2], m[3], m[4], m[5]);
}

/* Called when the command loop wakes: a link change is an event line. */
void net_poll(void)
{
    if (!present)
        return;
    int now = nic.link();
    if (now != link_up) {
        link_up = now;
        printf("{\"event\": \"link\", \"up\": %s, \"config_irqs\": %u}\n",
               now ? "true" : "false", virtio_net_config_irqs());
    }
}

void cmd_net(const char *args)
{
    (void)args;
    if (!present) {
        printf("{\"present\": false}\n");
        return;
    }
    printf("{\"present\": true, \"model\": \"%s\", \"mac\": ", nic.model);
    print_mac(nic.mac);
    printf(", \"link\": %s", nic.link() ? "true" : "false");
    nic.info();
    printf("}\n");
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
    memset(frame_buf, 0, sizeof(frame_buf));
    for (int i = 0; i < 6; i++)
        if (!present || !hex_byte(p + 2 * i, &frame_buf[i])) {
            printf("{\"error\": \"%s\"}\n", present ? "usage: netsend DSTMAC TYPE TEXT"
                                                    : "no network card");
            return;
        }
    p += 12;
    if (!parse_u64(&p, &type)) {
        printf("{\"error\": \"usage: netsend DSTMAC TYPE TEXT\"}\n");
        return;
    }
    memcpy(frame_buf + 6, nic.mac, 6);
    frame_buf[12] = (u8)(type >> 8);
    frame_buf[13] = (u8)type;
    p = skip_spaces(p);
    size_t n = strlen(p);
    if (n > 1400)
        n = 1400;
    memcpy(frame_buf + 14, p, n);
    u32 len = 14 + (u32)n < 60 ? 60 : 14 + (u32)n;
    nic.send(frame_buf, len);
    printf("{\"sent\": %u}\n", len);
}

/* netrecv [MS]: the next frame received within MS milliseconds (default 2000). */
void cmd_netrecv(const char *args)
{
    u64 ms = 2000;
    parse_u64(&args, &ms);
    if (!present) {
        printf("{\"error\": \"no network card\"}\n");
        return;
    }
    u64 end = now_us() + ms * 1000;
    u8 *f;
    u32 len;
    while (!nic.poll(&f, &len)) {
        if (now_us() > end) {
            printf("{\"frame\": null}\n");
            return;
        }
    }
    printf("{\"len\": %u, \"dst\": ", len);
    print_mac(f);
    printf(", \"src\": ");
    print_mac(f + 6);
    printf(", \"type\": \"0x%02x%02x\", \"payload\": \"", f[12], f[13]);
    for (u32 i = 14; i < len && i < 14 + 64; i++)
        if (f[i] >= 0x20 && f[i] < 0x7f && f[i] != '"' && f[i] != '\\')
            printf("%c", f[i]);
    printf("\"");
    if (nic.rx_meta)
        nic.rx_meta();
    printf("}\n");
    nic.recycle(f);
}
