"""-cpu models: QEMU's qemu64 built from its definition, host/max, flags and errors."""

from __future__ import annotations

import pytest

from vmm.cpu import build_cpuid
from vmm.cpu_models import CpuModelError, mcg_cap, model_cpuid, parse_cpu
from vmm.kvm import CpuidEntry

# What this machine's KVM reported (KVM_GET_SUPPORTED_CPUID), cut down
SUPPORTED = [
    CpuidEntry(0x0, 0, 0, 0x1C, 0x68747541, 0x444D4163, 0x69746E65),
    CpuidEntry(0x1, 0, 0, 0xA10F11, 0x1020800, 0x81202000, 0x078BFBFF),
    CpuidEntry(0x7, 0, 1, 0x1, 0x1800002, 0x104, 0x20000000),
    CpuidEntry(0x40000001, 0, 0, 0x1007EFB, 0, 0, 0),
    CpuidEntry(0x80000000, 0, 0, 0x80000021, 0x68747541, 0x444D4163, 0x69746E65),
    CpuidEntry(0x80000001, 0, 0, 0xA10F11, 0x40000000, 0x400393, 0x23D3FBFF),
    CpuidEntry(0x80000008, 0, 0, 0x3030, 0, 0, 0),
]


def leaf(entries, function, index=0):
    return next(e for e in entries if e.function == function and e.index == index)


def test_qemu64_is_qemus_default_model_masked_by_kvm():
    warnings = []
    table = model_cpuid(parse_cpu("qemu64"), SUPPORTED, warnings.append)
    # the values QEMU 7.2 gives a qemu64 guest on this host (read by a guest on both VMMs)
    assert (leaf(table, 0).eax, leaf(table, 0).ebx) == (0xD, 0x68747541)
    assert leaf(table, 1).eax == 0x00060FB1
    assert leaf(table, 1).edx == 0x078BFBFD
    assert leaf(table, 0x80000000).eax == 0x8000000A
    assert (leaf(table, 0x80000001).ecx, leaf(table, 0x80000001).edx) == (0x1, 0x2193FBFD)
    assert leaf(table, 0x40000001).eax == 0x0100007B
    assert leaf(table, 0x80000008).eax == 0x3028
    brand = b"".join(r.to_bytes(4, "little") for f in (0x80000002, 0x80000003, 0x80000004)
                     for r in (leaf(table, f).eax, leaf(table, f).ebx, leaf(table, f).ecx,
                               leaf(table, f).edx))
    assert brand.rstrip(b"\0") == b"QEMU Virtual CPU version 2.5+"
    assert warnings == ["warning: host doesn't support requested feature: "
                        "CPUID.01H:ECX.pni [bit 0]"]
    assert leaf(table, 1).ecx == (1 << 13) | (1 << 21) | (1 << 31)   # no sse3 here


def test_flags_vendor_and_phys_bits():
    table = model_cpuid(parse_cpu("qemu64,-x2apic,+tsc-deadline,vendor=GenuineIntel"),
                        SUPPORTED)
    assert leaf(table, 1).ecx == (1 << 13) | (1 << 24) | (1 << 31)
    raw = b"".join(leaf(table, 0).__getattribute__(r).to_bytes(4, "little")
                   for r in ("ebx", "edx", "ecx"))
    assert raw == b"GenuineIntel"
    assert leaf(table, 0x80000001).edx == 0x20100800     # no AMD aliases for Intel
    table = model_cpuid(parse_cpu("qemu64,host-phys-bits"), SUPPORTED)
    assert leaf(table, 0x80000008).eax & 0xFF == 0x30
    table = model_cpuid(parse_cpu("max,phys-bits=36,-x2apic"), SUPPORTED)
    assert leaf(table, 0x80000008).eax & 0xFF == 36
    assert leaf(table, 1).eax == 0xA10F11 and not leaf(table, 1).ecx & (1 << 21)
    assert model_cpuid(parse_cpu("host"), SUPPORTED) == sorted(
        SUPPORTED, key=lambda e: (e.function, e.index))


def test_one_logical_cpu_is_not_counted_in_leaf_1_as_qemu():
    table = model_cpuid(parse_cpu("qemu64"), SUPPORTED)
    assert leaf(build_cpuid(table, 0, 1), 1).ebx == 0x800
    assert leaf(build_cpuid(table, 1, 2), 1).ebx == 0x01020800


