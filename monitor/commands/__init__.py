"""Every QMP command, grouped by subject; importing this registers them all."""

from monitor.commands import balloon, core, devices, fds, hmp, qom, runstate  # noqa: F401
