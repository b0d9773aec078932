"""-cpu MODEL[,+flag][,-flag][,flag=on|off][,vendor=..][,phys-bits=..][,host-phys-bits=..]

The models are QEMU 7.2's as a guest sees them under KVM: ``qemu64`` (QEMU's
default) is built from its definition and masked by what KVM supports, with
QEMU's KVM defaults (x2apic, the paravirtual features QEMU enables); ``host``
and ``max`` are what KVM supports. A flag the host cannot give is dropped with
QEMU's warning. Feature names are QEMU's ('-' and '_' alike).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from vmm.cpu_model_table import MODELS
from vmm.errors import UserError
from vmm.kvm import CpuidEntry

EAX, EBX, ECX, EDX = "eax", "ebx", "ecx", "edx"

# name -> (leaf, subleaf, register, bit)
FEATURES: dict[str, tuple[int, int, str, int]] = {}


def _bits(leaf: int, reg: str, names: str, index: int = 0) -> None:
    for bit, name in enumerate(names.split()):
        if name != "-":
            FEATURES[name] = (leaf, index, reg, bit)


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
_bits(7, EDX, "- - avx512-4vnniw avx512-4fmaps fsrm - - - avx512-vp2intersect - md-clear - - "
      "- serialize - tsx-ldtrk - - - - - - avx512-fp16 - - spec-ctrl stibp - "
      "arch-capabilities core-capability ssbd")
FEATURES.update(cldemote=(7, 0, ECX, 25), movdiri=(7, 0, ECX, 27), movdir64b=(7, 0, ECX, 28))
_bits(7, EAX, "- - - - avx-vnni avx512-bf16", index=1)
_bits(6, EAX, "- - arat")
_bits(0xD, EAX, "xsaveopt xsavec xgetbv1 xsaves", index=1)
_bits(0x80000007, EDX, "- - - - - - - - invtsc")
FEATURES.update({"perfctr-core": (0x80000001, 0, ECX, 23), "wbnoinvd": (0x80000008, 0, EBX, 9),
                 "ibpb": (0x80000008, 0, EBX, 12), "ibrs": (0x80000008, 0, EBX, 14),
                 "amd-stibp": (0x80000008, 0, EBX, 15), "amd-ssbd": (0x80000008, 0, EBX, 24)})
# Bits the guest's OS sets (CPUID mirrors CR4.OSXSAVE and CR4.PKE). Older QEMUs took
# them as flags and ignored them; QEMU 7.2 refuses them, which breaks command lines
# written for those QEMUs (OpenStack's), so kvmkit takes them with a warning.
OS_CONTROLLED = ("osxsave", "ospke")
# Features that are bits of feature MSRs, not CPUID: name -> (MSR, bit)
MSR_FEATURES = {"rdctl-no": (0x10A, 0), "ibrs-all": (0x10A, 1), "rsba": (0x10A, 2),
                "skip-l1dfl-vmentry": (0x10A, 3), "ssb-no": (0x10A, 4), "mds-no": (0x10A, 5),
                "pschange-mc-no": (0x10A, 6), "tsx-ctrl": (0x10A, 7), "taa-no": (0x10A, 8),
                "split-lock-detect": (0xCF, 5)}
# XSAVE state components and the feature that asks for each (QEMU's x86_ext_save_areas)
XSAVE_COMPONENTS = {2: "avx", 3: "mpx", 4: "mpx", 5: "avx512f", 6: "avx512f", 7: "avx512f",
                    9: "pku"}
# QEMU's other names for some features (its static model expansion omits them)
ALIASES = {"sse3": "pni", "sse4_1": "sse4.1", "sse4_2": "sse4.2", "sse4-1": "sse4.1",
           "sse4-2": "sse4.2", "pclmuldq": "pclmulqdq", "i64": "lm", "xd": "nx",
           "ffxsr": "fxsr-opt"}
FEATURES.update({alias: FEATURES[name] for alias, name in ALIASES.items()})

# CPUID.1:EDX bits that AMD repeats in CPUID.80000001h:EDX (QEMU's CPUID_EXT2_AMD_ALIASES)
AMD_ALIASES = 0x0183F3FF

# The paravirtual features QEMU turns on for KVM guests (kvm_default_props and the
# model's kvm features): kvmclock, nopiodelay, asyncpf, steal time, PV EOI, stable bit
QEMU_KVM_FEATURES = 0x0100007B


@dataclass(frozen=True)
class CpuModel:
    name: str
    version: str            # QEMU's versioned name it is an alias of (SandyBridge-v1)
    family: int
    model: int
    stepping: int
    level: int
    xlevel: int
    model_id: str
    features: dict[tuple[int, int, str], int]        # (leaf, subleaf, register) -> bits
    msr_features: tuple[str, ...] = ()


def _feature_bits(names: str) -> dict[tuple[int, int, str], int]:
    bits: dict[tuple[int, int, str], int] = {}
    for name in names.split():
        if name in MSR_FEATURES:
            continue
        leaf, index, reg, bit = FEATURES[name]
        bits[(leaf, index, reg)] = bits.get((leaf, index, reg), 0) | 1 << bit
    return bits


# What QEMU adds to every named model under KVM: x2apic, the hypervisor bit and its
# paravirtual features (kvm_default_props)
KVM_DEFAULTS = {(1, 0, ECX): (1 << 21) | (1 << 31), (0x40000001, 0, EAX): QEMU_KVM_FEATURES}

# QEMU's models, read from QEMU itself (scripts/cpu_model_table.py). Under KVM a
# named model takes the host's vendor, as QEMU's do (syscall and sysenter in
# compatibility mode differ by vendor, and KVM runs the host's).
NAMED_MODELS = {name: CpuModel(name, *identity, _feature_bits(features),
                               tuple(f for f in features.split() if f in MSR_FEATURES))
                for name, (*identity, features) in MODELS.items()}
PASSTHROUGH_MODELS = ("host", "max")
MODEL_NAMES = tuple(NAMED_MODELS) + PASSTHROUGH_MODELS
DESCRIPTIONS = {"host": "KVM processor with all supported host features",
                "max": "Enables all features supported by the accelerator in the current host",
                **{m.name: m.model_id for m in NAMED_MODELS.values()}}


def _model_features(model: CpuModel) -> dict[tuple[int, int, str], int]:
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
    ignored: list[str] = field(default_factory=list)     # OS-controlled flags asked for
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
            if name in OS_CONTROLLED:
                cfg.ignored.append(name)
                continue
            if name not in FEATURES and name not in MSR_FEATURES:
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
                _feature_name(key) in FEATURES or key in MSR_FEATURES:
            on = _switch(typename, key, value if has_value else "on")
            name = _feature_name(key)
            if key == "host-phys-bits":
                cfg.host_phys_bits = on
            elif key in ("check", "enforce"):
                setattr(cfg, key, on)
            elif name in FEATURES or name in MSR_FEATURES:
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


def model_cpuid(cfg: CpuConfig, supported: list[CpuidEntry], warn=lambda message: None,
                masked: bool = True, feature_msrs: dict[int, int] | None = None
                ) -> list[CpuidEntry]:
    """The CPUID table of the model before per-vCPU topology, masked by KVM support
    (unmasked: the features the model asks for, as QEMU's model expansion lists them).
    With ``feature_msrs`` (KVM's feature MSR values), the model's MSR features are
    checked too."""
    kvm = {(e.function, e.index): e for e in supported}

    def host(leaf: int, reg: str, index: int = 0) -> int:
        entry = kvm.get((leaf, index))
        return getattr(entry, reg) if entry else 0

    if cfg.model in PASSTHROUGH_MODELS:
        entries = {(e.function, e.index): e for e in supported}
        wanted: dict[tuple[int, int, str], int] = {}
    else:
        named = NAMED_MODELS[cfg.model]
        entries, wanted = _named_model_leaves(named, kvm), _model_features(named)
    for name in (cfg.plus | cfg.minus) - set(MSR_FEATURES):
        leaf, index, reg, bit = FEATURES[name]
        value = wanted.get((leaf, index, reg), host(leaf, reg, index)
                           if cfg.model in PASSTHROUGH_MODELS else 0)
        wanted[(leaf, index, reg)] = (value | (1 << bit) if name in cfg.plus
                                      else value & ~(1 << bit))
    vendor = cfg.vendor or _vendor_of(kvm.get((0, 0)))
    unavailable = False
    for (leaf, index, reg), bits in sorted(wanted.items(), key=_feature_word_order):
        missing = bits & ~host(leaf, reg, index) if masked else 0
        if leaf == 1 and reg == ECX:
            missing &= ~(1 << 31)                # the hypervisor bit is ours to give
        unavailable = unavailable or bool(missing)
        for bit in range(32):
            if missing >> bit & 1 and (cfg.check or cfg.enforce):
                warn(f"warning: host doesn't support requested feature: {_leaf_name(leaf)}:"
                     f"{reg.upper()}.{_name_of(leaf, index, reg, bit)} [bit {bit}]")
        value = bits & ~missing
        if leaf == 0x80000001 and reg == EDX and vendor == "AuthenticAMD":
            value |= getattr(entries.get((1, 0)), EDX, 0) & AMD_ALIASES
        entry = entries.get((leaf, index)) or CpuidEntry(leaf, index, 0, 0, 0, 0, 0)
        entries[(leaf, index)] = replace(entry, **{reg: value})
    if masked:
        unavailable |= _check_xsave_and_msrs(cfg, wanted, kvm, feature_msrs, warn)
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


# QEMU's feature words, in the order it reports what the host lacks
FEATURE_WORDS = [(1, 0, EDX), (1, 0, ECX), (7, 0, EBX), (7, 0, ECX), (7, 0, EDX), (7, 1, EAX),
                 (0x80000001, 0, EDX), (0x80000001, 0, ECX), (0x80000007, 0, EDX),
                 (0x80000008, 0, EBX), (0x40000001, 0, EAX), (0x8000000A, 0, EDX),
                 (0xD, 1, EAX), (6, 0, EAX)]


def feature_msr_values(read) -> dict[int, int]:
    """KVM's values of the MSRs that hold MSR features; ``read`` is Kvm.feature_msr."""
    return {msr: read(msr) for msr in sorted({msr for msr, _ in MSR_FEATURES.values()})}


def _check_xsave_and_msrs(cfg: CpuConfig, wanted: dict, kvm: dict,
                          feature_msrs: dict[int, int] | None, warn) -> bool:
    """Warns of the XSAVE components and MSR features the model asks for and KVM
    lacks, as QEMU does after the CPUID words; whether there were any."""
    def requested(name: str) -> bool:
        leaf, index, reg, bit = FEATURES[name]
        return bool(wanted.get((leaf, index, reg), 0) >> bit & 1)

    leaf_d = kvm.get((0xD, 0))
    xcr0 = (leaf_d.edx << 32 | leaf_d.eax) if leaf_d else 0
    missing = False
    for component, name in XSAVE_COMPONENTS.items():
        if requested(name) and not xcr0 >> component & 1:
            missing = True
            if cfg.check or cfg.enforce:
                warn(f"warning: host doesn't support requested feature: CPUID.0DH:EAX "
                     f"[bit {component}]")
    if feature_msrs is None:
        return missing
    model = NAMED_MODELS.get(cfg.model)
    names = (set(model.msr_features) if model else set()) | \
        {n for n in cfg.plus if n in MSR_FEATURES}
    for name, (msr, bit) in sorted(MSR_FEATURES.items(), key=lambda item: item[1]):
        if name in names and name not in cfg.minus and not feature_msrs.get(msr, 0) >> bit & 1:
            missing = True
            if cfg.check or cfg.enforce:
                warn(f"warning: host doesn't support requested feature: MSR({msr:X}H).{name} "
                     f"[bit {bit}]")
    return missing


def _feature_word_order(item) -> tuple[int, tuple]:
    key = item[0]
    return (FEATURE_WORDS.index(key) if key in FEATURE_WORDS else len(FEATURE_WORDS), key)


def _vendor_of(leaf0: CpuidEntry | None) -> str | None:
    if leaf0 is None:
        return None
    return b"".join(getattr(leaf0, r).to_bytes(4, "little")
                    for r in ("ebx", "edx", "ecx")).decode(errors="replace")


def _named_model_leaves(model: CpuModel, kvm: dict) -> dict[tuple[int, int], CpuidEntry]:
    fms = ((model.family - 0xF if model.family > 0xF else 0) << 20) | \
        ((model.model >> 4) << 16) | (min(model.family, 0xF) << 8) | \
        ((model.model & 0xF) << 4) | model.stepping
    host0 = kvm.get((0, 0))
    vendor = (host0.ebx, host0.ecx, host0.edx) if host0 else (0, 0, 0)
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
        if function in (2, 4, 0xB, 0xD) and function <= model.level:
            leaves[(function, index)] = entry
    if model.level >= 6:
        leaves[(6, 0)] = CpuidEntry(6, 0, 0, 0, 0, 0, 0)
    if model.level >= 7:
        leaves[(7, 0)] = CpuidEntry(7, 0, 1, 0, 0, 0, 0)
        leaves[(7, 1)] = CpuidEntry(7, 1, 1, 0, 0, 0, 0)
    if model.level >= 0xD and (0xD, 1) in leaves:      # xsaveopt & co. are the model's
        leaves[(0xD, 1)] = replace(leaves[(0xD, 1)], eax=0)
    return {key: entry for key, entry in leaves.items()
            if key[0] < 0x80000000 or key[0] <= model.xlevel}


def _leaf_name(leaf: int) -> str:
    return f"CPUID.{leaf:02X}H" if leaf < 0x100 else f"CPUID.{leaf:08X}H"


def _name_of(leaf: int, index: int, reg: str, bit: int) -> str:
    for name, feature in FEATURES.items():
        if feature == (leaf, index, reg, bit):
            return name
    return f"bit{bit}"


def help_text() -> str:
    """-cpu help: the models kvmkit has, in QEMU's layout."""
    lines = ["Available CPUs:"]
    for name, model in sorted(NAMED_MODELS.items()):
        alias = ("(alias configured by machine type)" if model.version == f"{name}-v1"
                 else f"(alias of {model.version})")
        lines.append(f"x86 {name:<20}  {alias}")
    lines += [f"x86 {name:<20}  {DESCRIPTIONS[name]}" for name in PASSTHROUGH_MODELS]
    lines += ["", "Recognized CPUID flags:"]
    lines += ["  " + " ".join(chunk) for chunk in _chunks(sorted(FEATURES), 10)]
    return "\n".join(lines) + "\n"


def _chunks(names: list[str], size: int) -> list[list[str]]:
    return [names[i:i + size] for i in range(0, len(names), size)]


def unavailable_features(cfg: CpuConfig, supported: list[CpuidEntry],
                         feature_msrs: dict[int, int] | None = None) -> list[str]:
    """The features the model asks for that KVM cannot give (query-cpu-definitions);
    an XSAVE component counts as the feature that asks for it, as in QEMU's list."""
    missing: list[str] = []

    def note(message: str) -> None:
        where = message.split("feature: ", 1)[1].rsplit(" [bit", 1)
        if where[0] == "CPUID.0DH:EAX":
            missing.append(XSAVE_COMPONENTS[int(where[1].rstrip("]"))])
        else:
            missing.append(where[0].split(".", 2)[-1] if where[0].startswith("CPUID")
                           else where[0].split(".", 1)[1])   # CPUID.01H:ECX.sse4.1, MSR(10AH).x
    model_cpuid(cfg, supported, note, feature_msrs=feature_msrs)
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
