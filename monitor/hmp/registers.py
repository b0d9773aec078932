"""`info registers`: a vCPU's state in QEMU's x86 cpu_dump_state layout."""

from __future__ import annotations

from monitor.hmp.table import HmpContext, hmp

EFLAGS_CHARS = ((0x400, "D"), (0x800, "O"), (0x80, "S"), (0x40, "Z"), (0x10, "A"), (0x4, "P"),
                (0x1, "C"))
SYS_TYPES = (
    ("Reserved", "TSS16-avl", "LDT", "TSS16-busy", "CallGate16", "TaskGate", "IntGate16",
     "TrapGate16", "Reserved", "TSS32-avl", "Reserved", "TSS32-busy", "CallGate32", "Reserved",
     "IntGate32", "TrapGate32"),
    ("<hiword>", "Reserved", "LDT", "Reserved", "Reserved", "Reserved", "Reserved", "Reserved",
     "Reserved", "TSS64-avl", "Reserved", "TSS64-busy", "CallGate64", "Reserved", "IntGate64",
     "TrapGate64"))


def _flags(seg) -> int:
    """A KVM segment as the descriptor-high-word flags QEMU keeps."""
    return ((seg.type << 8) | (seg.s << 12) | (seg.dpl << 13) | (seg.present << 15)
            | (seg.avl << 20) | (seg.l << 21) | (seg.db << 22) | (seg.g << 23))


def _segment(name: str, seg, long_mode: bool, cs64: bool, protected: bool) -> str:
    flags = _flags(seg) if not seg.unusable or seg.present else 0
    base = f"{seg.base:016x}" if cs64 else f"{seg.base & 0xFFFFFFFF:08x}"
    text = f"{name:<3}={seg.selector:04x} {base} {seg.limit:08x} {flags & 0x00FFFF00:08x}"
    if protected and seg.present and not seg.unusable:
        text += f" DPL={seg.dpl} "
        if seg.s:
            if seg.type & 0x8:
                text += "CS64" if seg.l else ("CS32" if seg.db else "CS16")
                text += f" [{'C' if seg.type & 4 else '-'}{'R' if seg.type & 2 else '-'}"
            else:
                text += "DS  " if seg.db or long_mode else "DS16"
                text += f" [{'E' if seg.type & 4 else '-'}{'W' if seg.type & 2 else '-'}"
            text += f"{'A' if seg.type & 1 else '-'}]"
        else:
            text += SYS_TYPES[1 if long_mode else 0][seg.type & 0xF]
    return text


