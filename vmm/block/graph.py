"""The block node graph, as the monitor sees it: named nodes (a file protocol node,
a format node over it, its backing chain), opened from BlockdevOptions
(-blockdev, blockdev-add, and what -drive becomes).

Children defined inline inherit their parent's cache and read-only settings, and
backing images are opened read-only, as QEMU does. Nodes without a name get
QEMU's generated "#blockNNN" ones.
"""

from __future__ import annotations

import json
import os
import random
from dataclasses import dataclass, field
from typing import Any

from vmm.block import options as blockdev_options
from vmm.block.qcow2 import MAGIC as QCOW2_MAGIC
from vmm.block.qcow2 import Qcow2Image
from vmm.block.raw import RawFormat, RawImage
from vmm.errors import UserError

MAX_BACKING_DEPTH = 16
# QEMU's permission names, in its order, for the ones two users of a node can fight over
WRITE, RESIZE = "write", "resize"
PERMISSION_ORDER = ("consistent read", WRITE, "write unchanged", RESIZE)


@dataclass(eq=False)
class Use:
    """One user of a node (a parent node, or a device's drive), and the permissions it
    needs and will not share, as QEMU's permission system has them."""
    user: str                        # "node 'X'" or "block device '/machine/...'"
    role: str                        # file, backing, root
    required: frozenset[str]
    unshared: frozenset[str]
    parent: Node | None = None       # the node that is the user, for a backing link

    def refused(self) -> frozenset[str]:
        """What it will not share now. A backing image refuses writers only while
        its overlay is in use (QEMU derives it from the overlay's own users), so an
        unused overlay may sit on a disk a device writes (libvirt's backups do)."""
        if self.role == "backing" and self.parent is not None and \
                not self.parent.in_use():
            return frozenset()
        return self.unshared


