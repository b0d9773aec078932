"""The block job commands: block-stream, block-commit, drive-mirror,
blockdev-mirror, drive-backup and blockdev-backup. Each checks its arguments
as QEMU 7.2 does, sets up the nodes, and starts the job (monitor/commands/
jobs.py runs it; vmm/block/jobs.py moves the data)."""

from __future__ import annotations

import os

from monitor.commands.jobs import check_job_id, machine_jobs, start_block_job
from monitor.errors import QmpError, device_not_found
from monitor.registry import command
from monitor.types import BOOL, INT, STR, UINT32, Enum, Member, Struct
from vmm.block import qcow2
from vmm.block.graph import Node
from vmm.block.jobs import BackupWork, CommitWork, MirrorWork, StreamWork
from vmm.errors import UserError

ON_ERROR = Enum("BlockdevOnError", ("report", "ignore", "enospc", "stop", "auto"))
SYNC = Enum("MirrorSyncMode", ("top", "full", "none", "incremental", "bitmap"))
NEW_IMAGE_MODE = Enum("NewImageMode", ("existing", "absolute-paths"))
JOB_COMMON = [Member("job-id", STR, True), Member("device", STR)]
FINALIZE = [Member("auto-finalize", BOOL, True), Member("auto-dismiss", BOOL, True)]


# -- finding nodes ------------------------------------------------------------------
def lookup(ctx, name: str, missing: str = "") -> Node:
    """A drive's root by the drive's id, else a node by its name (bdrv_lookup_bs);
    ``missing`` is the error when neither is found, if not QEMU's usual one."""
    block = ctx.machine.block
    drive = block.find_drive(name)
    node = drive.root if drive is not None else block.graph.find(name)
    if node is None:
        raise QmpError(missing or f"Cannot find device='{name}' nor node-name='{name}'")
    return node


def root_node(ctx, name: str, not_found_class: bool = False) -> Node:
    """As lookup, for commands that want the top of a drive (qmp_get_root_bs);
    block-commit says a missing one is a DeviceNotFound."""
    if not_found_class and ctx.machine.block.find_drive(name) is None and \
            ctx.machine.block.graph.find(name) is None:
        raise device_not_found(name)
    node = lookup(ctx, name)
    if ctx.machine.block.drive_of(node) is None and node.users:
        raise QmpError("Need a root block node")
    return node


def named_node(ctx, name: str) -> Node:
    node = ctx.machine.block.graph.find(name)
    if node is None:
        raise QmpError(f"Cannot find device='' nor node-name='{name}'")
    return node


def in_chain(top: Node, filename: str) -> Node | None:
    """The backing image of ``top`` opened from ``filename`` (bdrv_find_backing_image)."""
    real = os.path.realpath(filename)
    for node in top.chain()[1:]:
        path = node.file.filename if node.file is not None else node.filename
        if node.filename == filename or os.path.realpath(path) == real:
            return node
    return None


def check_busy(ctx, *nodes: Node) -> None:
    """QEMU's op blockers: a node under a running block job takes no other job."""
    for job in machine_jobs(ctx.machine):
        work = job.work
        if work is None or job.status in ("concluded", "null"):
            continue
        held = {id(n) for n in vars(work).values() if isinstance(n, Node)}
        for node in nodes:
            if id(node) in held:
                drive = ctx.machine.block.drive_of(node)
                name = drive.name if drive is not None and drive.name else node.name
                raise QmpError(f"Node '{name}' is busy: block device is in use by "
                               f"block job: {job.type}")


def _job_id(ctx, job_id: str | None, node: Node) -> str:
    if job_id is not None:
        return job_id
    drive = ctx.machine.block.drive_of(node)
    return drive.name if drive is not None and drive.name else node.name


def _writable(node: Node) -> None:
    if node.read_only:
        raise QmpError("Block node is read-only")


