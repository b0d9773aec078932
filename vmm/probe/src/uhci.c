/* A UHCI host controller driver with just enough USB for HID devices:
 *   usb scan           resets the first UHCI controller (8086:7020), resets each
 *                      root port with a device, gives it an address, reads its
 *                      device, configuration, string and HID report descriptors
 *                      and configures it: {"devices": [{"port": 1, "address": 1,
 *                      "vendor": .., "product": .., "protocol": .., "name": "...",
 *                      "report_length": ..}, ...]}
 *   usb poll PORT MS   reads the device's interrupt endpoint (1 IN) for MS ms and
 *                      lists the reports it gave: {"reports": [[b0, b1, ...], ...]}
 * Every frame of the frame list points at one queue head; a transfer is a chain
 * of TDs hung on it, and the driver polls until the controller retires them. */
#include "probe.h"

#define USBCMD 0x00
#define USBSTS 0x02
#define FRNUM 0x06
#define FRBASEADD 0x08
#define PORTSC 0x10
#define TD_ACTIVE (1u << 23)
#define TD_STALLED (1u << 22)
#define TD_ERRORS (0x7eu << 16)
#define PID_SETUP 0x2d
#define PID_IN 0x69
#define PID_OUT 0xe1
#define LINK_TERMINATE 1u
#define LINK_QH 2u
#define LINK_DEPTH 4u
#define MAX_TDS 16

struct td { u32 link, status, token, buffer; } __attribute__((aligned(16)));
struct qh { u32 head, element; } __attribute__((aligned(16)));

static u32 frame_list[1024] __attribute__((aligned(4096)));
static struct qh queue;
static struct td tds[MAX_TDS];
static u8 data[512] __attribute__((aligned(16)));
static u8 setup_packet[8] __attribute__((aligned(16)));
static u16 io;
static struct { u8 address, protocol, toggle; u16 report_length; } ports[2];

static int find_controller(void)
{
    for (unsigned slot = 0; slot < 32; slot++)
        for (unsigned fn = 0; fn < 8; fn++)
            if (pci_read32(0, slot, fn, 0) == 0x70208086) {
                u32 command = pci_read32(0, slot, fn, 4);
                pci_write32(0, slot, fn, 4, command | 0x5);     /* I/O, bus master */
                io = (u16)(pci_read32(0, slot, fn, 0x20) & ~3u);
                return io != 0;
            }
    return 0;
}

static u32 token(u8 pid, u8 address, u8 endpoint, unsigned toggle, unsigned length)
{
    return ((u32)((length - 1) & 0x7ff) << 21) | ((u32)toggle << 19) |
           ((u32)endpoint << 15) | ((u32)address << 8) | pid;
}

/* Runs tds[0..n-1] as one chain; 0 when every TD completed without error. */
static int run(unsigned n, unsigned timeout_ms)
{
    for (unsigned i = 0; i < n; i++)
        tds[i].link = i + 1 < n ? ((u32)(u64)&tds[i + 1] | LINK_DEPTH) : LINK_TERMINATE;
    barrier();
    queue.element = (u32)(u64)&tds[0];
    u64 end = now_us() + (u64)timeout_ms * 1000;
    while (now_us() < end) {
        barrier();
        if (!(tds[n - 1].status & TD_ACTIVE))
            break;
        int stuck = 0;
        for (unsigned i = 0; i < n; i++)
            if (!(tds[i].status & TD_ACTIVE) && (tds[i].status & TD_ERRORS))
                stuck = 1;
        if (stuck)
            break;
    }
    queue.element = LINK_TERMINATE;
    for (unsigned i = 0; i < n; i++)
        if ((tds[i].status & TD_ACTIVE) || (tds[i].status & TD_ERRORS))
            return -1;
    return 0;
}

static unsigned actual(unsigned i) { return (tds[i].status + 1) & 0x7ff; }

/* A control transfer: SETUP, the data stage (IN or OUT), the status stage. */
static int control(u8 address, u8 type, u8 request, u16 value, u16 index, u16 length)
{
    setup_packet[0] = type; setup_packet[1] = request;
    setup_packet[2] = (u8)value; setup_packet[3] = (u8)(value >> 8);
    setup_packet[4] = (u8)index; setup_packet[5] = (u8)(index >> 8);
    setup_packet[6] = (u8)length; setup_packet[7] = (u8)(length >> 8);
    unsigned n = 0, in = type & 0x80, toggle = 1;
    tds[n++] = (struct td){0, TD_ACTIVE | (3u << 27), token(PID_SETUP, address, 0, 0, 8),
                           (u32)(u64)setup_packet};
    for (unsigned at = 0; at < length && n < MAX_TDS - 1; at += 8, toggle ^= 1) {
        unsigned chunk = length - at < 8 ? length - at : 8;
        tds[n++] = (struct td){0, TD_ACTIVE | (3u << 27),
                               token(in ? PID_IN : PID_OUT, address, 0, toggle, chunk),
                               (u32)(u64)(data + at)};
    }
    tds[n++] = (struct td){0, TD_ACTIVE | (3u << 27),
                           token(in ? PID_OUT : PID_IN, address, 0, 1, 0), 0};
    tds[n - 1].token |= 0x7ffu << 21;                       /* a zero-length packet */
    if (run(n, 500))
        return -1;
    unsigned got = 0;
    for (unsigned i = 1; i + 1 < n; i++)
        got += actual(i);
    return (int)got;
}

