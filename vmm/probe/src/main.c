/*
 * The probe guest's command loop. The host sends one command per line on
 * COM1; each gets exactly one JSON line back. Asynchronous events are JSON
 * lines with an "event" member. See vmm/probe/__init__.py for the list.
 */
#include "probe.h"
#include "virtio.h"

#define HVM_START_MAGIC 0x336ec578

struct hvm_start_info {
    u32 magic, version, flags, nr_modules;
    u64 modlist_paddr, cmdline_paddr, rsdp_paddr, memmap_paddr;
    u32 memmap_entries, reserved;
};

struct hvm_memmap_entry {
    u64 addr, size;
    u32 type, reserved;
};

#define MAX_RAM_REGIONS 16
static struct { u64 start, end; } ram[MAX_RAM_REGIONS];
static int nram;
u64 ram_bytes;                      /* all RAM in the memory map */
static const char *kernel_cmdline = "";
static volatile u32 ap_alive[MAX_CPUS];

#define TOUCH_START (16UL << 20)   /* well above the probe's image, stacks and tables */

static void read_start_info(u32 paddr)
{
    struct hvm_start_info *si = (void *)(u64)paddr;
    if (!paddr || si->magic != HVM_START_MAGIC)
        return;
    if (si->cmdline_paddr)
        kernel_cmdline = (const char *)si->cmdline_paddr;
    if (si->version >= 1 && si->memmap_paddr) {
        struct hvm_memmap_entry *e = (void *)si->memmap_paddr;
        for (u32 i = 0; i < si->memmap_entries; i++) {
            if (e[i].type != 1)
                continue;
            ram_bytes += e[i].size;
            if (nram < MAX_RAM_REGIONS) {
                ram[nram].start = e[i].addr;
                ram[nram].end = e[i].addr + e[i].size;
                nram++;
            }
        }
    }
}

static u64 pattern(u64 addr, u64 seed) { return (addr * 0x9e3779b97f4a7c15UL) ^ seed; }

/* The index-th 4 KiB page of RAM from TOUCH_START up, across the RAM regions. */
u64 pool_page(u64 index)
{
    for (int r = 0; r < nram; r++) {
        u64 start = (ram[r].start < TOUCH_START ? TOUCH_START : ram[r].start + 0xfff) & ~0xfffUL;
        u64 end = ram[r].end & ~0xfffUL;
        if (end <= start)
            continue;
        u64 pages = (end - start) >> 12;
        if (index < pages)
            return start + (index << 12);
        index -= pages;
    }
    return 0;
}

u64 pool_pages(void)
{
    u64 total = 0;
    for (int r = 0; r < nram; r++) {
        u64 start = (ram[r].start < TOUCH_START ? TOUCH_START : ram[r].start + 0xfff) & ~0xfffUL;
        u64 end = ram[r].end & ~0xfffUL;
        if (end > start)
            total += (end - start) >> 12;
    }
    return total;
}

/* Writes (if `write`) then verifies `mib` MiB of the pool, after the ballooned pages. */
static void touch(const char *args, int write)
{
    u64 mib = 0, seed = 1;
    if (!parse_u64(&args, &mib)) {
        printf("{\"error\": \"usage: %s MIB [SEED]\"}\n", write ? "touch" : "check");
        return;
    }
    parse_u64(&args, &seed);
    u64 first = balloon_inflated(), pages = mib << 8;
    if (first + pages > pool_pages()) {
        printf("{\"error\": \"only %lu MiB of RAM free above 16 MiB\"}\n",
               (pool_pages() - first) >> 8);
        return;
    }
    u64 errors = 0, first_error = 0;
    for (int pass = write ? 0 : 1; pass < 2; pass++) {
        for (u64 p = 0; p < pages; p++) {
            u64 base = pool_page(first + p);
            for (u64 a = base; a < base + 4096; a += 8) {
                if (pass == 0) {
                    *(volatile u64 *)a = pattern(a, seed);
                } else if (*(volatile u64 *)a != pattern(a, seed)) {
                    if (!errors++)
                        first_error = a;
                }
            }
        }
    }
    printf("{\"mib\": %lu, \"errors\": %lu, \"first_error\": \"0x%lx\"}\n", mib, errors, first_error);
}

/* churn MIB ROUNDS: rewrite MIB MiB ROUNDS times, the pattern of seed 1, 2, ...
   ROUNDS (so `check MIB ROUNDS` verifies the last), keeping memory dirty while a
   migration runs. */
static void churn(const char *args)
{
    u64 mib = 0, rounds = 0;
    if (!parse_u64(&args, &mib) || !parse_u64(&args, &rounds)) {
        printf("{\"error\": \"usage: churn MIB ROUNDS\"}\n");
        return;
    }
    u64 first = balloon_inflated(), pages = mib << 8;
    if (first + pages > pool_pages()) {
        printf("{\"error\": \"only %lu MiB of RAM free above 16 MiB\"}\n",
               (pool_pages() - first) >> 8);
        return;
    }
    for (u64 seed = 1; seed <= rounds; seed++)
        for (u64 p = 0; p < pages; p++) {
            u64 base = pool_page(first + p);
            for (u64 a = base; a < base + 4096; a += 8)
                *(volatile u64 *)a = pattern(a, seed);
        }
    printf("{\"mib\": %lu, \"seed\": %lu}\n", mib, rounds);
}

