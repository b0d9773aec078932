"""What a NIC and its network back end see of each other.

A NIC model (e1000, rtl8139, virtio-net) holds its back end as ``netdev`` and
knows it only as a ``NetBackend``: tap and bridge (vmm/net/tap.py), user
networking (vmm/net/slirp.py) and a port of the legacy hub (vmm/net/hub.py)
all are one. A back end holds its NIC as ``nic`` and knows it only as a
``NetClient``. Back ends that cannot do a thing (offloads, several queues)
still answer, as a back end without it would.
"""

from __future__ import annotations

import asyncio
from typing import Protocol


class NetClient(Protocol):
    """A NIC, as its back end delivers to it."""

    def can_receive(self) -> bool: ...
    def receive(self, frame: bytes) -> bool: ...


class NetBackend(Protocol):
    queue_count: int            # queue pairs it carries (a multiqueue tap: several)
    has_vnet_hdr: bool          # frames may carry a virtio_net_hdr (a vnet_hdr tap)
    nic: NetClient | None       # where received frames go

    def send(self, frame: bytes) -> None:
        """A frame from the NIC, out to the network."""

    def receive_ready(self) -> None:
        """The NIC has room again: offer what was held back."""

    def info(self, index: int, queue: int | None = None) -> str:
        """Queue ``queue`` (default: ``index``) as `info network` describes it, as
        client number ``index`` (a NIC's queue; 0 when no NIC has it)."""

    def start(self, loop: asyncio.AbstractEventLoop) -> None: ...
    def close(self) -> None: ...

    # -- virtio-net's header and offloads (tap only; the others ignore them) --
    def use_vnet_hdr(self, length: int) -> None: ...
    def set_offload(self, csum: bool = False, tso4: bool = False, tso6: bool = False,
                    ecn: bool = False, ufo: bool = False) -> None: ...
    def set_queue_enabled(self, index: int, enabled: bool) -> None: ...

    # -- frames with their header, straight from guest memory (has_vnet_hdr only) --
    def send_iov(self, parts: list, queue: int = 0) -> None: ...
    def tx_fd(self, queue: int = 0) -> int: ...


class SingleQueueBackend:
    """The part of NetBackend a back end without a virtio_net_hdr path or queues
    of its own shares: one queue, no header, offloads that do nothing."""

    queue_count = 1
    has_vnet_hdr = False

    def use_vnet_hdr(self, length: int) -> None:
        pass

    def set_offload(self, csum: bool = False, tso4: bool = False, tso6: bool = False,
                    ecn: bool = False, ufo: bool = False) -> None:
        pass

    def set_queue_enabled(self, index: int, enabled: bool) -> None:
        pass
