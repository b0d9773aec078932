"""x-query-virtio and its per-device and per-queue views: the virtio devices, their
negotiated features and status, and their queues as the guest set them up, in
QEMU 7.2's terms (feature names with QEMU's short descriptions)."""

from __future__ import annotations

import struct

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import BOOL, INT, STR, UINT16, UINT32, UINT64, ListOf, Member, Struct
from vmm.virtio import spec

# QEMU's order and words for the transport features and the status bits
TRANSPORT_FEATURES = (
    ("VIRTIO_RING_F_EVENT_IDX", "Used & avail. event fields enabled"),
    ("VIRTIO_RING_F_INDIRECT_DESC", "Indirect descriptors supported"),
    ("VIRTIO_F_VERSION_1", "Device compliant for v1 spec (legacy)"),
    ("VIRTIO_F_ANY_LAYOUT", "Device accepts arbitrary desc. layouts"),
    ("VIRTIO_F_NOTIFY_ON_EMPTY", "Notify when device runs out of avail. descs. on VQ"),
)
STATUSES = (
    ("VIRTIO_CONFIG_S_ACKNOWLEDGE", "Valid virtio device found"),
    ("VIRTIO_CONFIG_S_DRIVER", "Guest OS compatible with device"),
    ("VIRTIO_CONFIG_S_FEATURES_OK", "Feature negotiation complete"),
    ("VIRTIO_CONFIG_S_DRIVER_OK", "Driver setup and ready"),
    ("VIRTIO_CONFIG_S_NEEDS_RESET", "Irrecoverable error, device needs reset"),
    ("VIRTIO_CONFIG_S_FAILED", "Error in guest, device failed"),
)
# per device: its feature names, highest bit first, with QEMU's words
DEVICE_FEATURES = {
    "virtio-net": (
        ("VIRTIO_NET_F_CTRL_MAC_ADDR", "MAC address set through control channel"),
        ("VIRTIO_NET_F_MQ", "Multiqueue with automatic receive steering supported"),
        ("VIRTIO_NET_F_GUEST_ANNOUNCE", "Driver sending gratuitous packets supported"),
        ("VIRTIO_NET_F_CTRL_RX_EXTRA", "Extra RX mode control supported"),
        ("VIRTIO_NET_F_CTRL_VLAN", "Control channel VLAN filtering supported"),
        ("VIRTIO_NET_F_CTRL_RX", "Control channel RX mode supported"),
        ("VIRTIO_NET_F_CTRL_VQ", "Control channel available"),
        ("VIRTIO_NET_F_STATUS", "Configuration status field available"),
        ("VIRTIO_NET_F_MRG_RXBUF", "Driver can merge receive buffers"),
        ("VIRTIO_NET_F_HOST_UFO", "Device can receive UFO"),
        ("VIRTIO_NET_F_HOST_ECN", "Device can receive TSO with ECN"),
        ("VIRTIO_NET_F_HOST_TSO6", "Device can receive TSOv6"),
        ("VIRTIO_NET_F_HOST_TSO4", "Device can receive TSOv4"),
        ("VIRTIO_NET_F_GUEST_UFO", "Driver can receive UFO"),
        ("VIRTIO_NET_F_GUEST_ECN", "Driver can receive TSO with ECN"),
        ("VIRTIO_NET_F_GUEST_TSO6", "Driver can receive TSOv6"),
        ("VIRTIO_NET_F_GUEST_TSO4", "Driver can receive TSOv4"),
        ("VIRTIO_NET_F_MAC", "Device has given MAC address"),
        ("VIRTIO_NET_F_CTRL_GUEST_OFFLOADS", "Control channel offloading reconfig. supported"),
        ("VIRTIO_NET_F_GUEST_CSUM", "Driver handling packets with partial checksum"),
        ("VIRTIO_NET_F_CSUM", "Device handling packets with partial checksum offload"),
    ),
    "virtio-blk": (
        ("VIRTIO_BLK_F_WRITE_ZEROES", "Write zeroes command supported"),
        ("VIRTIO_BLK_F_DISCARD", "Discard command supported"),
        ("VIRTIO_BLK_F_MQ", "Support more than one vq"),
        ("VIRTIO_BLK_F_CONFIG_WCE", "Cache writeback and writethrough modes supported"),
        ("VIRTIO_BLK_F_TOPOLOGY", "Topology information available"),
        ("VIRTIO_BLK_F_FLUSH", "Flush command supported"),
        ("VIRTIO_BLK_F_BLK_SIZE", "Block size of disk available"),
        ("VIRTIO_BLK_F_RO", "Device is read-only"),
        ("VIRTIO_BLK_F_GEOMETRY", "Legacy geometry available"),
        ("VIRTIO_BLK_F_SEG_MAX", "Max segments in a request is seg_max"),
    ),
    "virtio-balloon": (
        ("VIRTIO_BALLOON_F_REPORTING", "Page reporting VQ enabled"),
        ("VIRTIO_BALLOON_F_PAGE_POISON", "Guest page poisoning enabled"),
        ("VIRTIO_BALLOON_F_DEFLATE_ON_OOM", "Deflate balloon when guest OOM"),
        ("VIRTIO_BALLOON_F_STATS_VQ", "Guest memory stats VQ available"),
    ),
    "virtio-serial": (
        ("VIRTIO_CONSOLE_F_EMERG_WRITE", "Emergency write supported"),
        ("VIRTIO_CONSOLE_F_MULTIPORT", "Multiple ports for device supported"),
    ),
    "virtio-rng": (),
}
FEATURES = Struct("VirtioDeviceFeatures", (
    Member("transports", ListOf(STR)), Member("dev-features", ListOf(STR), True),
    Member("unknown-dev-features", UINT64, True)))
