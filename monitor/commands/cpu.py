"""CPU models: query-cpu-definitions and query-cpu-model-expansion, as QEMU 7.2's
for the models kvmkit has (vmm/cpu_models.py), against this host's KVM."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import ANY, BOOL, STR, Enum, ListOf, Member, Struct
from vmm.cpu_models import (
    ALIASES,
    MODEL_NAMES,
    NAMED_MODELS,
    CpuModelError,
    expand,
    feature_msr_values,
    parse_cpu,
    unavailable_features,
)

CPU_DEFINITION = Struct("CpuDefinitionInfo", (
    Member("name", STR), Member("migration-safe", BOOL, True), Member("static", BOOL),
    Member("unavailable-features", ListOf(STR), True), Member("typename", STR),
    Member("alias-of", STR, True), Member("deprecated", BOOL)))
CPU_MODEL_INFO = Struct("CpuModelInfo", (Member("name", STR), Member("props", ANY, True)))
EXPANSION_TYPE = Enum("CpuModelExpansionType", ("static", "full"))


@command("query-cpu-definitions", returns=ListOf(CPU_DEFINITION))
def query_cpu_definitions(ctx):
    supported = ctx.machine.kvm.supported_cpuid()
    msrs = feature_msr_values(ctx.machine.kvm.feature_msr)
    return [{"name": name, "typename": f"{name}-x86_64-cpu",
             "unavailable-features": unavailable_features(parse_cpu(name), supported, msrs),
             **({"alias-of": NAMED_MODELS[name].version} if name in NAMED_MODELS else {}),
             "static": False, "migration-safe": name in NAMED_MODELS, "deprecated": False}
            for name in MODEL_NAMES]


@command("query-cpu-model-expansion",
         args=[Member("type", EXPANSION_TYPE), Member("model", CPU_MODEL_INFO)],
         returns=Struct("CpuModelExpansionInfo", (Member("model", CPU_MODEL_INFO),)))
def query_cpu_model_expansion(ctx, type, model):
    name = model["name"]
    if name not in MODEL_NAMES:
        raise QmpError(f"CPU model '{name}' not found")
    props = model.get("props") or {}
    if not isinstance(props, dict):
        raise QmpError("Invalid parameter type for 'props', expected: object")
    flags = ",".join(f"{k}={'on' if v is True else 'off' if v is False else v}"
                     for k, v in props.items())
    try:
        cfg = parse_cpu(f"{name},{flags}" if flags else name)
    except CpuModelError as e:
        raise QmpError(str(e)) from None
    expanded = expand(cfg, ctx.machine.kvm.supported_cpuid())
    if type == "static":      # QEMU expands onto its static 'base' model: features only
        return {"model": {"name": "base",
                          "props": {k: v for k, v in expanded.items()
                                    if isinstance(v, bool) and k not in ALIASES}}}
    return {"model": {"name": name, "props": expanded}}
