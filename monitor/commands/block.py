"""The block commands: query-block, query-named-block-nodes, query-blockstats,
blockdev-add/-del, block_resize and block_set_io_throttle, over the machine's
block layer (vmm/block/layer.py), in QEMU 7.2's shapes."""

from __future__ import annotations

import time

from monitor.commands.devices import find_device
from monitor.errors import QmpError, device_not_found
from monitor.registry import REGISTRY, command
from monitor.types import (
    ANY,
    BOOL,
    INT,
    NULL,
    STR,
    UINT32,
    UINT64,
    Alternate,
    Enum,
    ListOf,
    Member,
    Struct,
    Union,
)
from vmm.block import options as blockdev_options
from vmm.block.drive import KINDS, Drive
from vmm.block.graph import BlockGraph, Node
from vmm.block.throttle import LIMITS, ThrottleConfig

# QEMU's qapi/block-core.json, for the members kvmkit reports
IMAGE_INFO = Struct("ImageInfo", (
    Member("filename", STR), Member("format", STR), Member("dirty-flag", BOOL, True),
    Member("actual-size", INT, True), Member("virtual-size", INT),
    Member("cluster-size", INT, True), Member("encrypted", BOOL, True),
    Member("compressed", BOOL, True), Member("backing-filename", STR, True),
    Member("full-backing-filename", STR, True), Member("backing-filename-format", STR, True),
    Member("snapshots", ListOf(ANY), True), Member("backing-image", ANY, True),
    Member("format-specific", ANY, True)))
_THROTTLE_MEMBERS = tuple(Member(name, INT) for _opt, name in LIMITS) + tuple(
    Member(name + suffix, INT, True) for _opt, name in LIMITS
    for suffix in ("_max", "_max_length")) + (Member("iops_size", INT, True),
                                              Member("group", STR, True))
BLOCK_DEVICE_INFO = Struct("BlockDeviceInfo", (
    Member("file", STR), Member("node-name", STR, True), Member("ro", BOOL),
    Member("drv", STR), Member("backing_file", STR, True), Member("backing_file_depth", INT),
    Member("encrypted", BOOL),
    Member("detect_zeroes", Enum("BlockdevDetectZeroesOptions", ("off", "on", "unmap"))),
    *_THROTTLE_MEMBERS, Member("image", IMAGE_INFO),
    Member("cache", Struct("BlockdevCacheInfo", (Member("writeback", BOOL),
                                                 Member("direct", BOOL),
                                                 Member("no-flush", BOOL)))),
    Member("write_threshold", INT),
    Member("dirty-bitmaps", ListOf(Struct("BlockDirtyInfo", (
        Member("name", STR, True), Member("count", INT), Member("granularity", UINT32),
        Member("recording", BOOL), Member("busy", BOOL), Member("persistent", BOOL),
        Member("inconsistent", BOOL, True)))), True)))
BLOCK_INFO = Struct("BlockInfo", (
    Member("device", STR), Member("qdev", STR, True), Member("type", STR),
    Member("removable", BOOL), Member("locked", BOOL),
    Member("inserted", BLOCK_DEVICE_INFO, True), Member("tray_open", BOOL, True),
    Member("io-status", Enum("BlockDeviceIoStatus", ("ok", "failed", "nospace")), True)))
BLOCK_DEVICE_STATS = Struct("BlockDeviceStats", tuple(
    Member(f"{kind}_{what}", INT) for kind in KINDS for what in (
        "operations", "total_time_ns")) + tuple(
    Member(f"{kind}_merged", INT) for kind in ("rd", "wr", "unmap")) + tuple(
    Member(f"{prefix}_{kind}_operations", INT) for prefix in ("failed", "invalid")
    for kind in KINDS) + (
    Member("rd_bytes", INT), Member("wr_bytes", INT), Member("unmap_bytes", INT),
    Member("wr_highest_offset", INT), Member("idle_time_ns", INT, True),
    Member("account_invalid", BOOL), Member("account_failed", BOOL),
    Member("timed_stats", ListOf(ANY))))
BLOCK_STATS = Struct("BlockStats", (
    Member("device", STR, True), Member("qdev", STR, True), Member("node-name", STR, True),
    Member("stats", BLOCK_DEVICE_STATS), Member("driver-specific", ANY, True),
    Member("parent", ANY, True), Member("backing", ANY, True)))


REGISTRY.event("BLOCK_IO_ERROR", [
    Member("device", STR), Member("node-name", STR, True),
    Member("operation", Enum("IoOperationType", ("read", "write"))),
    Member("action", Enum("BlockErrorAction", ("ignore", "report", "stop"))),
    Member("nospace", BOOL, True), Member("reason", STR)])


