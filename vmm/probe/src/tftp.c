/* `tftp IP FILE [MS]`: reads FILE from the TFTP server at IP (RFC 1350, octet mode),
 * from the address the last `dhcp` got, acknowledging each 512-byte block. Prints
 * {"size": N, "fnv": "8 hex digits", "head": "its first bytes"} (FNV-1a over all of
 * it, so the host can check every byte), or the server's error. */
#include "inet.h"

static u16 next_port = 42000;

static u32 tftp_packet(const u8 *dst, u16 sport, u16 dport, u32 len)
{
    return udp_frame(ip_router_mac, ip_my_addr, dst, sport, dport, len);
}

void cmd_tftp(const char *args)
{
    u8 dst[4];
    u64 ms = 10000;
    const char *p = args;
    if (!net_present() || !ip_my_addr[0] || !ip_parse(&p, dst)) {
        printf("{\"error\": \"usage: tftp IP FILE [MS] (after dhcp)\"}\n");
        return;
    }
    u32 name_len;
    const u8 *name = word_arg(&p, &name_len, 400);
    parse_u64(&p, &ms);
    u16 sport = next_port++, server_port = 69;
    u8 *b = ip_frame + 42;
    put16(b, 1);                                         /* RRQ */
    memcpy(b + 2, name, name_len);
    b[2 + name_len] = 0;
    memcpy(b + 3 + name_len, "octet", 6);
    u32 request_len = tftp_packet(dst, sport, server_port, 2 + name_len + 1 + 6);
    net_send_frame(ip_frame, request_len);
    u64 end = now_us() + ms * 1000, last_sent = now_us();
    u32 size = 0, hash = 0x811c9dc5, head_len = 0, expected = 1, last_len = request_len;
    u8 head[48];
    while (now_us() < end) {
        u8 *payload, *f;
        u32 n;
        if (!(f = udp_wait(sport, 200, &n, &payload))) {
            if (now_us() - last_sent > 1000000) {          /* lost: say it again */
                net_send_frame(ip_frame, last_len);
                last_sent = now_us();
            }
            continue;
        }
        const u8 *ip = f + 14;
        u16 from_port = get16(f + 14 + (ip[0] & 15) * 4);
        u16 op = n >= 4 ? get16(payload) : 0, block = n >= 4 ? get16(payload + 2) : 0;
        if (op == 5) {
            printf("{\"error_code\": %u, \"error\": \"", block);
            print_text(payload + 4, n > 4 ? n - 5 : 0);
            printf("\"}\n");
            net_recycle(f);
            return;
        }
        if (op != 3) {
            net_recycle(f);
            continue;
        }
        u32 data_len = n - 4;
        if (block == (u16)expected) {
            for (u32 i = 0; i < data_len; i++) {
                hash = (hash ^ payload[4 + i]) * 16777619u;
                if (head_len < sizeof(head))
                    head[head_len++] = payload[4 + i];
            }
            size += data_len;
            expected++;
        }
        net_recycle(f);
        server_port = from_port;
        u8 *ack = ip_frame + 42;
        put16(ack, 4);
        put16(ack + 2, block);
        last_len = tftp_packet(dst, sport, server_port, 4);
        net_send_frame(ip_frame, last_len);
        last_sent = now_us();
        if (block == (u16)(expected - 1) && data_len < 512) {
            printf("{\"size\": %u, \"fnv\": \"%08x\", \"head\": \"", size, hash);
            print_text(head, head_len);
            printf("\"}\n");
            return;
        }
    }
    printf("{\"error\": \"timeout\", \"size\": %u}\n", size);
}
