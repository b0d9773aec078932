"""Block exports (the NBD server, block-export-*): kvmkit serves none yet. The
commands check their arguments, look up the node as QEMU does and answer as
QEMU answers with no NBD server running; starting one names the gap."""

from __future__ import annotations

from monitor.commands.block import lookup_node
from monitor.commands.chardevs import FD, INET, SOCKET_ADDRESS, UNIX, VSOCK
from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import (
    BOOL,
    SIZE,
    STR,
    UINT16,
    UINT32,
    Alternate,
    Enum,
    ListOf,
    Member,
    Struct,
    Union,
)

REMOVE_MODE = Enum("BlockExportRemoveMode", ("safe", "hard"))
EXPORT_TYPE = Enum("BlockExportType", ("nbd", "vhost-user-blk", "fuse", "vduse-blk"))
NOT_RUNNING = "NBD server not running"
SOCKET_ADDRESS_FLAT = Union("SocketAddress", (Member("type", Enum("SocketAddressType", (
    "inet", "unix", "vsock", "fd"))),), "type", (
    ("inet", INET), ("unix", UNIX), ("vsock", VSOCK), ("fd", FD)))
EXPORT_BASE = (Member("type", EXPORT_TYPE), Member("id", STR),
               Member("fixed-iothread", BOOL, True), Member("iothread", STR, True),
               Member("node-name", STR), Member("writable", BOOL, True),
               Member("writethrough", BOOL, True))
EXPORT_OPTIONS = Union("BlockExportOptions", EXPORT_BASE, "type", (
    ("nbd", Struct("BlockExportOptionsNbd", (
        Member("name", STR, True), Member("description", STR, True),
        Member("bitmaps", ListOf(Alternate("BlockDirtyBitmapOrStr", (STR, Struct(
            "BlockDirtyBitmap", (Member("node", STR), Member("name", STR)))))), True),
        Member("allocation-depth", BOOL, True)))),
    ("vhost-user-blk", Struct("BlockExportOptionsVhostUserBlk", (
        Member("addr", SOCKET_ADDRESS_FLAT), Member("logical-block-size", SIZE, True),
        Member("num-queues", UINT16, True)))),
    ("fuse", Struct("BlockExportOptionsFuse", (
        Member("mountpoint", STR), Member("growable", BOOL, True),
        Member("allow-other", Enum("FuseExportAllowOther", ("off", "on", "auto")), True)))),
    ("vduse-blk", Struct("BlockExportOptionsVduseBlk", (
        Member("name", STR), Member("num-queues", UINT16, True), Member("queue-size", UINT16, True),
        Member("logical-block-size", SIZE, True), Member("serial", STR, True))))))


@command("query-block-exports", returns=ListOf(Struct("BlockExportInfo", (
    Member("id", STR), Member("type", EXPORT_TYPE), Member("node-name", STR),
    Member("shutting-down", BOOL)))))
def query_block_exports(ctx):
    return []


@command("nbd-server-start", args=[
    Member("addr", SOCKET_ADDRESS), Member("tls-creds", STR, True),
    Member("tls-authz", STR, True), Member("max-connections", UINT32, True)])
def nbd_server_start(ctx, addr, tls_creds=None, tls_authz=None, max_connections=None):
    raise QmpError("kvmkit does not serve block devices over NBD yet")


@command("nbd-server-stop")
def nbd_server_stop(ctx):
    raise QmpError(NOT_RUNNING)


@command("nbd-server-add", args=[
    Member("name", STR, True), Member("description", STR, True), Member("device", STR),
    Member("writable", BOOL, True), Member("bitmap", STR, True)], features=("deprecated",))
def nbd_server_add(ctx, device, name=None, description=None, writable=None, bitmap=None):
    lookup_node(ctx.machine.block, device, device)
    raise QmpError(NOT_RUNNING)


@command("nbd-server-remove", args=[Member("name", STR), Member("mode", REMOVE_MODE, True)],
         features=("deprecated",))
def nbd_server_remove(ctx, name, mode=None):
    raise QmpError(f"Export '{name}' is not found")


@command("block-export-add", args=EXPORT_BASE, variants=EXPORT_OPTIONS)
def block_export_add(ctx, type, id, node_name, props, fixed_iothread=None, iothread=None,
                     writable=None, writethrough=None):
    from monitor.commands.netdev import valid_id
    if not valid_id(id):
        raise QmpError("Invalid block export id")
    lookup_node(ctx.machine.block, "", node_name)
    if type == "nbd":
        raise QmpError(NOT_RUNNING)
    raise QmpError(f"kvmkit does not export block devices as {type}")


@command("block-export-del", args=[Member("id", STR), Member("mode", REMOVE_MODE, True)])
def block_export_del(ctx, id, mode=None):
    raise QmpError(f"Export '{id}' is not found")
