"""What NICs do to frames on the host's behalf: Internet checksums and TCP
segmentation (RFC 1071 sums; the cutting e1000's TSE and rtl8139's large send
share). Frames are bytearrays; every offset comes from the guest, so anything
that does not fit the frame makes the caller drop it rather than raise.
"""

from __future__ import annotations

import struct

TCP_PSH_FIN = 0x09


def ones_sum(data: bytes | bytearray | memoryview, start: int = 0) -> int:
    """The 16-bit ones'-complement sum of data (padded to even length), folded."""
    if len(data) % 2:
        data = bytes(data) + b"\0"
    total = start + sum(struct.unpack(f">{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return total


def put_checksum(frame: bytearray, start: int, end: int, where: int) -> None:
    """The Internet checksum of frame[start..end] (inclusive, the field at `where`
    included as it stands), stored at `where`; e1000's way."""
    if not 0 <= start <= end < len(frame) or where + 2 > len(frame):
        return                                     # offsets the frame cannot hold
    frame[where:where + 2] = struct.pack(">H", ~ones_sum(frame[start:end + 1]) & 0xFFFF)


def fill_ipv4_checksums(frame: bytearray, ip: int, ip_sum: bool, l4_sum: bool) -> bool:
    """Computes an IPv4 frame's header checksum and (l4_sum) its TCP or UDP
    checksum from scratch, pseudo-header included; False if it is not one."""
    if len(frame) < ip + 20 or frame[ip] >> 4 != 4:
        return False
    hlen = (frame[ip] & 0x0F) * 4
    total = int.from_bytes(frame[ip + 2:ip + 4], "big")
    if hlen < 20 or total < hlen or ip + total > len(frame):
        return False
    if ip_sum:
        frame[ip + 10:ip + 12] = b"\0\0"
        frame[ip + 10:ip + 12] = struct.pack(">H", ~ones_sum(frame[ip:ip + hlen]) & 0xFFFF)
    proto, l4, l4_len = frame[ip + 9], ip + hlen, total - hlen
    where = {6: 16, 17: 6}.get(proto)
    if l4_sum and where is not None and l4_len >= where + 2:
        frame[l4 + where:l4 + where + 2] = b"\0\0"
        pseudo = ones_sum(frame[ip + 12:ip + 20], proto + l4_len)
        value = ~ones_sum(frame[l4:l4 + l4_len], pseudo) & 0xFFFF
        frame[l4 + where:l4 + where + 2] = struct.pack(">H", value or (0xFFFF if proto == 17
                                                                       else 0))
    return True


def tcp_segments(frame: bytearray, ip: int, l4: int, hdr_len: int, mss: int,
                 ipv4: bool = True, tcp: bool = True) -> list[bytearray] | None:
    """Cuts frame into the header (hdr_len bytes) before each mss bytes of payload,
    each with its own IP length and id (IPv4) or payload length (IPv6), TCP
    sequence number, and PSH/FIN on the last only (UDP: its length). Checksums are
    the caller's. None if the offsets do not fit the frame."""
    if mss <= 0 or not 0 < hdr_len <= len(frame) or ip + 6 > hdr_len or \
            l4 + (14 if tcp else 6) > hdr_len:
        return None
    header, payload = frame[:hdr_len], memoryview(frame)[hdr_len:]
    ip_id = int.from_bytes(header[ip + 4:ip + 6], "big")
    seq = int.from_bytes(header[l4 + 4:l4 + 8], "big") if tcp else 0
    out = []
    for index, offset in enumerate(range(0, max(len(payload), 1), mss)):
        segment = header + payload[offset:offset + mss]
        if ipv4:
            segment[ip + 2:ip + 4] = (len(segment) - ip).to_bytes(2, "big")
            segment[ip + 4:ip + 6] = ((ip_id + index) & 0xFFFF).to_bytes(2, "big")
        else:
            segment[ip + 4:ip + 6] = (len(segment) - ip - 40).to_bytes(2, "big")
        if tcp:
            segment[l4 + 4:l4 + 8] = ((seq + offset) & 0xFFFFFFFF).to_bytes(4, "big")
            if offset + mss < len(payload):
                segment[l4 + 13] &= ~TCP_PSH_FIN & 0xFF
        else:
            segment[l4 + 4:l4 + 6] = (len(segment) - l4).to_bytes(2, "big")
        out.append(segment)
    return out
