/* A minimal IPv4 client over the NIC net.c found: `dhcp` (DISCOVER, OFFER, REQUEST,
 * ACK, as RFC 2131, printing what the lease says: addresses, boot file, host and
 * domain names, search list, TFTP server name) and `udpecho PORT [MS]` (answers one
 * UDP datagram with its own payload), with the helpers tcp.c and tftp.c share. */
#include "inet.h"

#define UDP IP_UDP
#define frame ip_frame

u8 ip_frame[1514];
u8 ip_my_addr[4];
u8 ip_router_mac[6];
#define my_ip ip_my_addr

u32 csum_add(u32 sum, const u8 *p, unsigned len)
{
    for (unsigned i = 0; i + 1 < len; i += 2)
        sum += (u32)(p[i] << 8 | p[i + 1]);
    if (len & 1)
        sum += (u32)p[len - 1] << 8;
    return sum;
}

u16 csum_fold(u32 sum)
{
    while (sum >> 16)
        sum = (sum & 0xffff) + (sum >> 16);
    return (u16)~sum;
}

static u16 csum(const u8 *p, unsigned len) { return csum_fold(csum_add(0, p, len)); }

int arp_answer(u8 *f, u32 len)
{
    if (len < 42 || get16(f + 12) != ETH_ARP)
        return 0;
    const u8 *a = f + 14;
    if (get16(a + 6) == 1 && !memcmp(a + 24, my_ip, 4) && my_ip[0]) {
        u8 *ra = eth_header(a + 8, ETH_ARP);    /* the reply goes out from ip_frame */
        put16(ra, 1); put16(ra + 2, ETH_IP); ra[4] = 6; ra[5] = 4; put16(ra + 6, 2);
        memcpy(ra + 8, net_mac(), 6);
        memcpy(ra + 14, my_ip, 4);
        memcpy(ra + 18, a + 8, 10);          /* the asker's MAC and address */
        net_recycle(f);
        net_send_frame(frame, 42);
        return 1;
    }
    net_recycle(f);
    return 1;
}

int ip_parse(const char **s, u8 *ip)
{
    const char *p = skip_spaces(*s);
    for (int i = 0; i < 4; i++) {
        u64 v;
        if (!parse_u64(&p, &v) || v > 255)
            return 0;
        ip[i] = (u8)v;
        if (i < 3) {
            if (*p != '.')
                return 0;
            p++;
        }
    }
    *s = p;
    return 1;
}

void print_text(const u8 *p, u32 n)
{
    for (u32 i = 0; i < n; i++)
        if (p[i] >= 0x20 && p[i] < 0x7f && p[i] != '"' && p[i] != '\\')
            putchar(p[i]);
}

u8 *eth_header(const u8 *dst_mac, u16 type)
{
    memcpy(frame, dst_mac, 6);
    memcpy(frame + 6, net_mac(), 6);
    put16(frame + 12, type);
    return frame + 14;
}

u8 *ipv4_header(const u8 *dst_mac, const u8 *src_ip, const u8 *dst_ip, u8 proto, u32 l4_len)
{
    u8 *ip = eth_header(dst_mac, ETH_IP);
    memset(ip, 0, 20);
    ip[0] = 0x45;
    put16(ip + 2, (u16)(20 + l4_len));
    ip[8] = 64;
    ip[9] = proto;
    memcpy(ip + 12, src_ip, 4);
    memcpy(ip + 16, dst_ip, 4);
    put16(ip + 10, csum(ip, 20));
    return ip + 20;
}

/* Ethernet + IPv4 + UDP around `len` bytes already at frame + 42; returns the size. */
u32 udp_frame(const u8 *dst_mac, const u8 *src_ip, const u8 *dst_ip, u16 sport,
              u16 dport, u32 len)
{
    u8 *udp = ipv4_header(dst_mac, src_ip, dst_ip, UDP, 8 + len);
    put16(udp, sport);
    put16(udp + 2, dport);
    put16(udp + 4, (u16)(8 + len));
    put16(udp + 6, 0);                       /* no UDP checksum: allowed over IPv4 */
    return 14 + 20 + 8 + len;
}

