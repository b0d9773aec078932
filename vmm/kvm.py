"""Typed wrappers over the /dev/kvm ioctls kvmkit uses.

Every call goes through the cffi extension built from <linux/kvm.h>; a cffi
call releases the GIL, so a vCPU thread blocked in KVM_RUN lets the rest of
the VMM run.
"""

from __future__ import annotations

import mmap
import os
import struct
from dataclasses import dataclass

from vmm._kvm import ffi, lib


class KvmError(OSError):
    """An ioctl on /dev/kvm, a VM or a vCPU failed."""


def _check(ret: int, what: str) -> int:
    if ret < 0:
        raise KvmError(-ret, f"{what}: {os.strerror(-ret)}")
    return ret


@dataclass(frozen=True)
class CpuidEntry:
    function: int
    index: int
    flags: int
    eax: int
    ebx: int
    ecx: int
    edx: int


class Kvm:
    """The system fd: capabilities and VM creation."""

    def __init__(self, path: str = "/dev/kvm") -> None:
        try:
            self.fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
        except OSError as e:
            raise KvmError(e.errno, f"Could not access KVM kernel module: {e.strerror}") from None
        version = lib.kk_ioctl_val(self.fd, lib.KVM_GET_API_VERSION, 0)
        if version != lib.KVM_API_VERSION:
            os.close(self.fd)
            raise KvmError(0, f"kvm version not supported ({version})")
        self.vcpu_mmap_size = _check(
            lib.kk_ioctl_val(self.fd, lib.KVM_GET_VCPU_MMAP_SIZE, 0), "KVM_GET_VCPU_MMAP_SIZE")

    def check_extension(self, cap: int) -> int:
        return max(lib.kk_ioctl_val(self.fd, lib.KVM_CHECK_EXTENSION, cap), 0)

    def supported_cpuid(self) -> list[CpuidEntry]:
        nent = 256
        while True:
            buf = ffi.new("struct kvm_cpuid2 *", {"nent": nent, "entries": nent})
            buf.nent = nent
            ret = lib.kk_ioctl(self.fd, lib.KVM_GET_SUPPORTED_CPUID, buf)
            if ret == -7:  # E2BIG: ask again with room for more entries
                nent *= 2
                continue
            _check(ret, "KVM_GET_SUPPORTED_CPUID")
            return [CpuidEntry(e.function, e.index, e.flags, e.eax, e.ebx, e.ecx, e.edx)
                    for e in buf.entries[0:buf.nent]]

    def mce_cap_supported(self) -> tuple[int, int]:
        """(MCG_CAP bits, most banks) KVM can give a guest; (0, 0) without KVM_CAP_MCE."""
        banks = self.check_extension(lib.KVM_CAP_MCE)
        if not banks:
            return 0, 0
        cap = ffi.new("__u64 *")
        _check(lib.kk_ioctl(self.fd, lib.KVM_X86_GET_MCE_CAP_SUPPORTED, cap),
               "KVM_X86_GET_MCE_CAP_SUPPORTED")
        return cap[0], banks

    def msr_index_list(self) -> list[int]:
        buf = ffi.new("struct kvm_msr_list *", {"nmsrs": 1024, "indices": 1024})
        buf.nmsrs = 1024
        _check(lib.kk_ioctl(self.fd, lib.KVM_GET_MSR_INDEX_LIST, buf), "KVM_GET_MSR_INDEX_LIST")
        return list(buf.indices[0:buf.nmsrs])

    def feature_msr(self, index: int) -> int:
        """A feature MSR's value as KVM offers it (ARCH_CAPABILITIES, ...); 0 when KVM
        has none (KVM_GET_MSRS on the system fd reads feature MSRs)."""
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": 1, "entries": 1})
        buf.nmsrs, buf.entries[0].index = 1, index
        return buf.entries[0].data if lib.kk_ioctl(self.fd, lib.KVM_GET_MSRS, buf) == 1 else 0

    def create_vm(self) -> Vm:
        fd = _check(lib.kk_ioctl_val(self.fd, lib.KVM_CREATE_VM, 0), "KVM_CREATE_VM")
        return Vm(self, fd)

    def close(self) -> None:
        os.close(self.fd)


