"""The probe guest: kvmkit's test OS and embedded default guest.

A PVH ELF built from ``src/`` when the package is built. It boots on kvmkit
and on QEMU (``-kernel probe.elf``), and answers one JSON line per command on
COM1:

    info                    memory, CPUs online, RAM regions, command line
    pci                     every function on bus 0: ids, class, BARs, capabilities
    acpi                    tables found, MADT CPUs/IOAPIC, FADT registers
    touch MIB [SEED]        write a pattern over MIB MiB from 16 MiB, then verify it
    check MIB [SEED]        verify only
    churn MIB ROUNDS        rewrite MIB MiB ROUNDS times (seeds 1..ROUNDS): dirty memory
    sum MIB                 a checksum of MIB MiB from 16 MiB
    irqs                    interrupt counts per vector
    inb/inw/inl PORT, outb/outw/outl PORT VALUE
    readb/readw/readl/readq ADDR, writeb/writew/writel/writeq ADDR VALUE
    echo TEXT               echo
    crash                   run an instruction the emulator lacks (int3 at CPL0)
    exit CODE [PORT]        write CODE to isa-debug-exit (port 0x501 by default)
    virtio                  virtio devices found: type, offered features, queues, MSI-X
    balloon [intx]          the balloon driver: target, actual, features; `intx` takes
                            its config changes as level-triggered INTx via the IOAPIC
    stats                   what the balloon's statistics buffer last said
    report MIB              report MIB MiB of free memory (free page reporting)
    net                     the NIC found (virtio-net, e1000 or rtl8139): MAC, link
    netsend DSTMAC TYPE TEXT   send one frame; netrecv [MS]: the next frame received
    netrxmode promisc|allmulti 0|1   virtio-net rx mode through the control queue
    netoffload on|off       virtio-net: renegotiate with checksum/TSO offloads both
                            ways and mergeable buffers (netrecv then shows the header)
    netmq PAIRS [TXPAIR]    virtio-net: renegotiate with MQ, use PAIRS queue pairs,
                            send on TXPAIR
    nettcp DSTMAC LEN [MSS]   one TCP/IPv4 frame, checksum (and with MSS, TSO) by the card
    netblast COUNT DSTMAC LEN [MSS]   COUNT such frames as fast as the card takes them
    netsink IDLE_MS         count received frames until none came for IDLE_MS
    netcplus                rtl8139: switch to C+ mode (descriptor rings, offloads)
    netmcast MAC            rtl8139: accept multicast MAC too (its MAR hash bit)
    hotplug [manual|auto]   ACPI PCI hotplug state; manual leaves removals unanswered
    legacy                  drive the balloon through the legacy (0.9.5) I/O interface
    dhcp                    get an IPv4 address by DHCP on the NIC
    udpecho PORT [MS]       answer one UDP datagram to PORT with its own payload
    rng [N]                 N bytes from virtio-rng: how many came, how varied
    blk [read S | write S TEXT | flush | discard S N | zeroes S N [unmap] | wce 0|1 | config]
    blk bench r|w rand|seq BYTES DEPTH COUNT   COUNT requests DEPTH at a time: their time
                            virtio-blk: capacity, one-sector I/O, flush, discard,
                            write-zeroes, the write cache, the raw config
    console [write TEXT | read [MS]]      virtio-console port 0
    vga font | clear ATTR | text ROW COL ATTR TEXT | cursor on|off | vbe W H
                            VGA text mode: a test font into plane 2, text at 0xB8000;
                            a Bochs VBE 32-bit mode filled with a pattern through BAR0
    ps2 read MS | kbd B | aux B | cmd B | config B
                            the i8042: bytes from the keyboard and the mouse, commands
    usb scan | poll PORT MS   UHCI: enumerate HID devices, read their reports

At boot it prints ``{"event": "ready", "cpus": N, "memory_mib": M}``; later
events: ``balloon`` (inflated or deflated), ``link`` (up or down),
``pci-added``, ``pci-removal-requested`` and ``pci-ejected``.
"""

from __future__ import annotations

from pathlib import Path

ELF_NAME = "probe.elf"


def elf_path() -> Path:
    """The installed probe ELF; raises FileNotFoundError if it was not built."""
    path = Path(__file__).parent / ELF_NAME
    if not path.exists():
        raise FileNotFoundError(
            f"the probe guest is not built ({path}); rebuild with 'python -m vmm.probe.build'")
    return path
