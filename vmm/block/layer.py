"""The machine's block layer: the node graph, the drives over it, and throttle
groups. -drive and -blockdev options become nodes and drives here, and the block
commands find them here.
"""

from __future__ import annotations

import json
import os
import sys
import tempfile
from typing import Any

from vmm.block import options as blockdev_options
from vmm.block.drive import CACHE_MODES, Drive
from vmm.block.graph import WRITE, BlockGraph, Node, Use, describe, probe_format
from vmm.block.qcow2 import create
from vmm.block.throttle import LIMITS, ThrottleConfig, ThrottleGroup
from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_bool, parse_int

# -drive discard= values, as QEMU spells and means them
DISCARD_MODES = {"ignore": "ignore", "off": "ignore", "unmap": "unmap", "on": "unmap"}
ERROR_ACTIONS = ("ignore", "report", "enospc", "stop")     # werror=; rerror= has no enospc
# -drive's own options; anything else is an option of the format or file node
DRIVE_OPTIONS = {"file", "format", "if", "id", "cache", "aio", "discard", "detect-zeroes",
                 "readonly", "read-only", "werror", "rerror", "snapshot", "media", "index",
                 "bus", "unit", "copy-on-read", "auto-read-only", "force-share", "node-name"}
THROTTLE_PREFIX = "throttling."
_SHORT_THROTTLE = {"bps": "bps-total", "bps_rd": "bps-read", "bps_wr": "bps-write",
                   "iops": "iops-total", "iops_rd": "iops-read", "iops_wr": "iops-write"}