class Vm:
    """A VM fd: memory slots, the in-kernel irqchip, interrupts, vCPUs."""

    def __init__(self, kvm: Kvm, fd: int) -> None:
        self.kvm = kvm
        self.fd = fd

    def _ioctl(self, request: int, arg, what: str) -> int:
        return _check(lib.kk_ioctl(self.fd, request, arg), what)

    def set_user_memory_region(self, slot: int, gpa: int, size: int, hva: int,
                               flags: int = 0) -> None:
        region = ffi.new("struct kvm_userspace_memory_region *", {
            "slot": slot, "flags": flags, "guest_phys_addr": gpa,
            "memory_size": size, "userspace_addr": hva})
        self._ioctl(lib.KVM_SET_USER_MEMORY_REGION, region, "KVM_SET_USER_MEMORY_REGION")

    def get_dirty_log(self, slot: int, bitmap) -> None:
        """Fills ``bitmap`` (a writable buffer, one bit per page of the slot) with the
        pages written since the last call, and write-protects them again."""
        _check(lib.kk_get_dirty_log(self.fd, slot, ffi.from_buffer(bitmap)),
               "KVM_GET_DIRTY_LOG")

    def get_clock(self) -> bytes:
        clock = ffi.new("struct kvm_clock_data *")
        self._ioctl(lib.KVM_GET_CLOCK, clock, "KVM_GET_CLOCK")
        return bytes(ffi.buffer(clock))

    def set_clock(self, data: bytes) -> None:
        clock = ffi.new("struct kvm_clock_data *")
        ffi.memmove(clock, data, ffi.sizeof(clock[0]))
        clock.flags = 0                     # only the clock value is settable
        self._ioctl(lib.KVM_SET_CLOCK, clock, "KVM_SET_CLOCK")

    def set_tss_addr(self, addr: int) -> None:
        _check(lib.kk_ioctl_val(self.fd, lib.KVM_SET_TSS_ADDR, addr), "KVM_SET_TSS_ADDR")

    def set_identity_map_addr(self, addr: int) -> None:
        self._ioctl(lib.KVM_SET_IDENTITY_MAP_ADDR, ffi.new("__u64 *", addr),
                    "KVM_SET_IDENTITY_MAP_ADDR")

    def create_irqchip(self) -> None:
        _check(lib.kk_ioctl_val(self.fd, lib.KVM_CREATE_IRQCHIP, 0), "KVM_CREATE_IRQCHIP")

    def create_pit2(self) -> None:
        cfg = ffi.new("struct kvm_pit_config *", {"flags": lib.KVM_PIT_SPEAKER_DUMMY})
        self._ioctl(lib.KVM_CREATE_PIT2, cfg, "KVM_CREATE_PIT2")

    def get_irqchip(self, chip_id: int):
        """The in-kernel PIC's state (chip 0 master, 1 slave): (buffer, kvm_pic_state)."""
        chip = ffi.new("struct kvm_irqchip *", {"chip_id": chip_id})
        self._ioctl(lib.KVM_GET_IRQCHIP, chip, "KVM_GET_IRQCHIP")
        pic = ffi.cast("struct kvm_pic_state *", ffi.cast("char *", chip) + lib.IRQCHIP_CHIP)
        return chip, pic

    def set_irqchip(self, chip) -> None:
        self._ioctl(lib.KVM_SET_IRQCHIP, chip, "KVM_SET_IRQCHIP")

    def get_pit2(self):
        state = ffi.new("struct kvm_pit_state2 *")
        self._ioctl(lib.KVM_GET_PIT2, state, "KVM_GET_PIT2")
        return state

    def set_pit2(self, state) -> None:
        self._ioctl(lib.KVM_SET_PIT2, state, "KVM_SET_PIT2")

    def set_pit_reinject(self, reinject: bool) -> None:
        """Off: ticks the guest missed are dropped (QEMU's lost_tick_policy=discard)."""
        req = ffi.new("struct kvm_reinject_control *", {"pit_reinject": int(reinject)})
        self._ioctl(lib.KVM_REINJECT_CONTROL, req, "KVM_REINJECT_CONTROL")

    def irq_line(self, gsi: int, level: int) -> None:
        req = ffi.new("struct kvm_irq_level *", {"irq": gsi, "level": level})
        self._ioctl(lib.KVM_IRQ_LINE, req, "KVM_IRQ_LINE")

    def set_gsi_routing(self, routes: list[tuple]) -> None:
        """routes: ("irqchip", gsi, chip, pin) or ("msi", gsi, addr, data)."""
        table = ffi.new("struct kvm_irq_routing *", {"nr": len(routes), "entries": len(routes)})
        table.nr = len(routes)
        for entry, route in zip(table.entries, routes):
            entry.gsi = route[1]
            if route[0] == "irqchip":
                entry.type = lib.KVM_IRQ_ROUTING_IRQCHIP
                entry.u.irqchip.irqchip = route[2]
                entry.u.irqchip.pin = route[3]
            else:
                entry.type = lib.KVM_IRQ_ROUTING_MSI
                entry.u.msi.address_lo = route[2] & 0xFFFFFFFF
                entry.u.msi.address_hi = route[2] >> 32
                entry.u.msi.data = route[3]
        self._ioctl(lib.KVM_SET_GSI_ROUTING, table, "KVM_SET_GSI_ROUTING")

    def irqfd(self, fd: int, gsi: int, deassign: bool = False) -> None:
        req = ffi.new("struct kvm_irqfd *", {
            "fd": fd, "gsi": gsi, "flags": lib.KVM_IRQFD_FLAG_DEASSIGN if deassign else 0})
        self._ioctl(lib.KVM_IRQFD, req, "KVM_IRQFD")

    def ioeventfd(self, fd: int, addr: int, length: int, pio: bool = False,
                  datamatch: int | None = None, deassign: bool = False) -> None:
        flags = 0
        if pio:
            flags |= lib.KVM_IOEVENTFD_FLAG_PIO
        if datamatch is not None:
            flags |= lib.KVM_IOEVENTFD_FLAG_DATAMATCH
        if deassign:
            flags |= lib.KVM_IOEVENTFD_FLAG_DEASSIGN
        req = ffi.new("struct kvm_ioeventfd *", {
            "datamatch": datamatch or 0, "addr": addr, "len": length, "fd": fd, "flags": flags})
        self._ioctl(lib.KVM_IOEVENTFD, req, "KVM_IOEVENTFD")

    def signal_msi(self, addr: int, data: int) -> int:
        msi = ffi.new("struct kvm_msi *", {
            "address_lo": addr & 0xFFFFFFFF, "address_hi": addr >> 32, "data": data})
        return self._ioctl(lib.KVM_SIGNAL_MSI, msi, "KVM_SIGNAL_MSI")

    def create_vcpu(self, index: int) -> Vcpu:
        fd = _check(lib.kk_ioctl_val(self.fd, lib.KVM_CREATE_VCPU, index), "KVM_CREATE_VCPU")
        return Vcpu(self, index, fd)

    def close(self) -> None:
        os.close(self.fd)


