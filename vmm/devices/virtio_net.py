"""virtio-net (virtio spec 5.1): frames between the guest and a network back end.

Queues as QEMU's single-pair device: receiveq 0, transmitq 1, controlq 2.
Every buffer starts with a struct virtio_net_hdr (12 bytes with
VIRTIO_F_VERSION_1 or MRG_RXBUF, else 10); with MRG_RXBUF a received frame may
span several receive buffers, `num_buffers` saying how many. The control
queue takes QEMU's commands (rx mode, MAC table and address, VLAN filter,
announce acknowledgement, guest offloads) and keeps the state that
query-rx-filter reports. With no back end, or the link down, transmitted
frames are dropped and nothing is received, as with QEMU.
"""

from __future__ import annotations

import logging
import struct
from collections.abc import Callable
from dataclasses import dataclass, field

from vmm.virtio.device import VirtioDevice
from vmm.virtio.queue import Chain

log = logging.getLogger(__name__)

RX_Q, TX_Q, CTRL_Q = 0, 1, 2

F_CTRL_GUEST_OFFLOADS = 1 << 2
F_MAC = 1 << 5
F_MRG_RXBUF = 1 << 15
F_STATUS = 1 << 16
F_CTRL_VQ = 1 << 17
F_CTRL_RX = 1 << 18
F_CTRL_VLAN = 1 << 19
F_CTRL_RX_EXTRA = 1 << 20
F_GUEST_ANNOUNCE = 1 << 21
F_CTRL_MAC_ADDR = 1 << 23
F_RING_INDIRECT_DESC = 1 << 28
F_RING_EVENT_IDX = 1 << 29
F_VERSION_1 = 1 << 32

S_LINK_UP, S_ANNOUNCE = 1, 2
ACK_OK, ACK_ERR = 0, 1
MAX_VLAN = 4096
MAC_TABLE_ENTRIES = 64          # QEMU's MAC_TABLE_ENTRIES


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
    vlans: set[int] = field(default_factory=lambda: set(range(MAX_VLAN)))


class VirtioNet(VirtioDevice):
    name = "virtio-net"
    device_type = 1
    config_size = 8                     # mac, status
    queue_sizes = (256, 256, 64)
    features = (F_CTRL_GUEST_OFFLOADS | F_MAC | F_MRG_RXBUF | F_STATUS | F_CTRL_VQ | F_CTRL_RX
                | F_CTRL_VLAN | F_CTRL_RX_EXTRA | F_GUEST_ANNOUNCE | F_CTRL_MAC_ADDR
                | F_RING_INDIRECT_DESC | F_RING_EVENT_IDX)

    def __init__(self, mac: bytes, on_rx_filter_changed: Callable[[], None] = lambda: None) -> None:
        super().__init__()
        self.perm_mac = mac
        self.on_rx_filter_changed = on_rx_filter_changed
        self.netdev = None             # has send(frame); set when a netdev is attached
        self.link_up = True
        self.reset()

    def reset(self) -> None:
        super().reset()
        self.mac = self.perm_mac
        self.filter = RxFilter()
        self.guest_offloads = 0
        self.announce = False
        self.tx_frames = self.rx_frames = self.rx_dropped = 0

    def features_negotiated(self, features: int) -> None:
        super().features_negotiated(features)
        self.filter.vlans = set() if features & F_CTRL_VLAN else set(range(MAX_VLAN))

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
        return self.mac + struct.pack("<H", status)

    def config_write(self, offset: int, size: int, value: int) -> None:
        # Legacy drivers without CTRL_MAC_ADDR set the MAC by writing the config.
        if offset + size <= 6 and not self.negotiated & (F_VERSION_1 | F_CTRL_MAC_ADDR):
            mac = bytearray(self.mac)
            mac[offset:offset + size] = value.to_bytes(size, "little")
            self.mac = bytes(mac)

    # -- queues --------------------------------------------------------------------
    def queue_notify(self, index: int) -> None:
        if index == TX_Q:
            self._transmit()
        elif index == CTRL_Q:
            self._control()
        elif index == RX_Q and self.netdev is not None:
            self.netdev.receive_ready()

    def _transmit(self) -> None:
        queue = self.transport.queue(TX_Q)
        while (chain := queue.pop()) is not None:
            frame = chain.read_all()[self.header_size:]
            if self.link_up and self.netdev is not None and frame:
                self.netdev.send(frame)
                self.tx_frames += 1
            queue.push(chain.head, 0)
        self.transport.interrupt_queue(TX_Q)

    def can_receive(self) -> bool:
        """Whether a frame can be taken now (with the link down it is, to be dropped)."""
        if not self.link_up:
            return True
        queue = self.transport.queue(RX_Q) if self.transport is not None else None
        return queue is not None and queue.pending() > 0 and \
            self.transport.device_status & 4 != 0

    def receive(self, frame: bytes) -> bool:
        """A frame from the back end; False when the guest has no room (try later)."""
        if not self.link_up:
            return True                 # dropped, as on a cable that is unplugged
        if not self._accepts(frame):
            return True
        if not self.can_receive():
            return False
        queue = self.transport.queue(RX_Q)
        used = self._fill_rx(queue, bytes(self.header_size) + frame)
        if used is None:
            self.rx_dropped += 1
            return True
        self.rx_frames += 1
        self.transport.interrupt_queue(RX_Q)
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
        queue = self.transport.queue(CTRL_Q)
        while (chain := queue.pop()) is not None:
            request = chain.read_all()
            ack = self._command(request[0], request[1], request[2:]) if len(request) >= 2 \
                else ACK_ERR
            written = chain.write(bytes([ack]))
            queue.push(chain.head, written)
        self.transport.interrupt_queue(CTRL_Q)

    def _command(self, klass: int, cmd: int, data: bytes) -> int:
        f = self.filter
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
        elif klass == 5 and cmd == 0 and len(data) == 8:         # GUEST_OFFLOADS_SET
            self.guest_offloads = int.from_bytes(data, "little")
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
