"""The block graph's administration commands: blockdev-create (image files as
a job), blockdev-reopen (a node's read-only flag, cache and backing link),
x-blockdev-amend, x-blockdev-change, x-blockdev-set-iothread and
x-debug-query-block-graph, as QEMU 7.2 answers them for the drivers kvmkit
has (file, host_device, raw, qcow2)."""

from __future__ import annotations

import os

from monitor.commands.block import BLOCKDEV
from monitor.commands.block_jobs import lookup
from monitor.commands.jobs import start_job
from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import (
    ANY,
    BOOL,
    INT,
    NULL,
    STR,
    Alternate,
    Builtin,
    Enum,
    ListOf,
    Member,
    Struct,
    Union,
)
from vmm.block import qcow2
from vmm.block.graph import PERMISSION_ORDER, WRITE
from vmm.errors import UserError

# QEMU 7.2's BlockdevDriver: what x-blockdev-amend's options may name
QEMU_DRIVERS = (
    "blkdebug", "blklogwrites", "blkreplay", "blkverify", "bochs", "cloop", "compress",
    "copy-before-write", "copy-on-read", "dmg", "file", "snapshot-access", "ftp", "ftps",
    "gluster", "host_cdrom", "host_device", "http", "https", "iscsi", "luks", "nbd", "nfs",
    "null-aio", "null-co", "nvme", "parallels", "preallocate", "qcow", "qcow2", "qed",
    "quorum", "raw", "rbd", "replication", "ssh", "throttle", "vdi", "vhdx", "vmdk", "vpc",
    "vvfat")
PREALLOC = Enum("PreallocMode", ("off", "metadata", "falloc", "full"))
_REF = Alternate("BlockdevRef", (STR, ANY))
CREATE_OPTIONS = Union("BlockdevCreateOptions", (
    Member("driver", Enum("BlockdevDriver", ("file", "qcow2", "raw"))),), "driver", (
    ("file", Struct("BlockdevCreateOptionsFile", (
        Member("filename", STR), Member("size", INT), Member("preallocation", PREALLOC, True),
        Member("nocow", BOOL, True), Member("extent-size-hint", INT, True)))),
    ("qcow2", Struct("BlockdevCreateOptionsQcow2", (
        Member("file", _REF), Member("data-file", _REF, True),
        Member("data-file-raw", BOOL, True), Member("extended-l2", BOOL, True),
        Member("size", INT), Member("version", Enum("BlockdevQcow2Version", ("v2", "v3")), True),
        Member("backing-file", STR, True), Member("backing-fmt", STR, True),
        Member("encrypt", ANY, True), Member("cluster-size", INT, True),
        Member("preallocation", PREALLOC, True), Member("lazy-refcounts", BOOL, True),
        Member("refcount-bits", INT, True),
        Member("compression-type", Enum("Qcow2CompressionType", ("zlib", "zstd")), True)))),
    ("raw", Struct("BlockdevCreateNotSupported", ()))))


def _create_file(options: dict) -> None:
    filename, size = options["filename"], options["size"]
    try:
        with open(filename, "wb") as f:
            f.truncate(size)
            if options.get("preallocation", "off") in ("falloc", "full") and size:
                os.posix_fallocate(f.fileno(), 0, size)
    except OSError as e:
        raise UserError(f"Could not create '{filename}': {e.strerror}") from None


def _create_qcow2(ctx, options: dict) -> None:
    """The image is written over the file node ``file`` names (or opens)."""
    for unsupported in ("data-file", "encrypt"):
        if unsupported in options:
            raise UserError(f"kvmkit does not create qcow2 images with '{unsupported}'")
    if options.get("extended-l2"):
        raise UserError("kvmkit does not create qcow2 images with extended L2 entries")
    if options.get("version") == "v2":
        raise UserError("kvmkit creates qcow2 version 3 (compat=1.1) images only")
    cluster = options.get("cluster-size", 65536)
    if cluster & (cluster - 1) or not 512 <= cluster <= 2 << 20:
        raise UserError("Cluster size must be a power of two between 512 and 2048k")
    if options.get("refcount-bits", 16) != 16:
        raise UserError("kvmkit creates qcow2 images with 16-bit refcounts only")
    if options.get("compression-type", "zlib") != "zlib":
        raise UserError("kvmkit creates qcow2 images with zlib compression only")
    if "backing-fmt" in options and "backing-file" not in options:
        raise UserError("Backing format cannot be used without backing file")
    ref = options["file"]
    node = ctx.machine.block.graph.find(ref) if isinstance(ref, str) else None
    if isinstance(ref, str) and node is None:
        raise UserError(f"Cannot find device='{ref}' nor node-name='{ref}'")
    if node is None or node.driver not in ("file", "host_device"):
        raise UserError("kvmkit creates qcow2 images on a 'file' node only")
    qcow2.create(node.filename, options["size"], cluster.bit_length() - 1,
                 backing_file=options.get("backing-file", ""),
                 backing_format=options.get("backing-fmt", ""))
    node.image.size = os.fstat(node.image.fd).st_size


