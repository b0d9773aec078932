/* The i8042 and its PS/2 devices, polled (the probe masks their IRQs):
 *   ps2 read MS        collects every byte the controller hands over for MS ms:
 *                      {"kbd": [...], "aux": [...]} (AUX_OBF tells them apart)
 *   ps2 kbd BYTE       sends BYTE to the keyboard (0xff reset, 0xf2 identify, ...)
 *   ps2 aux BYTE       sends BYTE to the mouse through command 0xd4
 *   ps2 cmd BYTE       writes a controller command (0xa8 enables the AUX port, ...)
 *   ps2 config BYTE    writes the configuration byte (command 0x60)
 * The writes answer {"ps2": "sent"}; the device's answer is read with ps2 read. */
#include "probe.h"

#define DATA 0x60
#define STATUS 0x64
#define OBF 0x01
#define IBF 0x02
#define AUX_OBF 0x20

static void wait_input_empty(void)
{
    for (int i = 0; i < 100000 && (inb(STATUS) & IBF); i++)
        ;
}

static void print_list(const char *name, const u8 *bytes, unsigned n)
{
    printf("\"%s\": [", name);
    for (unsigned i = 0; i < n; i++)
        printf("%s%u", i ? ", " : "", bytes[i]);
    printf("]");
}

void cmd_ps2(const char *args)
{
    const char *a = skip_spaces(args);
    u64 value;
    if (!strncmp(a, "read", 4)) {
        a += 4;
        if (!parse_u64(&a, &value))
            value = 100;
        static u8 kbd[256], aux[256];
        unsigned nk = 0, na = 0;
        u64 end = now_us() + value * 1000;
        while (now_us() < end) {
            u8 status = inb(STATUS);
            if (!(status & OBF))
                continue;
            u8 byte = inb(DATA);
            if (status & AUX_OBF) {
                if (na < sizeof(aux)) aux[na++] = byte;
            } else if (nk < sizeof(kbd)) {
                kbd[nk++] = byte;
            }
        }
        printf("{");
        print_list("kbd", kbd, nk);
        printf(", ");
        print_list("aux", aux, na);
        printf("}\n");
        return;
    }
    int which = !strncmp(a, "kbd", 3) ? 0 : !strncmp(a, "aux", 3) ? 1 :
                !strncmp(a, "cmd", 3) ? 2 : !strncmp(a, "config", 6) ? 3 : -1;
    a += which == 3 ? 6 : 3;
    if (which < 0 || !parse_u64(&a, &value)) {
        printf("{\"error\": \"ps2 read MS | kbd|aux|cmd|config BYTE\"}\n");
        return;
    }
    wait_input_empty();
    if (which == 0) {
        outb(DATA, (u8)value);
    } else if (which == 1) {
        outb(STATUS, 0xd4);
        wait_input_empty();
        outb(DATA, (u8)value);
    } else if (which == 2) {
        outb(STATUS, (u8)value);
    } else {
        outb(STATUS, 0x60);
        wait_input_empty();
        outb(DATA, (u8)value);
    }
    printf("{\"ps2\": \"sent\"}\n");
}
