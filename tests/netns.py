"""Network namespaces and host-side sockets for the NIC scenarios: the VMM starts
inside a namespace the test made, so its taps are made there, and the test reads
and writes frames on them with AF_PACKET sockets (pyroute2 for the links)."""

from __future__ import annotations

import socket

ETH_TYPE = 0x88B5                 # IEEE "local experimental": nothing else on the wire uses it
SOL_PACKET, PACKET_VNET_HDR = 263, 15


def in_netns(name):
    """A preexec_fn: the VMM starts inside the namespace, so its tap is made there."""
    def enter():
        from pyroute2 import netns
        netns.setns(name)
    return enter


def packet_socket(ns: str, ifname: str, proto: int = ETH_TYPE,
                  vnet_hdr: bool = False) -> socket.socket:
    """An AF_PACKET socket on the tap, opened from inside the namespace; with vnet_hdr
    every frame read or written carries a struct virtio_net_hdr, which shows (or
    asks for) the checksum and segmentation offloads the kernel sees."""
    from pyroute2 import NetNS, netns

    with NetNS(ns) as ipr:
        index = ipr.link_lookup(ifname=ifname)[0]
        ipr.link("set", index=index, state="up")
    netns.pushns(ns)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(proto))
        if vnet_hdr:
            sock.setsockopt(SOL_PACKET, PACKET_VNET_HDR, 1)
        sock.bind((ifname, proto))
    finally:
        netns.popns()
    sock.settimeout(5)
    return sock
