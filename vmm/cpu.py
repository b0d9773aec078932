"""Per-vCPU CPUID and the architectural state each boot protocol starts in."""

from __future__ import annotations

import struct
from dataclasses import dataclass, replace

from vmm.kvm import CpuidEntry, Vcpu

KVM_SIGNATURE = b"KVMKVMKVM\0\0\0"
HYPERVISOR_BIT = 1 << 31  # CPUID.1:ECX


def _regs_from_signature(sig: bytes) -> tuple[int, int, int]:
    return tuple(int.from_bytes(sig[i:i + 4], "little") for i in (0, 4, 8))  # type: ignore


def build_cpuid(supported: list[CpuidEntry], index: int, ncpus: int) -> list[CpuidEntry]:
    """Host-supported CPUID, adjusted for vCPU ``index`` of ``ncpus``.

    Topology: one socket, ``ncpus`` cores, one thread each; APIC id = index.
    """
    smt_shift = 0
    core_shift = max(ncpus - 1, 0).bit_length()
    out: list[CpuidEntry] = []
    for e in supported:
        if e.function == 0x1:
            # QEMU counts logical processors here only when there is more than one
            count = ncpus << 16 if ncpus > 1 else 0
            ebx = (e.ebx & 0x0000FFFF) | (index << 24) | count
            edx = e.edx | (1 << 28) if ncpus > 1 else e.edx & ~(1 << 28)
            e = replace(e, ebx=ebx, ecx=e.ecx | HYPERVISOR_BIT, edx=edx)
        elif e.function == 0x4:
            cores = (max(ncpus, 1) - 1) << 26
            e = replace(e, eax=(e.eax & 0x03FFFFFF) | cores)
        elif e.function in (0xB, 0x1F):
            level = e.index
            if level == 0:
                e = replace(e, eax=smt_shift, ebx=1, ecx=(1 << 8) | level, edx=index)
            elif level == 1:
                e = replace(e, eax=core_shift, ebx=max(ncpus, 1), ecx=(2 << 8) | level, edx=index)
            else:
                e = replace(e, eax=0, ebx=0, ecx=level, edx=index)
        elif e.function == 0x80000008:
            e = replace(e, ecx=(e.ecx & ~0xFF) | (max(ncpus, 1) - 1))
        elif e.function == 0x40000000:
            ebx, ecx, edx = _regs_from_signature(KVM_SIGNATURE)
            e = replace(e, eax=max(e.eax, 0x40000001), ebx=ebx, ecx=ecx, edx=edx)
        out.append(e)
    if not any(e.function == 0x40000000 for e in out):
        ebx, ecx, edx = _regs_from_signature(KVM_SIGNATURE)
        out.append(CpuidEntry(0x40000000, 0, 0, 0x40000001, ebx, ecx, edx))
    return out


# Segment descriptors of the flat boot GDT shared by both protocols.
GDT_ENTRIES = [
    0,                      # 0x00 null
    0,                      # 0x08 unused
    0x00AF9B000000FFFF,     # 0x10 64-bit code
    0x00CF93000000FFFF,     # 0x18 data
    0x00CF9B000000FFFF,     # 0x20 32-bit code
    0x008F89000000FFFF,     # 0x28 TSS (busy is set by KVM state, not here)
]


def _segment(seg, selector: int, type_: int, *, code64: bool = False, system: bool = False,
             limit: int = 0xFFFFFFFF) -> None:
    seg.base = 0
    seg.limit = limit
    seg.selector = selector
    seg.type = type_
    seg.present = 1
    seg.dpl = 0
    seg.db = 0 if code64 or system else 1
    seg.s = 0 if system else 1
    seg.l = 1 if code64 else 0
    seg.g = 0 if system else 1
    seg.avl = 0
    seg.unusable = 0