@command("blockdev-create", args=[Member("job-id", STR), Member("options", CREATE_OPTIONS)])
def blockdev_create(ctx, job_id, options):
    if options["driver"] == "raw":
        raise QmpError("Driver does not support blockdev-create")

    async def work() -> None:
        with ctx.machine.lock:
            if options["driver"] == "file":
                _create_file(options)
            else:
                _create_qcow2(ctx, options)

    start_job(ctx, job_id, "create", work)


# -- blockdev-reopen ------------------------------------------------------------------
def _reopen_one(ctx, options: dict) -> None:
    graph = ctx.machine.block.graph
    name = options.get("node-name")
    node = graph.find(name) if name else None
    if node is None:
        raise QmpError(f"Failed to find node with node-name='{name or ''}'")
    if options["driver"] != node.driver:
        raise QmpError("Cannot change the option 'driver'")
    if "filename" in options and options["filename"] != node.filename:
        raise QmpError("Cannot change the option 'filename'")
    for child_key in ("file",):
        ref = options.get(child_key)
        child = getattr(node, child_key)
        if isinstance(ref, str) and child is not None and ref != child.name:
            raise QmpError(f"Cannot change the option '{child_key}'")
    if node.driver == "qcow2":
        if "backing" not in options and node.backing is not None:
            raise QmpError(f"backing is missing for '{node.name}'")
    read_only = options.get("read-only", False)
    file_named = node.file is not None and "node-name" in node.file.options
    if not read_only and file_named and node.file.read_only:
        raise QmpError("Block node is read-only")
    backing = options.get("backing", node.backing.name if node.backing else None)
    new_backing = graph.find(backing) if isinstance(backing, str) else None
    if isinstance(backing, str) and new_backing is None:
        raise QmpError(f"Cannot find device='{backing}' nor node-name='{backing}'")
    try:
        if file_named:                  # a child of its own: left as it is
            node.image.set_read_only(read_only)
            node.read_only = read_only
        else:
            node.set_read_only(read_only)
    except (OSError, UserError) as e:
        raise QmpError(str(e)) from None
    if node.driver == "qcow2" and new_backing is not node.backing:
        graph.set_backing(node, new_backing)
    if "detect-zeroes" in options:
        node.detect_zeroes = options["detect-zeroes"]


@command("blockdev-reopen", args=[Member("options", ListOf(BLOCKDEV))])
def blockdev_reopen(ctx, options):
    """Each node takes its new options in turn (QEMU does all or none; a later
    failure here leaves the earlier ones reopened)."""
    if not options:
        return                          # QEMU 7.2 dies on an empty list; nothing to do
    for one in options:
        _reopen_one(ctx, {k.replace("_", "-"): v for k, v in one.items()})


# -- the rest -------------------------------------------------------------------------
class _AmendOptions(Builtin):
    """BlockdevAmendOptions: an object whose driver is one of QEMU's (checked in
    member order, as QEMU's visitor does, before unexpected members)."""

    def check(self, name: str, value: object) -> object:
        if not isinstance(value, dict):
            raise QmpError(f"Invalid parameter type for '{name}', expected: object")
        if "driver" not in value:
            raise QmpError(f"Parameter '{name}.driver' is missing")
        if value["driver"] not in QEMU_DRIVERS:
            raise QmpError(f"Parameter 'driver' does not accept value '{value['driver']}'")
        return value


@command("x-blockdev-amend", args=[
    Member("job-id", STR), Member("node-name", STR),
    Member("options", _AmendOptions("any", "value")), Member("force", BOOL, True)])
def x_blockdev_amend(ctx, job_id, node_name, options, force=False):
    node = ctx.machine.block.graph.find(node_name)
    if node is None:
        raise QmpError(f"Cannot find device='' nor node-name='{node_name}'")
    if options["driver"] != node.driver:
        raise QmpError("x-blockdev-amend doesn't support changing the block driver")
    if node.driver != "qcow2":
        raise QmpError("Driver does not support x-blockdev-amend")
    if "encrypt" in options:
        raise QmpError("kvmkit's qcow2 images are not encrypted: there is nothing to amend")

    async def work() -> None:
        """qcow2 amends only encryption, which kvmkit's images do not have."""

    start_job(ctx, job_id, "amend", work)