/* sum MIB: a checksum of MIB MiB from 16 MiB (each word times its address, added),
   to compare memory before and after a migration or a snapshot. */
static void checksum(const char *args)
{
    u64 mib = 0;
    if (!parse_u64(&args, &mib)) {
        printf("{\"error\": \"usage: sum MIB\"}\n");
        return;
    }
    u64 first = balloon_inflated(), pages = mib << 8, sum = 0;
    if (first + pages > pool_pages()) {
        printf("{\"error\": \"only %lu MiB of RAM free above 16 MiB\"}\n",
               (pool_pages() - first) >> 8);
        return;
    }
    for (u64 p = 0; p < pages; p++) {
        u64 base = pool_page(first + p);
        for (u64 a = base; a < base + 4096; a += 8)
            sum += *(volatile u64 *)a * (a | 1);
    }
    printf("{\"mib\": %lu, \"sum\": \"0x%lx\"}\n", mib, sum);
}

static void cmd_info(void)
{
    printf("{\"memory_mib\": %lu, \"cpus\": %u, \"madt_cpus\": %u, \"ram_regions\": [",
           ram_bytes >> 20, cpus_online, acpi.madt_cpus);
    for (int i = 0; i < nram; i++)
        printf("%s[\"0x%lx\", \"0x%lx\"]", i ? ", " : "", ram[i].start, ram[i].end);
    printf("], \"cmdline\": \"%s\"}\n", kernel_cmdline);
}

static void cmd_exit(const char *args)
{
    u64 code = 0, port = DEBUG_EXIT_PORT;
    parse_u64(&args, &code);
    parse_u64(&args, &port);
    outb((u16)port, (u8)code);
    printf("{\"error\": \"no isa-debug-exit at port 0x%lx\"}\n", port);
}

/* inb/inw/inl PORT, outb/outw/outl PORT VALUE */
static void cmd_port(const char *name, const char *args)
{
    u64 port, value = 0;
    if (!parse_u64(&args, &port)) {
        printf("{\"error\": \"usage: %s PORT%s\"}\n", name, name[0] == 'o' ? " VALUE" : "");
        return;
    }
    char width = name[strlen(name) - 1];
    if (name[0] == 'o') {
        parse_u64(&args, &value);
        if (width == 'b') outb(port, value); else if (width == 'w') outw(port, value); else outl(port, value);
        printf("{\"ok\": true}\n");
        return;
    }
    value = width == 'b' ? inb(port) : width == 'w' ? inw(port) : inl(port);
    printf("{\"value\": \"0x%lx\"}\n", value);
}

/* readb/readw/readl/readq ADDR, writeb/writew/writel/writeq ADDR VALUE */
static void cmd_mmio(const char *name, const char *args)
{
    u64 addr, value = 0;
    if (!parse_u64(&args, &addr)) {
        printf("{\"error\": \"usage: %s ADDR%s\"}\n", name, name[0] == 'w' ? " VALUE" : "");
        return;
    }
    char width = name[strlen(name) - 1];
    if (name[0] == 'w') {
        parse_u64(&args, &value);
        if (width == 'b') mmio_write8(addr, value);
        else if (width == 'w') mmio_write16(addr, value);
        else if (width == 'l') mmio_write32(addr, value);
        else mmio_write64(addr, value);
        printf("{\"ok\": true}\n");
        return;
    }
    value = width == 'b' ? mmio_read8(addr) : width == 'w' ? mmio_read16(addr)
          : width == 'l' ? mmio_read32(addr) : mmio_read64(addr);
    printf("{\"value\": \"0x%lx\"}\n", value);
}

static void cmd_irqs(void)
{
    printf("{\"generation\": %u, \"counts\": {", irq_generation);
    int first = 1;
    for (int v = 2; v < 256; v++)      /* NMIs (2) and interrupts */
        if (irq_count[v] && (v == 2 || v >= 32)) {
            printf("%s\"%d\": %u", first ? "" : ", ", v, irq_count[v]);
            first = 0;
        }
    printf("}}\n");
}

static int is(const char *line, const char *cmd, const char **args)
{
    size_t n = strlen(cmd);
    if (strncmp(line, cmd, n) || (line[n] && line[n] != ' '))
        return 0;
    *args = line + n;
    return 1;
}

