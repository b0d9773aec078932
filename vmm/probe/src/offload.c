/* Offloads through the NIC net.c found: `nettcp DSTMAC LEN [MSS]` sends one TCP/IPv4
 * frame of LEN payload bytes whose checksum (and, with MSS, segmentation into
 * MSS-byte segments) the card does; `netblast COUNT DSTMAC LEN [MSS]` sends COUNT of
 * them as fast as the card takes them, and `netsink IDLE_MS` counts what arrives
 * until the line is quiet that long, for the benchmarks. Addresses 10.0.0.2:40000
 * to 10.0.0.1:5001; payload byte i is 'a' + i % 26, so the receiver can check it. */
#include "nic.h"

#define ETH_HLEN 14
#define IP_HLEN 20
#define TCP_HLEN 20
#define HDRS (ETH_HLEN + IP_HLEN + TCP_HLEN)
#define MAX_PAYLOAD 65000

static u8 frame[HDRS + MAX_PAYLOAD] __attribute__((aligned(64)));

static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static void put32(u8 *p, u32 v) { put16(p, (u16)(v >> 16)); put16(p + 2, (u16)v); }

static u32 sum16(const u8 *p, u32 len, u32 sum)
{
    for (u32 i = 0; i + 1 < len; i += 2)
        sum += (u32)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        sum += (u32)p[len - 1] << 8;
    return sum;
}

static u16 fold(u32 sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)sum;
}

/* Builds the frame; its TCP checksum field holds the pseudo-header sum with
 * `pseudo_len` as the TCP length (0 for e1000 TSO, as its datasheet asks). */
static u32 build(const u8 *dst, u32 payload, u32 pseudo_len)
{
    static const u8 src_ip[4] = {10, 0, 0, 2}, dst_ip[4] = {10, 0, 0, 1};
    memcpy(frame, dst, 6);
    memcpy(frame + 6, net_mac(), 6);
    put16(frame + 12, 0x0800);
    u8 *ip = frame + ETH_HLEN, *tcp = ip + IP_HLEN;
    memset(ip, 0, IP_HLEN + TCP_HLEN);
    ip[0] = 0x45;
    put16(ip + 2, (u16)(IP_HLEN + TCP_HLEN + payload));
    put16(ip + 4, 0x1234);                    /* identification */
    put16(ip + 6, 0x4000);                    /* don't fragment */
    ip[8] = 64;
    ip[9] = 6;
    memcpy(ip + 12, src_ip, 4);
    memcpy(ip + 16, dst_ip, 4);
    put16(ip + 10, (u16)~fold(sum16(ip, IP_HLEN, 0)));
    put16(tcp, 40000);
    put16(tcp + 2, 5001);
    put32(tcp + 4, 1000);                     /* sequence number */
    tcp[12] = 5 << 4;
    tcp[13] = 0x18;                           /* PSH, ACK */
    put16(tcp + 14, 65535);
    for (u32 i = 0; i < payload; i++)
        tcp[TCP_HLEN + i] = (u8)('a' + i % 26);
    u32 pseudo = sum16(ip + 12, 8, 6 + pseudo_len);
    put16(tcp + 16, fold(pseudo));
    return HDRS + payload;
}

/* The whole checksum, in software: for cards that cannot. */
static void finish_checksum(u32 len)
{
    u8 *tcp = frame + ETH_HLEN + IP_HLEN;
    u32 tcp_len = len - ETH_HLEN - IP_HLEN;
    put16(tcp + 16, 0);
    u32 sum = sum16(frame + ETH_HLEN + 12, 8, 6 + tcp_len);
    put16(tcp + 16, (u16)~fold(sum16(tcp, tcp_len, sum)));
}

struct tcp_args { u8 dst[6]; u64 payload, mss; };

static int parse_mac(const char **s, u8 *mac)
{
    const char *p = skip_spaces(*s);
    for (int i = 0; i < 12; i++) {
        char c = p[i];
        int d = c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
        if (d < 0)
            return 0;
        mac[i / 2] = (u8)(i % 2 ? mac[i / 2] * 16 + d : d);
    }
    *s = p + 12;
    return 1;
}

