"""Trace events: named points in kvmkit that, once enabled (trace-event-set-state,
HMP trace-event, -trace), write a line each time they are passed, in the form
of QEMU's "log" trace back end: ``PID@SECONDS.MICROS:name fields``, on stderr or
the -D log file.

The events are kvmkit's own, named after QEMU's where kvmkit has the same point:
a vCPU's exits other than port and MMIO I/O, virtio status changes and queue
kicks, PCI configuration writes, and QMP commands as they are run.
"""

from __future__ import annotations

import fnmatch
import logging
import os
import sys
import time
from dataclasses import dataclass

log = logging.getLogger("trace")


@dataclass
class TraceEvent:
    name: str
    fmt: str                   # str.format fields
    enabled: bool = False

    def __call__(self, **fields) -> None:
        """Callers test `enabled` first, so a disabled event costs one attribute read."""
        if not log.handlers:                   # the -D log file if there is one, else stderr
            files = [h for h in logging.getLogger().handlers
                     if isinstance(h, logging.FileHandler)]
            handler = logging.FileHandler(files[0].baseFilename) if files \
                else logging.StreamHandler(sys.stderr)
            handler.setFormatter(logging.Formatter("%(message)s"))
            log.addHandler(handler)
            log.propagate = False
        now = time.time()
        log.warning("%d@%d.%06d:%s %s", os.getpid(), int(now), int(now % 1 * 1e6), self.name,
                    self.fmt.format(**fields))


def _event(name: str, fmt: str) -> TraceEvent:
    event = TraceEvent(name, fmt)
    EVENTS[name] = event
    return event


EVENTS: dict[str, TraceEvent] = {}
kvm_run_exit = _event("kvm_run_exit", "cpu_index {cpu_index}, reason {reason}")
virtio_set_status = _event("virtio_set_status", "vdev {vdev} val {val}")
virtio_queue_notify = _event("virtio_queue_notify", "vdev {vdev} n {n}")
pci_cfg_write = _event("pci_cfg_write", "{dev} 00:{slot:02d}.{func} @0x{offset:x} <- 0x{val:x}")
monitor_qmp_cmd_in_band = _event("monitor_qmp_cmd_in_band", "{id}")


def matching(pattern: str) -> list[TraceEvent]:
    """The events a name or glob pattern ('kvm_*') names, in kvmkit's order."""
    return [e for name, e in EVENTS.items() if fnmatch.fnmatchcase(name, pattern)]


def enable_from_option(text: str) -> None:
    """-trace [enable=]PATTERN[,events=FILE][,file=FILE]: events=FILE has a pattern a line."""
    from vmm.qemuopts import parse_opts

    opts = parse_opts(text, implied="enable")
    patterns = [opts["enable"]] if "enable" in opts else []
    if "events" in opts:
        with open(opts["events"]) as f:
            patterns += [line.strip() for line in f if line.strip() and line[0] != "#"]
    for pattern in patterns:
        state = not pattern.startswith("-")
        for event in matching(pattern.lstrip("-")):
            event.enabled = state
    if "file" in opts:
        handler = logging.FileHandler(opts["file"])
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.propagate = False