class Vcpu:
    """A vCPU fd and its shared kvm_run page."""

    def __init__(self, vm: Vm, index: int, fd: int) -> None:
        self.vm = vm
        self.index = index
        self.fd = fd
        self.run_page = mmap.mmap(fd, vm.kvm.vcpu_mmap_size, mmap.MAP_SHARED,
                                  mmap.PROT_READ | mmap.PROT_WRITE)

    def run(self) -> int:
        """Enter the guest; returns 0 or -errno (-EINTR when kicked)."""
        return lib.kk_ioctl_val(self.fd, lib.KVM_RUN, 0)

    def exit_reason(self) -> int:
        return struct.unpack_from("<I", self.run_page, lib.RUN_EXIT_REASON)[0]

    def set_immediate_exit(self, value: bool) -> None:
        self.run_page[lib.RUN_IMMEDIATE_EXIT] = 1 if value else 0

    def _get(self, request: int, ctype: str, what: str):
        obj = ffi.new(ctype)
        _check(lib.kk_ioctl(self.fd, request, obj), what)
        return obj

    def _set(self, request: int, obj, what: str) -> None:
        _check(lib.kk_ioctl(self.fd, request, obj), what)

    def setup_mce(self, mcg_cap: int) -> None:
        self._set(lib.KVM_X86_SETUP_MCE, ffi.new("__u64 *", mcg_cap), "KVM_X86_SETUP_MCE")

    def get_regs(self):
        return self._get(lib.KVM_GET_REGS, "struct kvm_regs *", "KVM_GET_REGS")

    def set_regs(self, regs) -> None:
        self._set(lib.KVM_SET_REGS, regs, "KVM_SET_REGS")

    def get_sregs(self):
        return self._get(lib.KVM_GET_SREGS, "struct kvm_sregs *", "KVM_GET_SREGS")

    def set_sregs(self, sregs) -> None:
        self._set(lib.KVM_SET_SREGS, sregs, "KVM_SET_SREGS")

    def get_fpu(self):
        return self._get(lib.KVM_GET_FPU, "struct kvm_fpu *", "KVM_GET_FPU")

    def set_fpu(self, fpu) -> None:
        self._set(lib.KVM_SET_FPU, fpu, "KVM_SET_FPU")

    def get_xsave(self):
        return self._get(lib.KVM_GET_XSAVE, "struct kvm_xsave *", "KVM_GET_XSAVE")

    def set_xsave(self, xsave) -> None:
        self._set(lib.KVM_SET_XSAVE, xsave, "KVM_SET_XSAVE")

    def get_debugregs(self):
        return self._get(lib.KVM_GET_DEBUGREGS, "struct kvm_debugregs *", "KVM_GET_DEBUGREGS")

    def set_debugregs(self, debugregs) -> None:
        self._set(lib.KVM_SET_DEBUGREGS, debugregs, "KVM_SET_DEBUGREGS")

    def inject_mce(self, bank: int, status: int, mcg_status: int, addr: int, misc: int) -> None:
        mce = ffi.new("struct kvm_x86_mce *")
        mce.bank, mce.status, mce.mcg_status, mce.addr, mce.misc = (
            bank, status, mcg_status, addr, misc)
        self._set(lib.KVM_X86_SET_MCE, mce, "KVM_X86_SET_MCE")

    def nmi(self) -> None:
        _check(lib.kk_ioctl_val(self.fd, lib.KVM_NMI, 0), "KVM_NMI")

    def set_guest_debug(self, control: int, debugreg: list[int] | None = None) -> None:
        """KVM_SET_GUEST_DEBUG: single-step and breakpoints that exit to us, not the guest."""
        dbg = ffi.new("struct kvm_guest_debug *")
        dbg.control = control
        for i, value in enumerate(debugreg or ()):
            dbg.arch.debugreg[i] = value
        self._set(lib.KVM_SET_GUEST_DEBUG, dbg, "KVM_SET_GUEST_DEBUG")

    def get_vcpu_events(self):
        return self._get(lib.KVM_GET_VCPU_EVENTS, "struct kvm_vcpu_events *",
                         "KVM_GET_VCPU_EVENTS")

    def set_vcpu_events(self, events) -> None:
        self._set(lib.KVM_SET_VCPU_EVENTS, events, "KVM_SET_VCPU_EVENTS")

    def get_xcrs(self):
        return self._get(lib.KVM_GET_XCRS, "struct kvm_xcrs *", "KVM_GET_XCRS")

    def set_xcrs(self, xcrs) -> None:
        self._set(lib.KVM_SET_XCRS, xcrs, "KVM_SET_XCRS")

    def get_lapic(self):
        return self._get(lib.KVM_GET_LAPIC, "struct kvm_lapic_state *", "KVM_GET_LAPIC")

    def set_lapic(self, lapic) -> None:
        self._set(lib.KVM_SET_LAPIC, lapic, "KVM_SET_LAPIC")

    def get_mp_state(self) -> int:
        return self._get(lib.KVM_GET_MP_STATE, "struct kvm_mp_state *",
                         "KVM_GET_MP_STATE").mp_state

    def set_mp_state(self, state: int) -> None:
        self._set(lib.KVM_SET_MP_STATE, ffi.new("struct kvm_mp_state *", {"mp_state": state}),
                  "KVM_SET_MP_STATE")

    def get_msrs(self, indices: list[int]) -> dict[int, int]:
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": len(indices), "entries": len(indices)})
        buf.nmsrs = len(indices)
        for entry, index in zip(buf.entries, indices):
            entry.index = index
        got = _check(lib.kk_ioctl(self.fd, lib.KVM_GET_MSRS, buf), "KVM_GET_MSRS")
        return {buf.entries[i].index: buf.entries[i].data for i in range(got)}

    def set_msrs(self, values: dict[int, int]) -> int:
        buf = ffi.new("struct kvm_msrs *", {"nmsrs": len(values), "entries": len(values)})
        buf.nmsrs = len(values)
        for entry, (index, data) in zip(buf.entries, values.items()):
            entry.index = index
            entry.data = data
        return _check(lib.kk_ioctl(self.fd, lib.KVM_SET_MSRS, buf), "KVM_SET_MSRS")

    def set_cpuid(self, entries: list[CpuidEntry]) -> None:
        buf = ffi.new("struct kvm_cpuid2 *", {"nent": len(entries), "entries": len(entries)})
        buf.nent = len(entries)
        for dst, e in zip(buf.entries, entries):
            dst.function, dst.index, dst.flags = e.function, e.index, e.flags
            dst.eax, dst.ebx, dst.ecx, dst.edx = e.eax, e.ebx, e.ecx, e.edx
        self._set(lib.KVM_SET_CPUID2, buf, "KVM_SET_CPUID2")

    def close(self) -> None:
        self.run_page.close()
        os.close(self.fd)