static void dispatch(const char *line)
{
    const char *a;
    static const char *ports[] = {"inb", "inw", "inl", "outb", "outw", "outl"};
    static const char *mmio[] = {"readb", "readw", "readl", "readq",
                                 "writeb", "writew", "writel", "writeq"};
    if (is(line, "info", &a)) { cmd_info(); return; }
    if (is(line, "pci", &a)) { cmd_pci(a); return; }
    if (is(line, "acpi", &a)) { cmd_acpi(a); return; }
    if (is(line, "touch", &a)) { touch(a, 1); return; }
    if (is(line, "check", &a)) { touch(a, 0); return; }
    if (is(line, "churn", &a)) { churn(a); return; }
    if (is(line, "sum", &a)) { checksum(a); return; }
    if (is(line, "exit", &a)) { cmd_exit(a); return; }
    if (is(line, "irqs", &a)) { cmd_irqs(); return; }
    if (is(line, "virtio", &a)) { cmd_virtio(a); return; }
    if (is(line, "balloon", &a)) { cmd_balloon(a); return; }
    if (is(line, "stats", &a)) { cmd_stats(a); return; }
    if (is(line, "report", &a)) { cmd_report(a); return; }
    if (is(line, "net", &a)) { cmd_net(a); return; }
    if (is(line, "netsend", &a)) { cmd_netsend(a); return; }
    if (is(line, "netrecv", &a)) { cmd_netrecv(a); return; }
    if (is(line, "netrxmode", &a)) { cmd_netrxmode(a); return; }
    if (is(line, "netoffload", &a)) { cmd_netoffload(a); return; }
    if (is(line, "netmq", &a)) { cmd_netmq(a); return; }
    if (is(line, "nettcp", &a)) { cmd_nettcp(a); return; }
    if (is(line, "netblast", &a)) { cmd_netblast(a); return; }
    if (is(line, "netsink", &a)) { cmd_netsink(a); return; }
    if (is(line, "netcplus", &a)) { cmd_netcplus(a); return; }
    if (is(line, "netmcast", &a)) { cmd_netmcast(a); return; }
    if (is(line, "hotplug", &a)) { cmd_hotplug(a); return; }
    if (is(line, "legacy", &a)) { cmd_legacy(a); return; }
    if (is(line, "vga", &a)) { cmd_vga(a); return; }
    if (is(line, "ps2", &a)) { cmd_ps2(a); return; }
    if (is(line, "usb", &a)) { cmd_usb(a); return; }
    if (is(line, "dhcp", &a)) { cmd_dhcp(a); return; }
    if (is(line, "rng", &a)) { cmd_rng(a); return; }
    if (is(line, "blk", &a)) { cmd_blk(a); return; }
    if (is(line, "ide", &a)) { cmd_ide(a); return; }
    if (is(line, "atapi", &a)) { cmd_atapi(a); return; }
    if (is(line, "console", &a)) { cmd_console(a); return; }
    if (is(line, "udpecho", &a)) { cmd_udpecho(a); return; }
    if (is(line, "tcp", &a)) { cmd_tcp(a); return; }
    if (is(line, "tftp", &a)) { cmd_tftp(a); return; }
    if (is(line, "ip6", &a)) { cmd_ip6(a); return; }
    if (is(line, "fuzz", &a)) { cmd_fuzz(a); return; }
    if (is(line, "echo", &a)) { printf("{\"echo\": \"%s\"}\n", skip_spaces(a)); return; }
    if (is(line, "crash", &a)) {
        printf("{\"crashing\": true}\n");
        __asm__ volatile("wbinvd");   /* the #GP handler runs int3 at CPL0 */
        printf("{\"error\": \"still alive\"}\n");
        return;
    }
    for (unsigned i = 0; i < sizeof(ports) / sizeof(*ports); i++)
        if (is(line, ports[i], &a)) { cmd_port(ports[i], a); return; }
    for (unsigned i = 0; i < sizeof(mmio) / sizeof(*mmio); i++)
        if (is(line, mmio[i], &a)) { cmd_mmio(mmio[i], a); return; }
    printf("{\"error\": \"unknown command\"}\n");
}

/* Whenever the command loop wakes: the drivers look at their devices. */
static void devices_poll(void)
{
    balloon_poll();
    net_poll();
    hotplug_poll();
}

void probe_main(unsigned cpu, unsigned start_info)
{
    (void)cpu;
    static char line[256];
    serial_init();
    read_start_info(start_info);
    struct hvm_start_info *si = (void *)(u64)start_info;
    acpi_init(start_info && si->magic == HVM_START_MAGIC ? si->rsdp_paddr : 0);
    lapic_enable();
    serial_route_irq();
    if (acpi.madt_cpus > 1)
        start_aps(acpi.madt_cpus);
    /* A 10 ms tick: nothing that waits for an interrupt waits forever (a device
     * may have fewer MSI-X vectors than queues, or a NIC be polled). */
    lapic_timer_start(TIMER_VECTOR, 10 * 1000 * 1000);
    balloon_init();
    net_init();
    hotplug_init();
    idle_hook = devices_poll;
    printf("{\"event\": \"ready\", \"cpus\": %u, \"memory_mib\": %lu}\n", cpus_online,
           ram_bytes >> 20);
    for (;;) {
        serial_readline(line, sizeof(line));
        dispatch(line);
    }
}

void ap_main(unsigned cpu)
{
    lapic_enable();
    if (cpu < MAX_CPUS)
        ap_alive[cpu] = 1;
    for (;;)
        wait_for_irq(irq_generation);
}