class BlockLayer:
    def __init__(self) -> None:
        self.graph = BlockGraph()
        self.drives: list[Drive] = []            # named ones first come, then anonymous
        self.groups: dict[str, ThrottleGroup] = {}
        self.object_groups: set[str] = set()     # -object throttle-group: kept when empty
        self._temporaries: list[str] = []        # -snapshot overlays, removed at close
        # Inactive while another process owns the images (an incoming migration's
        # source): devices attach without taking the images' write locks.
        self.active = True

    def find_drive(self, name: str) -> Drive | None:
        return next((d for d in self.drives if d.name and d.name == name), None)

    # -- -blockdev and blockdev-add ------------------------------------------------------
    def add_blockdev(self, options: dict[str, Any]) -> Node:
        return self.graph.add(options)

    def delete_blockdev(self, name: str) -> None:
        node = self.graph.find(name)
        if node is not None and any(d.root is node for d in self.drives):
            raise UserError(f"Node {name} is in use")
        self.graph.delete(name)

    # -- -drive ------------------------------------------------------------------------
    def add_drive(self, opts: dict[str, str], default_id: str,
                  snapshot: bool = False) -> Drive:
        """A drive from -drive options (or HMP drive_add's)."""
        opts = dict(opts)
        drive_id = opts.pop("id", None) or default_id
        if self.find_drive(drive_id) is not None:
            raise UserError(f"Duplicate ID '{drive_id}' for drive")
        cache = opts.pop("cache", "writeback")
        if cache not in CACHE_MODES:
            raise UserError("invalid cache option")
        writeback, direct, no_flush = CACHE_MODES[cache]
        discard = opts.pop("discard", "ignore")
        if discard not in DISCARD_MODES:
            raise UserError("Invalid discard option")
        read_only = _bool(opts, "readonly", False)
        read_only = _bool(opts, "read-only", False) or read_only     # (both taken out)
        snapshot = _bool(opts, "snapshot", snapshot)
        werror = opts.pop("werror", "enospc")
        rerror = opts.pop("rerror", "report")
        if werror not in ERROR_ACTIONS:
            raise UserError(f"'{werror}' invalid write error action")
        if rerror not in ERROR_ACTIONS or rerror == "enospc":
            raise UserError(f"'{rerror}' invalid read error action")
        throttle = self._throttle_from_opts(opts)
        group = opts.pop(THROTTLE_PREFIX + "group", None) or drive_id
        for key in ("if", "media", "index", "bus", "unit"):
            opts.pop(key, None)                   # the interface: config.py's business
        if "file" not in opts and not any(k.startswith("file.") for k in opts):
            if "format" in opts:
                raise UserError("A block device must be specified for \"file\"")
            drive = Drive(drive_id, None, cache_writeback=writeback, werror=werror,
                          rerror=rerror)            # a drive with no medium (a CD-ROM's)
            drive.medium_read_only = read_only
            self.drives.append(drive)
            return drive
        path = opts.pop("file", None)
        fmt = opts.pop("format", None)
        if fmt is not None and fmt not in ("raw", "qcow2"):
            raise UserError(f"Unknown driver '{fmt}'")
        if fmt is None and path is not None:
            fmt = probe_format(path)
            if fmt == "raw" and not read_only:      # only writes to block 0 are at risk
                print(f"WARNING: Image format was not specified for '{path}' and probing "
                      "guessed raw.\n         Automatically detecting the format is "
                      "dangerous for raw images, write operations on block 0 will be "
                      "restricted.\n         Specify the 'raw' format explicitly to remove "
                      "the restrictions.", file=sys.stderr)
        node_opts: dict[str, Any] = {"driver": fmt or "raw"}
        file_opts = {"driver": "file", "filename": path} if path is not None else {}
        for key, value in list(opts.items()):
            if key.startswith("file."):
                file_opts[key[5:]] = value
            elif key in ("aio", "locking"):
                file_opts[key] = value
            elif key in ("detect-zeroes", "auto-read-only", "force-share", "node-name") or \
                    key.startswith("cache."):
                node_opts[key] = value
            else:
                raise UserError(f"Block format '{node_opts['driver']}' does not support "
                                f"the option '{key}'")
        node_opts["file"] = file_opts
        node_opts["cache"] = {"direct": direct, "no-flush": no_flush}
        node_opts["discard"] = DISCARD_MODES[discard]
        node_opts["read-only"] = read_only or snapshot     # -snapshot: writes go above
        node_opts = blockdev_options.check(blockdev_options.from_keyval(
            _flatten(node_opts)))
        node = self.graph.open(node_opts, inherited={})
        if snapshot and not read_only:
            node = self._snapshot_overlay(node)
        drive = Drive(drive_id, node, cache_writeback=writeback, werror=werror,
                      rerror=rerror)
        drive.medium_read_only = read_only
        self.drives.append(drive)
        if throttle.enabled:     # (a group named without limits is not joined, as QEMU's)
            self.set_throttle(drive, throttle, group)
        return drive

    def add_throttle_group(self, name: str, values: dict[str, int]) -> None:
        """-object throttle-group,id=NAME,x-...: limits that drives join by name."""
        config = ThrottleConfig(values)
        config.check()
        self.groups[name] = ThrottleGroup(name, config)
        self.object_groups.add(name)

    def remove_throttle_group(self, name: str) -> None:
        self.object_groups.discard(name)
        group = self.groups.get(name)
        if group is not None and not group.members:
            del self.groups[name]

    def _snapshot_overlay(self, base: Node) -> Node:
        """-snapshot: writes go to a temporary qcow2 over the image, removed at exit."""
        handle, path = tempfile.mkstemp(prefix="vl.", dir=os.environ.get("TMPDIR",
                                                                          "/var/tmp"))
        os.close(handle)
        self._temporaries.append(path)
        create(path, base.image.size)
        options = {"driver": "qcow2", "file": {"driver": "file", "filename": path},
                   "backing": base.name,
                   "cache": {"direct": base.direct, "no-flush": True}}
        base.users += 1
        overlay = self.graph.open(blockdev_options.check(options), inherited={})
        overlay.filename = "json:" + json.dumps({      # as QEMU names it
            "backing": describe(base), "driver": "qcow2", "file": describe(overlay.file)})
        return overlay

    def empty_drive(self) -> Drive:
        """An anonymous drive with no medium, for a CD-ROM given none."""
        drive = Drive("", None, cache_writeback=True)
        self.drives.append(drive)
        return drive

    def backend_for(self, name: str) -> Drive | None:
        """-device drive=NAME: the drive of that id, or an anonymous one made for the
        node of that name."""
        drive = self.find_drive(name)
        if drive is not None:
            return drive
        node = self.graph.find(name)
        if node is None:
            return None
        if any(d.root is node for d in self.drives):
            return next(d for d in self.drives if d.root is node)
        drive = Drive("", node, cache_writeback=True)
        self.drives.append(drive)
        return drive

    def attach(self, drive: Drive, qom_path: str) -> None:
        """A device takes the drive: it needs to write (unless read-only) and lets
        no one else write (share-rw=off), down through raw nodes, which pass their
        users' needs on; its images are locked for that use."""
        self._claim(drive, qom_path)
        drive.attached_to = qom_path

    def _claim(self, drive: Drive, qom_path: str) -> None:
        if drive.root is not None:
            required = frozenset() if drive.read_only else frozenset((WRITE,))
            user, role, node = f"block device '{qom_path}'", "root", drive.root
            claims: list[tuple[Node, Use]] = []
            try:
                while node is not None:
                    claims.append((node, node.claim(Use(user, role, required,
                                                        frozenset((WRITE,))))))
                    if node.driver != "raw":
                        break
                    user, role, node = f"node '{node.name}'", "file", node.file
                if self.active:
                    drive.root.set_in_use(True)
            except UserError:
                for claimed, use in claims:
                    claimed.unclaim(use)
                raise
            drive.claims = claims

    # -- removable media (a CD-ROM's tray) ------------------------------------------------
    def open_medium(self, filename: str, fmt: str | None, read_only: bool) -> Node:
        """blockdev-change-medium's image, opened as -drive opens one."""
        if fmt is not None and fmt not in ("raw", "qcow2"):
            raise UserError(f"Unknown driver '{fmt}'")
        options = {"driver": fmt or probe_format(filename),
                   "file": {"driver": "file", "filename": filename}, "read-only": read_only}
        return self.graph.open(blockdev_options.check(options), inherited={})

    def discard_medium(self, node: Node) -> None:
        """An image open_medium opened that no drive took."""
        node.users += 1
        self.graph.release(node)

    def insert_medium(self, drive: Drive, node: Node) -> None:
        """The node becomes the drive's medium, claimed for its device."""
        node.users += 1
        drive.root = node
        try:
            if drive.attached_to:
                self._claim(drive, drive.attached_to)
        except UserError:
            drive.root = None
            self.graph.release(node)
            raise

    def remove_medium(self, drive: Drive) -> None:
        """The drive's medium goes (its node, unless named, is closed)."""
        root = drive.root
        if root is None:
            return
        for node, use in drive.claims:
            node.unclaim(use)
        drive.claims = []
        if drive.attached_to:
            root.set_in_use(False)
        drive.root = None
        self.graph.release(root)

    def detach(self, drive: Drive) -> None:
        """Its device is gone: an anonymous drive goes with it (a named one stays
        until drive_del)."""
        drive.attached_to = ""
        drive.on_resize = None
        for node, use in drive.claims:
            node.unclaim(use)
        drive.claims = []
        if drive.root is not None:
            drive.root.set_in_use(False)
        if not drive.name and drive in self.drives:
            self.remove_drive(drive)

    def remove_drive(self, drive: Drive) -> None:
        self._leave_group(drive)
        self.drives.remove(drive)
        if drive.root is not None:
            self.graph.release(drive.root)

    def switch_root(self, drive: Drive, node: Node) -> None:
        """The drive's device now does its I/O on ``node`` (a mirror's target, a
        snapshot's overlay, a commit's base): the device's claims and image locks
        move to it, and the old root goes unless something else uses it."""
        old, old_claims = drive.root, drive.claims
        for claimed, use in old_claims:
            claimed.unclaim(use)
        drive.claims = []
        node.users += 1
        drive.root = node
        try:
            if drive.attached_to:
                self._claim(drive, drive.attached_to)
        except UserError:
            node.users -= 1
            drive.root, drive.claims = old, old_claims
            for claimed, use in old_claims:
                claimed.uses.append(use)
            raise
        if old is not None and drive.attached_to and self.active and \
                old not in node.chain():
            old.set_in_use(False)
        if old is not None:
            self.graph.release(old)

    def drive_of(self, node: Node) -> Drive | None:
        return next((d for d in self.drives if d.root is node), None)

    def drive_of_device(self, device) -> Drive | None:
        """The drive a device (by its entry in the device list) has attached."""
        return next((d for d in self.drives if d.attached_to and
                     d.attached_to.split("/")[3:4] == [device.id]), None)

    def drive_del(self, name: str) -> None:
        """HMP drive_del: the drive and its images go; a device using it stays, with
        no medium (its requests fail), as QEMU leaves it."""
        drive = self.find_drive(name)
        if drive is None:
            raise UserError(f"Device '{name}' not found")
        if not drive.attached_to:
            self.remove_drive(drive)
            return
        self._leave_group(drive)
        for node, use in drive.claims:
            node.unclaim(use)
        drive.claims = []
        root, drive.root, drive.name = drive.root, None, ""
        if root is not None:
            self.graph.release(root)

    def resize(self, node: Node, size: int) -> None:
        """block_resize: a node grows or shrinks; a device on it tells its guest."""
        if node.read_only:
            raise UserError("Image is read-only")
        try:
            node.image.truncate(size)
        except OSError as e:
            raise UserError(f"Could not resize: {e.strerror}") from None
        for bitmap in node.bitmaps():
            bitmap.resize(size)
        for drive in self.drives:
            if drive.root is node and drive.on_resize is not None:
                drive.on_resize()

    # -- throttling ---------------------------------------------------------------------
    @staticmethod
    def _throttle_from_opts(opts: dict[str, str]) -> ThrottleConfig:
        values: dict[str, int] = {}
        names = {opt: short for opt, short in LIMITS}
        for key in list(opts):
            option = key[len(THROTTLE_PREFIX):] if key.startswith(THROTTLE_PREFIX) else \
                _SHORT_THROTTLE.get(key.replace("-", "_"), "") if key in (
                    "bps", "bps_rd", "bps_wr", "iops", "iops_rd", "iops_wr") else ""
            if not option or option == "group":
                continue
            text = opts.pop(key)
            base, _, suffix = option.partition("-max")
            if option == "iops-size":
                short = "iops_size"
            elif base in names:
                short = names[base] + ("_max" if suffix == "" and option != base else "") + \
                    ("_max_length" if suffix == "-length" else "")
            else:
                raise UserError(f"Invalid parameter '{key}'")
            try:
                values[short] = parse_int(key, text)
            except OptsError:
                raise UserError(f"Parameter '{key}' expects a number") from None
        config = ThrottleConfig(values)
        config.check()
        return config

    def set_throttle(self, drive: Drive, config: ThrottleConfig, group: str | None) -> None:
        """block_set_io_throttle: the limits of the drive's group (a new group of its
        own name by default); all zero takes the drive out of throttling."""
        config.check()
        if not config.enabled:
            self._leave_group(drive)
            return
        name = group or (drive.throttle.name if drive.throttle is not None else
                         drive.name or drive.root.name)
        if drive.throttle is not None and drive.throttle.name != name:
            self._leave_group(drive)
        target = self.groups.get(name)
        if target is None:
            target = self.groups[name] = ThrottleGroup(name, config)
        else:
            target.configure(config)
        target.members.add(drive)
        drive.throttle = target

    def _leave_group(self, drive: Drive) -> None:
        group = drive.throttle
        if group is None:
            return
        group.members.discard(drive)
        drive.throttle = None
        if not group.members and group.name not in self.object_groups:
            del self.groups[group.name]

    def inactivate(self) -> None:
        """The end of an outgoing migration: caches flushed, write locks let go, so
        the destination takes the images over (QEMU's bdrv_inactivate_all)."""
        self.flush_all()
        for drive in self.drives:
            if drive.attached_to and drive.root is not None:
                drive.root.set_in_use(False)
        self.active = False

    def activate(self) -> None:
        """This process owns the images again: locks taken, metadata read anew.
        UserError if another process still holds them."""
        if self.active:
            return
        for drive in self.drives:
            if drive.attached_to and drive.root is not None:
                drive.root.set_in_use(True)
                for node in drive.root.chain():
                    invalidate = getattr(node.image, "invalidate_cache", None)
                    if invalidate is not None:
                        invalidate()
        self.active = True

    def flush_all(self) -> None:
        """Every attached drive's cached writes to its file (migration hands the
        files to another process)."""
        for drive in self.drives:
            if drive.attached_to and drive.root is not None and not drive.read_only:
                try:
                    drive.flush()
                except OSError:
                    pass                 # an error the guest's own flush will meet

    def close(self) -> None:
        self.graph.close()
        for path in self._temporaries:
            try:
                os.unlink(path)
            except OSError:
                pass


def _bool(opts: dict[str, str], key: str, default: bool) -> bool:
    if key not in opts:
        return default
    try:
        return parse_bool(key, opts.pop(key))
    except OptsError as e:
        raise UserError(str(e)) from None


def _flatten(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in options.items():
        if isinstance(value, dict):
            out.update(_flatten(value, f"{prefix}{key}."))
        else:
            out[prefix + key] = value if isinstance(value, str) else \
                ("on" if value is True else "off" if value is False else str(value))
    return out
