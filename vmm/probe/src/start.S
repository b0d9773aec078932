/*
 * The probe guest's CPL0 part: PVH entry, long mode, GDT/TSS/IDT, interrupt
 * stubs, the #GP "wait" call, and the AP trampoline. Everything else runs at
 * CPL3 (see DESIGN.md: CPL0 code is emulated one instruction at a time here,
 * so this file is kept to a few hundred instructions, and the page tables
 * are static data rather than built by loops).
 */

#define MAX_CPUS        16
#define KSTACK_SIZE     8192
#define USTACK_SIZE     65536
#define TSS_SIZE        (104 + 8192 + 1)   /* header, I/O bitmap, 0xff terminator */
#define KCODE           0x08
#define KDATA           0x10
#define UDATA           0x1b
#define UCODE           0x23
#define KCODE32         0x30
#define TSS_SEL0        0x38
#define LAPIC_EOI       0xfee000b0
#define IOAPIC_BASE     0xfec00000
#define TRAMPOLINE      0x8000

/* ---- the PVH note: QEMU and kvmkit both find the 32-bit entry here ---- */
        .section .note.Xen, "a"
        .align 4
        .long 4, 4, 18          /* namesz, descsz, XEN_ELFNOTE_PHYS32_ENTRY */
        .asciz "Xen"
        .long pvh_start

/* ---- static page tables: 4 GiB in 2 MiB pages, then 1 GiB pages ---- */
        .section .data.pagetables, "aw"
        .align 4096
        .globl pml4
pml4:   .quad pdpt + 7
        .fill 511, 8, 0
pdpt:   .quad pd + 0x0007, pd + 0x1007, pd + 0x2007, pd + 0x3007
        .set gib, 4
        .rept 508
        .quad (gib << 30) | 0x87        /* user, rw, present, 1 GiB page */
        .set gib, gib + 1
        .endr
pd:     .set mib2, 0
        .rept 2048
        .quad (mib2 << 21) | 0x87       /* user, rw, present, 2 MiB page */
        .set mib2, mib2 + 1
        .endr

        .section .data
        .align 16
        .globl gdt
gdt:    .quad 0
        .quad 0x00af9a000000ffff        /* 0x08 kernel code, 64-bit */
        .quad 0x00cf92000000ffff        /* 0x10 kernel data */
        .quad 0x00cff2000000ffff        /* 0x18 user data */
        .quad 0x00affa000000ffff        /* 0x20 user code, 64-bit */
        .quad 0                         /* 0x28 unused */
        .quad 0x00cf9a000000ffff        /* 0x30 kernel code, 32-bit (APs) */
tss_descs:
        .fill 2 * MAX_CPUS, 8, 0        /* 0x38 + 16*i: one TSS per CPU */
gdt_end:
        .globl gdt_ptr
gdt_ptr:
        .word gdt_end - gdt - 1
        .quad gdt
idt_ptr:
        .word 256 * 16 - 1
        .quad idt

        .globl start_info_paddr, cpus_online, irq_generation, irq_count
start_info_paddr: .long 0
cpus_online:      .long 1
irq_generation:   .long 0
        .align 8
irq_count:        .fill 256, 4, 0
        .globl intx_pin
intx_pin:         .fill 32, 1, 0            /* IOAPIC pin of each INTx vector 0xe0.. */

        .section .bss
        .align 4096
idt:    .fill 256 * 16, 1, 0
tss:    .fill MAX_CPUS * TSS_SIZE, 1, 0
        .align 16
kstacks: .fill MAX_CPUS * KSTACK_SIZE, 1, 0
        .globl ustacks
ustacks: .fill MAX_CPUS * USTACK_SIZE, 1, 0

/* ---- 32-bit entry (BSP via PVH, APs via the trampoline) ---- */
        .section .text.entry, "ax"
        .code32
        .globl pvh_start
pvh_start:
        cli
        movl %ebx, start_info_paddr
        movl $1f, %esi                  /* PVH gives no stack: return through esi */
        jmp enable_long_mode