# -- block-stream -------------------------------------------------------------------
@command("block-stream", args=JOB_COMMON + [
    Member("base", STR, True), Member("base-node", STR, True), Member("backing-file", STR, True),
    Member("bottom", STR, True), Member("speed", INT, True), Member("on-error", ON_ERROR, True),
    Member("filter-node-name", STR, True)] + FINALIZE)
def block_stream(ctx, device, job_id=None, base=None, base_node=None, backing_file=None,
                 bottom=None, speed=0, on_error="report", filter_node_name=None,
                 auto_finalize=True, auto_dismiss=True):
    if base is not None and base_node is not None:
        raise QmpError("'base' and 'base-node' cannot be specified at the same time")
    if bottom is not None and base is not None:
        raise QmpError("'base' and 'bottom' cannot be specified at the same time")
    if bottom is not None and base_node is not None:
        raise QmpError("'bottom' and 'base-node' cannot be specified at the same time")
    top = lookup(ctx, device)
    base_at: Node | None = None
    if base is not None:
        base_at = in_chain(top, base)
        if base_at is None:
            raise QmpError(f"Can't find '{base}' in the backing chain")
    elif base_node is not None:
        base_at = named_node(ctx, base_node)
        if base_at not in top.chain()[1:]:
            raise QmpError(f"Node '{base_node}' is not a backing image of '{device}'")
    elif bottom is not None:
        bottom_at = named_node(ctx, bottom)
        if bottom_at not in top.chain():
            raise QmpError(f"Node '{bottom}' is not a backing image of '{device}'")
        base_at = bottom_at.backing if bottom_at is not top else top
    if backing_file is not None and base_at is None:
        raise QmpError("backing file specified, but streaming the entire chain")
    if on_error not in ("report", "ignore", "enospc", "stop"):
        raise QmpError("Invalid parameter value for 'on-error': auto")
    check_busy(ctx, top)
    _writable_top(top)
    block = ctx.machine.block

    def finish(_pivot: bool) -> None:
        if top.driver == "qcow2" and base_at is not top:
            name = backing_file if backing_file is not None else \
                base_at.filename if base_at is not None else ""
            top.image.set_backing_file(name, base_at.driver if base_at is not None else "")
            block.graph.set_backing(top, base_at)

    start_block_job(ctx, _job_id(ctx, job_id, top), "stream",
                    StreamWork(top, base_at), finish, lambda: None,
                    auto_finalize=auto_finalize, auto_dismiss=auto_dismiss, speed=speed)


def _writable_top(node: Node) -> None:
    if node.read_only and node.backing is not None:
        raise QmpError("Block node is read-only")


# -- block-commit -------------------------------------------------------------------
@command("block-commit", args=JOB_COMMON + [
    Member("base-node", STR, True), Member("base", STR, True), Member("top-node", STR, True),
    Member("top", STR, True), Member("backing-file", STR, True), Member("speed", INT, True),
    Member("on-error", ON_ERROR, True), Member("filter-node-name", STR, True)] + FINALIZE)