NO_VHOST = "Error: vhost device has not started yet"


def virtio_devices(machine) -> list[tuple[str, object]]:
    """(the virtio-backend's QOM path, the PCI transport) of each virtio device,
    newest first, as QEMU lists them."""
    from vmm.virtio.pci import VirtioPciDevice
    found = [(machine.devices.path(d) + "/virtio-backend", d.obj) for d in machine.devices
             if isinstance(d.obj, VirtioPciDevice)]
    return found[::-1]


def _transport(ctx, path: str, kind: str = "VirtIODevice"):
    for backend_path, transport in virtio_devices(ctx.machine):
        if backend_path == path:
            return transport
    raise QmpError(f"Path {path} is not a {kind}")


def decode_features(name: str, features: int) -> dict:
    """The feature word as QEMU's lists: transport features, the device's own, and
    the value of any bits neither knows."""
    out: dict = {"transports": []}
    known = 0
    for flag, words in TRANSPORT_FEATURES:
        bit = 1 << getattr(spec, flag)
        known |= bit
        if features & bit:
            out["transports"].append(f"{flag}: {words}")
    if name in DEVICE_FEATURES:
        out["dev-features"] = []
        for flag, words in DEVICE_FEATURES[name]:
            bit = 1 << getattr(spec, flag)
            known |= bit
            if features & bit:
                out["dev-features"].append(f"{flag}: {words}")
    if features & ~known:
        out["unknown-dev-features"] = features & ~known
    return out


@command("x-query-virtio", returns=ListOf(Struct("VirtioInfo", (
    Member("path", STR), Member("name", STR)))), features=("unstable",))
def x_query_virtio(ctx):
    return [{"name": t.backend.name, "path": path} for path, t in virtio_devices(ctx.machine)]


@command("x-query-virtio-status", args=[Member("path", STR)], returns=Struct("VirtioStatus", (
    Member("name", STR), Member("device-id", UINT16), Member("vhost-started", BOOL),
    Member("device-endian", STR), Member("guest-features", FEATURES),
    Member("host-features", FEATURES), Member("backend-features", FEATURES),
    Member("num-vqs", INT), Member("status", Struct("VirtioDeviceStatus", (
        Member("statuses", ListOf(STR)), Member("unknown-statuses", UINT32, True)))),
    Member("isr", UINT32), Member("queue-sel", UINT16), Member("vm-running", BOOL),
    Member("broken", BOOL), Member("disabled", BOOL), Member("use-started", BOOL),
    Member("started", BOOL), Member("start-on-kick", BOOL),
    Member("disable-legacy-check", BOOL), Member("bus-name", STR),
    Member("use-guest-notifier-mask", BOOL))), features=("unstable",))
def x_query_virtio_status(ctx, path):
    t = _transport(ctx, path)
    name = t.backend.name
    status = t.device_status
    return {"name": name, "device-id": t.backend.device_type, "vhost-started": False,
            "device-endian": "little",
            "guest-features": decode_features(name, t.driver_features),
            "host-features": decode_features(name, t.offered_features),
            "backend-features": {"transports": [], "dev-features": []},
            "num-vqs": sum(1 for q in t.queues if q.max_size),
            "status": {"statuses": [f"{flag}: {words}" for flag, words in STATUSES
                                    if status & getattr(spec, flag)]},
            "isr": t.isr, "queue-sel": t.queue_select, "vm-running": ctx.machine.running,
            "broken": bool(status & spec.VIRTIO_CONFIG_S_NEEDS_RESET),
            "disabled": not t.command & 0x4,                 # no bus mastering yet
            "use-started": True, "started": bool(status & spec.VIRTIO_CONFIG_S_DRIVER_OK),
            "start-on-kick": False, "disable-legacy-check": False, "bus-name": "",
            "use-guest-notifier-mask": True}