@dataclass(eq=False)
class Node:
    name: str
    driver: str                      # file, host_device, raw, qcow2
    image: Any                       # what does its I/O (a BlockBackend)
    filename: str                    # as QEMU shows it: a path, or json:{...}
    read_only: bool
    direct: bool
    no_flush: bool
    detect_zeroes: str = "off"
    discard: str = "ignore"
    file: Node | None = None
    backing: Node | None = None
    options: dict = field(default_factory=dict)   # the full options, as opened
    write_threshold: int = 0         # block-set-write-threshold (vmm/block/write_threshold.py)
    users: int = 0                   # parent nodes and drives that use it
    uses: list[Use] = field(default_factory=list)  # what those users need of it
    # what watches the guest's writes to it: dirty bitmaps, mirror and backup jobs
    # (before_write(offset, length), after_write(offset, length))
    observers: list = field(default_factory=list)
    iothread: str | None = None      # x-blockdev-set-iothread (kvmkit runs I/O per device)

    def claim(self, use: Use) -> Use:
        """Adds a user, unless it needs what another will not share (or the other
        way round): then QEMU's "Permission conflict" error."""
        for other in self.uses:
            for needs, refuses in ((other, use), (use, other)):
                clash = needs.required & refuses.refused()
                if clash:
                    names = ", ".join(p for p in PERMISSION_ORDER if p in clash)
                    raise UserError(
                        f"Permission conflict on node '{self.name}': permissions '{names}' "
                        f"are both required by {needs.user} (uses node '{self.name}' as "
                        f"'{needs.role}' child) and unshared by {refuses.user} (uses node "
                        f"'{self.name}' as '{refuses.role}' child).")
        self.uses.append(use)
        return use

    def in_use(self) -> bool:
        """Whether a device uses it, directly or through the nodes above it."""
        return any(u.role == "root" or (u.parent is not None and u.parent.in_use())
                   for u in self.uses)

    def unclaim(self, use: Use) -> None:
        if use in self.uses:
            self.uses.remove(use)

    @property
    def size(self) -> int:
        if self.driver in ("file", "host_device"):
            return os.fstat(self.image.fd).st_size
        return self.image.size

    def allocated(self) -> int:
        """Bytes the host file takes on disk (the protocol node's)."""
        node = self
        while node.file is not None:
            node = node.file
        return os.fstat(node.image.fd).st_blocks * 512

    def chain(self) -> list[Node]:
        """It and its backing images, top first."""
        out, node = [], self
        while node is not None:
            out.append(node)
            node = node.backing
        return out

    def set_in_use(self, in_use: bool) -> None:
        """The image locks of every file under it, for a device using it or not."""
        for child in (self.file, self.backing):
            if child is not None:
                child.set_in_use(in_use)
        if self.driver in ("file", "host_device"):
            self.image.set_permissions(in_use)

    def set_read_only(self, read_only: bool) -> None:
        """Reopened read-only or writable (a commit's base, a snapshot's old top),
        with the file under it."""
        if read_only == self.read_only:
            return
        if self.file is not None:
            self.file.set_read_only(read_only)
        self.image.set_read_only(read_only)
        self.read_only = read_only

    def write_refused_by(self, writer: str) -> str | None:
        """Who, other than ``writer``, lets nobody write this node (a parent that
        reads it as its backing image): then it cannot be made writable."""
        return next((u.user for u in self.uses
                     if u.user != writer and WRITE in u.unshared), None)

    def bitmaps(self) -> list:
        from vmm.block.dirty_bitmap import DirtyBitmap

        return [o for o in self.observers if isinstance(o, DirtyBitmap)]

    def close(self) -> None:
        if self.driver == "qcow2":
            self._save_bitmaps()
        self.image.close()

    def _save_bitmaps(self) -> None:
        """The persistent bitmaps go back into the image (qcow2_bitmaps.py)."""
        from vmm.block import qcow2_bitmaps

        persistent = [b for b in self.bitmaps() if b.persistent]
        on_file = [s.name for s in self.image.stored_bitmaps]
        # QEMU's order: those the file had, as it had them, then new ones, newest first
        ordered = sorted((b for b in persistent if b.name in on_file),
                         key=lambda b: on_file.index(b.name)) + \
            [b for b in reversed(persistent) if b.name not in on_file]
        stored = [qcow2_bitmaps.StoredBitmap(
            b.name, b.granularity, (qcow2_bitmaps.AUTO if b.recording else 0) |
            (qcow2_bitmaps.IN_USE if b.inconsistent else 0), b.bits)
            for b in ordered]
        try:
            self.image.save_bitmaps(stored)
        except OSError:
            pass                        # left marked in_use in the file: inconsistent

    def load_bitmaps(self) -> None:
        """The bitmaps a qcow2 image holds become the node's."""
        from vmm.block.dirty_bitmap import DirtyBitmap

        for stored in self.image.stored_bitmaps:
            bitmap = DirtyBitmap(stored.name, self.image.size, stored.granularity,
                                 recording=stored.auto and not stored.inconsistent,
                                 persistent=True, inconsistent=stored.inconsistent)
            if not stored.inconsistent:     # QEMU loads no bits it cannot trust
                bitmap.bits[:] = stored.bits[:len(bitmap.bits)].ljust(len(bitmap.bits),
                                                                      b"\0")
            self.observers.append(bitmap)


