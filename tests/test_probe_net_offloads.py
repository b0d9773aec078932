"""virtio-net offloads and multiqueue through a tap, on QEMU 7.2 and kvmkit.

The host side reads and writes the tap with PACKET_VNET_HDR sockets, so every
frame carries the virtio_net_hdr the kernel saw: a TCP frame the guest asked the
card to checksum and segment must reach the kernel as one GSO frame (not 14
segments, not a frame with a wrong checksum), and a GSO frame the host sends
must reach a guest that negotiated GUEST_TSO4 whole, and one that did not as
segments. With `queues=2,mq=on`, flows spread over both queue pairs once the
guest enables two, and stay on pair 0 while it uses one.
"""

from __future__ import annotations

import struct

import pytest
from guest import QmpLine as Qmp
from guest import machine_args
from netns import in_netns, packet_socket

pytestmark = pytest.mark.kvm
GUEST_MAC = bytes.fromhex("525400123456")
HOST_MAC = bytes.fromhex("020000000001")
ETH_P_IP = 0x0800
OFFLOADS = (1 << 0) | (1 << 1) | (1 << 7) | (1 << 11) | (1 << 15)   # CSUM .. MRG_RXBUF
NEEDS_CSUM, GSO_TCPV4 = 1, 1
TAP = "tap,id=n0,ifname=kk0,script=no,downscript=no"


def tcp_frame(dst: bytes, src: bytes, payload: bytes, sport: int = 5001, dport: int = 40000,
              proto: int = 6) -> bytes:
    """Ethernet + IPv4 + TCP (or a UDP header padded to 20) around payload."""
    ip = struct.pack(">BBHHHBBH4s4s", 0x45, 0, 40 + len(payload), 1, 0x4000, 64, proto, 0,
                     bytes([10, 0, 0, 1]), bytes([10, 0, 0, 2]))
    l4 = struct.pack(">HHIIBBHHH", sport, dport, 1, 0, 5 << 4, 0x18, 65535, 0, 0)
    return dst + src + ETH_P_IP.to_bytes(2, "big") + ip + l4 + payload


def vnet_hdr(flags: int = 0, gso_type: int = 0, hdr_len: int = 0, gso_size: int = 0,
             csum_start: int = 0, csum_offset: int = 0) -> bytes:
    return struct.pack("<BBHHHH", flags, gso_type, hdr_len, gso_size, csum_start, csum_offset)


def guest_frames(vm, count: int, min_len: int = 0) -> list[dict]:
    """The guest's next `count` IPv4 frames of at least min_len bytes (it also sees
    the host's own chatter)."""
    got = []
    for _ in range(count + 40):
        answer = vm.command("netrecv 1000", timeout=10)
        if answer.get("frame", True) is None:
            break
        if answer["type"] == "0x0800" and answer["len"] >= min_len:
            got.append(answer)
            if len(got) == count:
                break
    return got


def recv_ours(sock, min_len: int = 0, header_len: int = 0) -> tuple[bytes, bytes]:
    """The next frame the guest sent to HOST_MAC (it also sees the host's own
    chatter): the header_len bytes before it (a PACKET_VNET_HDR socket's) and it."""
    for _ in range(50):
        data = sock.recv(70000)
        frame = data[header_len:]
        if frame[:6] == HOST_MAC and len(frame) >= min_len:
            return data[:header_len], frame
    raise AssertionError("the guest's frame never reached the host")


def host_reads_ours(sock, min_len: int = 0) -> tuple[tuple, bytes]:
    """The next frame the guest sent to HOST_MAC: its vnet header fields and bytes."""
    header, frame = recv_ours(sock, min_len, header_len=10)
    return struct.unpack("<BBHHHH", header), frame