# The GDT of QEMU's PVH and multiboot option ROMs, and the selectors they leave loaded:
# a 32-bit guest that reloads a segment register, or pushes before it sets up its own
# stack, finds what it would find under QEMU.
PROTECTED_MODE_GDT = [
    0,                      # 0x00 null
    0x00CF9A000000FFFF,     # 0x08 32-bit code
    0x00CF92000000FFFF,     # 0x10 32-bit data
    0x00009E000000FFFF,     # 0x18 16-bit code
    0x000092000000FFFF,     # 0x20 16-bit data
]
PROTECTED_MODE_CS = 0x08
PROTECTED_MODE_DS = 0x10
# Where ESP points when QEMU 7.2's option ROM jumps to a PVH or multiboot kernel:
# SeaBIOS's stack in low memory (measured: 0x6edc with 128 MiB and with 1 GiB).
ENTRY_STACK = 0x6EDC


def gdt_bytes(entries: list[int]) -> bytes:
    return b"".join(struct.pack("<Q", d) for d in entries)


def set_protected_mode_state(vcpu: Vcpu, entry: int, gdt: int, *, eax: int = 0,
                             ebx: int = 0) -> None:
    """PVH and multiboot: 32-bit protected mode, paging off, flat segments, a stack."""
    sregs = vcpu.get_sregs()
    _segment(sregs.cs, PROTECTED_MODE_CS, 0xB)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, PROTECTED_MODE_DS, 0x3)
    sregs.gdt.base = gdt
    sregs.gdt.limit = len(PROTECTED_MODE_GDT) * 8 - 1
    sregs.cr0 = 0x11  # PE | ET
    sregs.cr3 = 0
    sregs.cr4 = 0
    sregs.efer = 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    for name in ("rcx", "rdx", "rsi", "rdi", "rbp", "r8", "r9", "r10", "r11",
                 "r12", "r13", "r14", "r15"):
        setattr(regs, name, 0)
    regs.rax = eax
    regs.rbx = ebx
    regs.rsp = ENTRY_STACK
    regs.rip = entry
    regs.rflags = 0x2
    vcpu.set_regs(regs)


def set_real_mode_entry(vcpu: Vcpu, address: int) -> None:
    """Real mode at ``address`` as seg:off (seg = address >> 4), data segments at 0: how
    SeaBIOS enters an OS's S3 waking vector. The vCPU is otherwise as after reset."""
    sregs = vcpu.get_sregs()
    segment = address >> 4
    sregs.cs.selector, sregs.cs.base = segment, segment << 4
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        seg.selector, seg.base = 0, 0
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rip = address & 0xF
    regs.rflags = 0x2
    vcpu.set_regs(regs)


def set_long_mode_state(vcpu: Vcpu, entry: int, boot_params: int, pml4: int, gdt: int,
                        gdt_limit: int) -> None:
    """Linux 64-bit boot protocol: long mode, identity paging, rsi = boot_params."""
    sregs = vcpu.get_sregs()
    _segment(sregs.cs, 0x10, 0xB, code64=True)
    for seg in (sregs.ds, sregs.es, sregs.fs, sregs.gs, sregs.ss):
        _segment(seg, 0x18, 0x3)
    _segment(sregs.tr, 0x28, 0xB, system=True, limit=0x67)
    sregs.gdt.base = gdt
    sregs.gdt.limit = gdt_limit
    sregs.idt.base = 0
    sregs.idt.limit = 0
    sregs.cr3 = pml4
    sregs.cr4 = 0x20  # PAE
    sregs.cr0 = 0x80000011  # PG | ET | PE
    sregs.efer = 0x500  # LME | LMA
    vcpu.set_sregs(sregs)
    regs = vcpu.get_regs()
    regs.rsi = boot_params
    regs.rip = entry
    regs.rflags = 0x2
    regs.rsp = regs.rbp = 0
    vcpu.set_regs(regs)


APIC_LVT_LINT0 = 0x350
APIC_LVT_LINT1 = 0x360
APIC_MODE_EXTINT = 0x7
APIC_MODE_NMI = 0x4


