"""Guest doorbell writes that never leave the kernel: KVM_IOEVENTFD.

A device asks for an address (and optionally the value written there); KVM
signals an eventfd instead of returning to the vCPU thread, and the machine's
loop reads it and calls the device, under the machine lock. Without a loop
(unit tests) nothing is registered and writes reach the device through the
ordinary MMIO/PIO exit path, which stays mapped as the fallback.
"""

from __future__ import annotations

import asyncio
import logging
import os
import threading
from collections.abc import Callable

from vmm.kvm import KvmError

log = logging.getLogger(__name__)


class IoEvents:
    def __init__(self, vm, loop: Callable[[], asyncio.AbstractEventLoop | None],
                 lock: threading.RLock) -> None:
        self.vm = vm
        self._loop = loop
        self._lock = lock
        self._registered: dict[int, tuple] = {}        # fd -> ioeventfd arguments

    def add(self, addr: int, length: int, callback: Callable[[], None] | None,
            pio: bool = False, datamatch: int | None = None) -> int | None:
        """Returns a key for remove(), or None when the exit path must do. Without a
        callback the writes are only absorbed by KVM: nothing reads the eventfd."""
        loop = self._loop()
        if loop is None:
            return None
        fd = os.eventfd(0, os.EFD_NONBLOCK | os.EFD_CLOEXEC)
        try:
            self.vm.ioeventfd(fd, addr, length, pio=pio, datamatch=datamatch)
        except KvmError as e:
            os.close(fd)
            log.warning("ioeventfd at 0x%x not available (%s): using exits", addr, e)
            return None
        self._registered[fd] = (addr, length, pio, datamatch)
        if callback is not None:
            loop.call_soon_threadsafe(loop.add_reader, fd, self._signalled, fd, callback)
        return fd

    def remove(self, fd: int | None) -> None:
        args = self._registered.pop(fd, None) if fd is not None else None
        if args is None:
            return
        addr, length, pio, datamatch = args
        try:
            self.vm.ioeventfd(fd, addr, length, pio=pio, datamatch=datamatch, deassign=True)
        except KvmError as e:
            log.warning("ioeventfd at 0x%x: deassign failed: %s", addr, e)
        loop = self._loop()
        if loop is not None:
            loop.call_soon_threadsafe(self._close, loop, fd)

    @staticmethod
    def _close(loop: asyncio.AbstractEventLoop, fd: int) -> None:
        loop.remove_reader(fd)
        os.close(fd)

    def _signalled(self, fd: int, callback: Callable[[], None]) -> None:
        try:
            os.eventfd_read(fd)
        except BlockingIOError:
            return
        with self._lock:
            callback()