def dump_cpu(index: int, state: dict) -> str:
    regs, sregs, fpu = state["regs"], state["sregs"], state["fpu"]
    long_mode = bool(sregs.efer & 0x400)
    cs64 = long_mode and bool(sregs.cs.l)
    protected = bool(sregs.cr0 & 1)
    cpl = sregs.cs.dpl if protected else 0
    halted = 1 if state["mp_state"] == 3 else 0       # KVM_MP_STATE_HALTED
    flags = "".join(c if regs.rflags & bit else "-" for bit, c in EFLAGS_CHARS)
    out = [f"CPU#{index}"]
    if cs64:
        names = ("RAX", "RBX", "RCX", "RDX", "RSI", "RDI", "RBP", "RSP", "R8 ", "R9 ", "R10",
                 "R11", "R12", "R13", "R14", "R15")
        attrs = ("rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10",
                 "r11", "r12", "r13", "r14", "r15")
        for i in range(0, 16, 4):
            out.append(" ".join(f"{names[j]}={getattr(regs, attrs[j]):016x}"
                                for j in range(i, i + 4)))
        out.append(f"RIP={regs.rip:016x} RFL={regs.rflags:08x} [{flags}] CPL={cpl} II=0 "
                   f"A20=1 SMM=0 HLT={halted}")
    else:
        r = {n: getattr(regs, n) & 0xFFFFFFFF for n in ("rax", "rbx", "rcx", "rdx", "rsi",
                                                         "rdi", "rbp", "rsp", "rip", "rflags")}
        out.append(f"EAX={r['rax']:08x} EBX={r['rbx']:08x} ECX={r['rcx']:08x} "
                   f"EDX={r['rdx']:08x}")
        out.append(f"ESI={r['rsi']:08x} EDI={r['rdi']:08x} EBP={r['rbp']:08x} "
                   f"ESP={r['rsp']:08x}")
        out.append(f"EIP={r['rip']:08x} EFL={r['rflags']:08x} [{flags}] CPL={cpl} II=0 "
                   f"A20=1 SMM=0 HLT={halted}")
    for name in ("es", "cs", "ss", "ds", "fs", "gs"):
        out.append(_segment(name.upper(), getattr(sregs, name), long_mode, cs64, protected))
    out.append(_segment("LDT", sregs.ldt, long_mode, cs64, True))
    out.append(_segment("TR", sregs.tr, long_mode, cs64, True))
    if cs64:
        out.append(f"GDT=     {sregs.gdt.base:016x} {sregs.gdt.limit:08x}")
        out.append(f"IDT=     {sregs.idt.base:016x} {sregs.idt.limit:08x}")
        out.append(f"CR0={sregs.cr0 & 0xFFFFFFFF:08x} CR2={sregs.cr2:016x} "
                   f"CR3={sregs.cr3:016x} CR4={sregs.cr4 & 0xFFFFFFFF:08x}")
    else:
        out.append(f"GDT=     {sregs.gdt.base & 0xFFFFFFFF:08x} {sregs.gdt.limit:08x}")
        out.append(f"IDT=     {sregs.idt.base & 0xFFFFFFFF:08x} {sregs.idt.limit:08x}")
        out.append(f"CR0={sregs.cr0 & 0xFFFFFFFF:08x} CR2={sregs.cr2 & 0xFFFFFFFF:08x} "
                   f"CR3={sregs.cr3 & 0xFFFFFFFF:08x} CR4={sregs.cr4 & 0xFFFFFFFF:08x}")
    dbg = state["debugregs"]
    width = 16 if cs64 else 8
    out.append("".join(f"DR{i}={dbg.db[i]:0{width}x} " for i in range(4)))
    out.append(f"DR6={dbg.dr6:0{width}x} DR7={dbg.dr7:0{width}x}")
    out.append(f"EFER={sregs.efer:016x}")
    top = (fpu.fsw >> 11) & 7
    out.append(f"FCW={fpu.fcw:04x} FSW={fpu.fsw:04x} [ST={top}] FTW={fpu.ftwx:02x} "
               f"MXCSR={fpu.mxcsr:08x}")
    fpr = []
    for i in range(8):
        raw = bytes(fpu.fpr[i])
        fpr.append(f"FPR{i}={int.from_bytes(raw[:8], 'little'):016x} "
                   f"{int.from_bytes(raw[8:10], 'little'):04x}")
    out += [f"{fpr[i]} {fpr[i + 1]}" for i in range(0, 8, 2)]
    nxmm = 16 if cs64 else 8
    xmm = []
    for i in range(nxmm):
        raw = bytes(fpu.xmm[i])
        xmm.append(f"XMM{i:02d}={int.from_bytes(raw[8:], 'little'):016x} "
                   f"{int.from_bytes(raw[:8], 'little'):016x}")
    out += [f"{xmm[i]} {xmm[i + 1]}" for i in range(0, nxmm, 2)]
    return "\n" + "\n".join(out) + "\n"


@hmp("registers", "cpustate_all:-a,vcpu:i?", "[-a|vcpu]",
     "show the cpu registers (-a: show register info for all cpus; vcpu: specific vCPU to "
     "query; show the current CPU's registers if no argument is specified)", info=True)
async def info_registers(ctx: HmpContext, args: dict) -> str:
    machine = ctx.machine
    if not machine.vcpus:
        return "No CPU available\n"
    if args.get("cpustate_all"):
        indexes = list(range(len(machine.vcpus)))
    else:
        vcpu = args.get("vcpu", ctx.cpu)
        if vcpu >= len(machine.vcpus):
            return f"CPU#{vcpu} not available\n"
        indexes = [vcpu]
    return "".join(dump_cpu(i, machine.cpu_state(i)) for i in indexes)
