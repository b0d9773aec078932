/* `tcp IP PORT TEXT [MS]`: one TCP/IPv4 connection from the address the last `dhcp`
 * got: connect (SYN, retried each second), send TEXT, take what comes back in order
 * until the peer closes, is quiet for half a second, or MS pass; then close. Prints
 * {"connected": ..., "reset": ..., "data": "...", "peer_closed": ...}. Enough to see
 * user networking's guestfwd rules and restrict=on; no options, no reordering. */
#include "inet.h"

#define FIN 0x01
#define SYN 0x02
#define RST 0x04
#define PSH 0x08
#define ACK 0x10

static u16 next_port = 41000;
static u8 rx_data[2048];

static u32 tcp_frame(const u8 *dst, u16 sport, u16 dport, u32 seq, u32 ack, u8 flags,
                     const u8 *data, u32 n)
{
    u8 *t = ipv4_header(ip_router_mac, ip_my_addr, dst, IP_TCP, 20 + n);
    memset(t, 0, 20);
    put16(t, sport);
    put16(t + 2, dport);
    put32(t + 4, seq);
    put32(t + 8, ack);
    t[12] = 5 << 4;
    t[13] = flags;
    put16(t + 14, 8192);
    memcpy(t + 20, data, n);
    u8 pseudo[12];
    memcpy(pseudo, ip_my_addr, 4);
    memcpy(pseudo + 4, dst, 4);
    pseudo[8] = 0;
    pseudo[9] = IP_TCP;
    put16(pseudo + 10, (u16)(20 + n));
    put16(t + 16, csum_fold(csum_add(csum_add(0, pseudo, 12), t, 20 + n)));
    return 14 + 40 + n;
}

static void send_segment(const u8 *dst, u16 sport, u16 dport, u32 seq, u32 ack, u8 flags,
                         const u8 *data, u32 n)
{
    net_send_frame(ip_frame, tcp_frame(dst, sport, dport, seq, ack, flags, data, n));
}

/* The next segment from peer:peer_port to `port` before `end` (its frame, which the
 * caller recycles), with the segment and its payload's length. */
static u8 *tcp_wait(const u8 *peer, u16 peer_port, u16 port, u64 end, u8 **seg, u32 *plen)
{
    u8 *f;
    u32 len;
    while ((f = ipv4_wait(IP_TCP, end, &len))) {
        const u8 *ip = f + 14;
        unsigned ihl = (ip[0] & 15) * 4;
        u8 *t = f + 14 + ihl;
        if (len >= 14 + ihl + 20 && !memcmp(ip + 12, peer, 4) && get16(t) == peer_port &&
            get16(t + 2) == port) {
            *seg = t;
            *plen = get16(ip + 2) - ihl - (t[12] >> 4) * 4;
            return f;
        }
        net_recycle(f);
    }
    return 0;
}

static u64 soon(u64 end, u64 us)
{
    u64 t = now_us() + us;
    return t < end ? t : end;
}

void cmd_tcp(const char *args)
{
    u8 dst[4];
    u64 port = 0, ms = 5000;
    const char *p = args;
    if (!net_present() || !ip_my_addr[0] || !ip_parse(&p, dst) || !parse_u64(&p, &port) ||
        port == 0 || port > 65535) {
        printf("{\"error\": \"usage: tcp IP PORT TEXT [MS] (after dhcp)\"}\n");
        return;
    }
    u32 n;
    const u8 *text = word_arg(&p, &n, 1024);
    parse_u64(&p, &ms);
    u16 sport = next_port++, dport = (u16)port;
    u32 iss = (u32)sport << 16, snd = iss + 1, rcv = 0, got = 0, plen;
    u64 end = now_us() + ms * 1000, last_try = 0, quiet_since;
    int connected = 0, reset = 0, peer_closed = 0, acked = 0;
    u8 *seg, *f;
    while (!connected && !reset && now_us() < end) {
        if (!last_try || now_us() - last_try >= 1000000) {
            send_segment(dst, sport, dport, iss, 0, SYN, 0, 0);
            last_try = now_us();
        }
        if (!(f = tcp_wait(dst, dport, sport, soon(end, 100000), &seg, &plen)))
            continue;
        if (seg[13] & RST)
            reset = 1;
        else if ((seg[13] & (SYN | ACK)) == (SYN | ACK) && get32(seg + 8) == iss + 1) {
            connected = 1;
            rcv = get32(seg + 4) + 1;
        }
        net_recycle(f);
    }
    if (!connected) {
        printf("{\"connected\": false, \"reset\": %s}\n", reset ? "true" : "false");
        return;
    }
    send_segment(dst, sport, dport, snd, rcv, ACK | PSH, text, n);
    last_try = quiet_since = now_us();
    while (now_us() < end && !peer_closed && !reset) {
        if (!acked && now_us() - last_try >= 1000000) {
            send_segment(dst, sport, dport, snd, rcv, ACK | PSH, text, n);
            last_try = now_us();
        }
        if (acked && got && now_us() - quiet_since > 500000)
            break;
        if (!(f = tcp_wait(dst, dport, sport, soon(end, 100000), &seg, &plen)))
            continue;
        u8 flags = seg[13];
        u32 seq = get32(seg + 4);
        int answer = plen != 0;
        if (flags & RST)
            reset = 1;
        if ((flags & ACK) && get32(seg + 8) == snd + n)
            acked = 1;
        if (plen && seq == rcv) {
            u32 take = plen < sizeof(rx_data) - got ? plen : sizeof(rx_data) - got;
            memcpy(rx_data + got, seg + (seg[12] >> 4) * 4, take);
            got += take;
            rcv += plen;
            quiet_since = now_us();
        }
        if ((flags & FIN) && seq + plen == rcv) {
            rcv++;
            peer_closed = answer = 1;
        }
        net_recycle(f);
        if (answer && !reset)
            send_segment(dst, sport, dport, snd + n, rcv, ACK, 0, 0);
    }
    if (!reset) {                        /* our FIN; the peer's ACK is not waited for */
        send_segment(dst, sport, dport, snd + n, rcv, FIN | ACK, 0, 0);
        u64 close_end = soon(end + 300000, 300000);
        while ((f = tcp_wait(dst, dport, sport, close_end, &seg, &plen))) {
            if ((seg[13] & FIN) && !peer_closed) {
                rcv = get32(seg + 4) + plen + 1;
                send_segment(dst, sport, dport, snd + n + 1, rcv, ACK, 0, 0);
                peer_closed = 1;
            }
            net_recycle(f);
        }
    }
    printf("{\"connected\": true, \"reset\": %s, \"data\": \"", reset ? "true" : "false");
    print_text(rx_data, got);
    printf("\", \"peer_closed\": %s}\n", peer_closed ? "true" : "false");
}
