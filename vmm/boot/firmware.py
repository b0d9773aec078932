"""What SeaBIOS leaves behind when QEMU hands a -kernel to it, for the guests that
rely on it without knowing: an interrupt vector table whose handlers acknowledge
the PIC, both PICs initialized (vectors 0x08 and 0x70, SeaBIOS's masks, level
triggering for the PCI interrupt lines), and the PIT's channel 0 ticking at
18.2 Hz. kvmkit runs no firmware, so it sets this state up directly.

Values as QEMU 7.2 with SeaBIOS shows them at the kernel's entry (``info pic``):
master irq_base=08 imr=b8, slave irq_base=70 imr=8e elcr=0c.
"""

from __future__ import annotations

import struct

from vmm.memory import GuestMemory

IVT_VECTORS = 256
BIOS_SEGMENT = 0xF000
STUBS_OFFSET = 0xF000                 # F000:F000, in the reserved BIOS area
IRET = bytes([0xCF])
# push ax; mov al, 0x20; out 0x20, al; pop ax; iret
MASTER_EOI = bytes([0x50, 0xB0, 0x20, 0xE6, 0x20, 0x58, 0xCF])
# push ax; mov al, 0x20; out 0xa0, al; out 0x20, al; pop ax; iret
SLAVE_EOI = bytes([0x50, 0xB0, 0x20, 0xE6, 0xA0, 0xE6, 0x20, 0x58, 0xCF])

MASTER_BASE, SLAVE_BASE = 0x08, 0x70
MASTER_IMR, SLAVE_IMR = 0xB8, 0x8E
SLAVE_ELCR = 0x0C                     # IRQ 10 and 11: the PCI interrupt lines
PIT_MODE_RATE_GENERATOR = 2
PIT_FULL_COUNT = 0x10000              # 1193182 Hz / 65536 = 18.2 Hz
PIT_RW_LOBYTE_HIBYTE = 3


def write_ivt(mem: GuestMemory) -> None:
    """Every vector returns at once; the PIC's vectors acknowledge their interrupt."""
    stubs = IRET + MASTER_EOI + SLAVE_EOI
    mem.write(BIOS_SEGMENT * 16 + STUBS_OFFSET, stubs)
    iret_at, master_at = STUBS_OFFSET, STUBS_OFFSET + len(IRET)
    slave_at = master_at + len(MASTER_EOI)
    table = bytearray()
    for vector in range(IVT_VECTORS):
        if MASTER_BASE <= vector < MASTER_BASE + 8:
            offset = master_at
        elif SLAVE_BASE <= vector < SLAVE_BASE + 8:
            offset = slave_at
        else:
            offset = iret_at
        table += struct.pack("<HH", offset, BIOS_SEGMENT)
    mem.write(0, table)


def program_pics(vm) -> None:
    for chip_id, base, imr, elcr in ((0, MASTER_BASE, MASTER_IMR, 0),
                                     (1, SLAVE_BASE, SLAVE_IMR, SLAVE_ELCR)):
        chip, pic = vm.get_irqchip(chip_id)
        pic.irq_base, pic.imr, pic.elcr = base, imr, elcr
        pic.irr = pic.isr = pic.init_state = pic.auto_eoi = pic.poll = 0
        pic.init4 = 1
        vm.set_irqchip(chip)


def program_pit(vm) -> None:
    state = vm.get_pit2()
    channel = state.channels[0]
    channel.count = PIT_FULL_COUNT
    channel.mode = PIT_MODE_RATE_GENERATOR
    channel.rw_mode = channel.read_state = channel.write_state = PIT_RW_LOBYTE_HIBYTE
    channel.gate = 1
    vm.set_pit2(state)