@pytest.mark.parametrize("arg, message", [
    ("nosuch", "unable to find CPU model 'nosuch'"),
    ("qemu64,+nosuch", "Property 'qemu64-x86_64-cpu.nosuch' not found"),
    ("max,hv_passthrough", "Property 'max-x86_64-cpu.hv_passthrough' not found"),
    ("qemu64,vendor=Intel", "Property 'qemu64-x86_64-cpu.vendor' doesn't take value 'Intel'"),
    ("qemu64,x2apic=maybe", "Parameter 'x2apic' expects 'on' or 'off'"),
])
def test_bad_cpu_options_get_qemus_errors(arg, message):
    with pytest.raises(CpuModelError) as e:
        parse_cpu(arg)
    assert str(e.value) == message


def test_machine_check_banks_as_qemu():
    table = model_cpuid(parse_cpu("qemu64"), SUPPORTED)
    assert mcg_cap(table, (0x1000100, 32)) == 0x100010A         # CTL_P, SER_P, 10 banks
    assert mcg_cap(table, (0, 0)) == 0
    no_mca = model_cpuid(parse_cpu("qemu64,-mca"), SUPPORTED)
    assert mcg_cap(no_mca, (0x1000100, 32)) == 0
    assert parse_cpu("qemu64,sse4_1=on,-sse4.1").minus == {"sse4.1"}


@pytest.mark.qemu
def test_cpu_queries_match_a_live_qemu(tmp_path):
    from guest import QEMU, kvmkit_command, qmp_answers

    commands = [
        ("query-cpu-definitions", {}),
        ("query-cpu-model-expansion", {"type": "full", "model": {"name": "qemu64"}}),
        ("query-cpu-model-expansion", {"type": "static", "model": {
            "name": "qemu64", "props": {"vendor": "GenuineIntel", "x2apic": False,
                                        "pcid": True}}}),
        ("query-cpu-model-expansion", {"type": "full", "model": {"name": "SandyBridge"}}),
        ("query-cpu-model-expansion", {"type": "full", "model": {"name": "Cooperlake"}}),
        ("query-cpu-model-expansion", {"type": "full", "model": {"name": "nosuch"}}),
        ("query-cpu-model-expansion", {"type": "sideways", "model": {"name": "qemu64"}}),
    ]
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "kvmkit.sock"), commands)
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "qemu.sock"), commands)
    wanted = {d["name"]: d for d in theirs[0]["return"]}
    assert [d for d in ours[0]["return"]] == [wanted[d["name"]] for d in ours[0]["return"]]
    assert len(ours[0]["return"]) == len(theirs[0]["return"]) - 75    # no -vN names
    for mine, qemu in zip(ours[1:5], theirs[1:5]):
        assert mine["return"]["model"]["name"] == qemu["return"]["model"]["name"]
        props, reference = mine["return"]["model"]["props"], qemu["return"]["model"]["props"]
        assert len(props) > 150
        assert {k: v for k, v in props.items() if reference.get(k) != v} == {}
    assert ours[5:] == theirs[5:]


@pytest.mark.qemu
def test_a_named_model_with_flags_warns_as_qemu():
    """OpenStack's -cpu line (seed 004; QEMU 7.2 has no osxsave): the same warnings
    for each feature this host's KVM lacks, but QEMU's for VMX capability MSRs."""
    import subprocess

    from guest import QEMU, kvmkit_command

    flags = ("SandyBridge,+erms,+smep,+fsgsbase,+pdpe1gb,+rdrand,+f16c,+dca,+pcid,+pdcm,+xtpr,"
             "+tm2,+est,+smx,+vmx,+ds_cpl,+monitor,+dtes64,+pbe,+tm,+ht,+ss,+acpi,+ds,+vme")
    out = {}
    for name, argv in (("qemu", [QEMU, "-accel", "kvm"]), ("kvmkit", kvmkit_command())):
        run = subprocess.run(argv + ["-nodefaults", "-display", "none", "-S", "-cpu", flags,
                                     "-monitor", "stdio"],
                             input="quit\n", capture_output=True, text=True, timeout=30)
        out[name] = [line.split(": ", 1)[1] for line in run.stderr.splitlines()
                     if "warning" in line and "MSR(4" not in line]
    assert len(out["qemu"]) > 30 and out["kvmkit"] == out["qemu"]
    assert any("CPUID.0DH:EAX.xsaveopt" in line for line in out["kvmkit"])


def test_check_and_enforce():
    quiet = []
    model_cpuid(parse_cpu("qemu64,check=off"), SUPPORTED, quiet.append)
    assert quiet == []
    model_cpuid(parse_cpu("qemu64,-pni,enforce"), SUPPORTED)          # nothing missing
    with pytest.raises(CpuModelError, match="Host doesn't support requested features"):
        model_cpuid(parse_cpu("qemu64,enforce"), SUPPORTED)
    with pytest.raises(CpuModelError, match="Property 'qemu64-x86_64-cpu.pmu' not found"):
        parse_cpu("qemu64,pmu=off")
