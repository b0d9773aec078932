"""The state KVM keeps for the VMM: each vCPU's registers, and the VM's in-kernel
irqchip (both PICs and the IOAPIC), PIT and clock.

Each piece is the kernel's own struct, carried as its bytes: source and
destination run on one host's KVM (as QEMU's, a migration needs the same
kernel interface at both ends), and a length check refuses any other. MSRs
go as (index, value) pairs, those this KVM says it saves and restores.
"""

from __future__ import annotations

from vmm import savestate
from vmm.kvm import Vcpu, Vm

VCPU_STRUCTS = {       # what each get/set pair carries, by name
    "regs": "struct kvm_regs", "sregs": "struct kvm_sregs", "xsave": "struct kvm_xsave",
    "lapic": "struct kvm_lapic_state", "events": "struct kvm_vcpu_events",
    "debugregs": "struct kvm_debugregs", "xcrs": "struct kvm_xcrs",
}


def _raw(obj) -> bytes:
    from vmm._kvm import ffi
    return bytes(ffi.buffer(obj))


def _struct(ctype: str, data: object, where: str):
    """A kernel struct filled from saved bytes of exactly its size."""
    from vmm._kvm import ffi
    obj = ffi.new(ctype + " *")
    if not isinstance(data, bytes) or len(data) != ffi.sizeof(obj[0]):
        raise savestate.StateError(f"{where}: saved {ctype} does not fit this KVM")
    ffi.memmove(obj, data, len(data))
    return obj


def read_msrs(vcpu: Vcpu, indices: list[int]) -> list[list[int]]:
    """Every MSR of ``indices`` the vCPU lets us read (KVM stops a batch at the first
    it refuses: that one is skipped and the rest read on)."""
    values: list[list[int]] = []
    rest = list(indices)
    while rest:
        got = vcpu.get_msrs(rest)
        values += [[index, got[index]] for index in rest[:len(got)]]
        rest = rest[len(got) + 1:]
    return values


def write_msrs(vcpu: Vcpu, pairs: list[list[int]]) -> None:
    rest = {index: value for index, value in pairs}
    while rest:
        done = vcpu.set_msrs(rest)
        rest = dict(list(rest.items())[done + 1:])


def save_vcpu(vcpu: Vcpu, msr_indices: list[int]) -> dict:
    from vmm._kvm import lib
    state = {"regs": _raw(vcpu.get_regs()), "sregs": _raw(vcpu.get_sregs()),
             "xsave": _raw(vcpu.get_xsave()), "lapic": _raw(vcpu.get_lapic()),
             "events": _raw(vcpu.get_vcpu_events()),
             "debugregs": _raw(vcpu.get_debugregs()),
             "mp_state": vcpu.get_mp_state(), "msrs": read_msrs(vcpu, msr_indices)}
    if vcpu.vm.kvm.check_extension(lib.KVM_CAP_XCRS):
        state["xcrs"] = _raw(vcpu.get_xcrs())
    return state


def check_vcpu(state: object, where: str) -> dict:
    """The vCPU's structs rebuilt from ``state``; StateError if one does not fit."""
    if not isinstance(state, dict):
        raise savestate.StateError(f"{where}: state is not a record")
    built = {name: _struct(ctype, state.get(name), f"{where}.{name}")
             for name, ctype in VCPU_STRUCTS.items() if name != "xcrs" or "xcrs" in state}
    msrs = state.get("msrs")
    if not isinstance(msrs, list) or not all(
            isinstance(p, list) and len(p) == 2 and all(isinstance(v, int) for v in p)
            and 0 <= p[0] < 1 << 32 and 0 <= p[1] < 1 << 64 for p in msrs):
        raise savestate.StateError(f"{where}.msrs: saved value does not fit")
    built["msrs"] = msrs
    built["mp_state"] = savestate.int_in(state.get("mp_state"), 0, 0xFF, f"{where}.mp_state")
    return built


def load_vcpu(vcpu: Vcpu, built: dict) -> None:
    """Loads what check_vcpu built, in the order KVM needs: control registers before
    the general ones, MSRs before the LAPIC (its base), events last."""
    from vmm._kvm import lib
    vcpu.set_sregs(built["sregs"])
    vcpu.set_regs(built["regs"])
    vcpu.set_xsave(built["xsave"])
    if "xcrs" in built:
        vcpu.set_xcrs(built["xcrs"])
    write_msrs(vcpu, built["msrs"])
    vcpu.set_lapic(built["lapic"])
    vcpu.set_debugregs(built["debugregs"])
    vcpu.set_mp_state(built["mp_state"])
    events = built["events"]
    events.flags |= lib.KVM_VCPUEVENT_VALID_NMI_PENDING | lib.KVM_VCPUEVENT_VALID_SIPI_VECTOR
    vcpu.set_vcpu_events(events)


def save_vm(vm: Vm, has_pit: bool) -> dict:
    from vmm._kvm import lib
    state = {"pic_master": _raw(vm.get_irqchip(lib.KVM_IRQCHIP_PIC_MASTER)[0]),
             "pic_slave": _raw(vm.get_irqchip(lib.KVM_IRQCHIP_PIC_SLAVE)[0]),
             "ioapic": _raw(vm.get_irqchip(lib.KVM_IRQCHIP_IOAPIC)[0]),
             "clock": vm.get_clock()}
    if has_pit:
        state["pit"] = _raw(vm.get_pit2())
    return state


def check_vm(state: object, has_pit: bool, where: str = "kvm") -> dict:
    from vmm._kvm import lib
    if not isinstance(state, dict) or ("pit" in state) != has_pit:
        raise savestate.StateError(f"{where}: the in-kernel devices do not match")
    built = {}
    for name, chip_id in (("pic_master", lib.KVM_IRQCHIP_PIC_MASTER),
                          ("pic_slave", lib.KVM_IRQCHIP_PIC_SLAVE),
                          ("ioapic", lib.KVM_IRQCHIP_IOAPIC)):
        chip = _struct("struct kvm_irqchip", state.get(name), f"{where}.{name}")
        if chip.chip_id != chip_id:
            raise savestate.StateError(f"{where}.{name}: another chip's state")
        built[name] = chip
    built["clock"] = _struct("struct kvm_clock_data", state.get("clock"), f"{where}.clock")
    if has_pit:
        built["pit"] = _struct("struct kvm_pit_state2", state.get("pit"), f"{where}.pit")
    return built


def load_vm(vm: Vm, built: dict) -> None:
    from vmm._kvm import ffi
    for name in ("pic_master", "pic_slave", "ioapic"):
        vm.set_irqchip(built[name])
    if "pit" in built:
        vm.set_pit2(built["pit"])
    vm.set_clock(bytes(ffi.buffer(built["clock"])))

