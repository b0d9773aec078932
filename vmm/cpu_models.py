"""-cpu MODEL[,+flag][,-flag][,flag=on|off][,vendor=..][,phys-bits=..][,host-phys-bits=..]

The models are QEMU 7.2's as a guest sees them under KVM: ``qemu64`` (QEMU's
default) is built from its definition and masked by what KVM supports, with
QEMU's KVM defaults (x2apic, the paravirtual features QEMU enables); ``host``
and ``max`` are what KVM supports. A flag the host cannot give is dropped with
QEMU's warning. Feature names are QEMU's ('-' and '_' alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from vmm.errors import UserError
from vmm.kvm import CpuidEntry

EAX, EBX, ECX, EDX = "eax", "ebx", "ecx", "edx"

# name -> (leaf, subleaf, register, bit)
FEATURES: dict[str, tuple[int, int, str, int]] = {}


def _bits(leaf: int, reg: str, names: str) -> None:
    for bit, name in enumerate(names.split()):
        if name != "-":
            FEATURES[name] = (leaf, 0, reg, bit)


_bits(1, EDX, "fpu vme de pse tsc msr pae mce cx8 apic - sep mtrr pge mca cmov pat pse36 pn "
      "clflush - ds acpi mmx fxsr sse sse2 ss ht tm ia64 pbe")
_bits(1, ECX, "pni pclmulqdq dtes64 monitor ds-cpl vmx smx est tm2 ssse3 cid - fma cx16 xtpr "
      "pdcm - pcid dca sse4.1 sse4.2 x2apic movbe popcnt tsc-deadline aes xsave - avx f16c "
      "rdrand hypervisor")
_bits(7, EBX, "fsgsbase tsc-adjust sgx bmi1 hle avx2 - smep bmi2 erms invpcid rtm - - mpx - "
      "avx512f avx512dq rdseed adx smap avx512ifma pcommit clflushopt clwb intel-pt "
      "avx512pf avx512er avx512cd sha-ni avx512bw avx512vl")
_bits(7, ECX, "- avx512vbmi umip pku - waitpkg avx512vbmi2 - gfni vaes vpclmulqdq avx512vnni "
      "avx512bitalg - avx512-vpopcntdq - la57 - - - - - rdpid")
_bits(0x80000001, EDX, "- - - - - - - - - - - syscall - - - - - - - - nx - mmxext - - "
      "fxsr-opt pdpe1gb rdtscp - lm 3dnowext 3dnow")
_bits(0x80000001, ECX, "lahf-lm cmp-legacy svm extapic cr8legacy abm sse4a misalignsse "
      "3dnowprefetch osvw ibs xop skinit wdt - lwp fma4 tce - nodeid-msr - tbm topoext")
_bits(0x80000008, EBX, "clzero - xsaveerptr")
_bits(0x8000000A, EDX, "npt lbrv svm-lock nrip-save tsc-scale vmcb-clean flushbyasid "
      "decodeassists")
# bit 3 is kvmclock's second (new MSRs) bit: QEMU's 'kvmclock' property sets both
_bits(0x40000001, EAX, "kvmclock kvm-nopiodelay kvm-mmu - kvm-asyncpf "
      "kvm-steal-time kvm-pv-eoi kvm-pv-unhalt - kvm-pv-tlb-flush - "
      "kvm-pv-ipi kvm-poll-control kvm-pv-sched-yield kvm-asyncpf-int kvm-msi-ext-dest-id")
FEATURES["kvmclock-stable-bit"] = (0x40000001, 0, EAX, 24)
# QEMU's other names for three features (its static model expansion omits them)
ALIASES = {"sse3": "pni", "sse4_1": "sse4.1", "sse4_2": "sse4.2"}
FEATURES.update({alias: FEATURES[name] for alias, name in ALIASES.items()})
_bits(7, EDX, "- - avx512-4vnniw avx512-4fmaps fsrm - - - avx512-vp2intersect - md-clear - - "
      "- serialize - tsx-ldtrk - - - - - - avx512-fp16 - - spec-ctrl stibp - "
      "arch-capabilities core-capability ssbd")

# CPUID.1:EDX bits that AMD repeats in CPUID.80000001h:EDX (QEMU's CPUID_EXT2_AMD_ALIASES)
AMD_ALIASES = 0x0183F3FF

# The paravirtual features QEMU turns on for KVM guests (kvm_default_props and the
# model's kvm features): kvmclock, nopiodelay, asyncpf, steal time, PV EOI, stable bit
QEMU_KVM_FEATURES = 0x0100007B


@dataclass(frozen=True)
class CpuModel:
    name: str
    vendor: str
    family: int
    model: int
    stepping: int
    level: int
    xlevel: int
    model_id: str
    features: dict[tuple[int, str], int]        # (leaf, register) -> bits


# What QEMU adds to every named model under KVM: x2apic, the hypervisor bit and its
# paravirtual features (kvm_default_props)
KVM_DEFAULTS = {(1, ECX): (1 << 21) | (1 << 31), (0x40000001, EAX): QEMU_KVM_FEATURES}

NAMED_MODELS = {model.name: model for model in (
    CpuModel("qemu64", "AuthenticAMD", 15, 107, 1, 0xD, 0x8000000A,
             "QEMU Virtual CPU version 2.5+",
             {(1, EDX): 0x078BFBFD,
              (1, ECX): (1 << 0) | (1 << 13),                            # sse3 cx16
              (0x80000001, EDX): (1 << 11) | (1 << 20) | (1 << 29),      # syscall nx lm
              (0x80000001, ECX): 1 << 0}),                               # lahf_lm
    CpuModel("Opteron_G1", "AuthenticAMD", 15, 6, 1, 5, 0x80000008,
             "AMD Opteron 240 (Gen 1 Class Opteron)",
             {(1, EDX): 0x078BFBFF,
              (1, ECX): 1 << 0,                                          # sse3
              (0x80000001, EDX): (1 << 11) | (1 << 20) | (1 << 29)}),   # syscall nx lm
)}
PASSTHROUGH_MODELS = ("host", "max")
MODEL_NAMES = tuple(NAMED_MODELS) + PASSTHROUGH_MODELS
DESCRIPTIONS = {"host": "KVM processor with all supported host features",
                "max": "Enables all features supported by the accelerator in the current host",
                **{m.name: m.model_id for m in NAMED_MODELS.values()}}


def _model_features(model: CpuModel) -> dict[tuple[int, str], int]:
    features = dict(model.features)
    for key, bits in KVM_DEFAULTS.items():
        features[key] = features.get(key, 0) | bits
    return features


class CpuModelError(UserError):
    """An unknown model or property; the message is QEMU's."""


