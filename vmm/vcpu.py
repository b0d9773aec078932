"""One thread per vCPU, looping on KVM_RUN and handing exits to the buses.

Another thread stops the vCPUs by setting ``immediate_exit`` on each run page
and sending SIG_KICK to the thread, so a vCPU blocked in the guest comes back
with -EINTR; the runner then parks until it is resumed. Guest errors and
device bugs are reported to the machine, never raised out of the thread.
"""

from __future__ import annotations

import errno
import functools
import logging
import signal
import struct
import threading
from collections.abc import Callable
from typing import TYPE_CHECKING

from vmm import trace
from vmm._kvm import lib
from vmm.kvm import Vcpu
from vmm.kvm_stats import open_stats

if TYPE_CHECKING:
    from vmm.bus import Bus

log = logging.getLogger(__name__)

SIG_KICK = signal.SIGUSR1
_unpack_u32 = struct.Struct("<I").unpack_from
_unpack_u64 = struct.Struct("<Q").unpack_from
# kvm_run's io and mmio members, each read in one call (this is the exit hot path)
_unpack_io = struct.Struct("<BBHIQ").unpack_from        # direction size port count offset
_unpack_mmio = struct.Struct("<Q8sIB").unpack_from      # phys_addr data len is_write


def install_kick_handler() -> None:
    """A no-op handler, so the kick interrupts KVM_RUN instead of killing us. It is
    C's, not Python's: a Python handler writes to asyncio's wakeup fd, which may be
    closing as the VMM ends while a last kick lands."""
    from vmm._kvm import lib

    lib.kk_install_kick_handler(SIG_KICK)


