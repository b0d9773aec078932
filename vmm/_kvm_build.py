"""cffi API-mode builder for the KVM bindings.

Compiled against the system's <linux/kvm.h>: every struct below is declared
with ``...;`` so the C compiler, not this file, decides offsets and sizes.
The offsets of the kvm_run fields the vCPU loop reads are exported as
constants, so the hot path can use ``struct.unpack_from`` on the mmap.
"""

from cffi import FFI

CDEF = r"""
typedef unsigned char __u8;
typedef unsigned short __u16;
typedef unsigned int __u32;
typedef int __s32;
typedef unsigned long long __u64;
typedef unsigned char uint8_t;
typedef unsigned long long uint64_t;

struct kvm_userspace_memory_region {
    __u32 slot; __u32 flags; __u64 guest_phys_addr; __u64 memory_size;
    __u64 userspace_addr; ...;
};
struct kvm_regs {
    __u64 rax, rbx, rcx, rdx, rsi, rdi, rsp, rbp;
    __u64 r8, r9, r10, r11, r12, r13, r14, r15;
    __u64 rip, rflags; ...;
};
struct kvm_segment {
    __u64 base; __u32 limit; __u16 selector; __u8 type;
    __u8 present, dpl, db, s, l, g, avl; __u8 unusable; ...;
};
struct kvm_dtable { __u64 base; __u16 limit; ...; };
struct kvm_sregs {
    struct kvm_segment cs, ds, es, fs, gs, ss, tr, ldt;
    struct kvm_dtable gdt, idt;
    __u64 cr0, cr2, cr3, cr4, cr8, efer, apic_base;
    __u64 interrupt_bitmap[4]; ...;
};
struct kvm_fpu {
    __u8 fpr[8][16]; __u16 fcw; __u16 fsw; __u8 ftwx; __u16 last_opcode;
    __u64 last_ip; __u64 last_dp; __u8 xmm[16][16]; __u32 mxcsr; ...;
};
struct kvm_debugregs { __u64 db[4]; __u64 dr6; __u64 dr7; __u64 flags; ...; };
struct kvm_guest_debug_arch { __u64 debugreg[8]; };
struct kvm_x86_mce { __u64 status; __u64 addr; __u64 misc; __u64 mcg_status; __u8 bank; ...; };
struct kvm_guest_debug { __u32 control; struct kvm_guest_debug_arch arch; ...; };
struct kvm_vcpu_events { __u32 flags; ...; };
struct kvm_xcrs { __u32 nr_xcrs; __u32 flags; ...; };
struct kvm_clock_data { __u64 clock; __u32 flags; ...; };
struct kvm_xsave { __u32 region[1024]; ...; };
struct kvm_msr_entry { __u32 index; __u64 data; ...; };
struct kvm_msrs { __u32 nmsrs; struct kvm_msr_entry entries[]; ...; };
struct kvm_msr_list { __u32 nmsrs; __u32 indices[]; ...; };
struct kvm_cpuid_entry2 {
    __u32 function; __u32 index; __u32 flags;
    __u32 eax; __u32 ebx; __u32 ecx; __u32 edx; ...;
};
struct kvm_cpuid2 { __u32 nent; struct kvm_cpuid_entry2 entries[]; ...; };
struct kvm_lapic_state { char regs[1024]; };
struct kvm_mp_state { __u32 mp_state; };
struct kvm_pit_config { __u32 flags; ...; };
struct kvm_reinject_control { __u8 pit_reinject; ...; };
struct kvm_pic_state {
    __u8 last_irr; __u8 irr; __u8 imr; __u8 isr; __u8 priority_add; __u8 irq_base;
    __u8 read_reg_select; __u8 poll; __u8 special_mask; __u8 init_state; __u8 auto_eoi;
    __u8 rotate_on_auto_eoi; __u8 special_fully_nested_mode; __u8 init4; __u8 elcr;
    __u8 elcr_mask;
};
/* the chip union is reached through IRQCHIP_CHIP (cffi cannot complete an anonymous
   union whose other members it is not told about) */
struct kvm_irqchip { __u32 chip_id; ...; };
struct kvm_pit_channel_state {
    __u32 count; __u16 latched_count; __u8 count_latched; __u8 status_latched;
    __u8 status; __u8 read_state; __u8 write_state; __u8 write_latch; __u8 rw_mode;
    __u8 mode; __u8 bcd; __u8 gate; ...;
};
struct kvm_pit_state2 { struct kvm_pit_channel_state channels[3]; __u32 flags; ...; };
struct kvm_irq_level { __u32 irq; __u32 level; ...; };
struct kvm_irq_routing_irqchip { __u32 irqchip; __u32 pin; };
struct kvm_irq_routing_msi { __u32 address_lo; __u32 address_hi; __u32 data; __u32 pad; };
struct kvm_irq_routing_entry {
    __u32 gsi; __u32 type; __u32 flags;
    union {
        struct kvm_irq_routing_irqchip irqchip;
        struct kvm_irq_routing_msi msi;
        __u32 pad[8];
    } u;
    ...;
};
struct kvm_irq_routing { __u32 nr; __u32 flags; struct kvm_irq_routing_entry entries[]; ...; };
struct kvm_irqfd { __u32 fd; __u32 gsi; __u32 flags; __u32 resamplefd; ...; };
struct kvm_ioeventfd { __u64 datamatch; __u64 addr; __u32 len; __s32 fd; __u32 flags; ...; };
struct kvm_msi { __u32 address_lo; __u32 address_hi; __u32 data; __u32 flags; __u32 devid; ...; };

#define KVM_GET_API_VERSION ...
#define KVM_CREATE_VM ...
#define KVM_CHECK_EXTENSION ...
#define KVM_GET_VCPU_MMAP_SIZE ...
#define KVM_GET_SUPPORTED_CPUID ...
#define KVM_GET_MSR_INDEX_LIST ...
#define KVM_CREATE_VCPU ...
#define KVM_SET_USER_MEMORY_REGION ...
#define KVM_SET_TSS_ADDR ...
#define KVM_SET_IDENTITY_MAP_ADDR ...
#define KVM_CREATE_IRQCHIP ...
#define KVM_CREATE_PIT2 ...
#define KVM_GET_IRQCHIP ...
#define KVM_SET_IRQCHIP ...
#define KVM_GET_PIT2 ...
#define KVM_SET_PIT2 ...
#define KVM_X86_GET_MCE_CAP_SUPPORTED ...
#define KVM_X86_SETUP_MCE ...
#define KVM_REINJECT_CONTROL ...
#define KVM_IRQ_LINE ...
#define KVM_SET_GSI_ROUTING ...
#define KVM_IRQFD ...
#define KVM_IOEVENTFD ...
#define KVM_SIGNAL_MSI ...
#define KVM_RUN ...
#define KVM_GET_REGS ...
#define KVM_SET_REGS ...
#define KVM_GET_SREGS ...
#define KVM_SET_SREGS ...
#define KVM_GET_FPU ...
#define KVM_GET_DEBUGREGS ...
#define KVM_GET_XSAVE ...
#define KVM_SET_XSAVE ...
#define KVM_SET_FPU ...
#define KVM_GET_MSRS ...
#define KVM_SET_MSRS ...
#define KVM_SET_CPUID2 ...
#define KVM_GET_LAPIC ...
#define KVM_SET_LAPIC ...
#define KVM_GET_VCPU_EVENTS ...
#define KVM_VCPUEVENT_VALID_NMI_PENDING ...
#define KVM_VCPUEVENT_VALID_SIPI_VECTOR ...
#define KVM_SET_VCPU_EVENTS ...
#define KVM_SET_DEBUGREGS ...
#define KVM_SET_GUEST_DEBUG ...
#define KVM_NMI ...
#define KVM_X86_SET_MCE ...
#define KVM_GUESTDBG_ENABLE ...
#define KVM_GUESTDBG_SINGLESTEP ...
#define KVM_GUESTDBG_USE_SW_BP ...
#define KVM_GUESTDBG_USE_HW_BP ...
#define KVM_GUESTDBG_INJECT_BP ...
#define KVM_CAP_SET_GUEST_DEBUG ...
#define KVM_CAP_SET_GUEST_DEBUG2 ...
#define KVM_GUESTDBG_BLOCKIRQ ...
#define KVM_GET_XCRS ...
#define KVM_SET_XCRS ...
#define KVM_GET_CLOCK ...
#define KVM_SET_CLOCK ...
#define KVM_CAP_XCRS ...
#define KVM_CAP_ADJUST_CLOCK ...
#define KVM_MEM_LOG_DIRTY_PAGES ...
#define KVM_GET_MP_STATE ...
#define KVM_SET_MP_STATE ...

#define KVM_API_VERSION ...
#define KVM_CAP_IRQCHIP ...
#define KVM_CAP_USER_MEMORY ...
#define KVM_CAP_SET_TSS_ADDR ...
#define KVM_CAP_EXT_CPUID ...
#define KVM_CAP_PIT2 ...
#define KVM_CAP_MCE ...
#define KVM_CAP_IRQ_ROUTING ...
#define KVM_CAP_IRQFD ...
#define KVM_CAP_IOEVENTFD ...
#define KVM_CAP_SIGNAL_MSI ...
#define KVM_CAP_MP_STATE ...
#define KVM_CAP_IMMEDIATE_EXIT ...
#define KVM_CAP_NR_VCPUS ...
#define KVM_CAP_MAX_VCPUS ...

#define KVM_EXIT_UNKNOWN ...
#define KVM_EXIT_IO ...
#define KVM_EXIT_HLT ...
#define KVM_EXIT_MMIO ...
#define KVM_EXIT_SHUTDOWN ...
#define KVM_EXIT_FAIL_ENTRY ...
#define KVM_EXIT_INTR ...
#define KVM_EXIT_INTERNAL_ERROR ...
#define KVM_EXIT_SYSTEM_EVENT ...
#define KVM_EXIT_DEBUG ...
#define KVM_EXIT_IO_IN ...
#define KVM_EXIT_IO_OUT ...

#define KVM_IRQ_ROUTING_IRQCHIP ...
#define KVM_IRQ_ROUTING_MSI ...
#define KVM_IRQCHIP_PIC_MASTER ...
#define KVM_IRQCHIP_PIC_SLAVE ...
#define KVM_IRQCHIP_IOAPIC ...
#define KVM_IRQFD_FLAG_DEASSIGN ...
#define KVM_IOEVENTFD_FLAG_DATAMATCH ...
#define KVM_IOEVENTFD_FLAG_PIO ...
#define KVM_IOEVENTFD_FLAG_DEASSIGN ...
#define KVM_MP_STATE_RUNNABLE ...
#define KVM_MP_STATE_UNINITIALIZED ...
#define KVM_MP_STATE_INIT_RECEIVED ...
#define KVM_MP_STATE_HALTED ...
#define KVM_PIT_SPEAKER_DUMMY ...

/* Offsets into struct kvm_run, for struct.unpack_from on the shared page. */
static const int RUN_IMMEDIATE_EXIT;
static const int IRQCHIP_CHIP;
static const int RUN_EXIT_REASON;
static const int RUN_IO_DIRECTION;
static const int RUN_IO_SIZE;
static const int RUN_IO_PORT;
static const int RUN_IO_COUNT;
static const int RUN_IO_DATA_OFFSET;
static const int RUN_MMIO_PHYS_ADDR;
static const int RUN_MMIO_DATA;
static const int RUN_MMIO_LEN;
static const int RUN_MMIO_IS_WRITE;
static const int RUN_INTERNAL_SUBERROR;
static const int RUN_INTERNAL_NDATA;
static const int RUN_INTERNAL_DATA;
static const int RUN_SYSTEM_EVENT_TYPE;
static const int RUN_FAIL_ENTRY_REASON;
static const int RUN_DEBUG_EXCEPTION;
static const int RUN_DEBUG_PC;
static const int RUN_DEBUG_DR6;

/* ioctl wrappers that return -errno, so no errno juggling across threads. */
int kk_ioctl(int fd, unsigned long request, void *arg);
int kk_ioctl_val(int fd, unsigned long request, unsigned long arg);

/* A do-nothing C handler for the vCPU kick signal: it interrupts KVM_RUN without
   Python's signal machinery, whose wakeup fd may be closing when a kick lands. */
int kk_install_kick_handler(int signum);

/* KVM_GET_DIRTY_LOG into a caller's bitmap (the struct holds a pointer in a union). */
int kk_get_dirty_log(int vm_fd, unsigned int slot, void *bitmap);

/* Migration: which pages of a RAM block go now (see the source). */
uint64_t kk_classify_pages(const uint8_t *ram, uint64_t npages, const uint64_t *kvm_bitmap,
                           uint8_t *vmm_log, int all, const uint64_t *pagemap, uint8_t *out);
"""

