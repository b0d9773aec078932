"""Dirty bitmap commands: block-dirty-bitmap-add, -remove, -clear, -enable,
-disable, -merge and x-debug-block-dirty-bitmap-sha256. A bitmap watches the
writes to its node (vmm/block/dirty_bitmap.py); query-block and
query-named-block-nodes list them."""

from __future__ import annotations

from monitor.commands.block_jobs import lookup
from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import BOOL, STR, UINT32, Alternate, ListOf, Member, Struct
from vmm.block.dirty_bitmap import DirtyBitmap, default_granularity
from vmm.block.graph import Node

MAX_NAME = 1023
BITMAP_REF = Struct("BlockDirtyBitmap", (Member("node", STR), Member("name", STR)))


def bitmap_node(ctx, node: str, adding: bool = False) -> Node:
    """The node a bitmap is on: block-dirty-bitmap-add finds it as the block
    commands do, the others as QEMU's bitmap lookup does (its own error)."""
    return lookup(ctx, node, "" if adding else f"Node '{node}' not found")


def find_bitmap(node: Node, name: str, missing: str = "") -> DirtyBitmap:
    bitmap = next((b for b in node.bitmaps() if b.name == name), None)
    if bitmap is None:
        raise QmpError(missing or f"Dirty bitmap '{name}' not found")
    return bitmap


def _lookup(ctx, node: str, name: str) -> tuple[Node, DirtyBitmap]:
    found = bitmap_node(ctx, node)
    return found, find_bitmap(found, name)


def check_usable(bitmap: DirtyBitmap, inconsistent_ok: bool = False) -> None:
    """QEMU's bitmap check: not in a job's hands, and (unless it is being removed)
    not found inconsistent in its image."""
    if bitmap.busy:
        raise QmpError(f"Bitmap '{bitmap.name}' is currently in use by another operation "
                       "and cannot be used")
    if bitmap.inconsistent and not inconsistent_ok:
        raise QmpError(f"Bitmap '{bitmap.name}' is inconsistent and cannot be used")


def prepare_add(ctx, node, name, granularity=None, persistent=False, disabled=False):
    """Checks block-dirty-bitmap-add; returns what adds it."""
    if not name:
        raise QmpError("Bitmap name cannot be empty")
    found = bitmap_node(ctx, node, adding=True)
    if len(name) > MAX_NAME:
        raise QmpError("Bitmap name is too long")
    if granularity is None:
        cluster = getattr(found.image, "cluster_size", None)
        granularity = default_granularity(cluster)
    elif granularity < 512 or granularity & (granularity - 1) or granularity > 1 << 31:
        raise QmpError("Granularity must be power of 2 and at least 512")
    if any(b.name == name for b in found.bitmaps()):
        raise QmpError(f"Bitmap already exists: {name}")
    if persistent and (found.driver != "qcow2" or found.read_only or
                       found.image.version < 3):
        drive = ctx.machine.block.drive_of(found)
        shown = drive.name if drive is not None and drive.name else found.name
        raise QmpError(f"Can't store persistent bitmaps to {shown}: Operation not supported")
    bitmap = DirtyBitmap(name, found.size, granularity, recording=not disabled,
                         persistent=persistent)
    return lambda: found.observers.append(bitmap), \
        lambda: found.observers.remove(bitmap) if bitmap in found.observers else None


@command("block-dirty-bitmap-add", args=[
    Member("node", STR), Member("name", STR), Member("granularity", UINT32, True),
    Member("persistent", BOOL, True), Member("disabled", BOOL, True)])
def block_dirty_bitmap_add(ctx, node, name, granularity=None, persistent=False,
                           disabled=False):
    add, _undo = prepare_add(ctx, node, name, granularity, persistent, disabled)
    add()


def prepare_change(ctx, verb: str, node: str, name: str):
    """Checks remove/clear/enable/disable; returns (do, undo)."""
    found, bitmap = _lookup(ctx, node, name)
    check_usable(bitmap, inconsistent_ok=verb == "remove")
    if verb == "remove":
        return lambda: found.observers.remove(bitmap), lambda: found.observers.append(bitmap)
    if verb == "clear":
        saved = bitmap.copy()
        return bitmap.clear, lambda: (bitmap.clear(), bitmap.merge_from(saved))
    was = bitmap.recording

    def undo() -> None:
        bitmap.recording = was

    def do() -> None:
        bitmap.recording = verb == "enable"
    return do, undo


def _verb_command(verb: str):
    @command(f"block-dirty-bitmap-{verb}", args=[Member("node", STR), Member("name", STR)])
    def handler(ctx, node, name):
        do, _undo = prepare_change(ctx, verb, node, name)
        do()
    return handler


for _verb in ("remove", "clear", "enable", "disable"):
    _verb_command(_verb)


def prepare_merge(ctx, node, target, bitmaps):
    found, into = _lookup(ctx, node, target)
    check_usable(into)
    sources = []
    for ref in bitmaps:
        if isinstance(ref, str):
            sources.append(find_bitmap(found, ref))
        else:
            sources.append(_lookup(ctx, ref["node"], ref["name"])[1])
        if sources[-1].inconsistent:            # a source may be busy, not inconsistent
            check_usable(sources[-1])
    saved = into.copy()

    def do() -> None:
        for source in sources:
            into.merge_from(source)

    return do, lambda: (into.clear(), into.merge_from(saved))


@command("block-dirty-bitmap-merge", args=[
    Member("node", STR), Member("target", STR),
    Member("bitmaps", ListOf(Alternate("BlockDirtyBitmapOrStr", (STR, BITMAP_REF))))])
def block_dirty_bitmap_merge(ctx, node, target, bitmaps):
    do, _undo = prepare_merge(ctx, node, target, bitmaps)
    do()


@command("x-debug-block-dirty-bitmap-sha256", args=[Member("node", STR), Member("name", STR)],
         returns=Struct("BlockDirtyBitmapSha256", (Member("sha256", STR),)))
def x_debug_block_dirty_bitmap_sha256(ctx, node, name):
    return {"sha256": _lookup(ctx, node, name)[1].sha256()}