class BlockGraph:
    def __init__(self) -> None:
        self.nodes: list[Node] = []          # in the order they were made
        self._counter = 0

    def find(self, name: str) -> Node | None:
        return next((node for node in self.nodes if node.name == name), None)

    def _auto_name(self) -> str:
        name = f"#block{self._counter}{random.randrange(100):02d}"
        self._counter += 1
        return name

    # -- opening -------------------------------------------------------------------
    def add(self, options: dict[str, Any]) -> Node:
        """-blockdev / blockdev-add: JSON options, checked, made a node tree."""
        options = blockdev_options.check(options)
        if "node-name" not in options:
            raise UserError("'node-name' must be specified for the root node")
        return self.open(options, inherited={})

    def open(self, options: dict[str, Any], inherited: dict[str, Any],
             seen: frozenset[str] = frozenset()) -> Node:
        """A node for checked options; ``inherited`` is what an inline child takes
        from its parent (read-only, cache, discard)."""
        name = options.get("node-name")
        if name is not None:
            _check_node_name(name)
            if self.find(name) is not None:
                raise UserError(f"Duplicate nodes with node-name='{name}'")
        cache = {**inherited.get("cache", {}), **options.get("cache", {})}
        direct, no_flush = cache.get("direct", False), cache.get("no-flush", False)
        read_only = options.get("read-only", inherited.get("read-only", False))
        discard = options.get("discard", inherited.get("discard", "ignore"))
        detect_zeroes = options.get("detect-zeroes", "off")
        if detect_zeroes == "unmap" and discard != "unmap":
            detect_zeroes = "on"             # QEMU unmaps only where discards reach the file
        driver = options["driver"]
        child_inherits = {"read-only": read_only, "cache": cache, "discard": discard}
        file_node = None
        if driver in ("file", "host_device"):
            filename = options["filename"]
            image = self._open_file(filename, options, read_only, discard, direct, no_flush)
            shown = filename
        else:
            file_node = self._child(options["file"], child_inherits, seen)
            try:
                if driver == "raw":
                    image = RawFormat(file_node.image, options.get("offset", 0),
                                      options.get("size"))
                else:
                    image = Qcow2Image(file_node.image, read_only,
                                       unmap=discard == "unmap" and
                                       options.get("pass-discard-request", True))
            except BaseException:
                self._release(file_node)
                raise
            shown = self._shown_filename(options, file_node, None)
        # the node is named, and listed, before its backing chain is opened (QEMU's order)
        node = Node(name or self._auto_name(), driver, image, shown, read_only, direct,
                    no_flush, detect_zeroes, discard, file_node, None, options)
        if file_node is not None:
            try:
                file_node.claim(self._file_use(node))
            except UserError:
                image.close()
                self._release(file_node)
                raise
        self.nodes.append(node)
        if driver == "qcow2":
            node.load_bitmaps()
            try:
                node.backing = self._open_backing(options, image, file_node, child_inherits,
                                                  seen)
                if node.backing is not None:     # a backing image: read, and kept as it is
                    node.backing.claim(Use(f"node '{node.name}'", "backing", frozenset(),
                                           frozenset((WRITE, RESIZE)), node))
            except BaseException:
                self.nodes.remove(node)
                image.close()
                if node.backing is not None:
                    self._release(node.backing)
                self._unclaim_all(file_node, node)
                file_node.users -= 1
                self._drop_anonymous(file_node)
                raise
            image.backing = node.backing.image if node.backing is not None else None
            node.filename = self._shown_filename(options, file_node, node.backing)
        return node

    def _open_file(self, filename: str, options: dict, read_only: bool, discard: str,
                   direct: bool, no_flush: bool) -> RawImage:
        aio = options.get("aio", "threads")
        if aio == "native" and not direct:
            raise UserError("aio=native was specified, but it requires cache.direct=on, "
                            "which was not specified.")
        try:
            return RawImage(filename, read_only, unmap=discard == "unmap", direct=direct,
                            no_flush=no_flush, locking=options.get("locking", "auto") != "off")
        except OSError as e:
            raise UserError(f"Could not open '{filename}': {e.strerror}") from None

    @staticmethod
    def _file_use(node: Node) -> Use:
        """What a format node needs of its file: qcow2 writes its metadata (when it
        is writable) and lets nobody else write or resize under it; raw passes on
        only what its own users need (a device adds that when it attaches)."""
        user = f"node '{node.name}'"
        if node.driver == "qcow2":
            required = frozenset() if node.read_only else frozenset((WRITE, RESIZE))
            return Use(user, "file", required, frozenset((WRITE, RESIZE)))
        return Use(user, "file", frozenset(), frozenset())

    @staticmethod
    def _unclaim_all(child: Node, parent: Node) -> None:
        for use in [u for u in child.uses if u.user == f"node '{parent.name}'"]:
            child.unclaim(use)

    def _child(self, ref: Any, inherited: dict, seen: frozenset[str]) -> Node:
        if isinstance(ref, str):
            node = self.find(ref)
            if node is None:
                raise UserError(f"Cannot find device='{ref}' nor node-name='{ref}'")
        else:
            node = self.open(ref, inherited, seen)
        node.users += 1
        return node

    def _open_backing(self, options: dict, image: Qcow2Image, file_node: Node,
                      inherited: dict, seen: frozenset[str]) -> Node | None:
        inherited = {**inherited, "read-only": True}
        if "backing" in options:
            ref = options["backing"]
            return None if ref is None else self._child(ref, inherited, seen)
        if not image.backing_file:
            return None
        path = self.backing_path(file_node, image.backing_file)
        real = os.path.realpath(path)
        top = os.path.realpath(file_node.filename) if file_node.driver == "file" else ""
        if real in seen or real == top:
            raise UserError(f"Backing file '{image.backing_file}' creates an infinite loop.")
        if len(seen) >= MAX_BACKING_DEPTH:
            raise UserError("Backing chain too deep")
        fmt = image.backing_format or probe_format(path)
        child = {"driver": fmt, "file": {"driver": "file", "filename": path}}
        try:
            return self._child(blockdev_options.check(child), inherited, seen | {top, real})
        except UserError as e:
            raise UserError(f"Could not open backing file: {e}") from None

    @staticmethod
    def backing_path(file_node: Node, backing: str) -> str:
        """A relative backing file name is relative to the image's directory."""
        if os.path.isabs(backing) or file_node.driver not in ("file", "host_device"):
            return backing
        return os.path.join(os.path.dirname(file_node.filename), backing)

    @staticmethod
    def _shown_filename(options: dict, file_node: Node, backing: Node | None) -> str:
        """The file's name, or QEMU's json:{...} when options change what it reads."""
        if "backing" in options and options["backing"] is not None and \
                isinstance(options["backing"], dict):
            described = {"backing": describe(backing), "driver": options["driver"],
                         "file": describe(file_node)}
            return "json:" + json.dumps(described)
        return file_node.filename

    def set_backing(self, node: Node, backing: Node | None) -> None:
        """The node now reads through ``backing`` (a block job or snapshot changed the
        chain); the old backing image goes unless something else uses it."""
        old = node.backing
        if backing is old:
            return
        if backing is not None:
            backing.users += 1
            backing.claim(Use(f"node '{node.name}'", "backing", frozenset(),
                              frozenset((WRITE, RESIZE)), node))
        node.backing = backing
        node.image.backing = backing.image if backing is not None else None
        if old is not None:
            for use in [u for u in old.uses
                        if u.user == f"node '{node.name}'" and u.role == "backing"]:
                old.unclaim(use)
            self._release(old)

    def open_image(self, filename: str, fmt: str | None, node_name: str | None = None,
                   backing: Node | None | bool = True, **extra: Any) -> Node:
        """An image file opened as a node: a snapshot overlay, a mirror's or
        backup's target. ``backing``: True reads the image's own backing file, a
        node (or None) replaces it."""
        options: dict[str, Any] = {"driver": fmt or probe_format(filename),
                                   "file": {"driver": "file", "filename": filename}, **extra}
        if node_name is not None:
            options["node-name"] = node_name
        if backing is not True and options["driver"] == "qcow2":
            options["backing"] = backing.name if backing is not None else None
        return self.open(blockdev_options.check(options), inherited={})

    # -- dropping ------------------------------------------------------------------
    def delete(self, name: str) -> None:
        """blockdev-del: a node nothing uses, with the children only it used."""
        node = self.find(name)
        if node is None:
            raise UserError(f"Failed to find node with node-name='{name}'")
        if node.users:
            raise UserError(f"Block device {name} is in use")
        if "node-name" not in node.options:
            raise UserError(f"Node {name} is not owned by the monitor")
        self._remove(node)

    def _remove(self, node: Node) -> None:
        node.close()
        self.nodes.remove(node)
        for child in (node.file, node.backing):
            if child is not None:
                self._unclaim_all(child, node)
                self._release(child)

    def _release(self, node: Node) -> None:
        node.users -= 1
        self._drop_anonymous(node)

    def _drop_anonymous(self, node: Node) -> None:
        """Nodes made inline for a parent go with it; named ones stay for blockdev-del."""
        if not node.users and "node-name" not in node.options and node in self.nodes:
            self._remove(node)

    def release(self, node: Node) -> None:
        """A drive lets go of its root node."""
        self._release(node)

    def close(self) -> None:
        for node in reversed(self.nodes):
            try:
                node.close()
            except OSError:
                pass
        self.nodes.clear()


def describe(node: Node | None) -> Any:
    if node is None:
        return None
    if node.driver in ("file", "host_device"):
        return {"driver": node.driver, "filename": node.filename}
    out: dict[str, Any] = {"driver": node.driver, "file": describe(node.file)}
    if node.backing is not None and isinstance(node.options.get("backing"), dict):
        out = {"backing": describe(node.backing), **out}      # only what options changed
    return out


def _check_node_name(name: str) -> None:
    if not name or len(name) > 31 or not (name[0].isalpha()) or \
            not all(c.isalnum() or c in "-._" for c in name):
        raise UserError("Invalid node-name: '" + name + "'")


def probe_format(path: str) -> str:
    """The format an image's first bytes say (qcow2), else raw."""
    try:
        with open(path, "rb") as f:
            head = f.read(4)
    except OSError as e:
        raise UserError(f"Could not open '{path}': {e.strerror}") from None
    return "qcow2" if head == QCOW2_MAGIC else "raw"
