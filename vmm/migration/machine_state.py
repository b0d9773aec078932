"""The whole machine's state but its RAM, as migration and snapshots carry it.

    machine   what must be equal at both ends (machine type, RAM size, vCPUs)
    kvm       the in-kernel PICs, IOAPIC, PIT and clock
    vcpus     each vCPU's registers (vmm/kvm_state.py)
    board     the board's registers that are no device of their own (fw_cfg's
              selector, the PCI config address latch, ACPI PCI hotplug)
    devices   a versioned section per device (vmm/device_manager.py)

``load`` checks everything it can before it changes anything; a section that
does not fit refuses the whole state.
"""

from __future__ import annotations

from vmm import kvm_state, savestate
from vmm.errors import UserError
from vmm.kvm import KvmError


def _identity(machine) -> dict:
    return {"type": machine.cfg.machine_type, "ram": machine.memory.size,
            "cpus": len(machine.vcpus)}


def _board(machine) -> dict:
    parts = {"fw_cfg": machine.fw_cfg, "pci_ports": machine.pci_ports}
    if machine.pcihp is not None:
        parts["pcihp"] = machine.pcihp
    return parts


def save(machine) -> dict:
    """Call with the vCPUs parked."""
    with machine.lock:
        return {
            "machine": _identity(machine),
            # QEMU's global state: a VM that was not running stays so at the destination
            "runstate": getattr(machine, "prior_runstate", None) or machine.runstate,
            "kvm": kvm_state.save_vm(machine.vm, machine.cfg.pit),
            "vcpus": [kvm_state.save_vcpu(runner.vcpu, machine.msr_indices)
                      for runner in machine.vcpus],
            "board": {name: part.save_state() for name, part in _board(machine).items()},
            "devices": machine.devices.save_state(),
        }


def load(machine, state: object) -> None:
    """Loads a state save() made; UserError (nothing loaded) if it does not fit."""
    if not isinstance(state, dict):
        raise UserError("the machine state is not a record")
    identity = _identity(machine)
    if state.get("machine") != identity:
        raise UserError(f"the saved machine {state.get('machine')} is not this one "
                        f"({identity})")
    kvm = kvm_state.check_vm(state.get("kvm"), machine.cfg.pit)
    saved_vcpus = state.get("vcpus")
    if not isinstance(saved_vcpus, list) or len(saved_vcpus) != len(machine.vcpus):
        raise UserError("the saved vCPUs do not match")
    vcpus = [kvm_state.check_vcpu(saved, f"vcpu{index}")
             for index, saved in enumerate(saved_vcpus)]
    board = state.get("board")
    parts = _board(machine)
    if not isinstance(board, dict) or set(board) != set(parts):
        raise UserError("the saved board does not match")
    for name, part in parts.items():
        savestate.check_fields(part, getattr(part, "STATE", ()), board[name], name)
    machine.devices.check_state(state.get("devices"))
    with machine.lock:
        try:
            machine.devices.load_state(state["devices"])
            for name, part in parts.items():
                part.load_state(board[name])
            kvm_state.load_vm(machine.vm, kvm)
            for runner, built in zip(machine.vcpus, vcpus):
                kvm_state.load_vcpu(runner.vcpu, built)
        except KvmError as e:
            raise UserError(f"KVM refused the saved state: {e}") from None
        except (TypeError, ValueError, KeyError, IndexError) as e:
            raise UserError(f"the saved state does not fit: {e}") from None
