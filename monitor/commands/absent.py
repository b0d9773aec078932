"""Commands for what this machine, or kvmkit, does not have: AMD SEV and Intel SGX
guests, TPMs, Xen and COLO replication, record/replay, rocker switches,
persistent-reservation managers, the VM generation ID device, and TCG's
introspection. Each answers as QEMU 7.2 answers on a KVM machine without the
feature (asked of it on this host), so a client that probes for them (libvirt
does) learns the same from both; where QEMU's answer lists what it was built
with (TPM models and back ends), kvmkit's lists what it has: nothing."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import ANY, BOOL, INT, STR, UINT32, UINT64, Builtin, Enum, ListOf, Member, Struct

TPM_MODEL = Enum("TpmModel", ("tpm-tis", "tpm-crb", "tpm-spapr"))
TPM_TYPE = Enum("TpmType", ("passthrough", "emulator"))
COLO_MODE = Enum("COLOMode", ("none", "primary", "secondary"))
REPLAY_MODE = Enum("ReplayMode", ("none", "record", "play"))
SGX_INFO = Struct("SGXInfo", (
    Member("sgx", BOOL), Member("sgx1", BOOL), Member("sgx2", BOOL), Member("flc", BOOL),
    Member("section-size", INT), Member("sections", ListOf(Struct("SGXEPCSection", (
        Member("node", INT), Member("size", INT)))))))
HUMAN_READABLE = Struct("HumanReadableText", (Member("human-readable-text", STR),))
ROCKER = Member("name", STR)


def _members(text: str) -> tuple[Member, ...]:
    """'a b? c?:str' -> members: int unless ':str', optional when marked '?'."""
    out = []
    for word in text.split():
        name, _, kind = word.partition(":")
        out.append(Member(name.rstrip("?"), STR if kind == "str" else INT, name.endswith("?")))
    return tuple(out)


ROCKER_FLOW = Struct("RockerOfDpaFlow", _members("cookie hits") + (
    Member("key", Struct("RockerOfDpaFlowKey", _members(
        "priority tbl-id in-pport? tunnel-id? vlan-id? eth-type? eth-src?:str eth-dst?:str "
        "ip-proto? ip-tos? ip-dst?:str"))),
    Member("mask", Struct("RockerOfDpaFlowMask", _members(
        "in-pport? tunnel-id? vlan-id? eth-src?:str eth-dst?:str ip-proto? ip-tos?"))),
    Member("action", Struct("RockerOfDpaFlowAction", _members(
        "goto-tbl? group-id? tunnel-lport? vlan-id? new-vlan-id? out-pport?")))))
ROCKER_GROUP = Struct("RockerOfDpaGroup", _members(
    "id type vlan-id? pport? index? out-pport? group-id? set-vlan-id? pop-vlan?")
    + (Member("group-ids", ListOf(INT), True),)
    + _members("set-eth-src?:str set-eth-dst?:str ttl-check?"))


@command("query-sev", returns=Struct("SevInfo", (
    Member("enabled", BOOL), Member("api-major", INT), Member("api-minor", INT),
    Member("build-id", INT), Member("policy", INT),
    Member("state", Enum("SevState", ("uninit", "launch-update", "launch-secret", "running",
                                      "send-update", "receive-update"))),
    Member("handle", INT))))
def query_sev(ctx):
    return {"enabled": False, "api-major": 0, "api-minor": 0, "build-id": 0, "policy": 0,
            "state": "uninit", "handle": 0}


@command("query-sev-capabilities", returns=Struct("SevCapability", (
    Member("pdh", STR), Member("cert-chain", STR), Member("cpu0-id", STR),
    Member("cbitpos", INT), Member("reduced-phys-bits", INT))))
def query_sev_capabilities(ctx):
    raise QmpError("SEV is not enabled in KVM")


@command("query-sev-launch-measure", returns=Struct("SevLaunchMeasureInfo",
                                                    (Member("data", STR),)))
def query_sev_launch_measure(ctx):
    raise QmpError("SEV launch measurement is not available")


@command("query-sev-attestation-report", args=[Member("mnonce", STR)],
         returns=Struct("SevAttestationReport", (Member("data", STR),)))
def query_sev_attestation_report(ctx, mnonce):
    raise QmpError("SEV is not enabled")


@command("sev-inject-launch-secret", args=[
    Member("packet-header", STR), Member("secret", STR), Member("gpa", UINT64, True)])
def sev_inject_launch_secret(ctx, packet_header, secret, gpa=None):
    raise QmpError("SEV not enabled for guest")


@command("query-sgx", returns=SGX_INFO)
def query_sgx(ctx):
    raise QmpError("No EPC regions defined, SGX not available")


@command("query-sgx-capabilities", returns=SGX_INFO)
def query_sgx_capabilities(ctx):
    raise QmpError("SGX is not enabled in KVM")


@command("query-tpm", returns=ListOf(Struct("TPMInfo", (
    Member("id", STR), Member("model", TPM_MODEL),
    Member("options", Struct("TpmTypeOptions", (Member("type", TPM_TYPE),)))))))
def query_tpm(ctx):
    return []


# QEMU names the TPM models and back ends it was built with; kvmkit has none, and
# says so, so that libvirt does not offer a <tpm> kvmkit could not make.
@command("query-tpm-models", returns=ListOf(TPM_MODEL))
def query_tpm_models(ctx):
    return []


@command("query-tpm-types", returns=ListOf(TPM_TYPE))
def query_tpm_types(ctx):
    return []


@command("query-colo-status", returns=Struct("COLOStatus", (
    Member("mode", COLO_MODE), Member("last-mode", COLO_MODE),
    Member("reason", Enum("COLOExitReason", ("none", "request", "error", "processing"))))))
def query_colo_status(ctx):
    return {"mode": "none", "last-mode": "none", "reason": "none"}


@command("x-colo-lost-heartbeat", features=("unstable",))
def x_colo_lost_heartbeat(ctx):
    raise QmpError("The feature 'colo' is not enabled")


@command("query-xen-replication-status", returns=Struct("ReplicationStatus", (
    Member("error", BOOL), Member("desc", STR, True))))
def query_xen_replication_status(ctx):
    return {"error": False}


@command("xen-colo-do-checkpoint")
def xen_colo_do_checkpoint(ctx):
    """Nothing to checkpoint: no replication runs (QEMU answers so too)."""


@command("xen-set-replication", args=[
    Member("enable", BOOL), Member("primary", BOOL), Member("failover", BOOL, True)])
def xen_set_replication(ctx, enable, primary, failover=None):
    if enable and failover is not None:
        raise QmpError("Parameter 'failover' is only for stopping replication")


@command("xen-set-global-dirty-log", args=[Member("enable", BOOL)])
def xen_set_global_dirty_log(ctx, enable):
    """Xen's log-dirty mode: no Xen, nothing to switch (as QEMU)."""


