"""Migration settings: query-migrate-capabilities and migrate-set-capabilities.

kvmkit cannot migrate yet, so it names only the capabilities it would honour:
'events' (MIGRATION events), which libvirt turns on for every guest it starts.
"""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import BOOL, Enum, ListOf, Member, Struct

MIGRATION_CAPABILITY = Enum("MigrationCapability", ("events",))
CAPABILITY_STATUS = Struct("MigrationCapabilityStatus", (
    Member("capability", MIGRATION_CAPABILITY), Member("state", BOOL)))


@command("query-migrate-capabilities", returns=ListOf(CAPABILITY_STATUS))
def query_migrate_capabilities(ctx):
    states = ctx.machine.migration_capabilities
    return [{"capability": name, "state": states.get(name, False)}
            for name in MIGRATION_CAPABILITY.values]


@command("migrate-set-capabilities", args=[Member("capabilities", ListOf(CAPABILITY_STATUS))])
def migrate_set_capabilities(ctx, capabilities):
    if ctx.machine.runstate in ("inmigrate", "finish-migrate", "postmigrate"):
        raise QmpError("There's a migration process in progress")
    for entry in capabilities:
        ctx.machine.migration_capabilities[entry["capability"]] = entry["state"]
