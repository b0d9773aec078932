"""The legacy `-net` hub ("vlan 0" of old QEMUs): every frame one port takes is
given to all the others. `-net nic` puts a NIC on a port, `-net user|tap|...` a
back end; `info network` shows the hub with each port's peer, as QEMU's.
"""

from __future__ import annotations

from vmm.net.backend import SingleQueueBackend


class HubPort(SingleQueueBackend):
    """Looks like a back end to a NIC (a NetBackend), and like a NIC to a back end."""

    def __init__(self, hub: Hub, index: int) -> None:
        self.hub = hub
        self.name = f"hub{hub.hub_id}port{index}"
        self.peer = None                 # a NIC model or a back end
        self.peer_name = ""
        self.peer_is_nic = False
        self.link_down = False
        self.nic = None                  # set when a back end is attached here

    # -- what a NIC calls (its netdev) ---------------------------------------------
    def send(self, frame: bytes) -> None:
        self.hub.deliver(self, frame)

    def receive_ready(self) -> None:
        for port in self.hub.ports:
            if port is not self and not port.peer_is_nic and port.peer is not None:
                port.peer.receive_ready()

    def info(self, index: int, queue: int | None = None) -> str:
        return f"index={index},type=hubport,hubid={self.hub.hub_id}"

    def start(self, loop) -> None:
        pass                              # a port has nothing of its own to run

    def close(self) -> None:
        pass

    # -- what a back end calls (its nic) -----------------------------------------------
    def can_receive(self) -> bool:
        return True

    def receive(self, frame: bytes) -> bool:
        self.hub.deliver(self, frame)
        return True


class Hub:
    def __init__(self, hub_id: int) -> None:
        self.hub_id = hub_id
        self.ports: list[HubPort] = []

    def port(self, index: int) -> HubPort:
        """Port `index` (ports are numbered in command-line order, as QEMU's)."""
        while len(self.ports) <= index:
            self.ports.append(HubPort(self, len(self.ports)))
        return self.ports[index]

    def deliver(self, source: HubPort, frame: bytes) -> None:
        for port in self.ports:
            if port is source or port.peer is None:
                continue
            if port.peer_is_nic:
                port.peer.receive(frame)
            else:
                port.peer.send(frame)

    def lines(self, info_of) -> list[str]:
        """QEMU lists the ports newest first, each with its peer."""
        out = [f"hub {self.hub_id}"]
        for port in reversed(self.ports):
            peer = f": {port.peer_name}: {info_of(port)}" if port.peer is not None else ""
            out.append(f" \\ {port.name}{peer}")
        return out