# -- what the nodes and drives look like ----------------------------------------------
def image_info(node: Node) -> dict:
    info = {"filename": node.filename, "format": node.driver, "dirty-flag": False,
            "actual-size": node.allocated(), "virtual-size": node.size}
    image = node.image
    if node.driver == "qcow2":
        info["cluster-size"] = image.cluster_size
        info["format-specific"] = image.format_specific()
        info["dirty-flag"] = image.dirty
        if image.backing_file:
            info["backing-filename"] = image.backing_file
            info["full-backing-filename"] = BlockGraph.backing_path(node.file,
                                                                    image.backing_file)
            if image.backing_format:
                info["backing-filename-format"] = image.backing_format
        if image.snapshots:
            info["snapshots"] = [snapshot_info(s) for s in image.snapshots]
    if node.backing is not None:
        info["backing-image"] = image_info(node.backing)
    return info


SNAPSHOT_INFO = Struct("SnapshotInfo", (
    Member("id", STR), Member("name", STR), Member("vm-state-size", INT),
    Member("date-sec", INT), Member("date-nsec", INT), Member("vm-clock-sec", INT),
    Member("vm-clock-nsec", INT), Member("icount", INT, True)))


def snapshot_info(snapshot) -> dict:
    out = {"id": snapshot.id, "name": snapshot.name, "vm-state-size": snapshot.vm_state_size,
           "date-sec": snapshot.date_sec, "date-nsec": snapshot.date_nsec,
           "vm-clock-sec": snapshot.vm_clock_nsec // 10**9,
           "vm-clock-nsec": snapshot.vm_clock_nsec % 10**9}
    if snapshot.icount is not None:
        out["icount"] = snapshot.icount
    return out


def device_info(node: Node, drive: Drive | None = None) -> dict:
    """BlockDeviceInfo: a node as query-block (with its drive) or
    query-named-block-nodes shows it."""
    chain = node.chain()
    info = {"file": node.filename, "node-name": node.name, "ro": node.read_only,
            "drv": node.driver, "backing_file_depth": len(chain) - 1, "encrypted": False,
            "detect_zeroes": node.detect_zeroes, "image": image_info(node),
            "cache": {"writeback": drive.writeback if drive is not None else True,
                      "direct": node.direct, "no-flush": node.no_flush},
            "write_threshold": node.write_threshold}
    if node.bitmaps():                           # the newest first, as QEMU lists them
        info["dirty-bitmaps"] = [b.info() for b in reversed(node.bitmaps())]
    if node.backing is not None:                 # as opened: relative to the image
        info["backing_file"] = node.backing.filename
    elif node.driver == "qcow2" and node.image.backing_file:
        info["backing_file"] = node.image.backing_file
    for _opt, name in LIMITS:
        info[name] = 0
    group = drive.throttle if drive is not None else None
    if group is not None:
        config = group.config
        for _opt, name in LIMITS:
            info[name] = config.get(name)
            if config.get(name + "_max"):
                info[name + "_max"] = config.get(name + "_max")
                info[name + "_max_length"] = config.values.get(name + "_max_length", 1)
        if config.get("iops_size"):
            info["iops_size"] = config.get("iops_size")
        info["group"] = group.name
    return info


def block_info(drive: Drive) -> dict:
    media = drive.media                 # a device with a tray (ide-cd)
    info = {"device": drive.name, "locked": bool(media is not None and media.locked),
            "removable": not drive.attached_to or media is not None, "type": "unknown"}
    if drive.iostatus_enabled:
        info["io-status"] = drive.io_status
    if drive.root is not None:
        info["inserted"] = device_info(drive.root, drive)
    if drive.attached_to:
        info["qdev"] = drive.device_id or drive.attached_to
    if media is not None or not drive.attached_to:
        info["tray_open"] = bool(media is not None and media.tray_open)
    return info


@command("query-block", returns=ListOf(BLOCK_INFO))
def query_block(ctx):
    drives = ctx.machine.block.drives
    # named drives first, then the anonymous ones devices made (QEMU's order)
    return [block_info(d) for d in drives if d.name] + \
        [block_info(d) for d in drives if not d.name and d.attached_to]


@command("query-named-block-nodes", args=[Member("flat", BOOL, True)],
         returns=ListOf(BLOCK_DEVICE_INFO))
def query_named_block_nodes(ctx, flat=False):
    out = []
    for node in reversed(ctx.machine.block.graph.nodes):      # the newest first
        info = device_info(node)
        if flat:
            info["image"].pop("backing-image", None)
        out.append(info)
    return out


