"""Every QMP command, grouped by subject; importing this registers them all."""

from monitor.commands import balloon, core, devices, fds, hmp, pci, qom, runstate  # noqa: F401
