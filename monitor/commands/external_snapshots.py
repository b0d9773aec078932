"""External snapshots and backing files: blockdev-snapshot-sync (a new qcow2
overlay file), blockdev-snapshot (an overlay node already added),
change-backing-file, and transaction, which does several of these (and the
bitmap, backup and internal snapshot actions) all or none."""

from __future__ import annotations

import json
from collections.abc import Callable

from monitor.commands import bitmaps, block_jobs, snapshots
from monitor.commands.block_jobs import create_image, lookup, named_node
from monitor.errors import QmpError
from monitor.registry import REGISTRY, command
from monitor.types import STR, Enum, ListOf, Member, Struct, Union
from vmm.block.engine import quiesced
from vmm.block.graph import Node, describe
from vmm.errors import UserError

NEW_IMAGE_MODE = Enum("NewImageMode", ("existing", "absolute-paths"))
Steps = tuple[Callable[[], None], Callable[[], None]]     # (do, undo)


def drained(ctx, prepare: Callable[[], Steps]) -> None:
    """Checked, prepared and done under the lock with no disk request at work, as
    QEMU changes the graph in a drained section."""
    machine = ctx.machine
    with machine.lock:
        do, undo = prepare()
        try:
            with quiesced():
                do()
        except BaseException:
            undo()
            raise


def _top_of_drive(ctx, active: Node) -> None:
    if ctx.machine.block.drive_of(active) is None and active.users:
        raise QmpError("Need a root block node")


def _install(ctx, active: Node, overlay: Node) -> None:
    """The overlay goes on top of ``active``: it backs onto it, and the drive (if
    any) now writes to it; the old top is reopened read-only, as a backing image."""
    block = ctx.machine.block
    drive = block.drive_of(active)
    active.users += 1                         # held across the switch
    try:
        if drive is not None:
            block.switch_root(drive, overlay)
        block.graph.set_backing(overlay, active)
        try:
            active.set_read_only(True)
        except (OSError, UserError):
            pass                              # it still reads right, only stays writable
    finally:
        active.users -= 1


def _installer(ctx, active: Node, overlay: Node, after=lambda: None) -> Steps:
    """(do, undo) for putting ``overlay`` over ``active``: undo takes it off again
    once done (a transaction's later action failed), or just lets it go."""
    block = ctx.machine.block
    state = {"installed": False, "read_only": active.read_only}

    def do() -> None:
        _install(ctx, active, overlay)
        state["installed"] = True
        after()

    def undo() -> None:
        if state["installed"]:
            drive = block.drive_of(overlay)
            active.users += 1
            try:
                if drive is not None:
                    block.switch_root(drive, active)
                if not state["read_only"]:
                    active.set_read_only(False)
            finally:
                active.users -= 1
        if overlay in block.graph.nodes and not overlay.users:
            block.graph.set_backing(overlay, None)
            overlay.users += 1
            overlay.options.pop("node-name", None)     # made here: goes with the undo
            block.graph.release(overlay)

    return do, undo


def prepare_snapshot_sync(ctx, snapshot_file, device=None, node_name=None,
                          snapshot_node_name=None, format="qcow2",
                          mode="absolute-paths") -> Steps:
    block = ctx.machine.block
    drive = block.find_drive(device) if device else None
    active = drive.root if drive is not None else \
        block.graph.find(node_name) if node_name else None
    if active is None:
        raise QmpError(f"Cannot find device='{device or ''}' nor "
                       f"node-name='{node_name or ''}'")
    _top_of_drive(ctx, active)
    if snapshot_node_name is not None and block.graph.find(snapshot_node_name) is not None:
        raise QmpError("New overlay node-name already in use")
    if format not in ("qcow2", "raw"):
        raise QmpError(f"Unknown file format '{format}'")
    if mode == "absolute-paths":
        if format != "qcow2":
            raise QmpError(f"Backing file not supported for file format '{format}'")
        create_image(snapshot_file, format, active.size, active)
    try:
        overlay = block.graph.open_image(snapshot_file, format, snapshot_node_name,
                                         backing=None)
    except UserError as e:
        raise QmpError(str(e)) from None
    if overlay.driver != "qcow2":
        block.discard_medium(overlay)
        raise QmpError("The overlay does not support backing images")
    return _installer(ctx, active, overlay)


@command("blockdev-snapshot-sync", args=[
    Member("device", STR, True), Member("node-name", STR, True),
    Member("snapshot-file", STR), Member("snapshot-node-name", STR, True),
    Member("format", STR, True), Member("mode", NEW_IMAGE_MODE, True)])
def blockdev_snapshot_sync(ctx, snapshot_file, device=None, node_name=None,
                                 snapshot_node_name=None, format="qcow2",
                                 mode="absolute-paths"):
    drained(ctx, lambda: prepare_snapshot_sync(
        ctx, snapshot_file, device, node_name, snapshot_node_name, format, mode))