def block_commit(ctx, device, job_id=None, base_node=None, base=None, top_node=None,
                 top=None, backing_file=None, speed=0, on_error="report",
                 filter_node_name=None, auto_finalize=True, auto_dismiss=True):
    active = root_node(ctx, device, not_found_class=True)
    if top is not None and top_node is not None:
        raise QmpError("'top-node' and 'top' are mutually exclusive")
    if base is not None and base_node is not None:
        raise QmpError("'base-node' and 'base' are mutually exclusive")
    top_at = active
    if top_node is not None:
        top_at = named_node(ctx, top_node)
        if top_at not in active.chain():
            raise QmpError(f"'{top_node}' is not in this backing file chain")
    elif top is not None:
        top_at = active if active.filename == top else in_chain(active, top)
        if top_at is None:
            raise QmpError("Top image file " + top + " not found")
    if base_node is not None:
        base_at = named_node(ctx, base_node)
    elif base is not None:
        base_at = in_chain(top_at, base)
        if base_at is None:
            raise QmpError(f"Can't find '{base}' in the backing chain")
    else:
        base_at = top_at.chain()[-1]
    if base_at is top_at:
        raise QmpError("cannot commit an image into itself")
    if base_at not in top_at.chain():
        raise QmpError(f"'{base_node}' is not in this backing file chain")
    check_busy(ctx, top_at, base_at)
    block = ctx.machine.block
    job_id = _job_id(ctx, job_id, active)
    check_job_id(ctx.machine, job_id)           # before the base is made writable
    was_read_only = base_at.read_only
    try:
        base_at.set_read_only(False)
    except (OSError, UserError) as e:
        raise QmpError(str(e)) from None

    def back_to_read_only() -> None:
        if was_read_only and base_at.users:
            try:
                base_at.set_read_only(True)
            except (OSError, UserError):
                pass

    if top_at is active:                      # active commit: a mirror into the base
        drive = block.drive_of(active)

        def pivot(switch: bool) -> None:
            if switch and drive is not None:
                above_base = next(n for n in active.chain() if n.backing is base_at)
                base_at.users += 1            # kept while the chain above lets go of it
                try:
                    block.graph.set_backing(above_base, None)
                    block.switch_root(drive, base_at)
                finally:
                    base_at.users -= 1

        def clean() -> None:
            if drive is None or drive.root is not base_at:
                back_to_read_only()

        start_block_job(ctx, job_id, "commit", MirrorWork(active, base_at, "full", base_at),
                        pivot, clean, auto_finalize=auto_finalize,
                        auto_dismiss=auto_dismiss, speed=speed)
        return
    overlay = next((n for n in active.chain() if n.backing is top_at), None)

    def finish(_pivot: bool) -> None:
        if overlay is not None and overlay.driver == "qcow2":
            name = backing_file if backing_file is not None else base_at.filename
            overlay.image.set_backing_file(name, base_at.driver)
            block.graph.set_backing(overlay, base_at)

    start_block_job(ctx, job_id, "commit", CommitWork(top_at, base_at), finish,
                    back_to_read_only, auto_finalize=auto_finalize,
                    auto_dismiss=auto_dismiss, speed=speed)


# -- mirrors ------------------------------------------------------------------------
MIRROR_COMMON = [Member("replaces", STR, True), Member("sync", SYNC),
                 Member("speed", INT, True), Member("granularity", UINT32, True),
                 Member("buf-size", INT, True), Member("on-source-error", ON_ERROR, True),
                 Member("on-target-error", ON_ERROR, True)]
COPY_MODE = Member("copy-mode", Enum("MirrorCopyMode", ("background", "write-blocking")), True)


def _check_mirror(granularity: int | None, sync: str) -> None:
    if granularity is not None:
        if not 512 <= granularity <= 64 << 20:
            raise QmpError("Parameter 'granularity' expects a value in range [512B, 64MB]")
        if granularity & (granularity - 1):
            raise QmpError("Parameter 'granularity' expects a power of 2")
    if sync in ("incremental", "bitmap"):
        raise QmpError(f"Sync mode '{sync}' not supported")


def _start_mirror(ctx, job_id, source: Node, target: Node, sync: str, speed: int,
                  auto_finalize: bool, auto_dismiss: bool) -> None:
    block = ctx.machine.block
    if target.size != source.size:
        raise QmpError("Source and target image have different sizes")
    drive = block.drive_of(source)
    target.users += 1                          # the job's, until it ends

    def pivot(switch: bool) -> None:
        if switch and drive is not None:
            block.switch_root(drive, target)

    def clean() -> None:
        block.graph.release(target)

    start_block_job(ctx, _job_id(ctx, job_id, source), "mirror",
                    MirrorWork(source, target, sync), pivot, clean,
                    auto_finalize=auto_finalize, auto_dismiss=auto_dismiss, speed=speed)


@command("drive-mirror", args=JOB_COMMON + [
    Member("target", STR), Member("format", STR, True), Member("node-name", STR, True),
    Member("replaces", STR, True), Member("sync", SYNC), Member("mode", NEW_IMAGE_MODE, True),
    Member("speed", INT, True), Member("granularity", UINT32, True), Member("buf-size", INT, True),
    Member("on-source-error", ON_ERROR, True), Member("on-target-error", ON_ERROR, True),
    Member("unmap", BOOL, True), COPY_MODE] + FINALIZE)