u8 *ipv4_wait(u8 proto, u64 end, u32 *len)
{
    u8 *f;
    while (now_us() < end) {
        if (!net_poll_frame(&f, len) || arp_answer(f, *len))
            continue;
        if (*len >= 34 && get16(f + 12) == ETH_IP && f[14 + 9] == proto)
            return f;
        net_recycle(f);
    }
    return 0;
}

const u8 *word_arg(const char **s, u32 *n, u32 max)
{
    const u8 *word = (const u8 *)skip_spaces(*s);
    *n = 0;
    while (word[*n] && word[*n] != ' ' && *n < max)
        (*n)++;
    *s = (const char *)word + *n;
    return word;
}

/* The next UDP datagram to `port` within `ms`; its frame stays in the NIC's buffer.
 * ARP requests for our address are answered meanwhile. */
u8 *udp_wait(u16 port, u64 ms, u32 *payload_len, u8 **payload)
{
    u64 end = now_us() + ms * 1000;
    u8 *f;
    u32 len;
    while ((f = ipv4_wait(UDP, end, &len))) {
        const u8 *ip = f + 14;
        unsigned ihl = (ip[0] & 15) * 4;
        if (len >= 14 + ihl + 8 && get16(ip + ihl + 2) == port) {
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

/* What the last DHCPACK said beyond addresses, as text ("" when absent). */
static char boot_file[129], host_name[256], domain_name[256], tftp_server[256];
static char search_list[512];
static u8 next_server[4];

static void option_text(const u8 *opts, u32 len, u8 code, char *out, u32 size)
{
    const u8 *o = dhcp_option(opts, len, code);
    u32 n = o ? o[-1] : 0;
    if (n > size - 1)
        n = size - 1;
    memcpy(out, o ? o : (const u8 *)"", n);
    out[n] = 0;
}

/* Option 119 (RFC 3397): DNS names, compressed as in DNS messages, as "a.b,c.d". */
static void search_text(const u8 *opts, u32 len)
{
    const u8 *o = dhcp_option(opts, len, 119);
    u32 n = o ? o[-1] : 0, at = 0, out = 0;
    search_list[0] = 0;
    while (at < n && out < sizeof(search_list) - 80) {
        u32 p = at, jumps = 0, first = 1;
        int jumped = 0;
        while (p < n && o[p] && jumps < 16) {
            if ((o[p] & 0xc0) == 0xc0) {
                if (p + 1 >= n)
                    break;
                if (!jumped)
                    at = p + 2;
                jumped = 1;
                p = (u32)(o[p] & 0x3f) << 8 | o[p + 1];
                jumps++;
                continue;
            }
            u32 l = o[p];
            if (p + 1 + l > n || out + l + 2 >= sizeof(search_list))
                break;
            if (!first)
                search_list[out++] = '.';
            memcpy(search_list + out, o + p + 1, l);
            out += l;
            first = 0;
            p += 1 + l;
        }
        if (!jumped)
            at = p + 1;
        search_list[out++] = ',';
        search_list[out] = 0;
    }
    if (out)
        search_list[out - 1] = 0;
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
            memcpy(ip_router_mac, f + 6, 6);
            memcpy(next_server, p + 20, 4);
            memcpy(boot_file, p + 108, 128);
            boot_file[128] = 0;
            option_text(p + 240, n - 240, 12, host_name, sizeof(host_name));
            option_text(p + 240, n - 240, 15, domain_name, sizeof(domain_name));
            option_text(p + 240, n - 240, 66, tftp_server, sizeof(tftp_server));
            search_text(p + 240, n - 240);
            net_recycle(f);
            return 1;
        }
        net_recycle(f);
    }
    return 0;
}

void print_ip(const char *key, const u8 *a, const char *sep)
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
    print_ip("dns", dns, "");
    /* what a lease may add, named only when it is there */
    const char *keys[] = {"bootfile", "hostname", "domain", "tftp_server", "search"};
    const char *values[] = {boot_file, host_name, domain_name, tftp_server, search_list};
    for (unsigned i = 0; i < 5; i++) {
        if (values[i][0]) {
            printf(", \"%s\": \"", keys[i]);
            print_text((const u8 *)values[i], (u32)strlen(values[i]));
            printf("\"");
        }
    }
    if (boot_file[0]) {
        printf(", ");
        print_ip("next_server", next_server, "");
    }
    printf("}\n");
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
    print_text(text, n);
    printf("\"}\n");
}