def prepare_snapshot(ctx, node, overlay) -> Steps:
    """blockdev-snapshot: ``overlay`` (added with no backing) goes over ``node``."""
    active = lookup(ctx, node)
    new = named_node(ctx, overlay)
    _top_of_drive(ctx, active)
    if new.users or ctx.machine.block.drive_of(new) is not None:
        raise QmpError("The overlay is already in use")
    if new.driver != "qcow2":
        raise QmpError("The overlay does not support backing images")
    if new.backing is not None:
        raise QmpError("The overlay already has a backing image")
    def named() -> None:
        if new.image.backing_file != active.filename:   # as QEMU names what it made
            new.filename = "json:" + json.dumps({
                "backing": describe(active), "driver": new.driver, "file": describe(new.file)})

    do, undo = _installer(ctx, active, new, after=named)
    return do, undo


@command("blockdev-snapshot", args=[Member("node", STR), Member("overlay", STR)])
def blockdev_snapshot(ctx, node, overlay):
    drained(ctx, lambda: prepare_snapshot(ctx, node, overlay))


@command("change-backing-file", args=[Member("device", STR), Member("image-node-name", STR),
                                      Member("backing-file", STR)])
def change_backing_file(ctx, device, image_node_name, backing_file):
    """Only the name in the image's header changes; the chain as opened stays."""
    active = lookup(ctx, device)
    image = ctx.machine.block.graph.find(image_node_name)
    if image is None:
        raise QmpError(f"Cannot find device='' nor node-name='{image_node_name}'")
    if image not in active.chain():
        raise QmpError("image file not found")
    if image.driver != "qcow2" or image.backing is None:
        raise QmpError("Driver does not support backing file"
                       if image.driver != "qcow2" else "Image has no backing file")
    reopened = image.read_only
    try:
        if reopened:
            image.set_read_only(False)
        image.image.set_backing_file(backing_file, image.backing.driver)
    except (OSError, UserError):
        raise QmpError(f"Could not change backing file to '{backing_file}'") from None
    finally:
        if reopened:
            image.set_read_only(True)


# -- transaction --------------------------------------------------------------------
def _prepare(ctx, kind: str, data: dict) -> Steps:
    args = {k.replace("-", "_"): v for k, v in data.items()}
    if kind == "abort":
        raise QmpError("Transaction aborted using Abort action")
    if kind == "block-dirty-bitmap-add":
        return bitmaps.prepare_add(ctx, **args)
    if kind == "block-dirty-bitmap-merge":
        return bitmaps.prepare_merge(ctx, **args)
    if kind.startswith("block-dirty-bitmap-"):
        return bitmaps.prepare_change(ctx, kind.rsplit("-", 1)[1], **args)
    if kind == "blockdev-snapshot-sync":
        return prepare_snapshot_sync(ctx, **args)
    if kind == "blockdev-snapshot":
        return prepare_snapshot(ctx, **args)
    if kind == "blockdev-snapshot-internal-sync":
        return snapshots.prepare_internal_snapshot(ctx, **args)
    # a backup starts last, but finds its nodes here, in the action's turn, as QEMU's
    # prepare does
    block_jobs.lookup(ctx, args["device"])
    if kind == "blockdev-backup":
        block_jobs.lookup(ctx, args["target"])
    start = block_jobs.drive_backup if kind == "drive-backup" else block_jobs.blockdev_backup
    return (lambda: start(ctx, **args)), lambda: None


def _transaction_action():
    cases = [("abort", Struct("AbortWrapper", (Member("data", Struct("Abort", ())),)))]
    for kind in ("block-dirty-bitmap-add", "block-dirty-bitmap-remove",
                 "block-dirty-bitmap-clear", "block-dirty-bitmap-enable",
                 "block-dirty-bitmap-disable", "block-dirty-bitmap-merge", "blockdev-backup",
                 "blockdev-snapshot", "blockdev-snapshot-internal-sync",
                 "blockdev-snapshot-sync", "drive-backup"):
        args = tuple(REGISTRY.find(kind).args)
        cases.append((kind, Struct(f"{kind}-wrapper", (Member("data", Struct(kind, args)),))))
    kinds = Enum("TransactionActionKind", tuple(k for k, _ in cases))
    return Union("TransactionAction", (Member("type", kinds),), "type", tuple(cases))


@command("transaction", args=[
    Member("actions", ListOf(_transaction_action())),
    Member("properties", Struct("TransactionProperties", (Member(
        "completion-mode", Enum("ActionCompletionMode", ("individual", "grouped")), True),)),
        True)])
def transaction(ctx, actions, properties=None):
    """The actions are done in order, with no disk request at work, each seeing
    what the earlier ones did (a bitmap one adds, another merges into); backups
    start last. If one fails, those done are undone, and nothing changed.
    (completion-mode=grouped is taken; the backups then end one by one.)"""
    mode = (properties or {}).get("completion-mode", "individual")
    if mode != "individual":                    # only backups can end as a group
        for action in actions:
            if action["type"] not in ("drive-backup", "blockdev-backup", "abort"):
                raise QmpError(f"Action '{action['type']}' does not support Transaction "
                               f"property completion-mode = {mode}")
    machine = ctx.machine
    done: list[Steps] = []
    backups = []
    with machine.lock, quiesced():
        try:
            for action in actions:
                steps = _prepare(ctx, action["type"], action.get("data", {}))
                if action["type"].endswith("backup"):
                    backups.append(steps)
                    continue
                steps[0]()
                done.append(steps)
            for steps in backups:
                steps[0]()
        except BaseException:
            for _do, undo in reversed(done):
                undo()
            raise
