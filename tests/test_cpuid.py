"""Per-vCPU CPUID: APIC ids, topology, the hypervisor bit and KVM's signature."""

from vmm.cpu import build_cpuid
from vmm.kvm import CpuidEntry

SUPPORTED = [
    CpuidEntry(0x1, 0, 0, 0x00060FB1, 0x00000800, 0x7ED8320B, 0x178BFBFF),
    CpuidEntry(0x4, 0, 1, 0x1C004121, 0, 0, 0),
    CpuidEntry(0xB, 0, 1, 0, 0, 0, 0),
    CpuidEntry(0xB, 1, 1, 0, 0, 0, 0),
    CpuidEntry(0x80000008, 0, 0, 0x3030, 0, 0, 0),
]


def leaf(entries, function, index=0):
    return next(e for e in entries if e.function == function and e.index == index)


def test_apic_id_and_logical_count_in_leaf_1():
    entries = build_cpuid(SUPPORTED, index=3, ncpus=4)
    one = leaf(entries, 1)
    assert one.ebx >> 24 == 3
    assert (one.ebx >> 16) & 0xFF == 4
    assert one.ebx & 0xFFFF == 0x0800           # brand/clflush bits kept
    assert one.ecx & (1 << 31)                  # hypervisor present
    assert one.edx & (1 << 28)                  # HTT with more than one logical CPU


def test_x2apic_topology_leaves():
    entries = build_cpuid(SUPPORTED, index=2, ncpus=3)
    smt, core = leaf(entries, 0xB, 0), leaf(entries, 0xB, 1)
    assert (smt.eax, smt.ebx, smt.ecx >> 8, smt.edx) == (0, 1, 1, 2)
    assert (core.eax, core.ebx, core.ecx >> 8, core.edx) == (2, 3, 2, 2)
    assert leaf(entries, 0x80000008).ecx & 0xFF == 2
    assert leaf(entries, 0x4).eax >> 26 == 2


def test_kvm_signature_leaf():
    entries = build_cpuid(SUPPORTED, index=0, ncpus=1)
    sig = leaf(entries, 0x40000000)
    raw = b"".join(v.to_bytes(4, "little") for v in (sig.ebx, sig.ecx, sig.edx))
    assert raw == b"KVMKVMKVM\0\0\0"
    assert sig.eax >= 0x40000001
    assert not leaf(entries, 1).edx & (1 << 28)
