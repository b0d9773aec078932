/* IPv4 and IPv6 over the NIC net.c found, for dhcp.c, tcp.c, tftp.c and ipv6.c. */
#ifndef INET_H
#define INET_H
#include "nic.h"

#define ETH_IP 0x0800
#define ETH_ARP 0x0806
#define ETH_IP6 0x86dd
#define IP_TCP 6
#define IP_UDP 17
#define IP_ICMP6 58

static inline void put16(u8 *p, u16 v) { p[0] = (u8)(v >> 8); p[1] = (u8)v; }
static inline u16 get16(const u8 *p) { return (u16)(p[0] << 8 | p[1]); }
static inline void put32(u8 *p, u32 v) { put16(p, (u16)(v >> 16)); put16(p + 2, (u16)v); }
static inline u32 get32(const u8 *p) { return (u32)get16(p) << 16 | get16(p + 2); }

extern u8 ip_frame[1514];        /* the frame being built: payloads go at ip_frame + 42 */
extern u8 ip_my_addr[4];         /* from the last DHCPACK (0.0.0.0 before) */
extern u8 ip_router_mac[6];      /* the DHCP server's MAC: where IPv4 frames go */

u32 csum_add(u32 sum, const u8 *p, unsigned len);
u16 csum_fold(u32 sum);
/* Ethernet (and IPv4) headers into ip_frame; returns where the payload goes. */
u8 *eth_header(const u8 *dst_mac, u16 type);
u8 *ipv4_header(const u8 *dst_mac, const u8 *src_ip, const u8 *dst_ip, u8 proto, u32 l4_len);
u32 udp_frame(const u8 *dst_mac, const u8 *src_ip, const u8 *dst_ip, u16 sport, u16 dport,
              u32 len);
u8 *udp_wait(u16 port, u64 ms, u32 *payload_len, u8 **payload);
/* The next IPv4 frame carrying `proto` before `end`, ARP answered meanwhile. */
u8 *ipv4_wait(u8 proto, u64 end, u32 *len);
/* The next word of a command line (its length in *n, at most `max`); *s moves past it. */
const u8 *word_arg(const char **s, u32 *n, u32 max);
int ip_parse(const char **s, u8 *ip);
void print_ip(const char *key, const u8 *a, const char *sep);
void print_text(const u8 *p, u32 n);
/* Answers an ARP request for ip_my_addr; 1 if the frame was one (and recycled). */
int arp_answer(u8 *f, u32 len);
int ipv6_answer_ns(u8 *f, u32 len);  /* the same for IPv6 neighbour solicitations */
#endif
