"""Every QMP command, grouped by subject; importing this registers them all."""

from monitor.commands import (  # noqa: F401
    balloon,
    block,
    core,
    cpu,
    devices,
    fds,
    hmp,
    netdev,
    pci,
    qom,
    runstate,
)