static void start_controller(void)
{
    outw(io + USBCMD, 4);                                  /* global reset */
    delay_us(20000);
    outw(io + USBCMD, 0);
    outw(io + USBCMD, 2);                                  /* controller reset */
    delay_us(10000);
    queue.head = LINK_TERMINATE;
    queue.element = LINK_TERMINATE;
    for (unsigned i = 0; i < 1024; i++)
        frame_list[i] = (u32)(u64)&queue | LINK_QH;
    outl(io + FRBASEADD, (u32)(u64)frame_list);
    outw(io + FRNUM, 0);
    outw(io + USBSTS, 0x3f);
    outw(io + USBCMD, 0x81);                               /* run, 64-byte packets */
}

static void print_name(u8 address, u8 index)
{
    printf("\"name\": \"");
    if (index && control(address, 0x80, 6, (u16)(0x300 | index), 0x409, 2) == 2 &&
        control(address, 0x80, 6, (u16)(0x300 | index), 0x409, data[0]) > 2)
        for (unsigned i = 2; i < data[0] && i < 64; i += 2)
            putchar(data[i] >= 0x20 && data[i] < 0x7f && data[i] != '"' ? data[i] : '?');
    printf("\"");
}

static void scan(void)
{
    if (!find_controller()) {
        printf("{\"error\": \"no UHCI controller\"}\n");
        return;
    }
    start_controller();
    printf("{\"devices\": [");
    int first = 1;
    for (unsigned p = 0; p < 2; p++) {
        u16 port = io + PORTSC + 2 * p;
        ports[p].address = 0;
        if (!(inw(port) & 1))
            continue;
        outw(port, 0x200);                                 /* reset */
        delay_us(50000);
        outw(port, 0);
        delay_us(1000);
        outw(port, 0x4 | 0xa);                             /* enable, clear changes */
        delay_us(1000);
        u8 address = (u8)(p + 1);
        if (control(0, 0x80, 6, 0x100, 0, 8) < 8 || control(0, 0x00, 5, address, 0, 0) < 0 ||
            control(address, 0x80, 6, 0x100, 0, 18) < 18) {
            printf("%s{\"port\": %u, \"error\": \"enumeration failed\"}", first ? "" : ", ",
                   p + 1);
            first = 0;
            continue;
        }
        u16 vendor = (u16)(data[8] | data[9] << 8), product = (u16)(data[10] | data[11] << 8);
        u8 product_string = data[15];
        int length = control(address, 0x80, 6, 0x200, 0, 9) == 9 ?
            control(address, 0x80, 6, 0x200, 0, (u16)(data[2] | data[3] << 8)) : -1;
        u8 protocol = 0;
        u16 report_length = 0;
        for (int at = 0; at + 1 < length && data[at]; at += data[at]) {
            if (data[at + 1] == 4)
                protocol = data[at + 7];
            if (data[at + 1] == 0x21)
                report_length = (u16)(data[at + 7] | data[at + 8] << 8);
        }
        control(address, 0x00, 9, 1, 0, 0);               /* SET_CONFIGURATION 1 */
        control(address, 0x21, 10, 0, 0, 0);               /* SET_IDLE: report changes */
        ports[p].address = address;
        ports[p].protocol = protocol;
        ports[p].report_length = report_length;
        ports[p].toggle = 0;
        printf("%s{\"port\": %u, \"address\": %u, \"vendor\": %u, \"product\": %u, "
               "\"protocol\": %u, \"report_length\": %u, ", first ? "" : ", ", p + 1, address,
               vendor, product, protocol, report_length);
        print_name(address, product_string);
        printf("}");
        first = 0;
    }
    printf("]}\n");
}

static void poll(const char *a)
{
    u64 port, ms;
    if (!parse_u64(&a, &port) || !parse_u64(&a, &ms) || port < 1 || port > 2 ||
        !ports[port - 1].address) {
        printf("{\"error\": \"usb poll PORT MS (after usb scan)\"}\n");
        return;
    }
    unsigned p = (unsigned)port - 1, count = 0;
    printf("{\"reports\": [");
    u64 end = now_us() + ms * 1000;
    while (now_us() < end && count < 32) {
        tds[0] = (struct td){LINK_TERMINATE, TD_ACTIVE | (3u << 27),
                             token(PID_IN, ports[p].address, 1, ports[p].toggle, 8),
                             (u32)(u64)data};
        barrier();
        queue.element = (u32)(u64)&tds[0];
        while (now_us() < end && (tds[0].status & TD_ACTIVE))
            barrier();
        queue.element = LINK_TERMINATE;
        if (tds[0].status & (TD_ACTIVE | TD_ERRORS))
            continue;
        ports[p].toggle ^= 1;
        unsigned n = actual(0);
        printf("%s[", count++ ? ", " : "");
        for (unsigned i = 0; i < n; i++)
            printf("%s%u", i ? ", " : "", data[i]);
        printf("]");
    }
    printf("]}\n");
}

void cmd_usb(const char *args)
{
    const char *a = skip_spaces(args);
    if (!strncmp(a, "scan", 4))
        scan();
    else if (!strncmp(a, "poll", 4))
        poll(a + 4);
    else
        printf("{\"error\": \"usb scan | usb poll PORT MS\"}\n");
}