def test_checksum_and_tso_offloads_cross_a_vnet_hdr_tap(launch, vmm_kind, netns):
    vm = launch(machine_args(extra=["-netdev", TAP, "-device", "virtio-net-pci,netdev=n0"]),
                vmm_kind, preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    negotiated = int(vm.command("netoffload on")["features"], 16)
    assert negotiated & OFFLOADS == OFFLOADS
    host = packet_socket(netns, "kk0", ETH_P_IP, vnet_hdr=True)

    # Guest to host: one 20000-byte TCP payload, segmented by "the card" = the kernel.
    assert vm.command("nettcp 020000000001 20000 1448") == {"sent": 20054, "checksum": "card"}
    header, frame = host_reads_ours(host, 20054)
    flags, gso_type, hdr_len, gso_size, csum_start, csum_offset = header
    assert (flags & NEEDS_CSUM, gso_type, gso_size, csum_start, csum_offset) == \
        (NEEDS_CSUM, GSO_TCPV4, 1448, 34, 16)
    assert len(frame) == 20054 and frame[6:12] == GUEST_MAC
    assert frame[54:54 + 52] == bytes(ord("a") + i % 26 for i in range(52))
    # ... and a small one: checksum offload alone.
    assert vm.command("nettcp 020000000001 100")["checksum"] == "card"
    header, frame = host_reads_ours(host, 154)
    assert header[0] & NEEDS_CSUM and header[1] == 0 and len(frame) == 154

    # Host to guest: an 8000-byte GSO frame reaches a GUEST_TSO4 guest whole.
    big = tcp_frame(GUEST_MAC, HOST_MAC, bytes(range(256)) * 31 + bytes(64))
    assert len(big) == 8054
    gso = vnet_hdr(NEEDS_CSUM, GSO_TCPV4, 54, 1000, 34, 16)
    host.send(gso + big)
    [whole] = guest_frames(vm, 1, min_len=1000)
    assert whole["len"] == 8054
    assert whole["hdr"]["gso_type"] == GSO_TCPV4 and whole["hdr"]["gso_size"] == 1000
    assert whole["hdr"]["num_buffers"] == 4          # 12 + 8054 bytes over 2 KiB buffers
    # Without the offloads negotiated, the tap is told: the kernel segments for it.
    assert int(vm.command("netoffload off")["features"], 16) & OFFLOADS == 0
    host.send(gso + big)
    segments = guest_frames(vm, 8, min_len=100)
    assert [s["len"] for s in segments] == [1054] * 8
    assert all(s["hdr"]["gso_type"] == 0 for s in segments)
    host.close()


def on_two_queue_tap(launch, tmp_path, vmm_kind, netns, device: str, first: str,
                     second: str, model: str):
    """A VM with `device` on a queues=2 tap; checks info network's client per queue."""
    sock_path = str(tmp_path / "qmp.sock")
    vm = launch(machine_args(extra=[
        "-netdev", TAP + ",queues=2", "-device", device,
        "-qmp", f"unix:{sock_path},server=on,wait=off"]), vmm_kind,
        preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    assert Qmp(sock_path).hmp("info network") == (
        f"{first}: index=0,type=nic,model={model},macaddr=52:54:00:12:34:56\r\n"
        " \\ n0: index=0,type=tap,ifname=kk0,script=no,downscript=no\r\n"
        f"{second}: index=1,type=nic,\r\n"
        " \\ n0: index=1,type=tap,ifname=kk0,script=no,downscript=no\r\n")
    return vm


def test_multiqueue_pairs_take_flows_from_tap_queues(launch, tmp_path, vmm_kind, netns):
    vm = on_two_queue_tap(launch, tmp_path, vmm_kind, netns,
                          "virtio-net-pci,netdev=n0,mq=on,id=net0", "net0", "net0",
                          "virtio-net-pci")
    nic = vm.command("net")
    assert nic["msix"] == 6 and nic["num_queues"] == 3     # one pair until MQ is negotiated
    host = packet_socket(netns, "kk0", ETH_P_IP)

    def spread(flows: int) -> list[int]:
        for port in range(flows):
            host.send(tcp_frame(GUEST_MAC, HOST_MAC, b"flow", sport=20000 + port, proto=17))
        assert len(guest_frames(vm, flows)) == flows
        return vm.command("net")["rx_per_pair"]

    one = vm.command("netmq 1")
    assert (one["pairs"], one["num_queues"], one["ack"]) == (1, 5, 0)
    assert len(spread(32)) == 1              # tap queue 1 detached: nothing is lost there
    two = vm.command("netmq 2 1")
    assert (two["pairs"], two["num_queues"], two["ack"]) == (2, 5, 0)
    per_pair = spread(32)
    assert sum(per_pair) >= 32 and min(per_pair) > 0, per_pair    # (with host chatter)
    # Sending on pair 1 goes out through tap queue 1.
    assert vm.command("nettcp 020000000001 64")["checksum"] == "software"
    recv_ours(host)                          # it came: recv_ours raises if it does not
    host.close()


def test_a_spinning_guest_gets_every_frame_it_sends_to_the_tap(launch, vmm_kind, netns):
    """netblast keeps the transmit ring full and spins on the used index: each of
    its frames must reach the tap once. (kvmkit once wrote that index with
    struct.pack_into, which zeroes it first: the guest saw 0, took 65,000 phantom
    entries and stopped after about 900 frames.)"""
    from pyroute2 import NetNS

    vm = launch(machine_args(extra=["-netdev", TAP, "-device", "virtio-net-pci,netdev=n0"]),
                vmm_kind, preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    with NetNS(netns) as ipr:
        index = ipr.link_lookup(ifname="kk0")[0]
        ipr.link("set", index=index, state="up")

        def received() -> int:
            return ipr.get_links(index)[0].get_attr("IFLA_STATS64")["rx_packets"]

        before = received()
        answer = vm.command("netblast 5000 020000000001 1000", timeout=120)
        assert answer["sent"] == 5000
        after = received()
    assert after - before >= 5000          # (and perhaps the host's own chatter)


def internet_checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def check_tcp_segment(frame: bytes) -> tuple[int, int, int, bytes]:
    """Asserts the IPv4 and TCP checksums; returns (ip id, seq, flags, payload)."""
    ip = frame[14:34]
    total_len = struct.unpack_from(">H", ip, 2)[0]
    assert internet_checksum(ip) == 0xFFFF, "IP header checksum"
    tcp = frame[34:14 + total_len]
    pseudo = ip[12:20] + struct.pack(">BBH", 0, 6, len(tcp))
    assert internet_checksum(pseudo + tcp) == 0xFFFF, "TCP checksum"
    ip_id, = struct.unpack_from(">H", ip, 4)
    seq, = struct.unpack_from(">I", tcp, 4)
    return ip_id, seq, tcp[13], tcp[20:]


@pytest.mark.parametrize("model", ["e1000"])
def test_card_segments_and_checksums_tcp(launch, vmm_kind, netns, model):
    """TCP segmentation and checksum offload done by the card itself: the host sees
    MSS-sized segments with their own IP lengths, ids and checksums, consecutive
    sequence numbers, PSH on the last only, and the payload intact."""
    vm = launch(machine_args(extra=["-netdev", TAP, "-device", f"{model},netdev=n0"]),
                vmm_kind, preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    host = packet_socket(netns, "kk0", ETH_P_IP)
    # 3500 bytes, not a multiple of the MSS: QEMU's e1000 would add an empty fifth
    # segment after an exact multiple, which the datasheet's card does not.
    assert vm.command("nettcp 020000000001 3500 1000") == {"sent": 3554, "checksum": "card"}
    segments = [check_tcp_segment(recv_ours(host)[1]) for _ in range(4)]
    assert [s[0] for s in segments] == [0x1234, 0x1235, 0x1236, 0x1237]
    assert [s[1] for s in segments] == [1000, 2000, 3000, 4000]
    assert [s[2] for s in segments] == [0x10, 0x10, 0x10, 0x18]          # ACK; PSH last
    payload = b"".join(s[3] for s in segments)
    assert payload == bytes(ord("a") + i % 26 for i in range(3500))
    assert [len(s[3]) for s in segments] == [1000, 1000, 1000, 500]
    # Checksum offload alone, in one frame.
    assert vm.command("nettcp 020000000001 300") == {"sent": 354, "checksum": "card"}
    ip_id, seq, flags, data = check_tcp_segment(recv_ours(host)[1])
    assert (seq, flags, len(data)) == (1000, 0x18, 300)
    host.close()



def ether_crc(data: bytes) -> int:
    """Linux's ether_crc (the big-endian Ethernet CRC): its top 6 bits pick the bit
    of rtl8139's 64-bit multicast filter."""
    crc = 0xFFFFFFFF
    for octet in data:
        for _ in range(8):
            crc = ((crc << 1) & 0xFFFFFFFF) ^ (0x04C11DB7 if (crc >> 31) ^ (octet & 1) else 0)
            octet >>= 1
    return crc


@pytest.mark.parametrize("cplus", [False, True], ids=["normal", "cplus"])
def test_rtl8139_modes_offloads_and_multicast_hash(launch, vmm_kind, netns, cplus):
    """rtl8139 as 8139too (normal mode) and 8139cp (C+ mode: descriptor rings,
    checksum and large-send offloads) drive it; in both, the multicast filter is
    the exact 64-bit hash: a group whose bit is set passes, one whose bit is not
    does not."""
    vm = launch(machine_args(extra=["-netdev", TAP, "-device", "rtl8139,netdev=n0"]),
                vmm_kind, preexec_fn=in_netns(netns))
    vm.wait_event("ready", timeout=60)
    if cplus:
        assert vm.command("netcplus") == {"cpcmd": "0x2b"}
        assert vm.command("net")["cplus"] is True
    host = packet_socket(netns, "kk0", ETH_P_IP)
    assert vm.command("nettcp 020000000001 300")["checksum"] == ("card" if cplus else "software")
    assert check_tcp_segment(recv_ours(host)[1])[1:3] == (1000, 0x18)
    if cplus:      # large send: 1460-byte segments (QEMU cuts at the MTU, as the MSS here)
        assert vm.command("nettcp 020000000001 3000 1460")["checksum"] == "card"
        segments = [check_tcp_segment(recv_ours(host)[1]) for _ in range(3)]
        # PSH stays on the last segment, as the datasheet's card and e1000 do; QEMU
        # 7.2's rtl8139 clears it in a header it reuses, and so loses it there too.
        last_flags = 0x10 if vmm_kind == "qemu" else 0x18
        assert [(s[1], s[2], len(s[3])) for s in segments] == [
            (1000, 0x10, 1460), (2460, 0x10, 1460), (3920, last_flags, 80)]
        assert b"".join(s[3] for s in segments) == bytes(ord("a") + i % 26 for i in range(3000))

    joined, other = bytes.fromhex("01005e000001"), bytes.fromhex("01005e000002")
    assert ether_crc(joined) >> 26 != ether_crc(other) >> 26
    assert vm.command("netmcast 01005e000001") == {"bit": ether_crc(joined) >> 26}
    for group in (other, joined):
        host.send(tcp_frame(group, HOST_MAC, b"to-group-" + group[-1:].hex().encode()))
    [got] = guest_frames(vm, 1)
    assert got["dst"] == "01:00:5e:00:00:01"
    if cplus:      # first and last fragment, multicast, length with the CRC
        assert got["opts1"] == f"0x{(1 << 29) | (1 << 28) | (1 << 26) | (got['len'] + 4):x}"
    assert guest_frames(vm, 1) == []                  # the other group never came
    host.send(tcp_frame(GUEST_MAC, HOST_MAC, b"unicast"))
    [got] = guest_frames(vm, 1)
    if cplus:      # physical address match
        assert got["opts1"] == f"0x{(1 << 29) | (1 << 28) | (1 << 25) | (got['len'] + 4):x}"
    host.close()


def test_a_multiqueue_tap_under_e1000(launch, tmp_path, vmm_kind, netns):
    """e1000 has one queue; on a queues=2 tap it is a client per tap queue, named as
    QEMU names them. The tap steers flows over both queues: kvmkit gives every
    one to the card, where QEMU 7.2 loses those that land on the second queue (13
    of 24 arrived in one run), so that part is checked on kvmkit only."""
    vm = on_two_queue_tap(launch, tmp_path, vmm_kind, netns, "e1000,netdev=n0",
                          "e1000.0", "e1000.1", "e1000")
    if vmm_kind == "qemu":
        return
    host = packet_socket(netns, "kk0", ETH_P_IP)
    for port in range(24):
        host.send(tcp_frame(GUEST_MAC, HOST_MAC, b"flow", sport=30000 + port, proto=17))
    assert len(guest_frames(vm, 24)) == 24
    host.close()
