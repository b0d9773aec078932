"""`info pic` and `info lapic`: KVM's in-kernel IOAPIC, PICs and local APICs as
QEMU 7.2 prints them."""

from __future__ import annotations

import struct

from monitor.hmp.table import HmpContext, hmp

IOAPIC_PINS = 24
DELIVERY = ("fixed", "lowest pri", "SMI", "...", "NMI", "INIT", "...", "extINT")
LVT_DELIVERY = ("Fixed", "...", "SMI", "...", "NMI", "INIT", "...", "ExtINT")
SHORTHAND = ("no-shorthand", "self", "all-self", "all")


def _irqchip_bytes(machine, chip_id: int) -> bytes:
    from vmm._kvm import ffi, lib
    chip, _pic = machine.vm.get_irqchip(chip_id)
    return bytes(ffi.buffer(ffi.cast("char *", chip) + lib.IRQCHIP_CHIP, 512))


def _pins(title: str, bitmap: int) -> str:
    if not bitmap:
        return f"{title:<10} (none)\n"
    return f"{title:<10} " + "".join(f"{i:<2} " for i in range(IOAPIC_PINS)
                                     if bitmap >> i & 1) + "\n"


def ioapic_text(machine) -> str:
    from vmm._kvm import lib
    raw = _irqchip_bytes(machine, lib.KVM_IRQCHIP_IOAPIC)
    ioregsel, ioapic_id, irr = struct.unpack_from("<III", raw, 8)
    entries = struct.unpack_from(f"<{IOAPIC_PINS}Q", raw, 24)
    out = f"ioapic0: ver=0x11 id=0x{ioapic_id:02x} sel=0x{ioregsel:02x}"
    if 0x10 <= ioregsel < 0x10 + 2 * IOAPIC_PINS:
        out += f" (redir[{(ioregsel - 0x10) // 2}])"
    out += "\n"
    remote_irr = 0
    for pin, entry in enumerate(entries):
        remote_irr |= (entry >> 14 & 1) << pin
        out += (f"  pin {pin:<2} 0x{entry:016x} dest={entry >> 56:x} vec={entry & 0xFF:<3} "
                f"{'active-lo' if entry >> 13 & 1 else 'active-hi'} "
                f"{'level' if entry >> 15 & 1 else 'edge':<5} "
                f"{'masked' if entry >> 16 & 1 else '':<6} "
                f"{DELIVERY[entry >> 8 & 7]:<6} "
                f"{'logical' if entry >> 11 & 1 else 'physical'}\n")
    return out + _pins("  IRR", irr) + _pins("  Remote IRR", remote_irr)


def pic_text(machine) -> str:
    from vmm._kvm import lib
    out = ""
    for index, chip_id in ((1, lib.KVM_IRQCHIP_PIC_SLAVE), (0, lib.KVM_IRQCHIP_PIC_MASTER)):
        _chip, pic = machine.vm.get_irqchip(chip_id)
        out += (f"pic{index}: irr={pic.irr:02x} imr={pic.imr:02x} isr={pic.isr:02x} "
                f"hprio={pic.priority_add} irq_base={pic.irq_base:02x} "
                f"rr_sel={pic.read_reg_select} elcr={pic.elcr:02x} "
                f"fnm={pic.special_fully_nested_mode}\n")
    return out


@hmp("pic", "", "", "show PIC state", info=True)
async def info_pic(ctx: HmpContext, args: dict) -> str:
    if ctx.machine.empty:
        return ""
    with ctx.machine.lock:
        return ioapic_text(ctx.machine) + pic_text(ctx.machine)


def _lvt(name: str, value: int, timer: bool = False) -> str:
    mode = value >> 8 & 7
    timer_mode = ("one-shot", "periodic", "tsc-deadline", "")[value >> 17 & 3] if timer else ""
    text = (f"{name}\t 0x{value:08x} {'active-lo' if value >> 13 & 1 else 'active-hi'} "
            f"{'level' if value >> 15 & 1 else 'edge':<5} {'masked' if value >> 16 & 1 else '':<6} "
            f"{'pending' if value >> 12 & 1 else '':<7} {timer_mode:<12} {LVT_DELIVERY[mode]:<6}")
    return text + ("\n" if mode == 4 else f" (vec {value & 0xFF})\n")


def _vectors(name: str, regs: bytes, base: int, trigger: bytes) -> str:
    found = []
    for vector in range(256):
        word = struct.unpack_from("<I", regs, base + (vector // 32) * 16)[0]
        if word >> (vector % 32) & 1:
            level = struct.unpack_from("<I", trigger, (vector // 32) * 16)[0] >> (vector % 32) & 1
            found.append(f"{vector}{'(level)' if level else ''}")
    return f"{name}\t " + (" ".join(found) + " " if found else "(none)") + "\n"


def lapic_text(index: int, regs: bytes) -> str:
    reg = lambda offset: struct.unpack_from("<I", regs, offset)[0]     # noqa: E731
    dcr = reg(0x3E0)
    shift = (dcr & 3) | ((dcr >> 1) & 4)
    divide = 1 if shift == 7 else 2 << shift
    spiv, icr, icr2 = reg(0xF0), reg(0x300), reg(0x310)
    out = f"dumping local APIC state for CPU {index:<2}\n\n"
    for name, offset, timer in (("LVT0", 0x350, False), ("LVT1", 0x360, False),
                                ("LVTPC", 0x340, False), ("LVTERR", 0x370, False),
                                ("LVTTHMR", 0x330, False), ("LVTT", 0x320, True)):
        out += _lvt(name, reg(offset), timer)
    out += (f"Timer\t DCR=0x{dcr:x} (divide by {divide}) initial_count = {reg(0x380)} "
            f"current_count = {reg(0x390)}\n")
    out += (f"SPIV\t 0x{spiv:08x} APIC {'enabled' if spiv >> 8 & 1 else 'disabled'}, "
            f"focus={'on' if spiv >> 9 & 1 else 'off'}, spurious vec {spiv & 0xFF}\n")
    out += (f"ICR\t 0x{icr:08x} {'logical' if icr >> 11 & 1 else 'physical'} "
            f"{'level' if icr >> 15 & 1 else 'edge'} "
            f"{'assert' if icr >> 14 & 1 else 'de-assert'} {SHORTHAND[icr >> 18 & 3]}\n")
    out += f"ICR2\t 0x{icr2:08x}"
    if not icr >> 18 & 3:
        dest = icr2 >> 24
        out += f" mask {dest:x}" if icr >> 11 & 1 else f" cpu {dest} (X2APIC ID)"
    out += f"\nESR\t 0x{reg(0x280):08x}\n"
    trigger = regs[0x180:0x200]
    out += _vectors("ISR", regs, 0x100, trigger) + _vectors("IRR", regs, 0x200, trigger)
    out += (f"\nAPR 0x{reg(0x90):02x} TPR 0x{reg(0x80):02x} DFR 0x{reg(0xE0) >> 28:02x} "
            f"LDR 0x{reg(0xD0) >> 24:02x} PPR 0x{reg(0xA0):02x}\n")
    return out


@hmp("lapic", "apic-id:i?", "[apic-id]",
     "show local apic state (apic-id: local apic to read, default is which of current CPU)",
     info=True)
async def info_lapic(ctx: HmpContext, args: dict) -> str:
    from vmm._kvm import ffi
    machine = ctx.machine
    index = args.get("apic-id", ctx.cpu)
    if not 0 <= index < len(machine.vcpus):
        return "No CPU available\n"
    state = machine.vcpus[index].inspect(lambda v: v.get_lapic())
    return lapic_text(index, bytes(ffi.buffer(state.regs)))