@dataclass
class CpuConfig:
    model: str = "qemu64"
    plus: set[str] = field(default_factory=set)
    minus: set[str] = field(default_factory=set)
    vendor: str | None = None
    phys_bits: int | None = None
    host_phys_bits: bool = False
    check: bool = True           # warn about features the host cannot give
    enforce: bool = False        # and refuse to start instead


def _feature_name(text: str) -> str:
    return text.replace("_", "-") if text.replace("_", "-") in FEATURES else text


def parse_cpu(arg: str) -> CpuConfig:
    """-cpu's argument; raises CpuModelError with QEMU's text."""
    model, *props = arg.split(",")
    if model not in MODEL_NAMES:
        raise CpuModelError(f"unable to find CPU model '{model}'")
    cfg = CpuConfig(model)
    typename = f"{model}-x86_64-cpu"
    for prop in props:
        if not prop:
            continue
        if prop[0] in "+-":
            name = _feature_name(prop[1:])
            if name not in FEATURES:
                raise CpuModelError(f"Property '{typename}.{prop[1:]}' not found")
            (cfg.plus if prop[0] == "+" else cfg.minus).add(name)
            (cfg.minus if prop[0] == "+" else cfg.plus).discard(name)
            continue
        key, has_value, value = prop.partition("=")
        if key == "vendor":
            if len(value) != 12:
                raise CpuModelError(f"Property '{typename}.vendor' doesn't take value "
                                    f"'{value}'")
            cfg.vendor = value
        elif key == "phys-bits":
            try:
                cfg.phys_bits = int(value, 0)
            except ValueError:
                raise CpuModelError("Parameter 'phys-bits' expects uint32") from None
        elif key in ("host-phys-bits", "migratable", "check", "enforce") or \
                _feature_name(key) in FEATURES:
            on = _switch(typename, key, value if has_value else "on")
            name = _feature_name(key)
            if key == "host-phys-bits":
                cfg.host_phys_bits = on
            elif key in ("check", "enforce"):
                setattr(cfg, key, on)
            elif name in FEATURES:
                (cfg.plus if on else cfg.minus).add(name)
                (cfg.minus if on else cfg.plus).discard(name)
        else:
            raise CpuModelError(f"Property '{typename}.{key}' not found")
    return cfg


def _switch(typename: str, key: str, value: str) -> bool:
    if value in ("on", "yes", "true"):
        return True
    if value in ("off", "no", "false"):
        return False
    raise CpuModelError(f"Parameter '{key}' expects 'on' or 'off'")


def _vendor_regs(vendor: str) -> tuple[int, int, int]:
    raw = vendor.encode()
    return (int.from_bytes(raw[0:4], "little"), int.from_bytes(raw[8:12], "little"),
            int.from_bytes(raw[4:8], "little"))          # ebx, ecx, edx


