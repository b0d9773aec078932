"""The machine's network clients as QEMU keeps them: NICs, back ends, peers.

Every -netdev / netdev_add makes a back end; every NIC (-device
virtio-net-pci, ...) may take one as its peer. This table answers `info
network`, `set_link` and `netdev_del`, and hands out QEMU's default MAC
addresses (52:54:00:12:34:56 and up, the first unused).
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import dataclass, field

from vmm.errors import UserError
from vmm.net.hub import Hub, HubPort
from vmm.net.netdev_options import MEMBERS, NETDEV_TYPES, QEMU_ONLY_TYPES
from vmm.net.slirp import SlirpError, UserBackend
from vmm.net.tap import TapBackend, TapError

DEFAULT_MAC_PREFIX = bytes([0x52, 0x54, 0x00, 0x12, 0x34])
# QEMU's descriptions of the properties every NIC has
MAC_DESCRIPTION = "Ethernet 6-byte MAC Address, example: 52:54:00:12:34:56"
NETDEV_DESCRIPTION = "ID of a netdev to use as a backend"


RARP = b"\x80\x35"                   # the announcement's ethertype


class NetError(UserError):
    pass


@dataclass
class Nic:
    name: str
    model: str
    mac: bytes
    device: object                    # the NIC model: set_link(up), receive(frame), ...
    peer: object | None = None        # its back end
    link_down: bool = False
    path: str = ""                    # QOM path of the NIC's virtio/emulated part
    rx_filter_notify: bool = True     # NIC_RX_FILTER_CHANGED armed (re-armed by a query)
    queue_names: list[str] = field(default_factory=list)   # a name per queue (see nic_names)

    def info(self) -> str:
        mac = ":".join(f"{b:02x}" for b in self.mac)
        return f"index=0,type=nic,model={self.model},macaddr={mac}"


def parse_mac(text: str) -> bytes | None:
    parts = text.split(":")
    if len(parts) != 6 or not all(len(p) == 2 for p in parts):
        return None
    try:
        return bytes(int(p, 16) for p in parts)
    except ValueError:
        return None


class Network:
    def __init__(self, lock: threading.RLock, fd_lookup: Callable[[str], int],
                 emit: Callable[[str, dict], None] = lambda name, data: None,
                 chardev_for: Callable[[str, str], object] | None = None) -> None:
        self.lock = lock
        self.fd_lookup = fd_lookup          # fd=NAME/N -> an open fd (getfd or inherited)
        self.emit = emit                    # a machine event, from any thread
        self.chardev_for = chardev_for      # guestfwd's chardev, from -serial-style text
        self.order: list[str] = []          # every client name, in creation order
        self.netdevs: dict[str, object] = {}
        self.nics: dict[str, Nic] = {}
        self.hubs: dict[int, Hub] = {}
        self.loop = None

    # -- the legacy -net hub ------------------------------------------------------------
    def hub(self, hub_id: int = 0) -> Hub:
        return self.hubs.setdefault(hub_id, Hub(hub_id))

    def connect_to_hub(self, netdev_id: str, port_index: int, hub_id: int = 0) -> None:
        """-net TYPE: the back end just added goes on a port of the hub."""
        backend = self.netdevs[netdev_id]
        port = self.hub(hub_id).port(port_index)
        port.peer, port.peer_name = backend, netdev_id
        backend.nic = port

    def hub_port(self, reference: str) -> HubPort | None:
        """-net nic's netdev reference "#hubH:P" (no user id has a '#'), else None."""
        if not reference.startswith("#hub"):
            return None
        hub_id, index = reference[4:].split(":")
        return self.hub(int(hub_id)).port(int(index))

    # -- back ends --------------------------------------------------------------------
    def add_netdev(self, netdev_id: str, kind: str, opts: dict,
                   fd_lookup: Callable[[str], int] | None = None) -> None:
        if netdev_id in self.netdevs:
            raise NetError(f"Duplicate ID '{netdev_id}'")    # -netdev adds " for netdev"
        if kind in QEMU_ONLY_TYPES:
            raise NetError(f"network backend '{kind}' is not supported by kvmkit")
        if kind not in NETDEV_TYPES:
            raise NetError(f"Parameter 'type' does not accept value '{kind}'")
        unknown = sorted(set(opts) - {"id", "type", *MEMBERS[kind]})
        if unknown:
            raise NetError(f"Invalid parameter '{unknown[0]}'")
        try:
            if kind == "user":
                backend = UserBackend(opts, self.lock, self.chardev_for)
            elif kind == "bridge":
                backend = TapBackend.on_bridge(opts, self.lock)
            else:
                backend = TapBackend.from_options(opts, self.lock, fd_lookup or self.fd_lookup)
        except (TapError, SlirpError) as e:
            raise NetError(e.strerror or str(e)) from None
        except UserError as e:                # a bad option value, as QEMU words it
            raise NetError(str(e)) from None
        self.netdevs[netdev_id] = backend
        self.order.append(netdev_id)
        if self.loop is not None:
            backend.start(self.loop)

    def remove_netdev(self, netdev_id: str) -> None:
        backend = self.netdevs.pop(netdev_id, None)
        if backend is None:
            raise KeyError(netdev_id)
        self.order.remove(netdev_id)
        for nic in self.nics.values():
            if nic.peer is backend:          # the NIC stays, with nobody at the other end
                nic.peer = None
                nic.device.netdev = None
        backend.close()

    # -- NICs -------------------------------------------------------------------------
    def default_mac(self) -> bytes:
        used = {nic.mac for nic in self.nics.values()}
        for index in range(256 - 0x56):
            mac = DEFAULT_MAC_PREFIX + bytes([0x56 + index])
            if mac not in used:
                return mac
        raise NetError("no free default MAC address")

    def nic_names(self, qdev_id: str | None, model: str, backend: object | None) -> list[str]:
        """QEMU's names for a new NIC's clients, one per queue of its back end (a
        multiqueue tap): its id for each, else the next free "model.N" for each, N
        counting every client of that model so far."""
        queues = backend.queue_count if backend is not None else 1
        if qdev_id:
            return [qdev_id] * queues
        count = sum(len(nic.queue_names) for nic in self.nics.values() if nic.model == model)
        return [f"{model}.{count + index}" for index in range(queues)]

    def find_backend(self, netdev_id: str, owner: str) -> object:
        """The back end a new NIC names; QEMU's errors for missing or taken ones."""
        backend = self.netdevs.get(netdev_id)
        if backend is None:
            raise NetError(f"Property '{owner}.netdev' can't find value '{netdev_id}'")
        if any(nic.peer is backend for nic in self.nics.values()):
            raise NetError(f"Property '{owner}.netdev' can't take value '{netdev_id}', "
                           "it's in use")
        return backend

    def attach_nic(self, nic: Nic) -> None:
        self.nics[nic.name] = nic
        self.order.append(nic.name)
        if isinstance(nic.peer, HubPort):
            nic.peer.peer, nic.peer.peer_name, nic.peer.peer_is_nic = \
                nic.device, nic.name, True
            nic.device.netdev = nic.peer
        elif nic.peer is not None:
            nic.peer.nic = nic.device
            nic.device.netdev = nic.peer

    def detach_nic(self, name: str) -> None:
        nic = self.nics.pop(name, None)
        if nic is None:
            return
        self.order.remove(name)
        if isinstance(nic.peer, HubPort):
            nic.peer.peer = None
        elif nic.peer is not None:
            nic.peer.nic = None

    def rx_filter_changed(self, name: str) -> None:
        """The guest changed a NIC's receive filter: one event until the next query,
        as QEMU's rxfilter_notify."""
        nic = self.nics.get(name)
        if nic is not None and nic.rx_filter_notify:
            nic.rx_filter_notify = False
            self.emit("NIC_RX_FILTER_CHANGED", {"name": name, "path": nic.path})

    def query_rx_filter(self, name: str | None) -> list[dict]:
        """query-rx-filter; raises KeyError/NetError with QEMU's cases."""
        if name is not None and name not in self.nics:
            if name in self.netdevs:
                raise NetError(f"net client({name}) isn't a NIC")
            raise KeyError(name)
        out = []
        for nic_name in self.order:
            nic = self.nics.get(nic_name)
            if nic is None or (name is not None and nic_name != name):
                continue
            if not hasattr(nic.device, "rx_filter_info"):
                if name is not None:
                    raise NetError(f"net client({name}) doesn't support rx-filter querying")
                continue
            out.append(nic.device.rx_filter_info(nic_name))
            nic.rx_filter_notify = True
        return out

    # -- the monitor's view -------------------------------------------------------------
    def set_link(self, name: str, up: bool) -> None:
        """QEMU's qmp_set_link: a NIC, or a back end whose NIC peer follows it."""
        nic = self.nics.get(name)
        backend = self.netdevs.get(name)
        if nic is None and backend is None:
            raise KeyError(name)
        if backend is not None:
            backend.link_down = not up
            nic = next((n for n in self.nics.values() if n.peer is backend), None)
        if nic is not None:
            nic.link_down = not up
            nic.device.set_link(up)

    def announce_self(self, names: list[str] | None = None) -> None:
        """One round of QEMU's self-announcement: each NIC with a back end sends a
        RARP request from its MAC (RFC 903), so switches learn where the guest is
        now (after an incoming migration, or QMP announce-self)."""
        for nic in self.nics.values():
            if nic.peer is None or nic.link_down or names is not None and nic.name not in names:
                continue
            mac = getattr(nic.device, "mac", nic.mac)
            frame = b"\xff" * 6 + mac + RARP + struct.pack(
                ">HHBBH", 1, 0x0800, 6, 4, 3) + mac + bytes(4) + mac + bytes(4)
            send = getattr(nic.peer, "send_raw", nic.peer.send)   # a tap: its header too
            send(frame.ljust(60, b"\0"))

    def lines(self) -> list[str]:
        """`info network`: hubs with their ports, NICs with their peers, then
        unattached back ends (what sits on a hub is shown there only)."""
        attached = {id(nic.peer) for nic in self.nics.values() if nic.peer is not None}
        names = {id(backend): name for name, backend in self.netdevs.items()}
        out = []
        for hub in self.hubs.values():
            out += hub.lines(self._port_peer_info)
        on_hubs = {id(port.peer) for hub in self.hubs.values() for port in hub.ports}
        for name in self.order:
            client = self.nics.get(name) or self.netdevs.get(name)
            if id(getattr(client, "device", client)) in on_hubs:
                continue
            if name in self.nics:
                nic = self.nics[name]
                # A multiqueue NIC is a client per queue, as in QEMU, where only the
                # first has its model and MAC in its text.
                for index, queue_name in enumerate(nic.queue_names or [name]):
                    out.append(f"{queue_name}: {nic.info()}" if index == 0 else
                               f"{queue_name}: index={index},type=nic,")
                    if nic.peer is not None:
                        out.append(f" \\ {names[id(nic.peer)]}: {nic.peer.info(index)}")
            elif id(self.netdevs[name]) not in attached:
                backend = self.netdevs[name]
                # each queue its own client, as QEMU's taps: index 0, its own fd
                out += [f"{name}: {backend.info(0, queue)}" for queue in
                        range(backend.queue_count)]
        return out

    def usernet_text(self) -> str:
        """`info usernet`: each user back end's sockets, headed by its hub (-1 when
        it is on none) and name."""
        out = []
        for name in self.order:
            backend = self.netdevs.get(name)
            if getattr(backend, "kind", "") != "user":
                continue
            hub_id = next((hub.hub_id for hub in self.hubs.values()
                           if any(port.peer is backend for port in hub.ports)), -1)
            out.append(f"Hub {hub_id} ({name}):\n{backend.connection_info()}")
        return "".join(out)

    def user_backend(self, name: str | None) -> object:
        """hostfwd_add/remove's back end: the one named, or the first user one;
        a NetError with QEMU's monitor text otherwise."""
        if name is None:
            backend = next((self.netdevs[n] for n in self.order
                            if getattr(self.netdevs.get(n), "kind", "") == "user"), None)
            if backend is None:
                raise NetError("user mode network stack not in use")
            return backend
        backend = self.netdevs.get(name)
        if backend is None:
            raise NetError(f"unrecognized netdev id '{name}'")
        if getattr(backend, "kind", "") != "user":
            raise NetError("invalid device specified")
        return backend

    def unpeered_warnings(self) -> list[str]:
        """QEMU's start-up warning for each back end (queue) that no NIC uses."""
        attached = {id(nic.peer) for nic in self.nics.values()}
        on_hubs = {id(port.peer) for hub in self.hubs.values() for port in hub.ports}
        return [f"warning: netdev {name} has no peer"
                for name, backend in self.netdevs.items()
                if id(backend) not in attached and id(backend) not in on_hubs
                for _ in range(backend.queue_count)]

    def _port_peer_info(self, port: HubPort) -> str:
        if port.peer_is_nic:
            return self.nics[port.peer_name].info()
        return port.peer.info(0)

    def start(self, loop) -> None:
        self.loop = loop
        for backend in self.netdevs.values():
            backend.start(loop)

    def close(self) -> None:
        for backend in list(self.netdevs.values()):
            backend.close()
        self.netdevs.clear()