def drive_mirror(ctx, device, target, sync, job_id=None, format=None, node_name=None,
                 replaces=None, mode="absolute-paths", speed=0, granularity=None,
                 buf_size=None, on_source_error="report", on_target_error="report",
                 unmap=True, copy_mode="background", auto_finalize=True, auto_dismiss=True):
    source = root_node(ctx, device)
    _check_mirror(granularity, sync)
    check_busy(ctx, source)
    backing = None if sync == "full" else source if sync == "none" else source.backing
    node = new_image(ctx, target, format or source.driver, mode, source, backing, node_name)
    try:
        _start_mirror(ctx, job_id, source, node, sync, speed, auto_finalize,
                      auto_dismiss)
    except QmpError:
        ctx.machine.block.discard_medium(node)
        raise


@command("blockdev-mirror", args=JOB_COMMON + [Member("target", STR)] + MIRROR_COMMON + [
    Member("filter-node-name", STR, True), COPY_MODE] + FINALIZE)
def blockdev_mirror(ctx, device, target, sync, job_id=None, replaces=None, speed=0,
                    granularity=None, buf_size=None, on_source_error="report",
                    on_target_error="report", filter_node_name=None, copy_mode="background",
                    auto_finalize=True, auto_dismiss=True):
    source = root_node(ctx, device)
    node = lookup(ctx, target)
    if node is source:
        raise QmpError("Can't mirror node into itself")
    _check_mirror(granularity, sync)
    if ctx.machine.block.drive_of(node) is not None or node.users:
        raise QmpError(f"Node '{target}' is busy: node is used as backing hd of "
                       f"'{source.name}'" if node in source.chain() else
                       "Cannot mirror to an attached block device")
    check_busy(ctx, source, node)
    _start_mirror(ctx, job_id, source, node, sync, speed, auto_finalize,
                  auto_dismiss)


def new_image(ctx, filename: str, fmt: str, mode: str, source: Node,
              backing: Node | None, node_name: str | None) -> Node:
    """drive-mirror's and drive-backup's target: created (absolute-paths) with the
    source's size and, for qcow2, the backing file given, or opened (existing)."""
    if fmt not in ("raw", "qcow2"):
        raise QmpError(f"Unknown file format '{fmt}'")
    graph = ctx.machine.block.graph
    try:
        if mode == "absolute-paths":
            create_image(filename, fmt, source.size, backing)
            return graph.open_image(filename, fmt, node_name, backing)
        return graph.open_image(filename, fmt, node_name,
                                backing if fmt == "qcow2" else True)
    except UserError as e:
        raise QmpError(str(e)) from None


def create_image(filename: str, fmt: str, size: int, backing: Node | None) -> None:
    try:
        if fmt == "qcow2":
            qcow2.create(filename, size,
                         backing_file=backing.filename if backing is not None else "",
                         backing_format=backing.driver if backing is not None else "")
        else:
            with open(filename, "wb") as f:
                f.truncate(size)
    except OSError as e:
        raise QmpError(f"Could not create '{filename}': {e.strerror}") from None


# -- backups ------------------------------------------------------------------------
BACKUP_COMMON = [Member("sync", SYNC), Member("speed", INT, True), Member("bitmap", STR, True),
                 Member("bitmap-mode", Enum("BitmapSyncMode", ("on-success", "never",
                                                               "always")), True),
                 Member("compress", BOOL, True), Member("on-source-error", ON_ERROR, True),
                 Member("on-target-error", ON_ERROR, True)] + FINALIZE + [
    Member("filter-node-name", STR, True),
    Member("x-perf", Struct("BackupPerf", (Member("use-copy-range", BOOL, True),
                                           Member("max-workers", INT, True),
                                           Member("max-chunk", INT, True))), True)]


