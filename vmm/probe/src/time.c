/* Time from the ACPI PM timer (3.579545 MHz, 24 bits), extended in software. */
#include "probe.h"

static u64 ticks;
static u32 last;

u64 now_us(void)
{
    if (!acpi.pm_tmr)
        return 0;
    u32 t = inl(acpi.pm_tmr) & 0xffffff;
    ticks += (t - last) & 0xffffff;
    last = t;
    return ticks * 1000000 / 3579545;
}

void delay_us(u64 us)
{
    u64 end = now_us() + us;
    if (!acpi.pm_tmr) {
        for (u64 i = 0; i < us; i++)
            outb(0x80, 0);       /* each write exits to the VMM: about a microsecond */
        return;
    }
    while (now_us() < end)
        ;
}
