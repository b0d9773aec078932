/* IPv6 on the NIC net.c found, as a host on a link with a router:
 *   `ip6 ndp [MS]`   router solicitation from the link-local address (EUI-64); the
 *                    advertisement's prefix makes a global address (SLAAC). Prints the
 *                    router, its MAC, the prefix, the DNS server (RDNSS) and the address.
 *   `ip6 ns ADDR [MS]`  neighbour solicitation for ADDR: its MAC, or null.
 *   `ip6 udp ADDR PORT TEXT [MS]`  neighbour solicitation for ADDR, then one UDP
 *                    datagram to it from the global address, and the answer.
 * Neighbour solicitations for our own addresses are answered meanwhile (RFC 4861). */
#include "inet.h"

#define RS 133
#define RA 134
#define NS 135
#define NA 136

static u8 link_local[16], global[16], dns[16], prefix[16];
static u8 router[16], router_mac[6];
static unsigned prefix_len, have_global;
static u16 next_port = 43000;

static void interface_id(u8 *addr)
{
    const u8 *m = net_mac();
    addr[8] = m[0] ^ 2; addr[9] = m[1]; addr[10] = m[2]; addr[11] = 0xff;
    addr[12] = 0xfe; addr[13] = m[3]; addr[14] = m[4]; addr[15] = m[5];
}

static void print_ip6(const char *key, const u8 *a, const char *sep)
{
    u16 g[8];
    int best = -1, best_len = 1;
    for (int i = 0; i < 8; i++)
        g[i] = get16(a + 2 * i);
    for (int i = 0; i < 8;) {                     /* the longest run of zero groups */
        int j = i;
        while (j < 8 && !g[j])
            j++;
        if (j - i > best_len) { best = i; best_len = j - i; }
        i = j > i ? j : i + 1;
    }
    printf("\"%s\": \"", key);
    for (int i = 0; i < 8; i++) {
        if (i == best) {
            printf("::");
            i += best_len - 1;
            continue;
        }
        if (i && i != best + best_len)
            printf(":");
        printf("%x", g[i]);
    }
    printf("\"%s", sep);
}

static int hex_digit(char c)
{
    if (c >= '0' && c <= '9') return c - '0';
    if (c >= 'a' && c <= 'f') return c - 'a' + 10;
    if (c >= 'A' && c <= 'F') return c - 'A' + 10;
    return -1;
}

/* "fec0::2" and the like (no embedded IPv4). */
static int ip6_parse(const char **s, u8 *out)
{
    const char *p = skip_spaces(*s);
    u16 head[8], tail[8];
    int nh = 0, nt = 0, gap = 0;
    if (p[0] == ':' && p[1] == ':') { gap = 1; p += 2; }
    while (hex_digit(*p) >= 0) {
        u32 v = 0;
        int digits = 0;
        while (hex_digit(*p) >= 0 && digits < 5) { v = v << 4 | (u32)hex_digit(*p++); digits++; }
        if (v > 0xffff || nh + nt >= 8)
            return 0;
        if (gap) tail[nt++] = (u16)v; else head[nh++] = (u16)v;
        if (*p == ':' && p[1] == ':' && !gap) { gap = 1; p += 2; continue; }
        if (*p == ':' && hex_digit(p[1]) >= 0) { p++; continue; }
        break;
    }
    if ((!gap && nh != 8) || nh + nt > 8)
        return 0;
    memset(out, 0, 16);
    for (int i = 0; i < nh; i++) put16(out + 2 * i, head[i]);
    for (int i = 0; i < nt; i++) put16(out + 16 - 2 * (nt - i), tail[i]);
    *s = p;
    return 1;
}

static u16 upper_csum(const u8 *src, const u8 *dst, u8 next, const u8 *l4, u32 len)
{
    u8 pseudo[40];
    memcpy(pseudo, src, 16);
    memcpy(pseudo + 16, dst, 16);
    put32(pseudo + 32, len);
    pseudo[36] = pseudo[37] = pseudo[38] = 0;
    pseudo[39] = next;
    return csum_fold(csum_add(csum_add(0, pseudo, 40), l4, len));
}

/* Ethernet + IPv6 around `len` bytes already at ip_frame + 54; the ICMPv6 or UDP
 * checksum at `csum_at` (from the payload's start) is filled in. Returns the size. */