def _queue(ctx, path: str, queue: int, kind: str = "VirtIODevice"):
    t = _transport(ctx, path, kind)
    if not 0 <= queue < len(t.queues):
        raise QmpError(f"Invalid virtqueue number {queue}")
    return t, t.queues[queue]


@command("x-query-virtio-queue-status", args=[Member("path", STR), Member("queue", UINT16)],
         returns=Struct("VirtQueueStatus", (
             Member("name", STR), Member("queue-index", UINT16), Member("inuse", UINT32),
             Member("vring-num", UINT32), Member("vring-num-default", UINT32),
             Member("vring-align", UINT32), Member("vring-desc", UINT64),
             Member("vring-avail", UINT64), Member("vring-used", UINT64),
             Member("last-avail-idx", UINT16, True), Member("shadow-avail-idx", UINT16, True),
             Member("used-idx", UINT16), Member("signalled-used", UINT16),
             Member("signalled-used-valid", BOOL))), features=("unstable",))
def x_query_virtio_queue_status(ctx, path, queue):
    t, q = _queue(ctx, path, queue)
    ring = q.queue
    last_avail = ring.last_avail if ring else 0
    used = ring.used_idx if ring else 0
    return {"name": t.backend.name, "queue-index": queue,
            "inuse": (last_avail - used) & 0xFFFF, "vring-num": q.size,
            "vring-num-default": q.max_size, "vring-align": 4096, "vring-desc": q.desc,
            "vring-avail": q.driver, "vring-used": q.device, "last-avail-idx": last_avail,
            "shadow-avail-idx": ring.avail16[1] if ring else 0, "used-idx": used,
            "signalled-used": ring.signalled_used if ring else 0,
            "signalled-used-valid": False}


DESC_FLAGS = ((1, "next"), (2, "write"), (4, "indirect"))
DESC = struct.Struct("<QIHH")              # a split ring's descriptor: addr len flags next


@command("x-query-virtio-queue-element", args=[
    Member("path", STR), Member("queue", UINT16), Member("index", UINT16, True)],
    returns=Struct("VirtioQueueElement", (
        Member("name", STR), Member("index", UINT32),
        Member("descs", ListOf(Struct("VirtioRingDesc", (
            Member("addr", UINT64), Member("len", UINT32), Member("flags", ListOf(STR)))))),
        Member("avail", Struct("VirtioRingAvail", (
            Member("flags", UINT16), Member("idx", UINT16), Member("ring", UINT16)))),
        Member("used", Struct("VirtioRingUsed", (
            Member("flags", UINT16), Member("idx", UINT16)))))), features=("unstable",))
def x_query_virtio_queue_element(ctx, path, queue, index=None):
    """The descriptor chain the avail ring names at `index` (by default the next one
    the device would take)."""
    t, q = _queue(ctx, path, queue, "VirtIO device")       # QEMU's words differ here
    ring = q.queue
    if ring is None:
        raise QmpError("Region caches not initialized")
    slot = (ring.last_avail if index is None else index) % ring.size
    head = ring.avail16[2 + slot]
    descs, position = [], head
    for _ in range(ring.size):             # a chain is at most the ring long
        addr, length, flags, following = DESC.unpack_from(ring.desc, 16 * position)
        descs.append({"addr": addr, "len": length,
                      "flags": [name for bit, name in DESC_FLAGS if flags & bit]})
        if not flags & 1:
            break
        position = following % ring.size
    return {"name": t.backend.name, "index": head, "descs": descs,
            "avail": {"flags": ring.avail16[0], "idx": ring.avail16[1], "ring": head},
            "used": {"flags": ring.used16[0], "idx": ring.used16[1]}}


@command("x-query-virtio-vhost-queue-status", args=[
    Member("path", STR), Member("queue", UINT16)], returns=Struct("VirtVhostQueueStatus", (
        Member("name", STR), Member("kick", INT), Member("call", INT), Member("desc", UINT64),
        Member("avail", UINT64), Member("used", UINT64), Member("num", INT),
        Member("desc-phys", UINT64), Member("desc-size", UINT32),
        Member("avail-phys", UINT64), Member("avail-size", UINT32),
        Member("used-phys", UINT64), Member("used-size", UINT32))), features=("unstable",))
def x_query_virtio_vhost_queue_status(ctx, path, queue):
    _transport(ctx, path)
    raise QmpError(NO_VHOST)                 # kvmkit's virtio devices have no vhost back end
