"""Throughput through a tap: kvmkit vs QEMU 7.2 (userspace virtio-net, no
vhost), on the same probe guest, in one run.

    .venv/bin/python bench/net_throughput.py [--runs 3] [--frames 100000] [--gso-frames 10000]

Needs root (it makes a network namespace with `ip netns`, where each VMM's tap
lives). The guest negotiates checksum and TSO offloads, then sends TCP/IPv4
frames as fast as the device takes them (`netblast`): 1514-byte frames, and
64 KiB GSO frames that go to the kernel whole, through the tap's vnet header.
Packets and bytes are counted by the host kernel on the tap (its rx counters),
over the wall time the command took. The other way, the host writes 1514-byte
frames into the tap as fast as one Python loop can, and the guest counts what
it receives (`netsink`, polling, with receive interrupts off) between its first
and last frame. Frames the VMM did not take in time are dropped by the tap's
queue: the loss is shown, and where it is high a VMM received for a shorter
window, so compare the loss as well as the rate. Prints medians per VMM and the
kvmkit/QEMU ratios.
"""

from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
import uuid

from vmms import ProbeConsole, probe
from vmms import vmms as all_vmms

TAP = "kkbench0"
CASES = {"1514-byte frames": (1460, 0), "64 KiB GSO frames": (65000, 1448)}
RX_CASE = "host to guest, 1514"
GUEST_MAC = bytes.fromhex("525400123456")


class Guest(ProbeConsole):
    def __init__(self, argv: list[str], netns: str) -> None:
        super().__init__(["ip", "netns", "exec", netns, *argv, "-m", "256", "-nodefaults",
                          "-display", "none", "-serial", "stdio", "-kernel", probe(),
                          "-netdev", f"tap,id=n0,ifname={TAP},script=no,downscript=no",
                          "-device", "virtio-net-pci,netdev=n0"])
        self.wait_for('"ready"')


def tap_counters(netns: str) -> tuple[int, int]:
    from pyroute2 import NetNS

    with NetNS(netns) as ipr:
        index = ipr.link_lookup(ifname=TAP)[0]
        stats = ipr.get_links(index)[0].get_attr("IFLA_STATS64")
    return stats["rx_packets"], stats["rx_bytes"]


def run_once(argv: list[str], netns: str, counts: dict[str, int]) -> dict:
    from pyroute2 import NetNS

    guest = Guest(argv, netns)
    try:
        with NetNS(netns) as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=TAP)[0], state="up")
        guest.command("netoffload on")
        out = {}
        for case, (payload, mss) in CASES.items():
            packets0, bytes0 = tap_counters(netns)
            start = time.perf_counter()
            answer = guest.command(f"netblast {counts[case]} 020000000001 {payload} {mss}")
            elapsed = time.perf_counter() - start
            packets1, bytes1 = tap_counters(netns)
            if "error" in answer or packets1 - packets0 < counts[case]:
                raise RuntimeError(f"{case}: {answer}, {packets1 - packets0} arrived")
            out[case] = ((packets1 - packets0) / elapsed, (bytes1 - bytes0) * 8 / elapsed / 1e9)
        out[RX_CASE] = host_to_guest(guest, netns, counts[RX_CASE])
        return out
    finally:
        guest.close()


def host_to_guest(guest: Guest, netns: str, count: int) -> tuple[float, float, float]:
    """Frames the guest received per second, their Gbit/s, and the share lost."""
    import socket

    from pyroute2 import netns as ns_tools

    ns_tools.pushns(netns)
    try:
        sock = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        sock.bind((TAP, 0))
    finally:
        ns_tools.popns()
    frame = GUEST_MAC + bytes.fromhex("020000000001") + b"\x88\xb5" + bytes(1500)
    guest.send("netsink 300")
    time.sleep(0.3)
    try:
        for _ in range(count):
            try:
                sock.send(frame)
            except OSError:            # the tap's queue is full: that frame is lost
                pass
    finally:
        sock.close()
    answer = guest.wait_for('"frames"')
    seconds = max(answer["us"], 1) / 1e6
    return (answer["frames"] / seconds, answer["bytes"] * 8 / seconds / 1e9,
            1 - answer["frames"] / count)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--frames", type=int, default=100000)
    parser.add_argument("--gso-frames", type=int, default=10000)
    args = parser.parse_args()
    counts = {"1514-byte frames": args.frames, "64 KiB GSO frames": args.gso_frames,
              RX_CASE: args.frames}
    vmms = all_vmms()
    netns = f"kkbench-{uuid.uuid4().hex[:6]}"
    subprocess.run(["ip", "netns", "add", netns], check=True)
    try:
        results = {name: [run_once(argv, netns, counts) for _ in range(args.runs)]
                   for name, argv in vmms.items()}
    finally:
        subprocess.run(["ip", "netns", "delete", netns])

    def median(name: str, case: str, field: int) -> float:
        return statistics.median(r[case][field] for r in results[name])

    print(f"virtio-net with offloads through a tap, {args.runs} runs each (medians)")
    print(f"{'case':<20} {'vmm':<8} {'packets/s':>11} {'Gbit/s':>8} {'lost':>6}")
    for case in [*CASES, RX_CASE]:
        for name in results:
            lost = f"{median(name, case, 2):>6.1%}" if case == RX_CASE else ""
            print(f"{case:<20} {name:<8} {median(name, case, 0):>11.0f} "
                  f"{median(name, case, 1):>8.2f} {lost}")
        if "qemu" in results:
            print(f"{case:<20} {'ratio':<8} "
                  f"{median('kvmkit', case, 0) / median('qemu', case, 0):>10.2f}x "
                  f"{median('kvmkit', case, 1) / median('qemu', case, 1):>7.2f}x")
    return 0


if __name__ == "__main__":
    sys.exit(main())