APIC_LVT_LEVEL = 1 << 15


def set_lapic_lints(vcpu: Vcpu) -> None:
    """LINT0 as ExtINT (legacy PIC), LINT1 as NMI, both level-triggered: what SeaBIOS
    leaves for the OS on QEMU (0x8700, 0x8400)."""
    from vmm._kvm import ffi

    lapic = vcpu.get_lapic()
    regs = ffi.buffer(lapic.regs)
    for reg, mode in ((APIC_LVT_LINT0, APIC_MODE_EXTINT), (APIC_LVT_LINT1, APIC_MODE_NMI)):
        value = int.from_bytes(regs[reg:reg + 4], "little")
        value = (value & ~0x700 & ~(1 << 16)) | (mode << 8) | APIC_LVT_LEVEL
        regs[reg:reg + 4] = value.to_bytes(4, "little")
    vcpu.set_lapic(lapic)


@dataclass
class FpuState:
    """x87/SSE state from the legacy (FXSAVE) part of an XSAVE area."""

    fcw: int
    fsw: int
    ftwx: int
    mxcsr: int
    fpr: list[bytes]
    xmm: list[bytes]


def fpu_from_xsave(xsave) -> FpuState:
    """KVM_GET_XSAVE is what QEMU reads; on some kernels KVM_GET_FPU misreports MXCSR."""
    from vmm._kvm import ffi

    raw = bytes(ffi.buffer(xsave.region))[:512]
    fcw, fsw, ftwx = struct.unpack_from("<HHB", raw, 0)
    mxcsr = struct.unpack_from("<I", raw, 24)[0]
    return FpuState(fcw, fsw, ftwx, mxcsr, [raw[32 + 16 * i:48 + 16 * i] for i in range(8)],
                    [raw[160 + 16 * i:176 + 16 * i] for i in range(16)])


# MSR values at power-on and reset, as QEMU's x86_cpu_reset leaves them (the guest
# may have changed them before a reset; KVM alone sets them only at vCPU creation).
PAT_DEFAULT = 0x0007040600070406
MISC_ENABLE_FAST_STRING = 1
RESET_MSRS = {
    0x10: 0,                         # TSC: counts from 0 again
    0x3B: 0,                         # TSC_ADJUST
    0x6E0: 0,                        # TSC_DEADLINE
    0x174: 0, 0x175: 0, 0x176: 0,    # SYSENTER_CS/ESP/EIP
    0x277: PAT_DEFAULT,
    0x1A0: MISC_ENABLE_FAST_STRING,
    0x17A: 0,                        # MCG_STATUS
    0xC0000081: 0, 0xC0000082: 0, 0xC0000083: 0, 0xC0000084: 0,   # STAR LSTAR CSTAR FMASK
    0xC0000102: 0,                   # KERNEL_GS_BASE
    0x4B564D00: 0, 0x4B564D01: 0,    # kvmclock: wall clock, system time
    0x4B564D02: 0, 0x4B564D03: 0, 0x4B564D04: 0,   # async PF, steal time, PV EOI
}
MCG_CTL = 0x17B
MC0_CTL = 0x400


def reset_msrs(vcpu: Vcpu, known: set[int], mcg_cap: int) -> None:
    """Writes the reset values of the MSRs this KVM saves and restores; with machine
    checks, every bank enabled (MCi_CTL all ones) and MCG_CTL too, as QEMU."""
    values = {index: value for index, value in RESET_MSRS.items() if index in known}
    if mcg_cap:
        if mcg_cap & (1 << 8):
            values[MCG_CTL] = (1 << 64) - 1
        for bank in range(mcg_cap & 0xFF):
            values[MC0_CTL + 4 * bank] = (1 << 64) - 1
            values[MC0_CTL + 4 * bank + 1] = 0          # MCi_STATUS
    vcpu.set_msrs(values)