1:      ljmp $KCODE, $bsp_long

ap_start32:
        movw $KDATA, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        movl $1f, %esi
        jmp enable_long_mode
1:      ljmp $KCODE, $ap_long

/* enable_long_mode: PAE paging on our tables, EFER.LME, then PG; returns to esi */
enable_long_mode:
        lgdt gdt_ptr
        movl $pml4, %eax
        movl %eax, %cr3
        movl %cr4, %eax
        orl $0x20, %eax                 /* PAE */
        movl %eax, %cr4
        movl $0xc0000080, %ecx
        rdmsr
        orl $0x100, %eax                /* LME */
        wrmsr
        movl %cr0, %eax
        orl $0x80000001, %eax           /* PG | PE */
        movl %eax, %cr0
        jmp *%esi

        .code64
bsp_long:
        xorl %edi, %edi                 /* cpu index 0 */
        leaq kstacks + KSTACK_SIZE, %rsp
        call setup_cpu
        call build_idt
        lidt idt_ptr
        /* mask the legacy PICs: their timer would arrive on a low vector */
        movb $0xff, %al
        outb %al, $0x21
        outb %al, $0xa1
        xorl %edi, %edi
        movl start_info_paddr, %esi
        movq $probe_main, %rdx
        jmp enter_user

ap_long:
        movw $KDATA, %ax
        movw %ax, %ds
        movw %ax, %ss
        movl $1, %edi
        lock xaddl %edi, cpus_online    /* this AP's index */
        movl %edi, %eax
        incl %eax
        imull $KSTACK_SIZE, %eax
        leaq kstacks(%rax), %rsp
        call setup_cpu
        lidt idt_ptr
        movq $ap_main, %rdx
        jmp enter_user

/* setup_cpu: segments, this CPU's TSS with rsp0 and an all-ports I/O bitmap (edi = index) */
setup_cpu:
        movw $KDATA, %ax
        movw %ax, %ds
        movw %ax, %es
        movw %ax, %ss
        xorw %ax, %ax
        movw %ax, %fs
        movw %ax, %gs
        movl %edi, %eax
        incl %eax
        imull $KSTACK_SIZE, %eax
        leaq kstacks(%rax), %r8         /* top of this CPU's kernel stack */
        movl %edi, %eax
        imull $TSS_SIZE, %eax
        leaq tss(%rax), %rbx
        movq %r8, 4(%rbx)
        movw $104, 102(%rbx)
        movb $0xff, 104 + 8192(%rbx)
        /* TSS descriptor: limit, base, type 0x89 (available 64-bit TSS) */
        movl %edi, %eax
        shll $4, %eax
        leaq tss_descs(%rax), %rcx
        movq %rbx, %rax
        movw $TSS_SIZE - 1, (%rcx)
        movw %ax, 2(%rcx)
        shrq $16, %rax
        movb %al, 4(%rcx)
        movb $0x89, 5(%rcx)
        movb %ah, 7(%rcx)
        shrq $16, %rax
        movl %eax, 8(%rcx)
        movl %edi, %eax
        shll $4, %eax
        addl $TSS_SEL0, %eax
        ltr %ax
        ret

/* build_idt: 256 interrupt gates to the 16-byte stubs (DPL 0, no IST) */
build_idt:
        leaq idt, %rdi
        leaq isr_stubs, %rax
        movl $256, %ecx
1:      movq %rax, %rdx
        movw %dx, (%rdi)
        movw $KCODE, 2(%rdi)
        movw $0x8e00, 4(%rdi)
        shrq $16, %rdx
        movw %dx, 6(%rdi)
        shrq $16, %rdx
        movl %edx, 8(%rdi)
        addq $16, %rdi
        addq $16, %rax
        decl %ecx
        jnz 1b
        ret