static int parse_tcp_args(const char **args, struct tcp_args *a)
{
    a->mss = 0;
    if (!net_present() || !parse_mac(args, a->dst) || !parse_u64(args, &a->payload) ||
        a->payload > MAX_PAYLOAD)
        return 0;
    parse_u64(args, &a->mss);
    return 1;
}

/* Sends the frame with offloads; returns "card", "software" or 0. */
static const char *send_tcp(const struct nic *nic, const struct tcp_args *a, u32 *len)
{
    int e1000_tso = !strcmp(nic->model, "e1000") && a->mss;
    *len = build(a->dst, (u32)a->payload, e1000_tso ? 0 : TCP_HLEN + (u32)a->payload);
    if (nic->send_offload &&
        nic->send_offload(frame, *len, ETH_HLEN + IP_HLEN, HDRS, (u32)a->mss))
        return "card";
    if (*len > 1514)
        return 0;
    finish_checksum(*len);
    net_send_frame(frame, *len);
    return "software";
}

void cmd_nettcp(const char *args)
{
    struct tcp_args a;
    u32 len;
    if (!parse_tcp_args(&args, &a)) {
        printf("{\"error\": \"usage: nettcp DSTMAC LEN [MSS] (a NIC, LEN up to %u)\"}\n",
               MAX_PAYLOAD);
        return;
    }
    const char *how = send_tcp(net_nic(), &a, &len);
    if (!how)
        printf("{\"error\": \"the card cannot segment\"}\n");
    else
        printf("{\"sent\": %u, \"checksum\": \"%s\"}\n", len, how);
}

void cmd_netblast(const char *args)
{
    u64 count = 0;
    struct tcp_args a;
    u32 len;
    if (!parse_u64(&args, &count) || !parse_tcp_args(&args, &a)) {
        printf("{\"error\": \"usage: netblast COUNT DSTMAC LEN [MSS]\"}\n");
        return;
    }
    const struct nic *nic = net_nic();
    const char *how = send_tcp(nic, &a, &len);      /* the first, and the template */
    if (!how || !nic->blast) {
        printf("{\"error\": \"%s\"}\n", how ? "the card has no blast" : "cannot segment");
        return;
    }
    u64 us = count > 1 ? nic->blast(frame, len, (u32)count - 1, how[0] == 'c') : 0;
    printf("{\"sent\": %lu, \"len\": %u, \"us\": %lu}\n", count, len, us);
}

/* netsink IDLE_MS: waits up to 10 s for a frame of type 0x88b5, then takes frames
 * until none of them came for IDLE_MS; reports how many, their bytes, and the time
 * from first to last. Receive interrupts stay off meanwhile, and the clock (the PM
 * timer, a port read that exits to the VMM) is read only every 4096 empty polls,
 * so the sink measures the device rather than the clock. */
void cmd_netsink(const char *args)
{
    u64 idle_ms = 200;
    parse_u64(&args, &idle_ms);
    if (!net_present()) {
        printf("{\"error\": \"no network card\"}\n");
        return;
    }
    const struct nic *nic = net_nic();
    u64 frames = 0, bytes = 0, first = 0, last = 0, counted = 0, spins = 0;
    u64 deadline = now_us() + 10000000;
    if (nic->rx_irqs)
        nic->rx_irqs(0);
    for (;;) {
        u8 *f;
        u32 len;
        if (nic->poll(&f, &len)) {
            if (len >= 14 && f[12] == 0x88 && f[13] == 0xb5) {    /* ours, not chatter */
                if (!frames)
                    first = last = now_us();
                frames++;
                bytes += len;
            }
            nic->recycle(f);
            continue;
        }
        if (++spins % 4096)
            continue;
        u64 now = now_us();
        if (frames > counted) {                  /* some came since the last look */
            counted = frames;
            last = now;
        } else if (frames ? now - last > idle_ms * 1000 : now > deadline) {
            break;
        }
    }
    if (nic->rx_irqs)
        nic->rx_irqs(1);
    printf("{\"frames\": %lu, \"bytes\": %lu, \"us\": %lu}\n", frames, bytes, last - first);
}