SOURCE = r"""
#include <errno.h>
#include <stdint.h>
#include <signal.h>
#include <stddef.h>
#include <string.h>
#include <sys/ioctl.h>
#include <linux/kvm.h>

static const int RUN_IMMEDIATE_EXIT = offsetof(struct kvm_run, immediate_exit);
static const int IRQCHIP_CHIP = offsetof(struct kvm_irqchip, chip);
static const int RUN_EXIT_REASON = offsetof(struct kvm_run, exit_reason);
static const int RUN_IO_DIRECTION = offsetof(struct kvm_run, io.direction);
static const int RUN_IO_SIZE = offsetof(struct kvm_run, io.size);
static const int RUN_IO_PORT = offsetof(struct kvm_run, io.port);
static const int RUN_IO_COUNT = offsetof(struct kvm_run, io.count);
static const int RUN_IO_DATA_OFFSET = offsetof(struct kvm_run, io.data_offset);
static const int RUN_MMIO_PHYS_ADDR = offsetof(struct kvm_run, mmio.phys_addr);
static const int RUN_MMIO_DATA = offsetof(struct kvm_run, mmio.data);
static const int RUN_MMIO_LEN = offsetof(struct kvm_run, mmio.len);
static const int RUN_MMIO_IS_WRITE = offsetof(struct kvm_run, mmio.is_write);
static const int RUN_INTERNAL_SUBERROR = offsetof(struct kvm_run, internal.suberror);
static const int RUN_INTERNAL_NDATA = offsetof(struct kvm_run, internal.ndata);
static const int RUN_INTERNAL_DATA = offsetof(struct kvm_run, internal.data);
static const int RUN_SYSTEM_EVENT_TYPE = offsetof(struct kvm_run, system_event.type);
static const int RUN_FAIL_ENTRY_REASON =
    offsetof(struct kvm_run, fail_entry.hardware_entry_failure_reason);
static const int RUN_DEBUG_EXCEPTION = offsetof(struct kvm_run, debug.arch.exception);
static const int RUN_DEBUG_PC = offsetof(struct kvm_run, debug.arch.pc);
static const int RUN_DEBUG_DR6 = offsetof(struct kvm_run, debug.arch.dr6);

int kk_ioctl(int fd, unsigned long request, void *arg)
{
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

int kk_ioctl_val(int fd, unsigned long request, unsigned long arg)
{
    int r = ioctl(fd, request, arg);
    return r < 0 ? -errno : r;
}

int kk_get_dirty_log(int vm_fd, unsigned int slot, void *bitmap)
{
    struct kvm_dirty_log log;
    memset(&log, 0, sizeof(log));
    log.slot = slot;
    log.dirty_bitmap = bitmap;
    return ioctl(vm_fd, KVM_GET_DIRTY_LOG, &log) < 0 ? -errno : 0;
}

/* For each page i of a RAM block: out[i] = 0 if it needs no sending, else 1 (its
   data) or 2 (it is all zeroes). A page needs sending if `all`, if its bit is set
   in KVM's dirty bitmap, or if the VMM's log (a byte per page, written by devices
   after they write a page) has it; the log byte is taken atomically, before the
   page is read, so a device write after that marks it again. With `pagemap` (this
   process's /proc/self/pagemap entries for the block, private anonymous RAM only),
   a page neither present nor swapped out was never written: zero, unread.
   Returns how many. */
uint64_t kk_classify_pages(const uint8_t *ram, uint64_t npages, const uint64_t *kvm_bitmap,
                           uint8_t *vmm_log, int all, const uint64_t *pagemap, uint8_t *out)
{
    uint64_t count = 0;
    for (uint64_t i = 0; i < npages; i++) {
        int dirty = all;
        if (kvm_bitmap && (kvm_bitmap[i / 64] >> (i % 64)) & 1)
            dirty = 1;
        if (vmm_log && __atomic_exchange_n(&vmm_log[i], 0, __ATOMIC_SEQ_CST))
            dirty = 1;
        if (!dirty) {
            out[i] = 0;
            continue;
        }
        count++;
        if (pagemap && !(pagemap[i] >> 62)) {     /* bit 63 present, bit 62 swapped */
            out[i] = 2;
            continue;
        }
        const uint64_t *words = (const uint64_t *)(ram + 4096 * i);
        int zero = 1;
        for (int w = 0; w < 512; w++)
            if (words[w]) {
                zero = 0;
                break;
            }
        out[i] = zero ? 2 : 1;
    }
    return count;
}

static void kk_kick(int signum)
{
    (void)signum;
}

int kk_install_kick_handler(int signum)
{
    struct sigaction action;
    memset(&action, 0, sizeof(action));
    action.sa_handler = kk_kick;            /* no SA_RESTART: KVM_RUN returns EINTR */
    sigemptyset(&action.sa_mask);
    return sigaction(signum, &action, NULL) < 0 ? -errno : 0;
}
"""

ffibuilder = FFI()
ffibuilder.cdef(CDEF)
ffibuilder.set_source("vmm._kvm", SOURCE)

if __name__ == "__main__":
    ffibuilder.compile(verbose=False)