static u32 ip6_frame(const u8 *dst_mac, const u8 *src, const u8 *dst, u8 next, u8 hops,
                     u32 len, u32 csum_at)
{
    u8 *ip = eth_header(dst_mac, ETH_IP6);
    memset(ip, 0, 40);
    ip[0] = 0x60;
    put16(ip + 4, (u16)len);
    ip[6] = next;
    ip[7] = hops;
    memcpy(ip + 8, src, 16);
    memcpy(ip + 24, dst, 16);
    u8 *l4 = ip + 40;
    put16(l4 + csum_at, 0);
    put16(l4 + csum_at, upper_csum(src, dst, next, l4, len));
    return 14 + 40 + len;
}

static void multicast_mac(u8 *mac, const u8 *group)
{
    mac[0] = 0x33; mac[1] = 0x33;
    memcpy(mac + 2, group + 12, 4);
}

/* An NS or NA: type, target, and our MAC as source (1) or target (2) option. */
static u32 neighbour_message(u8 type, const u8 *dst_mac, const u8 *src, const u8 *dst,
                             const u8 *target, u8 flags)
{
    u8 *m = ip_frame + 54;
    memset(m, 0, 32);
    m[0] = type;
    m[4] = flags;
    memcpy(m + 8, target, 16);
    m[24] = type == NS ? 1 : 2;
    m[25] = 1;
    memcpy(m + 26, net_mac(), 6);
    return ip6_frame(dst_mac, src, dst, IP_ICMP6, 255, 32, 2);
}

int ipv6_answer_ns(u8 *f, u32 len)
{
    const u8 *ip = f + 14, *m = f + 54;
    if (len < 78 || get16(f + 12) != ETH_IP6 || ip[6] != IP_ICMP6 || m[0] != NS)
        return 0;
    int ours = !memcmp(m + 8, link_local, 16) || (have_global && !memcmp(m + 8, global, 16));
    u8 target[16], to[16], to_mac[6];
    memcpy(target, m + 8, 16);
    memcpy(to, ip + 8, 16);
    memcpy(to_mac, f + 6, 6);
    net_recycle(f);
    if (ours)            /* solicited, override; to the asker's address and MAC */
        net_send_frame(ip_frame, neighbour_message(NA, to_mac, target, to, target, 0x60));
    return 1;
}

/* The next ICMPv6 message of `type` before `end` (frame kept for the caller). */
static u8 *icmp6_wait(u8 type, u64 end, u32 *len)
{
    u8 *f;
    while (now_us() < end) {
        if (!net_poll_frame(&f, len) || ipv6_answer_ns(f, *len))
            continue;
        if (*len >= 58 && get16(f + 12) == ETH_IP6 && f[14 + 6] == IP_ICMP6 && f[54] == type)
            return f;
        net_recycle(f);
    }
    return 0;
}

static void cmd_ndp(const char *args)
{
    u64 ms = 5000;
    parse_u64(&args, &ms);
    static const u8 all_routers[16] = {0xff, 2, [15] = 2};
    u8 mac[6];
    multicast_mac(mac, all_routers);
    u8 *m = ip_frame + 54;
    memset(m, 0, 16);
    m[0] = RS;
    m[8] = 1;                                   /* source link-layer address option */
    m[9] = 1;
    memcpy(m + 10, net_mac(), 6);
    net_send_frame(ip_frame, ip6_frame(mac, link_local, all_routers, IP_ICMP6, 255, 16, 2));
    u32 len;
    u8 *f = icmp6_wait(RA, now_us() + ms * 1000, &len);
    if (!f) {
        printf("{\"error\": \"no router advertisement\"}\n");
        return;
    }
    memcpy(router, f + 14 + 8, 16);
    memcpy(router_mac, f + 6, 6);
    u32 end = 14 + 40 + get16(f + 14 + 4);
    memset(dns, 0, 16);
    have_global = 0;
    for (u32 at = 54 + 16; at + 8 <= end && at + 8 <= len && f[at + 1];) {
        const u8 *o = f + at;
        if (o[0] == 1)
            memcpy(router_mac, o + 2, 6);
        if (o[0] == 3 && o[1] == 4) {
            prefix_len = o[2];
            memcpy(prefix, o + 16, 16);
            memcpy(global, prefix, 8);
            interface_id(global);
            have_global = 1;
        }
        if (o[0] == 25 && o[1] >= 3)
            memcpy(dns, o + 8, 16);
        at += o[1] * 8u;
    }
    net_recycle(f);
    printf("{");
    print_ip6("router", router, ", ");
    printf("\"router_mac\": \"%02x:%02x:%02x:%02x:%02x:%02x\", ", router_mac[0],
           router_mac[1], router_mac[2], router_mac[3], router_mac[4], router_mac[5]);
    print_ip6("prefix", prefix, ", ");
    printf("\"prefix_len\": %u, ", prefix_len);
    static const u8 none[16];
    if (memcmp(dns, none, 16))                  /* an RDNSS option, when there is one */
        print_ip6("dns", dns, ", ");
    print_ip6("addr", have_global ? global : link_local, "}\n");
}