def _string_leaves(text: str) -> list[tuple[int, int, int, int]]:
    raw = text.encode().ljust(48, b"\0")
    words = [int.from_bytes(raw[i:i + 4], "little") for i in range(0, 48, 4)]
    return [tuple(words[i:i + 4]) for i in range(0, 12, 4)]   # type: ignore[misc]


def model_cpuid(cfg: CpuConfig, supported: list[CpuidEntry],
                warn=lambda message: None, masked: bool = True) -> list[CpuidEntry]:
    """The CPUID table of the model before per-vCPU topology, masked by KVM support
    (unmasked: the features the model asks for, as QEMU's model expansion lists them)."""
    kvm = {(e.function, e.index): e for e in supported}

    def host(leaf: int, reg: str, index: int = 0) -> int:
        entry = kvm.get((leaf, index))
        return getattr(entry, reg) if entry else 0

    if cfg.model in PASSTHROUGH_MODELS:
        entries = {(e.function, e.index): e for e in supported}
        wanted: dict[tuple[int, str], int] = {}
    else:
        named = NAMED_MODELS[cfg.model]
        entries, wanted = _named_model_leaves(named, kvm), _model_features(named)
    for name in cfg.plus | cfg.minus:
        leaf, _, reg, bit = FEATURES[name]
        value = wanted.get((leaf, reg), host(leaf, reg) if cfg.model in PASSTHROUGH_MODELS
                           else 0)
        wanted[(leaf, reg)] = value | (1 << bit) if name in cfg.plus else value & ~(1 << bit)
    vendor = cfg.vendor or (NAMED_MODELS[cfg.model].vendor if cfg.model in NAMED_MODELS
                            else None)
    unavailable = False
    for (leaf, reg), bits in sorted(wanted.items()):
        missing = bits & ~host(leaf, reg) if masked else 0
        if leaf == 1 and reg == ECX:
            missing &= ~(1 << 31)                # the hypervisor bit is ours to give
        unavailable = unavailable or bool(missing)
        for bit in range(32):
            if missing >> bit & 1 and (cfg.check or cfg.enforce):
                warn(f"warning: host doesn't support requested feature: "
                     f"{_leaf_name(leaf)}:{reg.upper()}.{_name_of(leaf, reg, bit)} [bit {bit}]")
        value = bits & ~missing
        if leaf == 0x80000001 and reg == EDX and vendor == "AuthenticAMD":
            value |= getattr(entries.get((1, 0)), EDX, 0) & AMD_ALIASES
        entry = entries.get((leaf, 0)) or CpuidEntry(leaf, 0, 0, 0, 0, 0, 0)
        entries[(leaf, 0)] = replace(entry, **{reg: value})
    if unavailable and cfg.enforce:
        raise CpuModelError("Host doesn't support requested features")
    if vendor is not None:
        ebx, ecx, edx = _vendor_regs(vendor)
        for leaf in (0, 0x80000000):
            if (leaf, 0) in entries:
                entries[(leaf, 0)] = replace(entries[(leaf, 0)], ebx=ebx, ecx=ecx, edx=edx)
    if cfg.phys_bits or cfg.host_phys_bits:
        bits = (host(0x80000008, EAX) & 0xFF) if cfg.host_phys_bits else cfg.phys_bits
        entry = entries.get((0x80000008, 0)) or CpuidEntry(0x80000008, 0, 0, 0, 0, 0, 0)
        entries[(0x80000008, 0)] = replace(entry, eax=(entry.eax & ~0xFF) | bits)
    return [entries[key] for key in sorted(entries)]


def _named_model_leaves(model: CpuModel, kvm: dict) -> dict[tuple[int, int], CpuidEntry]:
    fms = ((model.family - 0xF if model.family > 0xF else 0) << 20) | \
        ((model.model >> 4) << 16) | (min(model.family, 0xF) << 8) | \
        ((model.model & 0xF) << 4) | model.stepping
    vendor = _vendor_regs(model.vendor)
    leaves: dict[tuple[int, int], CpuidEntry] = {
        (0, 0): CpuidEntry(0, 0, 0, model.level, *vendor),
        (1, 0): CpuidEntry(1, 0, 0, fms, 8 << 8, 0, 0),          # clflush line: 64 bytes
        (0x80000000, 0): CpuidEntry(0x80000000, 0, 0, model.xlevel, *vendor),
        (0x80000001, 0): CpuidEntry(0x80000001, 0, 0, fms, 0, 0, 0),
        # QEMU's legacy AMD L1/L2/L3 descriptions
        (0x80000005, 0): CpuidEntry(0x80000005, 0, 0, 0x01FF01FF, 0x01FF01FF, 0x40020140,
                                    0x40020140),
        (0x80000006, 0): CpuidEntry(0x80000006, 0, 0, 0, 0x42004200, 0x02008140, 0x00808140),
        (0x80000007, 0): CpuidEntry(0x80000007, 0, 0, 0, 0, 0, 0),
        (0x80000008, 0): CpuidEntry(0x80000008, 0, 0, 0x3028, 0, 0, 0),   # 40/48 bits
        (0x8000000A, 0): CpuidEntry(0x8000000A, 0, 0, 0, 0, 0, 0),
        (0x40000000, 0): CpuidEntry(0x40000000, 0, 0, 0x40000001, 0, 0, 0),
        (0x40000001, 0): CpuidEntry(0x40000001, 0, 0, 0, 0, 0, 0),
    }
    for i, regs in enumerate(_string_leaves(model.model_id)):
        leaves[(0x80000002 + i, 0)] = CpuidEntry(0x80000002 + i, 0, 0, *regs)
    for (function, index), entry in kvm.items():       # caches and topology: KVM's
        if function in (2, 4, 0xB) and function <= model.level:
            leaves[(function, index)] = entry
    if model.level >= 7:
        leaves[(7, 0)] = CpuidEntry(7, 0, 1, 0, 0, 0, 0)
    return {key: entry for key, entry in leaves.items()
            if key[0] < 0x80000000 or key[0] <= model.xlevel}