class VcpuThread:
    """Runs one vCPU. ``on_exit_event(kind, info)`` reports what needs the machine."""

    def __init__(self, vcpu: Vcpu, pio: Bus, mmio: Bus, lock: threading.RLock,
                 on_event: Callable[[int, str, dict], None]) -> None:
        self.vcpu = vcpu
        self.pio = pio
        self.mmio = mmio
        self.lock = lock
        self.on_event = on_event
        self.thread: threading.Thread | None = None
        self.native_id: int | None = None
        # KVM's counters (query-stats), opened now: a vCPU ioctl waits for the vCPU
        # to leave KVM_RUN, which a halted guest may never do
        self.stats = open_stats(vcpu.fd)
        self._cond = threading.Condition()
        self._run_allowed = False
        self._parked = True
        self._quit = False

    # -- control, from other threads ---------------------------------------
    def start(self) -> None:
        self.thread = threading.Thread(target=self._loop, name=f"CPU {self.vcpu.index}/KVM",
                                       daemon=True)
        self.thread.start()
        with self._cond:  # wait until the thread id is known (query-cpus-fast reports it)
            self._cond.wait_for(lambda: self.native_id is not None)

    def resume(self) -> None:
        with self._cond:
            self._run_allowed = True
            self.vcpu.set_immediate_exit(False)
            self._cond.notify_all()

    def request_pause(self) -> None:
        with self._cond:
            self._run_allowed = False
            self.vcpu.set_immediate_exit(True)
        self._kick()

    def wait_parked(self, timeout: float | None = None) -> bool:
        with self._cond:
            return self._cond.wait_for(lambda: self._parked, timeout)

    def inspect(self, func: Callable[[Vcpu], object]) -> object:
        """Runs func(vcpu) with the vCPU out of KVM_RUN (register ioctls block while it
        is inside), then lets it run on if it was running."""
        if threading.current_thread() is self.thread or self.thread is None:
            return func(self.vcpu)
        with self._cond:
            was_running = self._run_allowed
        if was_running:
            self.request_pause()
            self.wait_parked()
        try:
            return func(self.vcpu)
        finally:
            if was_running:
                self.resume()

    def stop(self) -> None:
        with self._cond:
            self._quit = True
            self._run_allowed = False
            self.vcpu.set_immediate_exit(True)
            self._cond.notify_all()
            parked = self._parked
        if not parked:
            self._kick()
        if self.thread and threading.current_thread() is not self.thread:
            self.thread.join(timeout=5)

    def _kick(self) -> None:
        thread = self.thread
        if thread is threading.current_thread():
            return  # immediate_exit alone stops us before the next guest entry
        if thread is not None and thread.ident is not None and thread.is_alive():
            try:
                signal.pthread_kill(thread.ident, SIG_KICK)
            except ProcessLookupError:
                pass

    @property
    def parked(self) -> bool:
        return self._parked

    # -- the vCPU thread ---------------------------------------------------
    def _park_while_stopped(self) -> bool:
        """Returns False when the thread must end."""
        with self._cond:
            if not self._run_allowed and not self._quit:
                self._parked = True
                self._cond.notify_all()
                self._cond.wait_for(lambda: self._run_allowed or self._quit)
            self._parked = False
            return not self._quit

    def _loop(self) -> None:
        with self._cond:
            self.native_id = threading.get_native_id()
            self._parked = False           # parks on the first pass unless resumed
            self._cond.notify_all()
        vcpu = self.vcpu
        page = vcpu.run_page
        run = functools.partial(lib.kk_ioctl_val, vcpu.fd, lib.KVM_RUN, 0)   # Vcpu.run, inlined
        reason_at = lib.RUN_EXIT_REASON
        exit_io, exit_mmio, exit_intr = lib.KVM_EXIT_IO, lib.KVM_EXIT_MMIO, lib.KVM_EXIT_INTR
        handle_io, handle_mmio = self._handle_io, self._handle_mmio
        io_pending = False
        while True:
            # The flags are read without the condition's lock on every exit; a pause
            # also sets immediate_exit, so KVM_RUN returns and the next pass parks.
            if not self._run_allowed or self._quit:
                if io_pending:
                    # KVM finishes an I/O exit (an IN's value into RAX) only when it is
                    # entered again: with immediate_exit it does that and runs no guest
                    # code, so a parked vCPU's registers are whole (migration, info
                    # registers) and loading new ones is not undone by the old I/O.
                    vcpu.set_immediate_exit(True)
                    run()
                    io_pending = False
                    with self._cond:          # a resume in between wants it entered
                        if self._run_allowed and not self._quit:
                            vcpu.set_immediate_exit(False)
                if not self._park_while_stopped():
                    break
                continue
            ret = run()
            io_pending = False             # entering again finished any earlier one
            if ret < 0:
                if ret in (-errno.EINTR, -errno.EAGAIN):
                    continue
                self._stop_self()
                self.on_event(vcpu.index, "run-failed", {"errno": -ret})
                continue
            reason = _unpack_u32(page, reason_at)[0]
            if reason == exit_io:
                handle_io(page)
                io_pending = True
            elif reason == exit_mmio:
                handle_mmio(page)
                io_pending = True
            elif reason == exit_intr:
                continue
            else:
                if trace.kvm_run_exit.enabled:
                    trace.kvm_run_exit(cpu_index=vcpu.index, reason=reason)
                self._stop_self()
                self.on_event(vcpu.index, *self._describe_exit(reason, page))

    def _stop_self(self) -> None:
        with self._cond:
            self._run_allowed = False

    def _handle_io(self, page) -> None:
        direction, size, port, count, offset = _unpack_io(page, lib.RUN_IO_DIRECTION)
        end = offset + size * count
        if end > len(page):
            return
        with self.lock:
            if count == 1:                   # nearly every exit: no string I/O loop
                if direction == lib.KVM_EXIT_IO_OUT:
                    self.pio.write(port, size, int.from_bytes(page[offset:end], "little"))
                else:
                    page[offset:end] = self.pio.read(port, size).to_bytes(size, "little")
            elif direction == lib.KVM_EXIT_IO_OUT:
                for pos in range(offset, end, size):
                    self.pio.write(port, size, int.from_bytes(page[pos:pos + size], "little"))
            else:
                for pos in range(offset, end, size):
                    page[pos:pos + size] = self.pio.read(port, size).to_bytes(size, "little")

    def _handle_mmio(self, page) -> None:
        addr, data, length, is_write = _unpack_mmio(page, lib.RUN_MMIO_PHYS_ADDR)
        if not 0 < length <= 8:
            return
        with self.lock:
            if is_write:
                self.mmio.write(addr, length, int.from_bytes(data[:length], "little"))
            else:
                start = lib.RUN_MMIO_DATA
                page[start:start + length] = self.mmio.read(addr, length).to_bytes(length,
                                                                                   "little")

    @staticmethod
    def _describe_exit(reason: int, page) -> tuple[str, dict]:
        if reason == lib.KVM_EXIT_SHUTDOWN:
            return "triple-fault", {}
        if reason == lib.KVM_EXIT_SYSTEM_EVENT:
            return "system-event", {"type": _unpack_u32(page, lib.RUN_SYSTEM_EVENT_TYPE)[0]}
        if reason == lib.KVM_EXIT_INTERNAL_ERROR:
            suberror, ndata = struct.unpack_from("<II", page, lib.RUN_INTERNAL_SUBERROR)
            ndata = min(ndata, 16)
            extra = list(struct.unpack_from(f"<{ndata}Q", page, lib.RUN_INTERNAL_DATA))
            return "internal-error", {"suberror": suberror, "data": extra}
        if reason == lib.KVM_EXIT_DEBUG:
            exception, = struct.unpack_from("<I", page, lib.RUN_DEBUG_EXCEPTION)
            return "debug", {"exception": exception,
                             "pc": _unpack_u64(page, lib.RUN_DEBUG_PC)[0],
                             "dr6": _unpack_u64(page, lib.RUN_DEBUG_DR6)[0]}
        if reason == lib.KVM_EXIT_FAIL_ENTRY:
            return "internal-error", {
                "fail-entry": _unpack_u64(page, lib.RUN_FAIL_ENTRY_REASON)[0]}
        return "internal-error", {"exit-reason": reason}
