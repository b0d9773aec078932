"""Removable media: eject, blockdev-open-tray, blockdev-close-tray,
blockdev-remove-medium, blockdev-insert-medium and blockdev-change-medium, with
QEMU 7.2's rules and messages, and DEVICE_TRAY_MOVED when a tray moves.

A drive's medium is its root node; a device with a tray (ide-cd) says whether
the tray is open and locked (vmm/devices/atapi.py). A locked tray is not opened:
the guest is asked to eject (it sees an eject request) unless ``force``.
A drive no device uses has no tray: its medium may be changed at will.
"""

from __future__ import annotations

from monitor.commands.devices import find_device
from monitor.errors import QmpError, device_not_found
from monitor.registry import REGISTRY, command
from monitor.types import BOOL, STR, Enum, Member
from vmm.block.drive import Drive
from vmm.errors import UserError

REGISTRY.event("DEVICE_TRAY_MOVED", [Member("device", STR), Member("id", STR),
                                     Member("tray-open", BOOL)])
READ_ONLY_MODE = Enum("BlockdevChangeReadOnlyMode", ("retain", "read-only", "read-write"))


class _Pending(QmpError):
    """The tray is locked: the guest was asked to open it (QEMU's -EINPROGRESS)."""


def _drive(ctx, device: str | None, qdev_id: str | None) -> Drive:
    if (device is None) == (qdev_id is None):
        raise QmpError("Need exactly one of 'device' and 'id'")
    block = ctx.machine.block
    if device is not None:
        drive = block.find_drive(device)
        if drive is None:
            raise device_not_found(device)
        return drive
    found = find_device(ctx.machine, qdev_id)
    path = ctx.machine.devices.path(found)
    drive = next((d for d in block.drives if d.attached_to and d.attached_to == path), None)
    if drive is None:
        raise QmpError("Device does not have a block device backend")
    return drive


def _tray_moved(ctx, drive: Drive, was_open: bool) -> None:
    media = drive.media
    if media is not None and media.tray_open != was_open:
        ctx.machine.emit("DEVICE_TRAY_MOVED", media.tray_event(media.tray_open))


def _change_media(ctx, drive: Drive, load: bool) -> None:
    media = drive.media
    was_open = media.tray_open
    with ctx.machine.lock:
        media.change_media(load)
    _tray_moved(ctx, drive, was_open)


def _open_tray(ctx, drive: Drive, name: str, force: bool) -> None:
    """Raises QmpError if the drive cannot take media, _Pending if a locked tray was
    asked to open; returns quietly for a tray-less drive (nothing to open)."""
    if drive.attached_to and drive.media is None:
        raise QmpError(f"Device '{name}' is not removable")
    media = drive.media
    if media is None or media.tray_open:
        return
    locked = media.locked
    if locked:
        with ctx.machine.lock:
            media.eject_request(force)
    if not locked or force:
        _change_media(ctx, drive, False)
    if locked and not force:
        raise _Pending(f"Device '{name}' is locked and force was not specified, "
                       "wait for tray to open and try again")


def _remove_medium(ctx, drive: Drive, name: str) -> None:
    if drive.attached_to and drive.media is None:
        raise QmpError(f"Device '{name}' is not removable")
    if drive.media is not None and not drive.media.tray_open:
        raise QmpError(f"Tray of device '{name}' is not open")
    if drive.root is not None:
        with ctx.machine.lock:
            ctx.machine.block.remove_medium(drive)


def _insert_medium(ctx, drive: Drive, node) -> None:
    if drive.attached_to and drive.media is None:
        raise QmpError("Device is not removable")
    if drive.media is not None and not drive.media.tray_open:
        raise QmpError("Tray of the device is not open")
    if drive.root is not None:
        raise QmpError("There already is a medium in the device")
    with ctx.machine.lock:
        ctx.machine.block.insert_medium(drive, node)


def _close_tray(ctx, drive: Drive) -> None:
    if drive.media is not None and drive.media.tray_open:
        _change_media(ctx, drive, True)


_DEVICE_OR_ID = [Member("device", STR, True), Member("id", STR, True)]


@command("eject", args=_DEVICE_OR_ID + [Member("force", BOOL, True)])
def eject(ctx, device=None, id=None, force=False):
    drive = _drive(ctx, device, id)
    name = id or device
    _open_tray(ctx, drive, name, bool(force))
    _remove_medium(ctx, drive, name)
    return {}


@command("blockdev-open-tray", args=_DEVICE_OR_ID + [Member("force", BOOL, True)])
def blockdev_open_tray(ctx, device=None, id=None, force=False):
    drive = _drive(ctx, device, id)
    try:
        _open_tray(ctx, drive, id or device, bool(force))
    except _Pending:
        pass                      # the guest was asked; QMP reports success, as QEMU
    return {}


@command("blockdev-close-tray", args=_DEVICE_OR_ID)
def blockdev_close_tray(ctx, device=None, id=None):
    drive = _drive(ctx, device, id)
    if drive.attached_to and drive.media is None:
        raise QmpError(f"Device '{id or device}' is not removable")
    _close_tray(ctx, drive)
    return {}


@command("blockdev-remove-medium", args=[Member("id", STR)])
def blockdev_remove_medium(ctx, id):
    _remove_medium(ctx, _drive(ctx, None, id), id)
    return {}


@command("blockdev-insert-medium", args=[Member("id", STR), Member("node-name", STR)])
def blockdev_insert_medium(ctx, id, node_name):
    drive = _drive(ctx, None, id)
    block = ctx.machine.block
    node = block.graph.find(node_name)
    if node is None:
        raise QmpError(f"Node '{node_name}' not found")
    if any(d.root is node for d in block.drives):
        raise QmpError(f"Node '{node_name}' is already in use")
    _insert_medium(ctx, drive, node)
    return {}


@command("blockdev-change-medium", args=_DEVICE_OR_ID + [
    Member("filename", STR), Member("format", STR, True), Member("force", BOOL, True),
    Member("read-only-mode", READ_ONLY_MODE, True)])
def blockdev_change_medium(ctx, device=None, id=None, filename="", format=None,
                           force=False, read_only_mode=None):
    drive = _drive(ctx, device, id)
    name = id or device
    mode = read_only_mode or "retain"
    read_only = drive.medium_read_only if mode == "retain" else mode == "read-only"
    try:
        node = ctx.machine.block.open_medium(filename, format, read_only)
    except UserError as e:
        raise QmpError.of(e) from None
    try:
        _open_tray(ctx, drive, name, bool(force))
        _remove_medium(ctx, drive, name)
        _insert_medium(ctx, drive, node)
    except QmpError:
        ctx.machine.block.discard_medium(node)
        raise
    _close_tray(ctx, drive)
    return {}
