"""Migration: migrate, migrate-incoming, migrate_cancel, query-migrate, and the
capabilities and parameters, with QEMU 7.2's replies and errors.

kvmkit honours the capability 'events' (MIGRATION and MIGRATION_PASS events),
so it names only that one: a client asks for nothing it would not get. Of the
parameters, downtime-limit and max-bandwidth steer the migration; the others
are kept and shown as QEMU does, with QEMU's range checks.
"""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import REGISTRY, command
from monitor.types import (
    BOOL,
    INT,
    SIZE,
    STR,
    STR_OR_NULL,
    UINT8,
    UINT32,
    UINT64,
    Enum,
    ListOf,
    Member,
    Struct,
)

MIGRATION_CAPABILITY = Enum("MigrationCapability", (
    "xbzrle", "rdma-pin-all", "auto-converge", "zero-blocks", "compress", "events",
    "postcopy-ram", "x-colo", "release-ram", "block", "return-path",
    "pause-before-switchover", "multifd", "dirty-bitmaps", "postcopy-blocktime",
    "late-block-activate", "x-ignore-shared", "validate-uuid", "background-snapshot",
    "zero-copy-send", "postcopy-preempt"))
SUPPORTED_CAPABILITIES = {"events"}      # the others kvmkit's migration does not do
CAPABILITY_STATUS = Struct("MigrationCapabilityStatus", (
    Member("capability", MIGRATION_CAPABILITY), Member("state", BOOL)))
MIGRATION_STATUS = Enum("MigrationStatus", (
    "none", "setup", "cancelling", "cancelled", "active", "postcopy-active",
    "postcopy-paused", "postcopy-recover", "completed", "failed", "colo",
    "pre-switchover", "device", "wait-unplug"))
MULTIFD_COMPRESSION = Enum("MultiFDCompression", ("none", "zlib", "zstd"))
QERR_MIGRATION_ACTIVE = "There's a migration process in progress"

# QEMU 7.2's MigrationParameters: (name, type, (low, high, what) or None); their
# values, QEMU's defaults to begin with, are vmm.migration.outgoing.Settings'.
PARAMETERS = (
    ("announce-initial", SIZE, (0, 100000, "a value between 0 and 100000")),
    ("announce-max", SIZE, (0, 100000, "a value between 0 and 100000")),
    ("announce-rounds", SIZE, (0, 1000, "a value between 0 and 1000")),
    ("announce-step", SIZE, (1, 10000, "a value between 0 and 10000")),
    ("compress-level", UINT8, (0, 9, "a value between 0 and 9")),
    ("compress-threads", UINT8, (1, 255, "a value between 1 and 255")),
    ("compress-wait-thread", BOOL, None),
    ("decompress-threads", UINT8, (1, 255, "a value between 1 and 255")),
    ("throttle-trigger-threshold", UINT8, (1, 100, "an integer in the range of 1 to 100")),
    ("cpu-throttle-initial", UINT8, (1, 99, "an integer in the range of 1 to 99")),
    ("cpu-throttle-increment", UINT8, (1, 99, "an integer in the range of 1 to 99")),
    ("cpu-throttle-tailslow", BOOL, None),
    ("tls-creds", STR, None),
    ("tls-hostname", STR, None),
    ("tls-authz", STR, None),
    ("max-bandwidth", SIZE,
     (0, (1 << 64) - 1, "an integer in the range of 0 to SIZE_MAX bytes/second")),
    ("downtime-limit", UINT64,
     (0, 2000 * 1000, "an integer in the range of 0 to (2000 * 1000) ms")),
    ("x-checkpoint-delay", UINT32, None),
    ("block-incremental", BOOL, None),
    ("multifd-channels", UINT8, (1, 255, "a value between 1 and 255")),
    ("xbzrle-cache-size", SIZE, None),
    ("max-postcopy-bandwidth", SIZE, None),
    ("max-cpu-throttle", UINT8, None),
    ("multifd-compression", MULTIFD_COMPRESSION, None),
    ("multifd-zlib-level", UINT8, (0, 9, "a value between 0 and 9")),
    ("multifd-zstd-level", UINT8, (0, 20, "a value between 0 and 20")),
)
PARAMETER_MEMBERS = tuple(Member(name, kind, optional=True) for name, kind, _ in PARAMETERS)
# the order of QEMU's migrate_params_check; QEMU 7.2 leaves the multifd zlib and zstd
# levels out of what it checks (it checks the values it has, not those given), so any
# uint8 is taken for them
CHECK_ORDER = ("compress-level", "compress-threads", "decompress-threads",
               "throttle-trigger-threshold", "cpu-throttle-initial", "cpu-throttle-increment",
               "max-bandwidth", "downtime-limit", "multifd-channels",
               "xbzrle-cache-size", "max-cpu-throttle",
               "announce-initial", "announce-max", "announce-rounds", "announce-step")
