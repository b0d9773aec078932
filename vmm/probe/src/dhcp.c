/* A minimal IPv4 client over the NIC net.c found: `dhcp` (DISCOVER, OFFER, REQUEST,
 * ACK, as RFC 2131) and `udpecho PORT [MS]` (answers one UDP datagram with its own
 * payload): enough to see user networking's DHCP server and a hostfwd rule. */
#include "nic.h"

#define ETH_IP 0x0800
#define UDP 17

static u8 frame[1514];
static u8 my_ip[4];

static u16 csum(const u8 *p, unsigned len)
{
    u32 sum = 0;
    for (unsigned i = 0; i + 1 < len; i += 2)
        sum += (u32)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        sum += (u32)p[len - 1] << 8;
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }

/* Ethernet + IPv4 + UDP around `len` bytes already at frame + 42; returns the size. */
static u32 udp_frame(const u8 *dst_mac, const u8 *src_ip, const u8 *dst_ip, u16 sport,
                     u16 dport, u32 len)
{
    memcpy(frame, dst_mac, 6);
    memcpy(frame + 6, net_mac(), 6);
    put16(frame + 12, ETH_IP);
    u8 *ip = frame + 14;
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, (u16)(20 + 8 + len));
    ip[8] = 64;
    ip[9] = UDP;
    memcpy(ip + 12, src_ip, 4);
    memcpy(ip + 16, dst_ip, 4);
    put16(ip + 10, csum(ip, 20));
    u8 *udp = ip + 20;
    put16(udp, sport);
    put16(udp + 2, dport);
    put16(udp + 4, (u16)(8 + len));
    put16(udp + 6, 0);                       /* no UDP checksum: allowed over IPv4 */
    return 14 + 20 + 8 + len;
}

/* The next UDP datagram to `port` within `ms`; its frame stays in the NIC's buffer. */
static u8 *udp_wait(u16 port, u64 ms, u32 *payload_len, u8 **payload)
{
    u64 end = now_us() + ms * 1000;
    u8 *f;
    u32 len;
    while (now_us() < end) {
        if (!net_poll_frame(&f, &len))
            continue;
        const u8 *ip = f + 14;
        if (len >= 42 && get16(f + 12) == ETH_IP && ip[9] == UDP &&
            get16(ip + 20 + 2) == port) {
            unsigned ihl = (ip[0] & 15) * 4;
            *payload = f + 14 + ihl + 8;
            *payload_len = get16(ip + ihl + 4) - 8;
            return f;
        }
        net_recycle(f);
    }
    return 0;
}

static const u8 *dhcp_option(const u8 *opts, u32 len, u8 code)
{
    for (u32 i = 0; i + 1 < len && opts[i] != 255;) {
        if (opts[i] == 0) { i++; continue; }
        if (opts[i] == code)
            return opts + i + 2;
        i += 2 + opts[i + 1];
    }
    return 0;
}

static u32 dhcp_message(u8 type, u32 xid, const u8 *requested, const u8 *server)
{
    u8 *b = frame + 42;
    memset(b, 0, 300);
    b[0] = 1; b[1] = 1; b[2] = 6;
    b[4] = (u8)(xid >> 24); b[5] = (u8)(xid >> 16); b[6] = (u8)(xid >> 8); b[7] = (u8)xid;
    b[10] = 0x80;                                       /* broadcast replies */
    memcpy(b + 28, net_mac(), 6);
    b[236] = 99; b[237] = 130; b[238] = 83; b[239] = 99; /* the magic cookie */
    u8 *o = b + 240;
    *o++ = 53; *o++ = 1; *o++ = type;
    if (requested) { *o++ = 50; *o++ = 4; memcpy(o, requested, 4); o += 4; }
    if (server) { *o++ = 54; *o++ = 4; memcpy(o, server, 4); o += 4; }
    *o++ = 55; *o++ = 3; *o++ = 1; *o++ = 3; *o++ = 6;
    *o++ = 255;
    static const u8 bcast_mac[6] = {255, 255, 255, 255, 255, 255};
    static const u8 zero[4] = {0}, bcast[4] = {255, 255, 255, 255};
    return udp_frame(bcast_mac, zero, bcast, 68, 67, 300);
}