def _start_backup(ctx, job_id, source: Node, target: Node, sync: str, speed: int,
                  bitmap_name: str | None, bitmap_mode: str | None, compress: bool,
                  auto_finalize: bool, auto_dismiss: bool) -> None:
    from monitor.commands.bitmaps import check_usable, find_bitmap

    if compress and target.driver != "qcow2":     # qcow2 takes it (written uncompressed)
        raise QmpError("Compression is not supported for this drive "
                       f"{target.name}")
    bitmap = None
    if bitmap_name is not None:
        if sync not in ("incremental", "bitmap"):
            if sync == "none":
                raise QmpError("sync mode 'none' does not produce meaningful bitmap outputs")
        bitmap = find_bitmap(source, bitmap_name, f"Bitmap '{bitmap_name}' could not be found")
        check_usable(bitmap)
        if sync == "incremental" and bitmap_mode not in (None, "on-success"):
            raise QmpError("Bitmap sync mode must be 'on-success' when using sync mode "
                           "'incremental'")
        bitmap_mode = bitmap_mode or "on-success"
        if sync == "incremental" and bitmap_mode is None:
            bitmap_mode = "on-success"
    elif sync in ("incremental", "bitmap"):
        raise QmpError(f"must provide a valid bitmap name for '{sync}' sync mode")
    elif bitmap_mode is not None:
        raise QmpError("Cannot specify bitmap sync mode without a bitmap")
    if target.size != source.size:
        raise QmpError("Source and target image have different sizes")
    target.users += 1
    frozen = bitmap.copy() if bitmap is not None else None
    if bitmap is not None:
        bitmap.busy = True
        bitmap.clear()                         # writes from now on belong to the next one
    block = ctx.machine.block
    outcome = {"ok": False}

    def finish(_pivot: bool) -> None:
        outcome["ok"] = True

    def clean() -> None:
        block.graph.release(target)
        if bitmap is not None:
            bitmap.busy = False
            keep_old = bitmap_mode == "never" or \
                (bitmap_mode == "on-success" and not outcome["ok"])
            if keep_old:
                bitmap.merge_from(frozen)

    start_block_job(ctx, _job_id(ctx, job_id, source), "backup",
                    BackupWork(source, target, sync, frozen), finish, clean,
                    auto_finalize=auto_finalize, auto_dismiss=auto_dismiss, speed=speed,
                    drained_start=True)


@command("blockdev-backup", args=JOB_COMMON + BACKUP_COMMON + [Member("target", STR)])
def blockdev_backup(ctx, device, target, sync, job_id=None, speed=0, bitmap=None,
                    bitmap_mode=None, compress=False, on_source_error="report",
                    on_target_error="report", auto_finalize=True, auto_dismiss=True,
                    filter_node_name=None, x_perf=None):
    source = lookup(ctx, device)
    node = lookup(ctx, target)
    if node is source:
        raise QmpError("Source and target cannot be the same")
    check_busy(ctx, source, node)
    _start_backup(ctx, job_id, source, node, sync, speed, bitmap, bitmap_mode,
                  compress, auto_finalize, auto_dismiss)


@command("drive-backup", args=JOB_COMMON + BACKUP_COMMON + [
    Member("target", STR), Member("format", STR, True), Member("mode", NEW_IMAGE_MODE, True)])
def drive_backup(ctx, device, target, sync, job_id=None, speed=0, bitmap=None,
                 bitmap_mode=None, compress=False, on_source_error="report",
                 on_target_error="report", auto_finalize=True, auto_dismiss=True,
                 filter_node_name=None, x_perf=None, format=None, mode="absolute-paths"):
    source = lookup(ctx, device)
    check_busy(ctx, source)
    backing = source if sync == "none" else source.backing if sync == "top" else None
    node = new_image(ctx, target, format or source.driver, mode, source, backing, None)
    try:
        _start_backup(ctx, job_id, source, node, sync, speed, bitmap, bitmap_mode,
                      compress, auto_finalize, auto_dismiss)
    except QmpError:
        ctx.machine.block.discard_medium(node)
        raise
