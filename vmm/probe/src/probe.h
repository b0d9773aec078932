/* The probe guest: shared declarations. Everything here runs at CPL3. */
#ifndef PROBE_H
#define PROBE_H

typedef unsigned char u8;
typedef unsigned short u16;
typedef unsigned int u32;
typedef unsigned long u64;
typedef long i64;
typedef unsigned long size_t;

#define MAX_CPUS 16
#define SERIAL_VECTOR 0x30
#define TIMER_VECTOR 0x60
#define DEBUG_EXIT_PORT 0x501

/* start.S */
extern volatile u32 cpus_online;
extern volatile u32 irq_generation;
extern volatile u32 irq_count[256];
extern u8 trampoline_start[], trampoline_end[], trampoline_gdtr[];
extern u8 gdt_ptr[];

/* port and memory-mapped I/O */
static inline void outb(u16 port, u8 v) { __asm__ volatile("outb %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outw(u16 port, u16 v) { __asm__ volatile("outw %0, %1" :: "a"(v), "Nd"(port)); }
static inline void outl(u16 port, u32 v) { __asm__ volatile("outl %0, %1" :: "a"(v), "Nd"(port)); }
static inline u8 inb(u16 port) { u8 v; __asm__ volatile("inb %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u16 inw(u16 port) { u16 v; __asm__ volatile("inw %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 inl(u16 port) { u32 v; __asm__ volatile("inl %1, %0" : "=a"(v) : "Nd"(port)); return v; }
static inline u32 mmio_read32(u64 addr) { return *(volatile u32 *)addr; }
static inline void mmio_write32(u64 addr, u32 v) { *(volatile u32 *)addr = v; }
static inline u8 mmio_read8(u64 addr) { return *(volatile u8 *)addr; }
static inline void mmio_write8(u64 addr, u8 v) { *(volatile u8 *)addr = v; }
static inline u16 mmio_read16(u64 addr) { return *(volatile u16 *)addr; }
static inline void mmio_write16(u64 addr, u16 v) { *(volatile u16 *)addr = v; }
static inline u64 mmio_read64(u64 addr) { return *(volatile u64 *)addr; }
static inline void mmio_write64(u64 addr, u64 v) { *(volatile u64 *)addr = v; }
static inline void barrier(void) { __asm__ volatile("" ::: "memory"); }

/* Sleep until an interrupt arrives, unless one came since `generation` was read. */
static inline void wait_for_irq(u32 generation)
{
    __asm__ volatile("hlt" :: "a"(generation) : "memory");
}

/* lib.c */
void *memset(void *d, int c, size_t n);
void *memcpy(void *d, const void *s, size_t n);
int memcmp(const void *a, const void *b, size_t n);
size_t strlen(const char *s);
int strcmp(const char *a, const char *b);
int strncmp(const char *a, const char *b, size_t n);
int parse_u64(const char **s, u64 *out);
const char *skip_spaces(const char *s);
int printf(const char *fmt, ...);
void putchar(int c);

/* serial.c */
void serial_init(void);
void serial_route_irq(void);
void serial_write(const char *s, size_t n);
size_t serial_readline(char *buf, size_t size);

/* apic.c */
void lapic_enable(void);
void ioapic_route(unsigned pin, unsigned vector, unsigned apic_id, int level, int active_low);
void ioapic_mask(unsigned pin);
void intx_route(unsigned pin, unsigned vector);
void intx_done(unsigned vector);
extern u8 intx_pin[32];
#define INTX_VECTOR 0xe0           /* level-triggered: masked until the driver is done */
void start_aps(unsigned expected);
void lapic_timer_start(unsigned vector, u32 period_ns);

/* acpi.c */
struct acpi_info {
    u64 rsdp;
    int ntables;
    char tables[16][5];
    unsigned madt_cpus;
    u64 lapic_addr, ioapic_addr;
    unsigned sci, pm1a_evt, pm1a_cnt, pm_tmr, gpe0, gpe0_len;
    unsigned reset_port, reset_value;
};
extern struct acpi_info acpi;
void acpi_init(u64 rsdp_hint);
void cmd_acpi(const char *args);

/* time.c */
u64 now_us(void);
void delay_us(u64 us);

/* main.c: the page pool (RAM from 16 MiB up) that touch and the balloon share */
u64 pool_page(u64 index);
u64 pool_pages(void);
extern u64 ram_bytes;

/* balloon.c */
void balloon_init(void);
void balloon_poll(void);
u32 balloon_inflated(void);
void cmd_balloon(const char *args);
void cmd_stats(const char *args);
/* net.c */
void net_init(void);
void net_poll(void);
void cmd_net(const char *args);
void cmd_netsend(const char *args);
void cmd_netrecv(const char *args);
void cmd_netrxmode(const char *args);
void cmd_netoffload(const char *args);
void cmd_netmq(const char *args);
void cmd_nettcp(const char *args);
void cmd_netblast(const char *args);
void cmd_netsink(const char *args);
void cmd_netcplus(const char *args);
void cmd_netmcast(const char *args);
void net_forget(unsigned slot);
/* hotplug.c */
void hotplug_init(void);
void hotplug_poll(void);
void cmd_hotplug(const char *args);
/* legacy.c */
void cmd_legacy(const char *args);
void cmd_vga(const char *args);
void cmd_ps2(const char *args);
void cmd_usb(const char *args);
/* console.c */
void cmd_console(const char *args);
/* blk.c */
void cmd_blk(const char *args);
/* ide.c */
void cmd_ide(const char *args);
void cmd_atapi(const char *args);
/* rng.c */
void cmd_rng(const char *args);
/* dhcp.c */
void cmd_dhcp(const char *args);
void cmd_udpecho(const char *args);
void cmd_tcp(const char *args);
void cmd_tftp(const char *args);
void cmd_ip6(const char *args);
void cmd_report(const char *args);

/* serial.c: called each time the command loop wakes up */
extern void (*idle_hook)(void);

/* pci.c */
u32 pci_read32(unsigned bus, unsigned slot, unsigned fn, unsigned off);
void pci_write32(unsigned bus, unsigned slot, unsigned fn, unsigned off, u32 v);
u64 pci_bar_size(unsigned slot, unsigned fn, unsigned index, u32 low, int is64);
void cmd_fuzz(const char *args);
void cmd_pci(const char *args);

#endif