# -- statistics ---------------------------------------------------------------------
def _stats(drive: Drive | None) -> dict:
    stats = drive.stats if drive is not None else None
    out: dict = {}
    for kind in KINDS:
        out[f"{kind}_operations"] = stats.operations[kind] if stats else 0
        out[f"{kind}_total_time_ns"] = stats.total_time_ns[kind] if stats else 0
        if kind != "flush":
            out[f"{kind}_merged"] = 0             # kvmkit does not merge requests
        out[f"failed_{kind}_operations"] = stats.failed[kind] if stats else 0
        out[f"invalid_{kind}_operations"] = stats.invalid[kind] if stats else 0
    for kind in ("rd", "wr", "unmap"):
        out[f"{kind}_bytes"] = stats.bytes[kind] if stats else 0
    out["wr_highest_offset"] = 0                 # the node's: filled in by the caller
    out["account_invalid"] = out["account_failed"] = stats is not None
    out["timed_stats"] = []
    for kind, (boundaries, bins) in (stats.histograms.items() if stats else ()):
        out[f"{kind}_latency_histogram"] = {"boundaries": list(boundaries), "bins": list(bins)}
    if stats is not None and stats.last_done is not None:
        out["idle_time_ns"] = int((time.monotonic() - stats.last_done) * 1e9)
    return out


def _node_stats(node: Node) -> dict:
    out = {"node-name": node.name, "stats": _stats(None)}
    out["stats"]["wr_highest_offset"] = node.image.wr_highest_offset
    if node.driver in ("file", "host_device"):
        out["driver-specific"] = {"driver": node.driver, **node.image.discard_counts()}
    if node.file is not None:
        out["parent"] = _node_stats(node.file)
    if node.backing is not None:
        out["backing"] = _node_stats(node.backing)
    return out


@command("query-blockstats", args=[Member("query-nodes", BOOL, True)],
         returns=ListOf(BLOCK_STATS))
def query_blockstats(ctx, query_nodes=False):
    block = ctx.machine.block
    if query_nodes:
        return [_node_stats(node) for node in block.graph.nodes]
    out = []
    for drive in [d for d in block.drives if d.name] + \
            [d for d in block.drives if not d.name and d.attached_to]:
        entry = _node_stats(drive.root) if drive.root is not None else {}
        entry["stats"] = _stats(drive)
        if drive.root is not None:              # QEMU's is the root node's
            entry["stats"]["wr_highest_offset"] = drive.root.image.wr_highest_offset
        entry.pop("driver-specific", None)
        entry["device"] = drive.name
        if drive.attached_to:
            entry["qdev"] = drive.device_id or drive.attached_to
        out.append(entry)
    return out


# -- changes --------------------------------------------------------------------------
def _blockdev_members(refs=None):
    """BlockdevOptions as a flat union on 'driver', for the drivers kvmkit has. A
    node's references (file, backing) are BlockdevRef alternates, a name or inline
    options, checked with the outer options as QEMU's visitor does: built twice, so
    that one level of inline options is checked here (deeper ones when opened)."""
    def member_type(kind):
        if isinstance(kind, tuple):
            return Enum("enum", kind)
        if refs is not None and kind in refs:
            return refs[kind]
        return {blockdev_options.STR: STR, blockdev_options.BOOL: BOOL,
                blockdev_options.INT: INT}.get(kind, ANY)

    base = tuple(Member(name, member_type(kind), name != "driver")
                 for name, kind in blockdev_options.BASE.items())
    base = tuple(Member("driver", Enum("BlockdevDriver", tuple(blockdev_options.DRIVERS)))
                 if m.name == "driver" else m for m in base)
    variants = tuple((driver, Struct(f"BlockdevOptions{driver.capitalize()}", tuple(
        Member(name, member_type(kind), name not in ("filename", "file"))
        for name, kind in members.items())))
        for driver, members in blockdev_options.DRIVERS.items())
    return base, Union("BlockdevOptions", base, "driver", variants)


_INNER = _blockdev_members()[1]
BLOCKDEV_BASE, BLOCKDEV = _blockdev_members({
    blockdev_options.REF: Alternate("BlockdevRef", (STR, _INNER)),
    blockdev_options.REF_OR_NULL: Alternate("BlockdevRefOrNull", (STR, _INNER, NULL))})


@command("blockdev-add", args=BLOCKDEV_BASE, variants=BLOCKDEV)
def blockdev_add(ctx, props, **base):
    options = {key.replace("_", "-"): value for key, value in base.items()}
    ctx.machine.block.add_blockdev({**options, **props})


@command("blockdev-del", args=[Member("node-name", STR)])
def blockdev_del(ctx, node_name):
    ctx.machine.block.delete_blockdev(node_name)