TLS_PARAMETERS = ("tls-creds", "tls-hostname", "tls-authz")
BITMAP_ALIAS = Struct("BitmapMigrationBitmapAlias", (
    Member("name", STR), Member("alias", STR),
    Member("transform", Struct("BitmapMigrationBitmapAliasTransform", (
        Member("persistent", BOOL, optional=True),)), optional=True)))
# MigrateSetParameters: the TLS names may be null (QEMU's StrOrNull: null is ""), and
# block-bitmap-mapping is taken (kvmkit migrates no dirty bitmaps: it is only checked)
SET_PARAMETER_MEMBERS = tuple(
    Member(m.name, STR_OR_NULL, optional=True) if m.name in TLS_PARAMETERS else m
    for m in PARAMETER_MEMBERS) + (Member("block-bitmap-mapping", ListOf(Struct(
        "BitmapMigrationNodeAlias", (Member("node-name", STR), Member("alias", STR),
                                     Member("bitmaps", ListOf(BITMAP_ALIAS))))),
        optional=True),)
MIGRATION_PARAMETERS = Struct("MigrationParameters", PARAMETER_MEMBERS)
MIGRATION_INFO = Struct("MigrationInfo", (
    Member("status", MIGRATION_STATUS, optional=True),
    Member("ram", Struct("MigrationStats", ()), optional=True),
    Member("total-time", INT, optional=True), Member("expected-downtime", INT, optional=True),
    Member("downtime", INT, optional=True), Member("setup-time", INT, optional=True),
    Member("error-desc", STR, optional=True),
    Member("socket-address", ListOf(Struct("SocketAddress", ())), optional=True)))

REGISTRY.event("MIGRATION", [Member("status", MIGRATION_STATUS)])
REGISTRY.event("MIGRATION_PASS", [Member("pass", INT)])


def _migration_running(machine) -> bool:
    return machine.migration is not None and machine.migration.running


@command("query-migrate-capabilities", returns=ListOf(CAPABILITY_STATUS))
def query_migrate_capabilities(ctx):
    states = ctx.machine.migration_settings.capabilities
    return [{"capability": name, "state": states.get(name, False)}
            for name in MIGRATION_CAPABILITY.values]


@command("migrate-set-capabilities", args=[Member("capabilities", ListOf(CAPABILITY_STATUS))])
def migrate_set_capabilities(ctx, capabilities):
    if _migration_running(ctx.machine):
        raise QmpError(QERR_MIGRATION_ACTIVE)
    for entry in capabilities:
        if entry["state"] and entry["capability"] not in SUPPORTED_CAPABILITIES:
            raise QmpError(f"kvmkit's migration does not support the capability "
                           f"'{entry['capability']}'")
    for entry in capabilities:
        ctx.machine.migration_settings.capabilities[entry["capability"]] = entry["state"]


@command("query-migrate-parameters", returns=MIGRATION_PARAMETERS)
def query_migrate_parameters(ctx):
    return dict(ctx.machine.migration_settings.parameters)