/* Waits for a DHCP reply of `type`; copies yiaddr and the options we print. */
static int dhcp_reply(u8 type, u32 xid, u8 *yiaddr, u8 *server, u8 *router, u8 *dns)
{
    u8 *p;
    u32 n;
    for (int tries = 0; tries < 8; tries++) {
        u8 *f = udp_wait(68, 1000, &n, &p);
        if (!f)
            return 0;
        int ok = n > 240 && p[0] == 2 &&
                 ((u32)p[4] << 24 | (u32)p[5] << 16 | (u32)p[6] << 8 | p[7]) == xid;
        const u8 *t = ok ? dhcp_option(p + 240, n - 240, 53) : 0;
        if (t && *t == type) {
            memcpy(yiaddr, p + 16, 4);
            const u8 *o;
            if ((o = dhcp_option(p + 240, n - 240, 54))) memcpy(server, o, 4);
            if ((o = dhcp_option(p + 240, n - 240, 3))) memcpy(router, o, 4);
            if ((o = dhcp_option(p + 240, n - 240, 6))) memcpy(dns, o, 4);
            net_recycle(f);
            return 1;
        }
        net_recycle(f);
    }
    return 0;
}

static void print_ip(const char *key, const u8 *a, const char *sep)
{
    printf("\"%s\": \"%u.%u.%u.%u\"%s", key, a[0], a[1], a[2], a[3], sep);
}

void cmd_dhcp(const char *args)
{
    (void)args;
    if (!net_present()) {
        printf("{\"error\": \"no network card\"}\n");
        return;
    }
    u32 xid = 0x6b766d6b;                                  /* "kvmk" */
    u8 offered[4] = {0}, server[4] = {0}, router[4] = {0}, dns[4] = {0};
    net_send_frame(frame, dhcp_message(1, xid, 0, 0));     /* DISCOVER */
    if (!dhcp_reply(2, xid, offered, server, router, dns)) {
        printf("{\"error\": \"no DHCPOFFER\"}\n");
        return;
    }
    net_send_frame(frame, dhcp_message(3, xid, offered, server));   /* REQUEST */
    if (!dhcp_reply(5, xid, my_ip, server, router, dns)) {
        printf("{\"error\": \"no DHCPACK\"}\n");
        return;
    }
    printf("{");
    print_ip("ip", my_ip, ", ");
    print_ip("server", server, ", ");
    print_ip("router", router, ", ");
    print_ip("dns", dns, "}\n");
}

void cmd_udpecho(const char *args)
{
    u64 port = 0, ms = 5000;
    if (!net_present() || !parse_u64(&args, &port)) {
        printf("{\"error\": \"usage: udpecho PORT [MS] (with a NIC)\"}\n");
        return;
    }
    parse_u64(&args, &ms);
    u8 *p;
    u32 n;
    u8 *f = udp_wait((u16)port, ms, &n, &p);
    if (!f) {
        printf("{\"datagram\": null}\n");
        return;
    }
    u8 peer_mac[6], peer_ip[4], dst_ip[4], text[256];
    u16 peer_port = get16(f + 14 + 20);
    memcpy(peer_mac, f + 6, 6);
    memcpy(peer_ip, f + 14 + 12, 4);
    memcpy(dst_ip, f + 14 + 16, 4);
    if (n > sizeof(text) - 1)
        n = sizeof(text) - 1;
    memcpy(text, p, n);
    text[n] = 0;
    net_recycle(f);
    memcpy(frame + 42, text, n);
    net_send_frame(frame, udp_frame(peer_mac, dst_ip, peer_ip, (u16)port, peer_port, n));
    printf("{");
    print_ip("from", peer_ip, ", ");
    printf("\"port\": %u, \"data\": \"", peer_port);
    for (u32 i = 0; i < n; i++)
        if (text[i] >= 0x20 && text[i] < 0x7f && text[i] != '"' && text[i] != '\\')
            printf("%c", text[i]);
    printf("\"}\n");
}