def lookup_node(block, device: str | None, node_name: str | None) -> Node:
    """A node by its drive's id, else by its name, as QEMU's bdrv_lookup_bs."""
    drive = block.find_drive(device) if device else None
    node = drive.root if drive is not None else \
        block.graph.find(node_name) if node_name else None
    if node is None:
        raise QmpError(f"Cannot find device='{device or ''}' nor node-name='{node_name or ''}'")
    return node


@command("block-latency-histogram-set", args=[
    Member("id", STR), Member("boundaries", ListOf(UINT64), True),
    Member("boundaries-read", ListOf(UINT64), True),
    Member("boundaries-write", ListOf(UINT64), True),
    Member("boundaries-zap", ListOf(UINT64), True),
    Member("boundaries-flush", ListOf(UINT64), True)])
def block_latency_histogram_set(ctx, id, boundaries=None, boundaries_read=None,
                                boundaries_write=None, boundaries_zap=None,
                                boundaries_flush=None):
    """Latency histograms of a device's requests (query-blockstats shows them);
    ``boundaries`` applies to every kind the others do not name; none at all clears."""
    from monitor.commands.devices import find_device

    drive = next((d for d in ctx.machine.block.drives if d.attached_to == id), None)
    if drive is None:
        find_device(ctx.machine, id)                     # QEMU's DeviceNotFound first
        raise QmpError("Device does not have a block device backend")
    wanted = {"rd": boundaries_read, "wr": boundaries_write, "flush": boundaries_flush}
    for kind, name in (("rd", "read"), ("wr", "write"), ("zap", "zap"), ("flush", "flush")):
        chosen = wanted.get(kind, boundaries_zap if kind == "zap" else None)
        chosen = chosen if chosen is not None else boundaries
        if chosen and any(b <= a for a, b in zip([0] + chosen, chosen)):
            raise QmpError(f"Device '{id}' set {name} boundaries fail")
    histograms = drive.stats.histograms
    for kind in ("rd", "wr", "flush"):
        chosen = wanted[kind] if wanted[kind] is not None else boundaries
        if chosen is None:
            histograms.pop(kind, None)
        else:
            histograms[kind] = (list(chosen), [0] * (len(chosen) + 1))


REGISTRY.event("BLOCK_WRITE_THRESHOLD", [Member("node-name", STR),
                                         Member("amount-exceeded", INT),
                                         Member("write-threshold", INT)])


@command("block-set-write-threshold", args=[Member("node-name", STR),
                                           Member("write-threshold", UINT64)])
def block_set_write_threshold(ctx, node_name, write_threshold):
    from vmm.block.write_threshold import set_threshold

    machine = ctx.machine
    node = machine.block.graph.find(node_name)
    if node is None:
        raise QmpError(f"Device '{node_name}' not found")
    set_threshold(node, write_threshold, lambda name, exceeded, limit: machine.emit_from_vcpu(
        "BLOCK_WRITE_THRESHOLD", {"node-name": name, "amount-exceeded": exceeded,
                                  "write-threshold": limit}))


@command("block_resize", args=[Member("device", STR, True), Member("node-name", STR, True),
                               Member("size", INT)])
def block_resize(ctx, size, device=None, node_name=None):
    """A drive's image, by the drive's id or the node's name, to ``size`` bytes; a
    device on it tells its guest."""
    block = ctx.machine.block
    node = lookup_node(block, device, node_name)
    if size < 0:
        raise QmpError("Parameter 'size' expects a >0 size")
    if size % 512:
        raise QmpError("The new size must be a multiple of 512")
    block.resize(node, size)


_THROTTLE_ARGS = [Member("device", STR, True), Member("id", STR, True)] + [
    Member(name, INT) for _opt, name in LIMITS] + [      # (in QEMU's order: its checks')
    Member(name + suffix, INT, True) for suffix in ("_max", "_max_length")
    for _opt, name in LIMITS] + [Member("iops_size", INT, True), Member("group", STR, True)]


@command("block_set_io_throttle", args=_THROTTLE_ARGS)
def block_set_io_throttle(ctx, device=None, id=None, group=None, **limits):
    block = ctx.machine.block
    if (device is None) == (id is None):
        raise QmpError("Need exactly one of 'device' and 'id'")
    if device is not None:
        drive = block.find_drive(device)
        if drive is None:
            raise device_not_found(device)
    else:
        # the QOM path of the device holding the drive (for virtio-blk-pci, its
        # virtio-backend child: the PCI proxy itself has none, as in QEMU)
        drive = next((d for d in block.drives if d.attached_to and d.attached_to == id),
                     None)
        if drive is None:
            find_device(ctx.machine, id)        # not found, or not a device
            raise QmpError("Device does not have a block device backend")
    values = {key: value for key, value in limits.items() if value is not None}
    block.set_throttle(drive, ThrottleConfig(values), group)
