/* Finds the ACPI tables (RSDP from PVH start_info or the BIOS area scan) and
 * reads what the probe reports: MADT CPUs and IOAPIC, FADT registers. */
#include "probe.h"

struct acpi_info acpi;

static int checksum_ok(const u8 *p, size_t n)
{
    u8 sum = 0;
    while (n--) sum += *p++;
    return sum == 0;
}

static u64 find_rsdp(u64 hint)
{
    if (hint && !memcmp((void *)hint, "RSD PTR ", 8))
        return hint;
    for (u64 a = 0xe0000; a < 0x100000; a += 16)
        if (!memcmp((void *)a, "RSD PTR ", 8) && checksum_ok((u8 *)a, 20))
            return a;
    return 0;
}

static u32 rd32(u64 a) { return *(u32 *)a; }
static u16 rd16(u64 a) { return *(u16 *)a; }

static void parse_madt(u64 t)
{
    u32 len = rd32(t + 4);
    acpi.lapic_addr = rd32(t + 36);
    for (u64 p = t + 44; p + 2 <= t + len; p += *(u8 *)(p + 1)) {
        u8 type = *(u8 *)p, elen = *(u8 *)(p + 1);
        if (elen < 2)
            break;
        if (type == 0 && (rd32(p + 4) & 1))
            acpi.madt_cpus++;
        else if (type == 1)
            acpi.ioapic_addr = rd32(p + 4);
    }
}

static void parse_fadt(u64 t)
{
    acpi.sci = rd16(t + 46);
    acpi.pm1a_evt = rd32(t + 56);
    acpi.pm1a_cnt = rd32(t + 64);
    acpi.pm_tmr = rd32(t + 76);
    acpi.gpe0 = rd32(t + 80);
    acpi.gpe0_len = *(u8 *)(t + 92);
    if (rd32(t + 4) >= 129) {
        acpi.reset_port = (u32)*(u64 *)(t + 120);
        acpi.reset_value = *(u8 *)(t + 128);
    }
}

void acpi_init(u64 rsdp_hint)
{
    u64 rsdp = find_rsdp(rsdp_hint);
    acpi.rsdp = rsdp;
    if (!rsdp)
        return;
    u8 revision = *(u8 *)(rsdp + 15);
    u64 root = revision >= 2 ? *(u64 *)(rsdp + 24) : rd32(rsdp + 16);
    int entry = revision >= 2 ? 8 : 4;
    u32 len = rd32(root + 4);
    for (u64 p = root + 36; p + entry <= root + len && acpi.ntables < 16; p += entry) {
        u64 t = entry == 8 ? *(u64 *)p : rd32(p);
        memcpy(acpi.tables[acpi.ntables], (void *)t, 4);
        acpi.tables[acpi.ntables++][4] = 0;
        if (!memcmp((void *)t, "APIC", 4))
            parse_madt(t);
        else if (!memcmp((void *)t, "FACP", 4))
            parse_fadt(t);
    }
}

void cmd_acpi(const char *args)
{
    (void)args;
    printf("{\"rsdp\": \"0x%lx\", \"tables\": [", acpi.rsdp);
    for (int i = 0; i < acpi.ntables; i++)
        printf("%s\"%s\"", i ? ", " : "", acpi.tables[i]);
    printf("], \"madt\": {\"cpus\": %u, \"lapic\": \"0x%lx\", \"ioapic\": \"0x%lx\"}, ",
           acpi.madt_cpus, acpi.lapic_addr, acpi.ioapic_addr);
    printf("\"fadt\": {\"sci\": %u, \"pm1a_evt\": \"0x%x\", \"pm1a_cnt\": \"0x%x\", "
           "\"pm_tmr\": \"0x%x\", \"gpe0\": \"0x%x\", \"gpe0_len\": %u, "
           "\"reset_port\": \"0x%x\", \"reset_value\": \"0x%x\"}}\n",
           acpi.sci, acpi.pm1a_evt, acpi.pm1a_cnt, acpi.pm_tmr, acpi.gpe0, acpi.gpe0_len,
           acpi.reset_port, acpi.reset_value);
}