def realize_nic(board, device, owner: str, make, path_suffix: str = ""):
    """A NIC's realize: its MAC (QEMU's default if none), its back end, its PCI
    function. ``make(mac, client_name, backend)`` returns (pci_function, nic);
    ``owner`` is the type QEMU names in mac/netdev errors."""
    from vmm.qdev import DeviceError

    props = device.props
    network = board.network
    mac = parse_mac(props["mac"]) if props.get("mac") else network.default_mac()
    if mac is None:
        raise DeviceError(f"Property '{owner}.mac' doesn't take value '{props['mac']}'")
    props["mac"] = ":".join(f"{b:02x}" for b in mac)    # what QOM and qtree show
    try:
        netdev = props.get("netdev")
        backend = (network.hub_port(netdev) or network.find_backend(netdev, owner)) \
            if netdev else None
        queue_names = network.nic_names(device.id, device.driver, backend)
        function, nic = make(mac, queue_names[0], backend)
    except (NetError, ValueError) as e:
        raise DeviceError(str(e)) from None
    function.qdev_id = device.id or ""
    board.plug_pci(function, device)
    network.attach_nic(Nic(queue_names[0], device.driver, mac, nic, backend,
                           queue_names=queue_names,
                           path=board.devices.path(device) + path_suffix))
    return function


def emulated_nic(cls, romfile: str):
    """The realize of a NIC that is its own PCI function (e1000, rtl8139):
    ``cls(memory, mac)`` builds it; ``romfile`` is the ROM QEMU would give it."""
    def realize(board, device):
        def make(mac, name, backend):
            nic = cls(board.memory, mac)
            return nic, nic
        device.props["romfile"] = romfile
        return realize_nic(board, device, device.driver, make)
    return realize


def unrealize_nic(board, device) -> None:
    """A NIC leaves the board: its network clients go with it."""
    obj = device.obj
    backend = getattr(obj, "backend", obj)
    for name, nic in list(board.network.nics.items()):
        if nic.device is backend or nic.device is obj:
            board.network.detach_nic(name)