@command("migrate-set-parameters", args=list(SET_PARAMETER_MEMBERS))
def migrate_set_parameters(ctx, **given):
    given = {name.replace("_", "-"): value for name, value in given.items()}
    given.pop("block-bitmap-mapping", None)
    for name in TLS_PARAMETERS:
        if name in given and given[name] is None:
            given[name] = ""
    current = ctx.machine.migration_settings.parameters
    merged = {**current, **given}          # QEMU checks the lot, in its own order
    limits = {name: limit for name, _, limit in PARAMETERS}
    for name in CHECK_ORDER:
        value = merged.get(name)
        if name == "xbzrle-cache-size":
            if value < 4096 or value & (value - 1):
                raise QmpError("Parameter 'xbzrle_cache_size' expects a power of two no "
                               "less than the target page size")
        elif name == "max-cpu-throttle":
            if not merged["cpu-throttle-initial"] <= value <= 99:
                raise QmpError("Parameter 'max_cpu_throttle' expects an integer in the "
                               "range of cpu_throttle_initial to 99")
        elif value is not None:
            low, high, what = limits[name]
            if not low <= value <= high:
                raise QmpError(f"Parameter '{name.replace('-', '_')}' expects {what}")
    if any(given.get(name) for name in ("tls-creds", "tls-hostname", "tls-authz")):
        raise QmpError("kvmkit does not support TLS for migration")
    current.update(given)


@command("migrate", args=[
    Member("uri", STR), Member("blk", BOOL, optional=True), Member("inc", BOOL, optional=True),
    Member("detach", BOOL, optional=True), Member("resume", BOOL, optional=True)])
def migrate(ctx, uri, blk=False, inc=False, detach=False, resume=False):
    machine = ctx.machine
    if resume:
        raise QmpError("Cannot resume if there is no paused migration")
    if _migration_running(machine):
        raise QmpError(QERR_MIGRATION_ACTIVE)
    if machine.runstate == "inmigrate":
        raise QmpError("Guest is waiting for an incoming migration")
    if machine.runstate == "postmigrate":
        raise QmpError("Can't migrate the vm that was paused due to previous migration")
    if blk or inc:
        raise QmpError("kvmkit does not migrate block devices: put the disks on storage "
                       "both hosts share")
    if machine.empty:
        raise QmpError("kvmkit cannot migrate a machine without RAM (-machine none)")
    machine.start_migration(uri, _uri_fd(ctx, uri, numbers=False))


@command("migrate_cancel")
def migrate_cancel(ctx):
    if ctx.machine.migration is not None:
        ctx.machine.migration.cancel()


@command("migrate-incoming", args=[Member("uri", STR)])
def migrate_incoming(ctx, uri):
    machine = ctx.machine
    if machine.incoming is not None:
        raise QmpError("The incoming migration has already been started")
    if machine.cfg.incoming != "defer" or machine.runstate != "inmigrate":
        raise QmpError("'-incoming' was not specified on the command line")
    machine.start_incoming(uri, _uri_fd(ctx, uri, numbers=True))


def _uri_fd(ctx, uri: str, numbers: bool) -> int | None:
    """fd:NAME's descriptor, passed before with getfd (incoming also takes a number)."""
    if not uri.startswith("fd:"):
        return None
    name = uri[3:]
    fd = int(name) if numbers and name.isdigit() else ctx.session.fds.pop(name, None)
    if fd is None:
        raise QmpError(f"File descriptor named '{name}' has not been found")
    return fd


@command("query-migrate", returns=MIGRATION_INFO)
def query_migrate(ctx):
    machine = ctx.machine
    info = machine.incoming.info() if machine.incoming is not None else {}
    if machine.migration is not None:
        info.update(machine.migration.info())
    return info


# -- postcopy, which kvmkit does not do: QEMU's answers without the capability ---------
@command("migrate-pause", allow_oob=True)
def migrate_pause(ctx):
    raise QmpError("migrate-pause is currently only supported during postcopy-active state")


@command("migrate-recover", args=[Member("uri", STR)], allow_oob=True)
def migrate_recover(ctx, uri):
    raise QmpError("Migrate recover can only be run when postcopy is paused.")


@command("migrate-start-postcopy")
def migrate_start_postcopy(ctx):
    raise QmpError("Enable postcopy with migrate_set_capability before the start of migration")


@command("migrate-continue", args=[Member("state", MIGRATION_STATUS)])
def migrate_continue(ctx, state):
    """A migration paused in `state` (pause-before-switchover) goes on. kvmkit's never
    pause; naming the state it is in is accepted and does nothing, as in QEMU (which
    then only releases a semaphore nobody waits on)."""
    migration = ctx.machine.migration
    current = migration.status if migration is not None else "none"
    if state != current:
        raise QmpError(f"Migration not in expected state: {current}")