def _leaf_name(leaf: int) -> str:
    return f"CPUID.{leaf:02X}H" if leaf < 0x100 else f"CPUID.{leaf:08X}H"


def _name_of(leaf: int, reg: str, bit: int) -> str:
    for name, (f_leaf, _, f_reg, f_bit) in FEATURES.items():
        if (f_leaf, f_reg, f_bit) == (leaf, reg, bit):
            return name
    return f"bit{bit}"


def help_text() -> str:
    """-cpu help: the models kvmkit has, in QEMU's layout."""
    lines = ["Available CPUs:"]
    lines += [f"x86 {name:<30} {DESCRIPTIONS[name]}" for name in sorted(MODEL_NAMES)]
    return "\n".join(lines) + "\n"


def unavailable_features(cfg: CpuConfig, supported: list[CpuidEntry]) -> list[str]:
    """The features the model asks for that KVM cannot give (query-cpu-definitions)."""
    missing: list[str] = []
    model_cpuid(cfg, supported, lambda message: missing.append(message.split(".")[-1]
                                                               .split(" ")[0]))
    return missing


def expand(cfg: CpuConfig, supported: list[CpuidEntry]) -> dict[str, object]:
    """query-cpu-model-expansion: each feature's state in the table a guest gets, and
    the model's identity properties."""
    table = {(e.function, e.index): e for e in model_cpuid(cfg, supported, masked=False)}
    props: dict[str, object] = {}
    for name, (leaf, index, reg, bit) in FEATURES.items():
        entry = table.get((leaf, index))
        props[name] = bool(entry and getattr(entry, reg) >> bit & 1)
    leaf0, leaf1 = table.get((0, 0)), table.get((1, 0))
    if leaf0 is not None and leaf1 is not None:
        vendor = b"".join(getattr(leaf0, r).to_bytes(4, "little") for r in ("ebx", "edx", "ecx"))
        eax = leaf1.eax
        props.update({
            "vendor": vendor.decode(errors="replace"), "level": leaf0.eax,
            "family": ((eax >> 8) & 0xF) + ((eax >> 20) & 0xFF),
            "model": ((eax >> 4) & 0xF) | ((eax >> 12) & 0xF0), "stepping": eax & 0xF})
    ext = table.get((0x80000000, 0))
    if ext is not None:
        props["xlevel"] = ext.eax
    brand = [table.get((0x80000002 + i, 0)) for i in range(3)]
    if all(brand):
        raw = b"".join(getattr(e, r).to_bytes(4, "little") for e in brand
                       for r in ("eax", "ebx", "ecx", "edx"))
        props["model-id"] = raw.split(b"\0")[0].decode(errors="replace").strip()
    return props


MCG_CTL_P = 1 << 8
MCG_SER_P = 1 << 24
MCE_BANKS = 10           # QEMU's MCE_BANKS_DEF


def mcg_cap(table: list[CpuidEntry], supported: tuple[int, int]) -> int:
    """QEMU's MCG_CAP for a CPU with MCE and MCA: MCG_CTL_P and MCG_SER_P, 10 banks,
    as far as KVM supports them; 0 (no machine check set-up) otherwise."""
    caps, max_banks = supported
    leaf1 = next((e for e in table if e.function == 1 and e.index == 0), None)
    mce_mca = (1 << 7) | (1 << 14)
    if leaf1 is None or leaf1.edx & mce_mca != mce_mca or not max_banks:
        return 0
    return ((MCG_CTL_P | MCG_SER_P) & caps) | min(max_banks, MCE_BANKS)