/* enter_user: iretq to CPL3 at rdx with IOPL=3 and IF=1; rdi/rsi are the args */
enter_user:
        movl %edi, %eax
        incl %eax
        imull $USTACK_SIZE, %eax
        leaq ustacks(%rax), %rcx
        pushq $UDATA
        pushq %rcx
        pushq $0x3202
        pushq $UCODE
        pushq %rdx
        iretq

/* ---- interrupt stubs: each pushes (error code or 0) and its vector ---- */
        .align 16
isr_stubs:
        .set vec, 0
        .rept 256
        .align 16
        .if (vec == 8) || (vec >= 10 && vec <= 14) || (vec == 17) || (vec == 21)
        pushq $vec
        jmp isr_common
        .else
        pushq $0
        pushq $vec
        jmp isr_common
        .endif
        .set vec, vec + 1
        .endr

/* Frame after the two pushes: rbx, rax, vector, error, rip, cs, rflags, rsp, ss */
isr_common:
        pushq %rax
        pushq %rbx
        movq 16(%rsp), %rax             /* vector */
        cmpq $13, %rax
        je gp_fault
        cmpq $2, %rax                   /* an NMI (inject-nmi): counted, no EOI */
        je nmi
        cmpq $32, %rax
        jb exception
        /* a device interrupt: count it, bump the generation, EOI. A level-triggered
         * INTx (vectors 0xe0 and up) has its IOAPIC pin masked first: its line stays
         * high until the CPL3 driver acknowledges the device and unmasks the pin. */
        lock incl irq_count(,%rax,4)
        lock incl irq_generation
        cmpq $0xe0, %rax
        jb 1f
        pushq %rcx
        movzbl intx_pin-0xe0(%rax), %ebx
        leal 0x10(%rbx,%rbx), %ebx              /* redirection entry: 0x10 + 2 * pin */
        movl $IOAPIC_BASE, %ecx
        movl %ebx, (%rcx)                       /* IOREGSEL */
        leal 0x18000(%rax), %ebx                /* the vector, level, masked */
        movl %ebx, 0x10(%rcx)                   /* IOWIN */
        popq %rcx
1:      movl $LAPIC_EOI, %ebx
        movl $0, (%rbx)
        jmp isr_return
nmi:    lock incl irq_count+8
isr_return:
        popq %rbx
        popq %rax
        addq $16, %rsp
        iretq

/*
 * #GP from CPL3 is the guest's system call:
 *   hlt    (f4): wait for an interrupt, unless irq_generation != eax already
 *   wbinvd (0f 09): run an instruction the emulator lacks (int3), for tests
 */
gp_fault:
        testb $3, 40(%rsp)              /* from user mode? */
        jz exception
        movq 32(%rsp), %rbx             /* faulting rip */
        cmpb $0xf4, (%rbx)
        je 1f
        cmpw $0x090f, (%rbx)
        jne exception
        int3
1:      incq 32(%rsp)
        movl irq_generation, %ebx
        cmpl %ebx, 8(%rsp)
        jne isr_return
        sti
        hlt
        cli
        jmp isr_return

/* any other exception: report it on COM1 and on isa-debug-exit, then stop */
exception:
        movw $0x3f8, %dx
        movb $'!', %al
        outb %al, %dx
        movq 16(%rsp), %rax
        addb $'A', %al
        outb %al, %dx
        movb $'\n', %al
        outb %al, %dx
        movw $0x501, %dx
        movb $0x7f, %al
        outb %al, %dx
2:      cli
        hlt
        jmp 2b

/* ---- the AP trampoline, copied to TRAMPOLINE by the BSP ---- */
        .code16
        .globl trampoline_start, trampoline_end, trampoline_gdtr
trampoline_start:
        cli
        movw %cs, %ax
        movw %ax, %ds
        lgdtl trampoline_gdtr - trampoline_start
        movl %cr0, %eax
        orl $1, %eax
        movl %eax, %cr0
        ljmpl $KCODE32, $ap_start32
        .align 4
trampoline_gdtr:
        .word 0
        .long 0
trampoline_end:
