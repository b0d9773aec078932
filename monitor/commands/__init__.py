"""Every QMP command, grouped by subject; importing this registers them all."""

from monitor.commands import (  # noqa: F401
    absent,
    balloon,
    block,
    cmdline,
    core,
    cpu,
    devices,
    fds,
    hmp,
    jobs,
    media,
    migration,
    netdev,
    objects,
    pci,
    qom,
    runstate,
    snapshots,
    stats,
)
