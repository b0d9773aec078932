"""dump-guest-memory (ELF, vmm/dump.py), query-dump and
query-dump-guest-memory-capability, with QEMU 7.2's checks, texts and the
DUMP_COMPLETED event. The VM is stopped while its memory is written, as QEMU's."""

from __future__ import annotations

import os
import threading

from monitor.errors import QmpError
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, INT, STR, Enum, ListOf, Member, Struct
from vmm import dump

DUMP_FORMAT = Enum("DumpGuestMemoryFormat", ("elf", "kdump-zlib", "kdump-lzo", "kdump-snappy",
                                             "win-dmp"))
DUMP_STATUS = Enum("DumpStatus", ("none", "active", "completed", "failed"))
DUMP_RESULT = Struct("DumpQueryResult", (Member("status", DUMP_STATUS), Member("completed", INT),
                                         Member("total", INT)))
REGISTRY.event("DUMP_COMPLETED", [Member("result", DUMP_RESULT), Member("error", STR, True)])
MSR_KERNEL_GS_BASE = 0xC0000102


class DumpState:
    """The last dump, for query-dump."""

    def __init__(self) -> None:
        self.status, self.completed, self.total = "none", 0, 0
        self.lock = threading.Lock()

    def result(self) -> dict:
        with self.lock:
            return {"status": self.status, "completed": self.completed, "total": self.total}


def _state(machine) -> DumpState:
    if not hasattr(machine, "dump_state"):
        machine.dump_state = DumpState()
    return machine.dump_state


@command("query-dump-guest-memory-capability", returns=Struct("DumpGuestMemoryCapability", (
    Member("formats", ListOf(DUMP_FORMAT)),)))
def query_dump_guest_memory_capability(ctx):
    return {"formats": ["elf"]}          # kvmkit writes no kdump or Windows dumps


@command("query-dump", returns=DUMP_RESULT)
def query_dump(ctx):
    return _state(ctx.machine).result()


def _open_target(ctx, protocol: str) -> int:
    if protocol.startswith("fd:"):
        name = protocol[3:]
        fd = ctx.session.fds.pop(name, None)
        if fd is None:
            raise QmpError(f"File descriptor named '{name}' has not been found")
        return fd
    if protocol.startswith("file:"):
        path = protocol[5:]
        try:
            return os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o400)
        except OSError as e:
            raise QmpError(f"Could not open '{path}': {e.strerror}") from None
    raise QmpError("Invalid parameter 'protocol'")


@command("dump-guest-memory", args=[
    Member("paging", BOOL), Member("protocol", STR), Member("detach", BOOL, True),
    Member("begin", INT, True), Member("length", INT, True),
    Member("format", DUMP_FORMAT, True)], lock=False)
def dump_guest_memory(ctx, paging, protocol, detach=False, begin=None, length=None,
                      format=None):
    machine = ctx.machine
    state = _state(machine)
    if machine.runstate == "inmigrate":
        raise QmpError("Dump not allowed during incoming migration.")
    if state.status == "active":
        raise QmpError("There is a dump in progress now.")
    if format not in (None, "elf") and \
            (paging or begin is not None or length is not None):
        raise QmpError("kdump-compressed format doesn't support paging or filter")
    if begin is not None and length is None:
        raise QmpError("Parameter 'length' is missing")
    if begin is None and length is not None:
        raise QmpError("Parameter 'begin' is missing")
    if format in ("kdump-zlib", "kdump-lzo", "kdump-snappy"):
        raise QmpError(f"{format} is not available now")
    fd = _open_target(ctx, protocol)
    try:
        if format == "win-dmp":        # it needs the guest's vmcoreinfo, a device kvmkit lacks
            raise QmpError("win-dump: invalid vmcoreinfo note size")
        if length is not None and length <= 0:
            raise QmpError("Invalid parameter 'length'")
        blocks = [dump.Block(r.gpa, r.size, lambda off, n, r=r: bytes(r.view[off:off + n]))
                  for r in machine.memory.regions]
        parts = dump.segments(blocks, begin, length)
        if not parts:
            raise QmpError("dump: no guest memory to dump")
    except QmpError:
        os.close(fd)
        with state.lock:
            state.status, state.completed, state.total = "failed", 0, 0
        raise
    resume = machine.running
    if resume:
        machine.stop("save-vm")
    cpus = []
    for index, runner in enumerate(machine.vcpus):
        cpu = machine.cpu_state(index)
        msrs = runner.inspect(lambda v: v.get_msrs([MSR_KERNEL_GS_BASE]))
        cpus.append({**cpu, "kernel_gs_base": msrs.get(MSR_KERNEL_GS_BASE, 0)})
    with state.lock:
        state.status, state.completed = "active", 0
        state.total = sum(size for _b, _s, size in parts)

    def progress(n: int) -> None:
        with state.lock:
            state.completed += n

    def write() -> str | None:
        """Writes the dump; the error QEMU reports, if it failed."""
        try:
            with os.fdopen(fd, "wb") as out:
                dump.write_elf(out, cpus, parts, progress)
        except OSError as e:
            return f"dump: failed to save memory: {e.strerror}"
        return None

    def finish(error: str | None) -> None:
        with state.lock:
            state.status = "failed" if error else "completed"
        if resume and machine.runstate == "save-vm":
            machine.cont()
        machine.emit("DUMP_COMPLETED", {"result": state.result(),
                                        **({"error": error} if error else {})})

    if detach:
        threading.Thread(target=lambda: machine.loop.call_soon_threadsafe(finish, write()),
                         name="dump", daemon=True).start()
        return
    error = write()
    finish(error)
    if error:
        raise QmpError(error)