@command("query-replay", returns=Struct("ReplayInfo", (
    Member("mode", REPLAY_MODE), Member("filename", STR, True), Member("icount", INT))))
def query_replay(ctx):
    return {"mode": "none", "icount": 0}


@command("replay-break", args=[Member("icount", INT)])
def replay_break(ctx, icount):
    raise QmpError("setting the breakpoint is allowed only in play mode")


@command("replay-delete-break")
def replay_delete_break(ctx):
    raise QmpError("replay breakpoints are allowed only in play mode")


@command("replay-seek", args=[Member("icount", INT)])
def replay_seek(ctx, icount):
    raise QmpError("replay must be enabled to seek")


@command("query-vm-generation-id", returns=Struct("GuidInfo", (Member("guid", STR),)))
def query_vm_generation_id(ctx):
    raise QmpError("VM Generation ID device not found")


@command("query-pr-managers", returns=ListOf(Struct("PRManagerInfo", (
    Member("id", STR), Member("connected", BOOL)))))
def query_pr_managers(ctx):
    return []


def _no_rocker(name: str):
    raise QmpError(f"rocker {name} not found")


@command("query-rocker", args=[ROCKER], returns=Struct("RockerSwitch", (
    Member("name", STR), Member("id", INT), Member("ports", INT))))
def query_rocker(ctx, name):
    _no_rocker(name)


@command("query-rocker-ports", args=[ROCKER], returns=ListOf(Struct("RockerPort", (
    Member("name", STR), Member("enabled", BOOL), Member("link-up", BOOL),
    Member("speed", INT), Member("duplex", Enum("RockerPortDuplex", ("half", "full"))),
    Member("autoneg", Enum("RockerPortAutoneg", ("off", "on")))))))
def query_rocker_ports(ctx, name):
    _no_rocker(name)


@command("query-rocker-of-dpa-flows", args=[ROCKER, Member("tbl-id", UINT32, True)],
         returns=ListOf(ROCKER_FLOW))
def query_rocker_of_dpa_flows(ctx, name, tbl_id=None):
    _no_rocker(name)


@command("query-rocker-of-dpa-groups", args=[ROCKER, Member("type", Builtin("uint8", "int"),
                                                                  True)],
         returns=ListOf(ROCKER_GROUP))
def query_rocker_of_dpa_groups(ctx, name, type=None):
    _no_rocker(name)


@command("x-query-jit", returns=HUMAN_READABLE, features=("unstable",))
def x_query_jit(ctx):
    raise QmpError("JIT information is only available with accel=tcg")


@command("x-query-opcount", returns=HUMAN_READABLE, features=("unstable",))
def x_query_opcount(ctx):
    raise QmpError("Opcode count information is only available with accel=tcg")


@command("x-query-profile", returns=HUMAN_READABLE, features=("unstable",))
def x_query_profile(ctx):
    raise QmpError("Internal profiler not compiled")


@command("x-query-rdma", returns=HUMAN_READABLE, features=("unstable",))
def x_query_rdma(ctx):
    return {"human-readable-text": ""}


@command("query-spice", returns=Struct("SpiceInfo", (
    Member("enabled", BOOL), Member("migrated", BOOL), Member("host", STR, True),
    Member("port", INT, True), Member("tls-port", INT, True),
    Member("auth", STR, True), Member("compiled-version", STR, True),
    Member("mouse-mode", Enum("SpiceQueryMouseMode", ("client", "server", "unknown"))),
    Member("channels", ListOf(ANY), True))))
def query_spice(ctx):
    """kvmkit has no SPICE server: QEMU's answer when none is running."""
    return {"migrated": False, "enabled": False, "mouse-mode": "client"}
