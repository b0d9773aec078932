"""virtio-net (virtio spec 5.1): frames between the guest and a network back end.

Queues as QEMU's device: receiveq/transmitq pairs (0/1, 2/3, ...), then the
control queue. Until the driver negotiates VIRTIO_NET_F_MQ there is one pair
(three queues), as QEMU shows; with MQ (``mq=on`` on a ``queues=N`` tap) there
are N pairs, the driver picks how many to use through the control queue, and
pair i uses tap queue i. Every buffer starts with a struct virtio_net_hdr (12
bytes with VIRTIO_F_VERSION_1 or MRG_RXBUF, else 10); with MRG_RXBUF a
received frame may span several receive buffers, `num_buffers` saying how
many. When the back end is a tap with IFF_VNET_HDR the header goes to and
comes from the kernel as it is: that is how checksum and segmentation
offloads work (the device then offers QEMU's CSUM, GSO and GUEST_* bits, and
the guest's GUEST_* choices set the tap's offloads); other back ends get bare
frames and no offloads are offered. The control queue takes QEMU's commands
(rx mode, MAC table and address, VLAN filter, announce acknowledgement, queue
pairs, guest offloads) and keeps the state that query-rx-filter reports. With
no back end, or the link down, transmitted frames are dropped and nothing is
received, as with QEMU. Frames between a vnet_hdr tap and the rings go through
SplitQueue's C fast path (drain_to_fd, fill_from_fd) when it is built; the Python
path below does the same and serves every other back end.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field

from vmm import savestate
from vmm.net.backend import NetBackend
from vmm.net.network import MAC_DESCRIPTION, NETDEV_DESCRIPTION, realize_nic, unrealize_nic
from vmm.qdev import (
    IOEVENTFD,
    DeviceType,
    Prop,
    bootindex,
    declare,
    fixed,
    flag,
    on_off,
    vectors,
)
from vmm.virtio import spec
from vmm.virtio.device import VirtioDevice
from vmm.virtio.proxy import declare_proxies, realize_proxy
from vmm.virtio.queue import FILL_NO_BUFFERS, Chain, VirtqueueError, new_rx_filter
from vmm.virtio.spec import F_RING_EVENT_IDX, F_RING_INDIRECT_DESC, F_VERSION_1, feature

log = logging.getLogger(__name__)

F_CSUM = feature(spec.VIRTIO_NET_F_CSUM)
F_GUEST_CSUM = feature(spec.VIRTIO_NET_F_GUEST_CSUM)
F_CTRL_GUEST_OFFLOADS = feature(spec.VIRTIO_NET_F_CTRL_GUEST_OFFLOADS)
F_MAC = feature(spec.VIRTIO_NET_F_MAC)
F_GUEST_TSO4 = feature(spec.VIRTIO_NET_F_GUEST_TSO4)
F_GUEST_TSO6 = feature(spec.VIRTIO_NET_F_GUEST_TSO6)
F_GUEST_ECN = feature(spec.VIRTIO_NET_F_GUEST_ECN)
F_GUEST_UFO = feature(spec.VIRTIO_NET_F_GUEST_UFO)
F_HOST_TSO4 = feature(spec.VIRTIO_NET_F_HOST_TSO4)
F_HOST_TSO6 = feature(spec.VIRTIO_NET_F_HOST_TSO6)
F_HOST_ECN = feature(spec.VIRTIO_NET_F_HOST_ECN)
F_HOST_UFO = feature(spec.VIRTIO_NET_F_HOST_UFO)
F_MRG_RXBUF = feature(spec.VIRTIO_NET_F_MRG_RXBUF)
F_STATUS = feature(spec.VIRTIO_NET_F_STATUS)
F_CTRL_VQ = feature(spec.VIRTIO_NET_F_CTRL_VQ)
F_CTRL_RX = feature(spec.VIRTIO_NET_F_CTRL_RX)
F_CTRL_VLAN = feature(spec.VIRTIO_NET_F_CTRL_VLAN)
F_CTRL_RX_EXTRA = feature(spec.VIRTIO_NET_F_CTRL_RX_EXTRA)
F_GUEST_ANNOUNCE = feature(spec.VIRTIO_NET_F_GUEST_ANNOUNCE)
F_MQ = feature(spec.VIRTIO_NET_F_MQ)
F_CTRL_MAC_ADDR = feature(spec.VIRTIO_NET_F_CTRL_MAC_ADDR)

# Offered only when the back end passes virtio_net_hdr through (a vnet_hdr tap).
GUEST_OFFLOADS = F_GUEST_CSUM | F_GUEST_TSO4 | F_GUEST_TSO6 | F_GUEST_ECN | F_GUEST_UFO
VNET_HDR_FEATURES = F_CSUM | F_HOST_TSO4 | F_HOST_TSO6 | F_HOST_ECN | F_HOST_UFO | GUEST_OFFLOADS
# QEMU's virtio-net-pci properties that switch a feature bit, with their defaults.
FEATURE_PROPERTIES = {
    "csum": (F_CSUM, True), "guest_csum": (F_GUEST_CSUM, True),
    "guest_tso4": (F_GUEST_TSO4, True), "guest_tso6": (F_GUEST_TSO6, True),
    "guest_ecn": (F_GUEST_ECN, True), "guest_ufo": (F_GUEST_UFO, True),
    "host_tso4": (F_HOST_TSO4, True), "host_tso6": (F_HOST_TSO6, True),
    "host_ecn": (F_HOST_ECN, True), "host_ufo": (F_HOST_UFO, True),
    "mrg_rxbuf": (F_MRG_RXBUF, True), "status": (F_STATUS, True),
    "ctrl_vq": (F_CTRL_VQ, True), "ctrl_rx": (F_CTRL_RX, True),
    "ctrl_vlan": (F_CTRL_VLAN, True), "ctrl_rx_extra": (F_CTRL_RX_EXTRA, True),
    "ctrl_mac_addr": (F_CTRL_MAC_ADDR, True),
    "ctrl_guest_offloads": (F_CTRL_GUEST_OFFLOADS, True),
    "guest_announce": (F_GUEST_ANNOUNCE, True), "mq": (F_MQ, False),
    "indirect_desc": (F_RING_INDIRECT_DESC, True), "event_idx": (F_RING_EVENT_IDX, True)}

S_LINK_UP, S_ANNOUNCE = spec.VIRTIO_NET_S_LINK_UP, spec.VIRTIO_NET_S_ANNOUNCE
ACK_OK, ACK_ERR = spec.VIRTIO_NET_OK, spec.VIRTIO_NET_ERR
MAX_VLAN = 4096
MAC_TABLE_ENTRIES = 64          # QEMU's MAC_TABLE_ENTRIES
RX_QUEUE_SIZE, TX_QUEUE_SIZE, CTRL_QUEUE_SIZE = 256, 256, 64


class VlanTable:
    """The VLAN ids the driver allowed: a bit per id, as QEMU keeps them (a set of
    4,096 ints cost a quarter MiB on every device reset, and fragmented the heap)."""

    def __init__(self, allow_all: bool = False, ids: Iterable[int] = ()) -> None:
        self.bits = bytearray(b"\xff" * (MAX_VLAN // 8) if allow_all else MAX_VLAN // 8)
        for vid in ids:
            self.add(vid)

    def __contains__(self, vid: int) -> bool:
        return bool(self.bits[vid >> 3] >> (vid & 7) & 1)

    def __iter__(self) -> Iterator[int]:
        return (vid for vid in range(MAX_VLAN) if vid in self)

    def add(self, vid: int) -> None:
        self.bits[vid >> 3] |= 1 << (vid & 7)

    def discard(self, vid: int) -> None:
        self.bits[vid >> 3] &= ~(1 << (vid & 7)) & 0xFF


@dataclass
class RxFilter:
    """What the driver asked for through the control queue (query-rx-filter)."""
    promiscuous: bool = True    # QEMU starts promiscuous until the driver says otherwise
    allmulti: bool = False
    alluni: bool = False
    nomulti: bool = False
    nouni: bool = False
    nobcast: bool = False
    unicast: list[bytes] = field(default_factory=list)
    multicast: list[bytes] = field(default_factory=list)
    unicast_overflow: bool = False
    multicast_overflow: bool = False
    # Until a driver negotiates CTRL_VLAN every VLAN passes, as in QEMU.
    vlans: VlanTable = field(default_factory=lambda: VlanTable(allow_all=True))


class VirtioNet(VirtioDevice):
    name = "virtio-net"
    device_type = spec.VIRTIO_ID_NET

    def __init__(self, mac: bytes, on_rx_filter_changed: Callable[[], None] = lambda: None,
                 queue_pairs: int = 1, properties: dict | None = None) -> None:
        super().__init__()
        self.perm_mac = mac
        self.on_rx_filter_changed = on_rx_filter_changed
        self.max_pairs = max(queue_pairs, 1)
        props = properties or {}
        self.base_features = 0
        for name, (bit, default) in FEATURE_PROPERTIES.items():
            if props.get(name, default):
                self.base_features |= bit
        self.base_features |= F_MAC
        # mac and status, then max_virtqueue_pairs when MQ is offered (QEMU's sizes)
        self.config_size = 10 if self.base_features & F_MQ else 8
        self.vnet_peer = False         # fixed when the first back end is attached
        self._netdev: NetBackend | None = None     # set when a netdev is attached
        self.link_up = True
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.mac = self.perm_mac
        self.filter = RxFilter()
        self.guest_offloads = 0
        self.announce = False
        self.pairs = 1                 # queue pairs the transport has (3 queues until MQ)
        self.active_pairs = 1          # those the driver uses
        self.rx_dropped = 0
        self._c_filter = None          # the filter as the C receive path takes it, cached
        self._apply_to_tap()

    # -- migration -------------------------------------------------------------------
    STATE = ("mac", "guest_offloads", "announce", "pairs", "active_pairs")
    FILTER_FLAGS = ("promiscuous", "allmulti", "alluni", "nomulti", "nouni", "nobcast",
                    "unicast_overflow", "multicast_overflow")

    def save_state(self) -> dict:
        f = self.filter
        return {**super().save_state(), "filter": {
            **{name: getattr(f, name) for name in self.FILTER_FLAGS},
            "unicast": list(f.unicast), "multicast": list(f.multicast),
            "vlans": sorted(f.vlans)}}

    def load_state(self, state: dict) -> None:
        saved = state.get("filter") if isinstance(state, dict) else None
        fresh = RxFilter()
        savestate.check_fields(fresh, self.FILTER_FLAGS + ("unicast", "multicast"), saved,
                               "virtio-net.filter")
        macs = saved["unicast"] + saved["multicast"]
        vlans = saved.get("vlans")
        if not all(isinstance(m, bytes) and len(m) == 6 for m in macs) or \
                not isinstance(vlans, list) or \
                not all(isinstance(v, int) and 0 <= v < MAX_VLAN for v in vlans):
            raise savestate.StateError("virtio-net.filter: saved value does not fit")
        super().load_state({k: v for k, v in state.items() if k != "filter"})
        if len(self.mac) != 6 or not 1 <= self.active_pairs <= self.pairs <= self.max_pairs:
            raise savestate.StateError("virtio-net: saved value does not fit")
        for name in self.FILTER_FLAGS + ("unicast", "multicast"):
            setattr(fresh, name, saved[name])
        fresh.vlans = VlanTable(ids=vlans)
        self.filter = fresh
        self._c_filter = None
        if self.transport is not None:
            self.transport.resize_queues()
        self._apply_to_tap()

    # -- the back end --------------------------------------------------------------
    @property
    def netdev(self):
        return self._netdev

    @netdev.setter
    def netdev(self, backend) -> None:
        if backend is not None and self._netdev is None and not self.vnet_peer:
            # As QEMU at realize: a vnet_hdr tap makes the offload features offered.
            self.vnet_peer = backend.has_vnet_hdr
        self._netdev = backend
        self._apply_to_tap()

    @property
    def passes_header(self) -> bool:
        """Whether frames to and from the back end keep their virtio_net_hdr."""
        return self.vnet_peer and self._netdev is not None and self._netdev.has_vnet_hdr

    def _apply_to_tap(self) -> None:
        """The tap's header length, offloads and attached queues, from what the driver
        negotiated (QEMU's virtio_net_apply_guest_offloads and set_queue_pairs)."""
        tap = self._netdev
        if tap is None:
            return
        if self.passes_header:
            tap.use_vnet_hdr(self.header_size)
            o = self.guest_offloads
            tap.set_offload(bool(o & F_GUEST_CSUM), bool(o & F_GUEST_TSO4),
                            bool(o & F_GUEST_TSO6), bool(o & F_GUEST_ECN),
                            bool(o & F_GUEST_UFO))
        for index in range(1, self.max_pairs):
            tap.set_queue_enabled(index, index < self.active_pairs)

    @property
    def features(self) -> int:
        return self.base_features if self.vnet_peer else self.base_features & ~VNET_HDR_FEATURES

    def features_negotiated(self, features: int) -> None:
        super().features_negotiated(features)
        self.filter.vlans = VlanTable(allow_all=not features & F_CTRL_VLAN)
        self._c_filter = None
        self.guest_offloads = features & GUEST_OFFLOADS
        self.pairs = self.max_pairs if features & F_MQ else 1
        if self.transport is not None:
            self.transport.resize_queues()
        self._apply_to_tap()

    @property
    def queue_sizes(self) -> tuple[int, ...]:
        return (RX_QUEUE_SIZE, TX_QUEUE_SIZE) * self.pairs + (CTRL_QUEUE_SIZE,)

    @property
    def max_queues(self) -> int:
        """Queues the transport may have to ring doorbells for (every pair, control)."""
        return 2 * self.max_pairs + 1

    @property
    def ctrl_queue(self) -> int:
        return 2 * self.pairs

    @property
    def header_size(self) -> int:
        return 12 if self.negotiated & (F_VERSION_1 | F_MRG_RXBUF) else 10

    # -- the monitor's side ------------------------------------------------------
    def set_link(self, up: bool) -> None:
        if up != self.link_up:
            self.link_up = up
            if self.transport is not None:
                self.transport.config_changed()
            if self.netdev is not None:
                self.netdev.receive_ready()

    def rx_filter_info(self, name: str) -> dict:
        """query-rx-filter's RxFilterInfo, as QEMU's virtio-net fills it (its tables
        come out newest first, and broadcast-allowed carries nobcast)."""
        f = self.filter

        def state(none: bool, all_: bool) -> str:
            return "none" if none else "all" if all_ else "normal"

        vlans = sorted(f.vlans, reverse=True)
        vlan = "all" if not self.negotiated & F_CTRL_VLAN else "normal" if vlans else "none"
        return {"name": name, "promiscuous": f.promiscuous,
                "multicast": state(f.nomulti, f.allmulti),
                "unicast": state(f.nouni, f.alluni), "vlan": vlan,
                "broadcast-allowed": f.nobcast,
                "multicast-overflow": f.multicast_overflow,
                "unicast-overflow": f.unicast_overflow, "main-mac": _mac_text(self.mac),
                "vlan-table": vlans,
                "unicast-table": [_mac_text(m) for m in reversed(f.unicast)],
                "multicast-table": [_mac_text(m) for m in reversed(f.multicast)]}

    # -- configuration -------------------------------------------------------------
    def config_bytes(self) -> bytes:
        status = (S_LINK_UP if self.link_up else 0) | (S_ANNOUNCE if self.announce else 0)
        return (self.mac + struct.pack("<HH", status, self.max_pairs))[:self.config_size]

    def config_write(self, offset: int, size: int, value: int) -> None:
        # Legacy drivers without CTRL_MAC_ADDR set the MAC by writing the config.
        if offset + size <= 6 and not self.negotiated & (F_VERSION_1 | F_CTRL_MAC_ADDR):
            mac = bytearray(self.mac)
            mac[offset:offset + size] = value.to_bytes(size, "little")
            self.mac = bytes(mac)
            self._c_filter = None

    # -- queues --------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        if index == self.ctrl_queue:
            self._control()
        elif index % 2:
            self._transmit(index // 2)
        elif self.netdev is not None:
            self.netdev.receive_ready()

    def queue_port(self, pair: int) -> _PairPort:
        """What tap queue `pair` delivers to: that pair's receive queue."""
        return _PairPort(self, pair)

    def _transmit(self, pair: int) -> None:
        queue = self.transport.queue(2 * pair + 1)
        if queue is None:
            return
        send = self.link_up and self.netdev is not None and pair < self.active_pairs
        whole = self.passes_header
        if whole:     # to the tap as they are, header included: the C path, if built
            fd = self.netdev.tx_fd(pair) if send else -1
            if queue.drain_to_fd(fd, self.header_size) is not None:
                self.transport.interrupt_queue(2 * pair + 1)
                return
        while (chain := queue.pop()) is not None:
            if send and chain.readable_len > self.header_size:
                if whole:               # the guest's header and buffers, as they are
                    self.netdev.send_iov(chain.readable, pair)
                else:
                    self.netdev.send(chain.read_all()[self.header_size:])
            queue.push(chain.head, 0)
        self.transport.interrupt_queue(2 * pair + 1)

    def can_receive(self, pair: int = 0) -> bool:
        """Whether a frame can be taken now (with the link down it is, to be dropped)."""
        if not self.link_up:
            return True
        queue = self.transport.queue(2 * pair) if self.transport is not None else None
        try:
            return queue is not None and self.transport.running and queue.pending() > 0
        except VirtqueueError as e:       # the driver's available index ran off
            self.transport.guest_error(str(e))
            return False

    def receive_from_fd(self, fd: int, budget: int, pair: int = 0) -> bool | None:
        """Frames from a tap queue's fd straight into this pair's receive queue, in C
        (SplitQueue.fill_from_fd), as receive() would take them. Returns whether the
        tap should go on reading; None when the Python path must serve (headers not
        passed, the link down, or no C path)."""
        if not self.passes_header or not self.link_up or self.transport is None:
            return None
        queue = self.transport.queue(2 * pair)
        if queue is None or not self.transport.running:
            return False
        rx_filter = self._c_filter or self._make_c_filter()
        if rx_filter is None:
            return None
        delivered, dropped, stop, error = queue.fill_from_fd(
            fd, self.header_size, bool(self.negotiated & F_MRG_RXBUF), rx_filter, budget)
        self.rx_dropped += dropped
        if delivered:
            self.transport.interrupt_queue(2 * pair)
        if error is not None:
            self.transport.guest_error(error)
            return False
        return stop != FILL_NO_BUFFERS

    def _make_c_filter(self):
        """self.filter and self.mac as a struct rx_filter (see _accepts)."""
        c, f = new_rx_filter(), self.filter
        if c is None:
            return None
        for name in ("promiscuous", "allmulti", "alluni", "nomulti", "nouni", "nobcast",
                     "unicast_overflow", "multicast_overflow"):
            setattr(c, name, int(getattr(f, name)))
        c.vlan_filter = int(bool(self.negotiated & F_CTRL_VLAN))
        c.mac = list(self.mac)
        c.n_unicast, c.n_multicast = len(f.unicast), len(f.multicast)
        c.unicast[0:6 * len(f.unicast)] = list(b"".join(f.unicast))
        c.multicast[0:6 * len(f.multicast)] = list(b"".join(f.multicast))
        c.vlans = list(f.vlans.bits)
        self._c_filter = c
        return c

    def receive(self, frame: bytes, pair: int = 0) -> bool:
        """A frame from the back end (with its virtio_net_hdr when the back end passes
        headers); False when the guest has no room (try later)."""
        if not self.link_up:
            return True                 # dropped, as on a cable that is unplugged
        if self.passes_header:
            data, start = frame, self.header_size
        else:
            data, start = bytes(self.header_size) + frame, self.header_size
        if not self._accepts(data[start:start + 16]):
            return True
        if not self.can_receive(pair):
            return False
        queue = self.transport.queue(2 * pair)
        try:
            used = self._fill_rx(queue, data)
        except VirtqueueError as e:         # from the tap's reader: a guest error here
            self.transport.guest_error(str(e))
            return True
        if used is None:
            self.rx_dropped += 1
            return True
        self.transport.interrupt_queue(2 * pair)
        return True

    def _fill_rx(self, queue, data: bytes) -> int | None:
        """Writes header+frame over one or (MRG_RXBUF) several chains; returns how many."""
        merge = self.negotiated & F_MRG_RXBUF
        chains, offset = [], 0
        while offset < len(data):
            chain = queue.pop()
            if chain is None:
                break
            written = chain.write(memoryview(data)[offset:])
            chains.append((chain, written))
            offset += written
            if not merge:
                break
        if offset < len(data):
            # Not enough room: give the buffers back empty and drop the frame.
            for chain, _ in chains:
                queue.push(chain.head, 0)
            return None
        if merge:
            _write_at(chains[0][0], 10, struct.pack("<H", len(chains)))   # num_buffers
        for chain, written in chains:
            queue.push(chain.head, written)
        return len(chains)

    def _accepts(self, frame: bytes) -> bool:
        """QEMU's receive_filter: promiscuous, broadcast, multicast, unicast tables."""
        f = self.filter
        if f.promiscuous or len(frame) < 14:
            return True
        if self.negotiated & F_CTRL_VLAN and frame[12:14] == b"\x81\x00":
            vid = int.from_bytes(frame[14:16], "big") & 0xFFF
            if vid not in f.vlans:
                return False
        dest = frame[:6]
        if dest == b"\xff" * 6:
            return not f.nobcast
        if dest[0] & 1:
            return not f.nomulti and (f.allmulti or f.multicast_overflow or dest in f.multicast)
        if f.nouni:
            return False
        return f.alluni or f.unicast_overflow or dest == self.mac or dest in f.unicast

    # -- the control queue -----------------------------------------------------------
    def _control(self) -> None:
        index = self.ctrl_queue
        queue = self.transport.queue(index)
        if queue is None:
            return
        while (chain := queue.pop()) is not None:
            request = chain.read_all()
            ack = self._command(request[0], request[1], request[2:]) if len(request) >= 2 \
                else ACK_ERR
            written = chain.write(bytes([ack]))
            queue.push(chain.head, written)
        self.transport.interrupt_queue(index)

    def _command(self, klass: int, cmd: int, data: bytes) -> int:
        f = self.filter
        self._c_filter = None          # whatever it changes, the C filter is made again
        if klass == 0 and cmd <= 5 and len(data) >= 1:          # VIRTIO_NET_CTRL_RX
            name = ("promiscuous", "allmulti", "alluni", "nomulti", "nouni", "nobcast")[cmd]
            setattr(f, name, bool(data[0]))
        elif klass == 1 and cmd == 0:                            # MAC_TABLE_SET
            tables = []
            for _ in range(2):
                if len(data) < 4:
                    return ACK_ERR
                count = int.from_bytes(data[:4], "little")
                if len(data) < 4 + 6 * count:
                    return ACK_ERR
                tables.append([data[4 + 6 * i:10 + 6 * i] for i in range(count)])
                data = data[4 + 6 * count:]
            f.unicast_overflow = len(tables[0]) > MAC_TABLE_ENTRIES
            f.multicast_overflow = len(tables[1]) > MAC_TABLE_ENTRIES
            f.unicast = tables[0][:MAC_TABLE_ENTRIES]
            f.multicast = tables[1][:MAC_TABLE_ENTRIES]
        elif klass == 1 and cmd == 1 and len(data) == 6:         # MAC_ADDR_SET
            self.mac = bytes(data)
        elif klass == 2 and cmd in (0, 1) and len(data) == 2:    # VLAN_ADD / VLAN_DEL
            vid = int.from_bytes(data, "little")
            if vid >= MAX_VLAN:
                return ACK_ERR
            (f.vlans.add if cmd == 0 else f.vlans.discard)(vid)
        elif klass == 3 and cmd == 0:                            # ANNOUNCE_ACK
            self.announce = False
            return ACK_OK
        elif klass == 4 and cmd == 0 and len(data) == 2:         # MQ_VQ_PAIRS_SET
            pairs = int.from_bytes(data, "little")
            if not self.negotiated & F_MQ or not 1 <= pairs <= self.max_pairs:
                return ACK_ERR
            self.active_pairs = pairs
            self._apply_to_tap()
            return ACK_OK
        elif klass == 5 and cmd == 0 and len(data) == 8:         # GUEST_OFFLOADS_SET
            offloads = int.from_bytes(data, "little")
            if offloads & ~(self.negotiated & GUEST_OFFLOADS):
                return ACK_ERR                       # only what was negotiated
            self.guest_offloads = offloads
            self._apply_to_tap()
            return ACK_OK
        else:
            return ACK_ERR
        self.on_rx_filter_changed()
        return ACK_OK


def _write_at(chain: Chain, offset: int, data: bytes) -> None:
    """Writes into a chain's writable buffers at a byte offset across them."""
    for view in chain.writable:
        if offset >= len(view):
            offset -= len(view)
            continue
        n = min(len(view) - offset, len(data))
        view[offset:offset + n] = data[:n]
        data, offset = data[n:], 0
        if not data:
            return


def _mac_text(mac: bytes) -> str:
    return ":".join(f"{b:02x}" for b in mac)


class _PairPort:
    """Receive queue of pair `pair`, as the tap queue of the same number sees it."""

    def __init__(self, net: VirtioNet, pair: int) -> None:
        self.net, self.pair = net, pair

    def can_receive(self) -> bool:
        return self.net.can_receive(self.pair)

    def receive(self, frame: bytes) -> bool:
        return self.net.receive(frame, self.pair)

    def receive_from_fd(self, fd: int, budget: int) -> bool | None:
        return self.net.receive_from_fd(fd, budget, self.pair)


# -- the models, as QEMU declares them -------------------------------------
_FEATURE_ORDER = ("csum", "guest_csum", "gso", "guest_tso4", "guest_tso6", "guest_ecn",
                  "guest_ufo", "guest_announce", "host_tso4", "host_tso6", "host_ecn",
                  "host_ufo", "mrg_rxbuf", "status", "ctrl_vq", "ctrl_rx", "ctrl_vlan",
                  "ctrl_rx_extra", "ctrl_mac_addr", "ctrl_guest_offloads")


def _realize(board, device):
    props = device.props

    def make(mac, name, backend):
        pairs = backend.queue_count if backend is not None else 1   # a tap's queues=N
        if props["vectors"] == 0xFFFFFFFF:                  # QEMU: 2 per pair, and 2 more
            props["vectors"] = 2 * pairs + 2
        net = VirtioNet(mac, lambda: board.network.rx_filter_changed(name), pairs, props)
        transport = realize_proxy(board, device, net, 0x020000, props["vectors"], plug=False)
        transport.add_rom(0x40000)           # where QEMU has efi-virtio.rom
        return transport, net
    props["romfile"] = "efi-virtio.rom"
    return realize_nic(board, device, "virtio-net-device", make, path_suffix="/virtio-backend")


declare(DeviceType(
    "virtio-net-device", "virtio-device", user_creatable=False, honours=(
        "indirect_desc", "event_idx"), props=(
        *(on_off(name, True) if name in FEATURE_PROPERTIES else
          on_off(name, True, honoured=False) for name in _FEATURE_ORDER),
        on_off("mq", False), on_off("rss", False, honoured=False),
        on_off("hash", False, honoured=False), on_off("guest_rsc_ext", False, honoured=False),
        fixed("rsc_interval", "uint32", 300000), Prop("mac", "str", None, MAC_DESCRIPTION),
        Prop("netdev", "str", None, NETDEV_DESCRIPTION), fixed("x-txtimer", "uint32", 150000),
        fixed("x-txburst", "int32", 256), fixed("tx", "str", None),
        fixed("rx_queue_size", "uint16", 256), fixed("tx_queue_size", "uint16", 256),
        fixed("host_mtu", "uint16", 0), flag("x-mtu-bypass-backend", True, honoured=False),
        fixed("speed", "int32", -1), fixed("duplex", "str", None),
        flag("failover", False, honoured=False), bootindex())))
declare_proxies("virtio-net-pci", "virtio-net-device", _realize, (IOEVENTFD, vectors()),
                unrealize=unrealize_nic, category="Network", alias="virtio-net")
