"""-kernel/-initrd/-append: pick the boot protocol and lay the image out.

The order is QEMU's:

* a Linux bzImage has its payload decompressed here and its vmlinux ELF loaded;
* an image with a multiboot header boots through multiboot (the -initrd entries
  are its modules), even when it is also an ELF with a PVH note;
* an ELF with a PVH note boots through PVH (32-bit entry, hvm_start_info);
* a plain x86-64 vmlinux ELF is loaded and entered at its 64-bit entry point.

Anything else is refused with a message, never entered blindly.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from vmm.boot import layout, linux, multiboot, pvh
from vmm.boot.elf import EM_X86_64, ElfError, ElfImage, is_elf, parse_elf
from vmm.errors import UserError
from vmm.memory import GuestMemory, GuestMemoryError

log = logging.getLogger(__name__)


class BootError(UserError):
    """The kernel or initrd cannot be booted; the message is for the user."""


@dataclass(frozen=True)
class BootFiles:
    """What -kernel and -initrd name, read once: the machine reloads it at each reset."""
    kernel_name: str
    kernel: bytes
    initrd: bytes | None                 # Linux and PVH: one file
    modules: list[multiboot.Module]      # multiboot: each -initrd entry


@dataclass(frozen=True)
class BootPlan:
    protocol: str            # "pvh", "multiboot" or "linux"
    entry: int
    info_addr: int           # hvm_start_info, multiboot info or boot_params


def read_boot_files(kernel_path: str, initrd_spec: str | None) -> BootFiles:
    """Reads the kernel and its initrd or modules; raises BootError with QEMU's text."""
    try:
        with open(kernel_path, "rb") as f:
            kernel = f.read()
    except OSError as e:
        raise BootError(f"could not open kernel file '{kernel_path}': {e.strerror}") from None
    if initrd_spec is None:
        return BootFiles(kernel_path, kernel, None, [])
    if _multiboot_header(kernel) is not None:
        try:
            return BootFiles(kernel_path, kernel, None, multiboot.read_modules(initrd_spec))
        except multiboot.MultibootError as e:
            raise BootError(str(e)) from None
    try:
        with open(initrd_spec, "rb") as f:
            initrd = f.read()
    except OSError as e:
        raise BootError(f"could not load initial ram disk '{initrd_spec}': "
                        f"{e.strerror}") from None
    return BootFiles(kernel_path, kernel, initrd, [])


def _multiboot_header(kernel: bytes) -> tuple[int, int] | None:
    if linux.is_bzimage(kernel):
        return None
    return multiboot.find_header(kernel)


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
    top = min(mem.below_4g - layout.FIRMWARE_HIGH_TABLES, max_addr + 1)   # as QEMU
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


def load_kernel(mem: GuestMemory, files: BootFiles, cmdline: str, rsdp: int) -> BootPlan:
    """Loads a kernel image into ``mem``; raises BootError with a user message."""
    kernel, initrd = files.kernel, files.initrd
    header = _multiboot_header(kernel)
    if header is not None:
        if header[1] & multiboot.FLAG_VIDEO_MODE:
            log.warning("multiboot knows VBE. we don't.")
        try:
            entry, info = multiboot.load(mem, kernel, header, files.kernel_name, cmdline,
                                         files.modules)
        except multiboot.MultibootError as e:
            raise BootError(str(e)) from None
        return BootPlan("multiboot", entry, info)
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
            if not image.is64 or image.machine != EM_X86_64:
                raise BootError("kernel is an ELF image with neither a PVH note nor a "
                                "multiboot header, and not an x86-64 vmlinux")
            setup = None
            vmlinux = image
        elif linux.is_bzimage(kernel):
            setup, payload = linux.split_bzimage(kernel)
            vmlinux = parse_elf(linux.decompress(payload))
        else:
            raise BootError("kernel is neither a Linux bzImage, a multiboot image nor an "
                            "ELF image")
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
