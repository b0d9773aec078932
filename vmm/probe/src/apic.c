/* Local APIC, IOAPIC and AP start-up (INIT, then SIPI to the trampoline). */
#include "probe.h"

#define LAPIC_BASE 0xfee00000UL
#define LAPIC_TPR 0x80
#define LAPIC_SVR 0xf0
#define LAPIC_ICR_LOW 0x300
#define LAPIC_ICR_HIGH 0x310
#define IOAPIC_BASE 0xfec00000UL
#define TRAMPOLINE 0x8000UL

static u64 ioapic_base(void) { return acpi.ioapic_addr ? acpi.ioapic_addr : IOAPIC_BASE; }

void lapic_enable(void)
{
    mmio_write32(LAPIC_BASE + LAPIC_TPR, 0);
    mmio_write32(LAPIC_BASE + LAPIC_SVR, 0x1ff);   /* enabled, spurious vector 0xff */
}

static void ioapic_write(unsigned reg, u32 value)
{
    mmio_write32(ioapic_base(), reg);
    mmio_write32(ioapic_base() + 0x10, value);
}

void ioapic_route(unsigned pin, unsigned vector, unsigned apic_id, int level, int active_low)
{
    ioapic_write(0x11 + 2 * pin, apic_id << 24);
    ioapic_write(0x10 + 2 * pin, vector | (active_low ? 1 << 13 : 0) | (level ? 1 << 15 : 0));
}

void ioapic_mask(unsigned pin)
{
    ioapic_write(0x10 + 2 * pin, 1 << 16);
}

/* Level-triggered INTx on `pin` as `vector` (0xe0 and up): the interrupt stub masks
 * the pin when it fires; intx_done() unmasks it once the device is acknowledged. */
void intx_route(unsigned pin, unsigned vector)
{
    intx_pin[vector - 0xe0] = (u8)pin;
    ioapic_route(pin, vector, 0, 1, 0);
}

void intx_done(unsigned vector)
{
    ioapic_route(intx_pin[vector - 0xe0], vector, 0, 1, 0);
}

/* A periodic local APIC timer (KVM's APIC timer counts nanoseconds at divide-by-1). */

void lapic_timer_start(unsigned vector, u32 period_ns)
{
    mmio_write32(LAPIC_BASE + 0x3e0, 0xb);            /* divide by 1 */
    mmio_write32(LAPIC_BASE + 0x320, vector | (1 << 17));  /* periodic */
    mmio_write32(LAPIC_BASE + 0x380, period_ns);
}

static void send_ipi(u32 low)
{
    mmio_write32(LAPIC_BASE + LAPIC_ICR_HIGH, 0);
    mmio_write32(LAPIC_BASE + LAPIC_ICR_LOW, low);
}

void start_aps(unsigned expected)
{
    size_t size = trampoline_end - trampoline_start;
    memcpy((void *)TRAMPOLINE, trampoline_start, size);
    /* the trampoline's lgdt operand: the GDT's limit and 32-bit base */
    memcpy((void *)(TRAMPOLINE + (trampoline_gdtr - trampoline_start)), gdt_ptr, 6);
    send_ipi(0x000c4500);                       /* INIT to all but self */
    delay_us(10000);
    for (int i = 0; i < 2; i++) {
        send_ipi(0x000c4600 | (TRAMPOLINE >> 12)); /* SIPI */
        delay_us(200);
    }
    u64 deadline = now_us() + 1000000;
    while (cpus_online < expected && now_us() < deadline)
        ;
}
