"""-kernel/-initrd/-append: pick the boot protocol and lay the image out.

* an ELF with a PVH note boots through PVH (32-bit entry, hvm_start_info);
* a Linux bzImage has its payload decompressed here and its vmlinux ELF loaded;
* a plain vmlinux ELF is loaded and entered at its 64-bit entry point.
"""

from __future__ import annotations

from dataclasses import dataclass

from vmm.boot import layout, linux, pvh
from vmm.boot.elf import ElfError, ElfImage, is_elf, parse_elf
from vmm.memory import GuestMemory, GuestMemoryError


class BootError(ValueError):
    """The kernel or initrd cannot be booted; the message is for the user."""


@dataclass(frozen=True)
class BootPlan:
    protocol: str            # "pvh" or "linux"
    entry: int
    info_addr: int           # hvm_start_info (PVH) or boot_params (Linux)


def _load_segments(mem: GuestMemory, image: ElfImage, physical_mask: int) -> None:
    for seg in image.segments:
        paddr = seg.paddr & physical_mask
        try:
            mem.write(paddr, seg.data)
            mem.fill(paddr + len(seg.data), seg.memsz - len(seg.data))
        except GuestMemoryError:
            raise BootError(f"kernel segment at 0x{paddr:x} (0x{seg.memsz:x} bytes) "
                            "does not fit in guest RAM") from None


def place_initrd(mem: GuestMemory, data: bytes, max_addr: int) -> tuple[int, int]:
    top = min(mem.below_4g, max_addr + 1)
    addr = (top - len(data)) & ~0xFFF
    if addr < layout.HIGH_MEMORY + 0x1000000:
        raise BootError("initrd is too large for guest RAM")
    mem.write(addr, data)
    return addr, len(data)


def write_cmdline(mem: GuestMemory, cmdline: str) -> int:
    raw = cmdline.encode() + b"\0"
    if len(raw) > layout.CMDLINE_MAX:
        raise BootError("kernel command line is too long")
    mem.write(layout.CMDLINE, raw)
    return layout.CMDLINE


def load_kernel(mem: GuestMemory, kernel: bytes, cmdline: str, initrd: bytes | None,
                rsdp: int) -> BootPlan:
    """Loads a kernel image into ``mem``; raises BootError with a user message."""
    try:
        if is_elf(kernel):
            image = parse_elf(kernel)
            entry32 = pvh.pvh_entry(image)
            if entry32 is not None:
                _load_segments(mem, image, 0xFFFFFFFFFFFFFFFF)
                cmd = write_cmdline(mem, cmdline)
                rd = place_initrd(mem, initrd, 0xFFFFFFFF) if initrd is not None else None
                info = pvh.write_start_info(mem, cmd, rsdp, rd)
                return BootPlan("pvh", entry32, info)
            setup = None
            vmlinux = image
        elif linux.is_bzimage(kernel):
            setup, payload = linux.split_bzimage(kernel)
            vmlinux = parse_elf(linux.decompress(payload))
        else:
            raise BootError("kernel is neither an ELF image nor a Linux bzImage")
    except ElfError as e:
        raise BootError(f"invalid kernel ELF: {e}") from None
    except linux.PayloadError as e:
        raise BootError(str(e)) from None
    # Linux: segments are linked at virtual addresses; load by physical address.
    _load_segments(mem, vmlinux, 0x7FFFFFFF)
    entry = vmlinux.entry & 0x7FFFFFFF
    cmd = write_cmdline(mem, cmdline)
    max_rd = linux.initrd_addr_max(setup)
    rd = place_initrd(mem, initrd, max_rd) if initrd is not None else None
    params = linux.write_boot_params(mem, setup, cmd, len(cmdline), rd, rsdp)
    linux.write_identity_page_tables(mem)
    linux.write_boot_gdt(mem)
    return BootPlan("linux", entry, params)