/* Who has `dst`? A solicitation to its solicited-node group each second until an
 * advertisement names its MAC, or `end`. */
static int resolve(const u8 *dst, u64 end, u8 *dst_mac)
{
    u8 group[16] = {0xff, 2, [11] = 1, [12] = 0xff};
    memcpy(group + 13, dst + 13, 3);
    u8 group_mac[6];
    multicast_mac(group_mac, group);
    const u8 *src = have_global ? global : link_local;
    while (now_us() < end) {
        net_send_frame(ip_frame, neighbour_message(NS, group_mac, src, group, dst, 0));
        u64 try_end = now_us() + 1000000;
        u32 len;
        u8 *f;
        while ((f = icmp6_wait(NA, try_end < end ? try_end : end, &len))) {
            int match = !memcmp(f + 54 + 8, dst, 16);
            if (match) {
                memcpy(dst_mac, f + 6, 6);
                if (len >= 86 && f[78] == 2)
                    memcpy(dst_mac, f + 80, 6);
            }
            net_recycle(f);
            if (match)
                return 1;
        }
    }
    return 0;
}

static void cmd_ns(const char *args)
{
    u8 dst[16], mac[6];
    u64 ms = 3000;
    const char *p = args;
    if (!ip6_parse(&p, dst)) {
        printf("{\"error\": \"usage: ip6 ns ADDR [MS]\"}\n");
        return;
    }
    parse_u64(&p, &ms);
    if (!resolve(dst, now_us() + ms * 1000, mac)) {
        printf("{\"mac\": null}\n");
        return;
    }
    printf("{\"mac\": \"%02x:%02x:%02x:%02x:%02x:%02x\"}\n", mac[0], mac[1], mac[2], mac[3],
           mac[4], mac[5]);
}

static void cmd_udp6(const char *args)
{
    u8 dst[16], dst_mac[6];
    u64 port = 0, ms = 5000;
    const char *p = args;
    if (!have_global || !ip6_parse(&p, dst) || !parse_u64(&p, &port) || !port || port > 65535) {
        printf("{\"error\": \"usage: ip6 udp ADDR PORT TEXT [MS] (after ip6 ndp)\"}\n");
        return;
    }
    u32 n;
    const u8 *text = word_arg(&p, &n, 1024);
    parse_u64(&p, &ms);
    u64 end = now_us() + ms * 1000;
    if (!resolve(dst, end, dst_mac)) {
        printf("{\"error\": \"no neighbour advertisement\"}\n");
        return;
    }
    u16 sport = next_port++;
    u8 *u = ip_frame + 54;
    put16(u, sport);
    put16(u + 2, (u16)port);
    put16(u + 4, (u16)(8 + n));
    memcpy(u + 8, text, n);
    net_send_frame(ip_frame, ip6_frame(dst_mac, global, dst, IP_UDP, 64, 8 + n, 6));
    u8 *f;
    u32 len;
    while (now_us() < end) {
        if (!net_poll_frame(&f, &len) || ipv6_answer_ns(f, len))
            continue;
        u8 *ip = f + 14, *r = f + 54;
        if (len >= 62 && get16(f + 12) == ETH_IP6 && ip[6] == IP_UDP && get16(r + 2) == sport) {
            u32 got = get16(r + 4) - 8;
            printf("{");
            print_ip6("from", ip + 8, ", ");
            printf("\"port\": %u, \"data\": \"", get16(r));
            print_text(r + 8, got);
            printf("\"}\n");
            net_recycle(f);
            return;
        }
        net_recycle(f);
    }
    printf("{\"datagram\": null}\n");
}

void cmd_ip6(const char *args)
{
    if (!net_present()) {
        printf("{\"error\": \"no network card\"}\n");
        return;
    }
    if (net_nic()->allmulti)          /* the all-nodes and solicited-node groups */
        net_nic()->allmulti();
    link_local[0] = 0xfe;
    link_local[1] = 0x80;
    interface_id(link_local);
    const char *a = skip_spaces(args);
    if (!strncmp(a, "ndp", 3))
        cmd_ndp(a + 3);
    else if (!strncmp(a, "udp", 3))
        cmd_udp6(a + 3);
    else if (!strncmp(a, "ns", 2))
        cmd_ns(a + 2);
    else
        printf("{\"error\": \"usage: ip6 ndp [MS] | ns ADDR [MS] | udp ADDR PORT TEXT [MS]\"}\n");
}
