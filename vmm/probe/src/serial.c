/* COM1 driver: polled output, interrupt-driven input (IRQ 4 through the IOAPIC). */
#include "probe.h"

#define COM1 0x3f8
#define RBR 0
#define THR 0
#define IER 1
#define FCR 2
#define LCR 3
#define MCR 4
#define LSR 5
#define LSR_DR 0x01
#define LSR_THRE 0x20

void serial_init(void)
{
    outb(COM1 + IER, 0);
    outb(COM1 + LCR, 0x80);     /* DLAB: 115200 baud */
    outb(COM1 + 0, 1);
    outb(COM1 + 1, 0);
    outb(COM1 + LCR, 0x03);     /* 8N1 */
    outb(COM1 + FCR, 0x07);     /* FIFOs on and cleared */
    outb(COM1 + MCR, 0x0b);     /* DTR, RTS, OUT2 */
}

void serial_route_irq(void)
{
    ioapic_route(4, SERIAL_VECTOR, 0, 0, 0);
    outb(COM1 + IER, 0x01);     /* received-data interrupt */
}

void serial_write(const char *s, size_t n)
{
    while (n--) {
        while (!(inb(COM1 + LSR) & LSR_THRE))
            ;
        outb(COM1 + THR, (u8)*s++);
    }
}

void (*idle_hook)(void);

/* One line without its terminator; CR, LF or CRLF end it. */
size_t serial_readline(char *buf, size_t size)
{
    size_t n = 0;
    for (;;) {
        u32 generation = irq_generation;
        if (idle_hook)
            idle_hook();
        while (inb(COM1 + LSR) & LSR_DR) {
            char c = (char)inb(COM1 + RBR);
            if (c == '\r' || c == '\n') {
                if (n == 0)
                    continue;      /* the LF of a CRLF, or a blank line */
                buf[n] = 0;
                return n;
            }
            if (n + 1 < size)
                buf[n++] = c;
        }
        wait_for_irq(generation);
    }
}