@command("x-blockdev-change", args=[Member("parent", STR), Member("child", STR, True),
                                    Member("node", STR, True)])
def x_blockdev_change(ctx, parent, child=None, node=None):
    """Only quorum nodes take and give up children, and kvmkit has none."""
    found = lookup(ctx, parent)
    if child is None and node is None:
        raise QmpError("Either child or node must be specified")
    if child is not None and node is not None:
        raise QmpError("The parameters child and node are in conflict")
    drive = ctx.machine.block.drive_of(found)
    shown = drive.name if drive is not None and drive.name else found.name
    verb = "adding" if node is not None else "removing"
    raise QmpError(f"The node {shown} does not support {verb} a child")


@command("x-blockdev-set-iothread", args=[
    Member("node-name", STR), Member("iothread", Alternate("StrOrNull", (STR, NULL))),
    Member("force", BOOL, True)])
def x_blockdev_set_iothread(ctx, node_name, iothread, force=False):
    """kvmkit's disk I/O runs on each device's own I/O threads, whichever iothread a
    root node names; the checks are QEMU's."""
    block = ctx.machine.block
    node = block.graph.find(node_name)
    if node is None:
        raise QmpError(f"Failed to find node with node-name='{node_name}'")
    drive = block.drive_of(node)
    if drive is not None and not force:
        raise QmpError(f"Node {node_name} is associated with a BlockBackend and could be "
                       "in use (use force=true to override this check)")
    if iothread is not None:
        obj = ctx.machine.objects.by_id.get(iothread)
        if obj is None or obj.qom_type != "iothread":
            raise QmpError(f"Cannot find iothread {iothread}")
    if drive is not None and drive.attached_to:
        raise QmpError("Cannot change iothread of active block backend")
    node.iothread = iothread


_PERM_NAMES = {"consistent read": "consistent-read", WRITE: "write",
               "write unchanged": "write-unchanged", "resize": "resize"}


def _perms(names) -> list[str]:
    return [_PERM_NAMES[p] for p in reversed(PERMISSION_ORDER) if p in names]


@command("x-debug-query-block-graph", returns=Struct("XDbgBlockGraph", (
    Member("nodes", ListOf(Struct("XDbgBlockGraphNode", (
        Member("id", INT), Member("type", Enum("XDbgBlockGraphNodeType", (
            "block-backend", "block-job", "block-driver"))), Member("name", STR))))),
    Member("edges", ListOf(Struct("XDbgBlockGraphEdge", (
        Member("parent", INT), Member("child", INT), Member("name", STR),
        Member("perm", ListOf(STR)), Member("shared-perm", ListOf(STR)))))))))
def x_debug_query_block_graph(ctx):
    """The drives (block backends) and nodes, and who uses whom with which
    permissions, numbered from 1."""
    block = ctx.machine.block
    ids: dict[int, int] = {}
    nodes: list[dict] = []

    def number(thing, kind: str, name: str) -> int:
        if id(thing) not in ids:
            ids[id(thing)] = len(ids) + 1
            nodes.append({"name": name, "type": kind, "id": ids[id(thing)]})
        return ids[id(thing)]

    edges: list[dict] = []
    all_perms = set(PERMISSION_ORDER)
    for drive in block.drives:
        if drive.root is None:
            continue
        parent = number(drive, "block-backend", drive.name)
        required = {"consistent read"} | (set() if drive.read_only else {WRITE})
        edges.append({"name": "root", "parent": parent,
                      "child": number(drive.root, "block-driver", drive.root.name),
                      "perm": _perms(required),
                      "shared-perm": _perms(all_perms - {WRITE})})
    for node in block.graph.nodes:
        parent = number(node, "block-driver", node.name)
        for role, child in (("file", node.file), ("backing", node.backing)):
            if child is None:
                continue
            use = next((u for u in child.uses if u.user == f"node '{node.name}'" and
                        u.role == role), None)
            required = {"consistent read"} | (set(use.required) if use else set())
            unshared = set(use.unshared) if use else set()
            edges.append({"name": role, "parent": parent,
                          "child": number(child, "block-driver", child.name),
                          "perm": _perms(required), "shared-perm": _perms(all_perms - unshared)})
    return {"nodes": nodes, "edges": edges}
