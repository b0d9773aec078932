"""User-creatable objects: -object and object-add, as QEMU's /objects/ID.

Each type lists its properties once (name, QOM type, description); that list
checks -object text and JSON with QEMU's messages and answers
qom-list-properties. What kvmkit does with each object:

- memory-backend-ram, -file and -memfd: guest RAM (``-machine memory-backend=``),
  anonymous, from a file or from a memfd, shared or private (vmm/memory.py);
- secret: bytes other objects read by id (QEMU's masterKey0, LUKS passwords);
- iothread: a thread of its own, as QEMU's (query-iothreads names it); no device
  runs its I/O there yet: kvmkit's block and net I/O have their own workers;
- rng-random and rng-builtin: where virtio-rng's bytes come from;
- throttle-group: a group that outlives its drives; a drive joining it with
  throttling.group=ID (and limits) sets the group's limits, as in QEMU.
"""

from __future__ import annotations

import base64
import errno
import mmap
import os
import re
import threading
from dataclasses import dataclass, field
from typing import Any

from vmm.errors import DEVICE_NOT_FOUND, UserError
from vmm.memory import RamBacking
from vmm.qdev import ID_HINT
from vmm.qemuopts import OptsError, parse_size, split_opts

IDENTIFIER = re.compile(r"[A-Za-z][A-Za-z0-9_.-]*")
INT64_MAX = (1 << 63) - 1


class ObjectError(UserError):
    """An -object/object-add error, in QEMU's words."""


@dataclass(frozen=True)
class ObjectProp:
    name: str
    type: str                   # QOM's: string, bool, int (sizes too), uint64, or an enum
    description: str = ""
    kind: str = ""              # how text is read: size, int64, uint64 (default: by type)
    values: tuple[str, ...] = ()    # an enum's values


@dataclass
class UserObject:
    """One object: its type, id, the properties given (with their defaults) and
    what it holds (an open file, a RAM backing, bytes)."""
    qom_type: str
    id: str
    props: dict[str, Any]
    resource: Any = None
    used_by: str | None = None      # what uses it (machine RAM): object-del refuses then
    fds: list[int] = field(default_factory=list)

    def close(self) -> None:
        if isinstance(self.resource, IoThread):
            self.resource.stop()
        for fd in self.fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.fds.clear()


class IoThread:
    """An iothread object's thread: it waits for work (none is given to it yet)."""

    def __init__(self, name: str) -> None:
        self._stopped = threading.Event()
        self._started = threading.Event()
        self.thread_id = 0
        self._thread = threading.Thread(target=self._run, name=f"IO {name}", daemon=True)
        self._thread.start()
        self._started.wait()

    def _run(self) -> None:
        self.thread_id = threading.get_native_id()
        self._started.set()
        self._stopped.wait()

    def stop(self) -> None:
        self._stopped.set()


_BACKEND = (                                     # (in the order of QEMU's schema)
    ObjectProp("dump", "bool", "Set to 'off' to exclude from core dump"),
    ObjectProp("host-nodes", "uint16List", "Binds memory to the list of NUMA host nodes"),
    ObjectProp("merge", "bool", "Mark memory as mergeable"),
    ObjectProp("policy", "HostMemPolicy", "Set the NUMA policy",
               values=("default", "preferred", "bind", "interleave")),
    ObjectProp("prealloc", "bool", "Preallocate memory"),
    ObjectProp("prealloc-threads", "uint32", "Number of CPU threads to use for prealloc",
               "uint64"),
    ObjectProp("prealloc-context", "link<thread-context>",
               "Context to use for creating CPU threads for preallocation"),
    ObjectProp("share", "bool", "Mark the memory as private to QEMU or shared"),
    ObjectProp("reserve", "bool", "Reserve swap space (or huge pages) if applicable"),
    ObjectProp("size", "int", "Size of the memory region (ex: 500M)", "size"),
    ObjectProp("x-use-canonical-path-for-ramblock-id", "bool"),
)
THROTTLE_LIMITS = ("iops-total", "iops-read", "iops-write", "bps-total", "bps-read",
                   "bps-write")                          # (QEMU's ThrottleLimits order)
TYPES: dict[str, tuple[ObjectProp, ...]] = {
    "memory-backend-ram": _BACKEND,
    "memory-backend-file": _BACKEND + (
        ObjectProp("mem-path", "string"), ObjectProp("discard-data", "bool")),
    "memory-backend-memfd": _BACKEND + (
        ObjectProp("hugetlb", "bool", "Use huge pages"),
        ObjectProp("seal", "bool", "Seal growing & shrinking"),
        ObjectProp("hugetlbsize", "int", "Huge pages size (ex: 2M, 1G)", "size")),
    "secret": (
        ObjectProp("loaded", "bool"), ObjectProp("format", "QCryptoSecretFormat",
                                                 values=("raw", "base64")),
        ObjectProp("keyid", "string"), ObjectProp("iv", "string"),
        ObjectProp("data", "string"), ObjectProp("file", "string")),
    "iothread": (
        ObjectProp("aio-max-batch", "int", kind="int64"),
        ObjectProp("thread-pool-min", "int", kind="int64"),
        ObjectProp("thread-pool-max", "int", kind="int64"),
        ObjectProp("poll-max-ns", "int", kind="int64"),
        ObjectProp("poll-grow", "int", kind="int64"),
        ObjectProp("poll-shrink", "int", kind="int64")),
    "rng-random": (ObjectProp("opened", "bool"), ObjectProp("filename", "string")),
    "rng-builtin": (ObjectProp("opened", "bool"),),
    "throttle-group": (ObjectProp("limits", "ThrottleLimits"),) + tuple(
        ObjectProp(f"x-{limit}{suffix}", "int", kind="int64")
        for limit in THROTTLE_LIMITS for suffix in ("", "-max", "-max-length")) + (
        ObjectProp("x-iops-size", "int", kind="int64"),),
}
REQUIRED = {"memory-backend-ram": ("size",), "memory-backend-file": ("size", "mem-path"),
            "memory-backend-memfd": ("size",)}
# what each type defaults to, where it matters here
DEFAULTS = {"memory-backend-ram": {"share": False},
            "memory-backend-file": {"share": False},
            "memory-backend-memfd": {"share": True, "seal": True}}
READ_ONLY = {"loaded", "opened"}    # state, not settings: QEMU lists them, refuses setting


def qom_properties(qom_type: str) -> list[dict]:
    """qom-list-properties' answer for an object type."""
    out = [{"name": "type", "type": "string"}]
    for p in TYPES[qom_type]:
        entry = {"name": p.name, "type": "int" if p.type == "uint16List" else p.type}
        if p.description:
            entry["description"] = p.description
        out.append(entry)
    return out


def from_text(text: str) -> dict[str, Any]:
    """-object TYPE,id=ID,prop=value (values still text) or -object {JSON}."""
    members: dict[str, Any] = {}
    for index, part in enumerate(split_opts(text)):
        if not part:
            continue
        key, eq, value = part.partition("=")
        if not eq and index == 0:
            members["qom-type"] = key
        elif not eq:
            raise ObjectError(f"Expected '=' after parameter '{key}'")
        else:
            members[key] = value
    return members


def check(members: dict[str, Any], strict: bool) -> tuple[str, str, dict[str, Any]]:
    """(type, id, typed properties) of object-add arguments or -object members;
    ``strict``: JSON values, which keep their types."""
    members = dict(members)
    qom_type = members.pop("qom-type", None)
    if qom_type is None:
        raise ObjectError("Parameter 'qom-type' is missing")
    if not isinstance(qom_type, str) or qom_type not in TYPES:
        raise ObjectError(f"Parameter 'qom-type' does not accept value '{qom_type}'")
    object_id = members.pop("id", None)
    if object_id is None:
        raise ObjectError("Parameter 'id' is missing")
    if not isinstance(object_id, str) or not IDENTIFIER.fullmatch(object_id):
        raise ObjectError("Parameter 'id' expects an identifier", hint=ID_HINT)
    known = {p.name: p for p in TYPES[qom_type]}
    props = dict(DEFAULTS.get(qom_type, {}))
    for key, value in members.items():
        prop = known.get(key)
        if prop is None or (key == "limits" and not strict):
            raise ObjectError(f"Invalid parameter '{key}'")
        if key in READ_ONLY:
            raise ObjectError(f"Property '{qom_type}.{key}' is not writable")
        props[key] = _value(prop, value, strict)
    for name in REQUIRED.get(qom_type, ()):
        if name not in props:
            raise ObjectError(f"Parameter '{name}' is missing")
    return qom_type, object_id, props


def _value(prop: ObjectProp, value: Any, strict: bool) -> Any:
    name = prop.name
    if prop.type == "ThrottleLimits":
        if not isinstance(value, dict):
            raise ObjectError(f"Invalid parameter type for '{name}', expected: object")
        return value
    if prop.type == "uint16List":                 # host-nodes: only as JSON
        if not strict:
            raise ObjectError(f"kvmkit does not bind guest memory to host NUMA nodes "
                              f"('{name}')")
        if not isinstance(value, list):
            raise ObjectError(f"Invalid parameter type for '{name}', expected: array")
        return value
    if name == "prealloc-context":     # a link to a thread-context object: kvmkit has none
        if strict and not isinstance(value, str):
            raise ObjectError(f"Invalid parameter type for '{name}', expected: string")
        raise ObjectError(f"Device '{value}' not found", DEVICE_NOT_FOUND)
    if prop.type == "bool":
        if strict:
            if not isinstance(value, bool):
                raise ObjectError(f"Invalid parameter type for '{name}', expected: boolean")
            return value
        if value in ("on", "yes", "true", "y"):
            return True
        if value in ("off", "no", "false", "n"):
            return False
        raise ObjectError(f"Parameter '{name}' expects 'on' or 'off'")
    if prop.type in ("string",) or prop.values:
        if strict and not isinstance(value, str):
            raise ObjectError(f"Invalid parameter type for '{name}', expected: string")
        if prop.values and value not in prop.values:
            raise ObjectError(f"Parameter '{name}' does not accept value '{value}'")
        return value
    kind = prop.kind or "int64"
    if strict:             # QEMU's input visitor (a negative size is taken modulo 2^64)
        whole = isinstance(value, int) and not isinstance(value, bool)
        if kind == "int64":
            if not whole or value >= 1 << 63:
                raise ObjectError(f"Invalid parameter type for '{name}', expected: integer")
            return value
        if not whole:
            raise ObjectError(f"Parameter '{name}' expects uint64")
        return value % (1 << 64)
    try:
        if kind == "size":
            return parse_size(value)
        number = int(value, 10)
    except (OptsError, ValueError):
        what = "a size value" if kind == "size" else f"an {kind} value" \
            if kind == "int64" else f"a {kind} value"
        raise ObjectError(f"Parameter '{name}' expects {what}") from None
    return number


def create(qom_type: str, object_id: str, props: dict[str, Any],
           others: dict[str, UserObject] | None = None) -> UserObject:
    """Makes the object: opens what it reads, maps nothing yet (the machine maps RAM).
    Errors here are QEMU's completion errors, which name no option. ``others`` are
    the objects already made (a secret's keyid names one)."""
    obj = UserObject(qom_type, object_id, props)
    try:
        if qom_type.startswith("memory-backend-"):
            obj.resource = _memory_backing(obj)
        elif qom_type == "secret":
            obj.resource = _secret_bytes(props, others or {})
        elif qom_type == "iothread":
            for key, value in props.items():
                if value < 0:
                    raise ObjectError(f"{key} value must be in range [0, {INT64_MAX}]")
            low, high = props.get("thread-pool-min", 0), props.get("thread-pool-max", 64)
            if low > high or high == 0:                # QEMU's thread pool bounds
                raise ObjectError("bad thread-pool-min/thread-pool-max values")
            obj.resource = IoThread(object_id)
        elif qom_type == "rng-random":
            filename = props.get("filename", "/dev/urandom")
            try:
                obj.fds.append(os.open(filename, os.O_RDONLY | os.O_CLOEXEC))
            except OSError as e:
                raise ObjectError(f"Could not open '{filename}': {e.strerror}") from None
            obj.resource = obj.fds[0]
    except BaseException:
        obj.close()
        raise
    return obj


def _memory_backing(obj: UserObject) -> RamBacking:
    p = obj.props
    if p.get("host-nodes") or p.get("policy", "default") != "default":
        raise ObjectError("kvmkit does not bind guest memory to host NUMA nodes "
                          "('host-nodes', 'policy')")
    size = p["size"]
    if size == 0:
        raise ObjectError(f"property 'size' of {obj.qom_type} doesn't take value '0'")
    backing = RamBacking(shared=p.get("share", False), reserve=p.get("reserve", True),
                         prealloc=p.get("prealloc", False), merge=p.get("merge", True),
                         dump=p.get("dump", True))
    if obj.qom_type == "memory-backend-ram" and not backing.shared:
        _try_mapping(obj.id, size, backing.reserve)
    if obj.qom_type == "memory-backend-file":
        backing.fd = _open_mem_path(p["mem-path"], size)
    elif obj.qom_type == "memory-backend-memfd":
        flags = os.MFD_CLOEXEC | (os.MFD_ALLOW_SEALING if p.get("seal", True) else 0)
        if p.get("hugetlb"):
            flags |= os.MFD_HUGETLB
        fd = os.memfd_create("memory-backend-memfd", flags)
        try:
            os.ftruncate(fd, size)
        except OSError as e:
            os.close(fd)
            raise ObjectError(f"failed to resize memfd to {size}: {e.strerror}") from None
        if p.get("seal", True):
            import fcntl
            fcntl.fcntl(fd, fcntl.F_ADD_SEALS,
                        fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL)
        backing.fd = fd
    if backing.fd is not None:
        obj.fds.append(backing.fd)
    return backing


def _try_mapping(object_id: str, size: int, reserve: bool) -> None:
    """QEMU maps a RAM backend as it is made, so a size the kernel will not commit
    to fails object-add; kvmkit maps it later, so it asks the kernel now."""
    noreserve = getattr(mmap, "MAP_NORESERVE", 0x4000)        # (Python 3.13 names it)
    flags = mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | (0 if reserve else noreserve)
    try:
        mmap.mmap(-1, size, flags=flags).close()
    except (OSError, OverflowError) as e:
        reason = e.strerror if isinstance(e, OSError) else os.strerror(errno.ENOMEM)
        raise ObjectError(f"cannot set up guest memory '{object_id}': {reason}") from None


def _open_mem_path(path: str, size: int) -> int:
    """The file guest RAM is mapped from; a directory gets an unlinked file of its own."""
    try:
        if os.path.isdir(path):
            fd = os.open(path, os.O_RDWR | os.O_TMPFILE | os.O_CLOEXEC, 0o600)
        else:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as e:
        raise ObjectError(f"can't open backing store {path} for guest RAM: "
                          f"{e.strerror}") from None
    try:
        if os.fstat(fd).st_size < size:
            os.ftruncate(fd, size)
    except OSError as e:
        os.close(fd)
        raise ObjectError(f"can't open backing store {path} for guest RAM: "
                          f"{e.strerror}") from None
    return fd


def _secret_bytes(props: dict[str, Any], others: dict[str, UserObject]) -> bytes:
    """QEMU's secret: data or a file's bytes, base64-decoded (format=base64) or,
    with a keyid, decrypted with that secret as an AES-256-CBC key."""
    if ("data" in props) == ("file" in props):
        raise ObjectError("Either 'file' or 'data' must be provided" if "data" not in props
                          else "'data' and 'file' are mutually exclusive")
    if "file" in props:
        try:
            with open(props["file"], "rb") as f:
                raw = f.read()
        except OSError as e:
            raise ObjectError(f"Unable to read {props['file']}: Failed to open file "
                              f"“{props['file']}”: {e.strerror}") from None
    else:
        raw = props["data"].encode()
    base64_format = props.get("format", "raw") == "base64"
    if "keyid" in props:
        return _decrypt_secret(props, others, _base64(raw) if base64_format else raw)
    return _base64(raw) if base64_format else raw


def _base64(data: bytes) -> bytes:
    """As QEMU's qbase64_decode: only the alphabet (and newlines), padding optional."""
    if b"\0" in data:
        raise ObjectError("Base64 data contains embedded NUL characters")
    if data.strip(b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/=\n"):
        raise ObjectError("Base64 data contains invalid characters")
    text = data.replace(b"\n", b"").rstrip(b"=")
    try:
        return base64.b64decode(text + b"=" * (-len(text) % 4))
    except ValueError:
        raise ObjectError("Base64 data contains invalid characters") from None


def _decrypt_secret(props: dict[str, Any], others: dict[str, UserObject],
                    ciphertext: bytes) -> bytes:
    from vmm import aes

    keyid = props["keyid"]
    key_object = others.get(keyid)
    if key_object is None:
        raise ObjectError(f"No secret with id '{keyid}'")
    if key_object.qom_type != "secret":
        raise ObjectError(f"Object with id '{keyid}' is not a secret")
    key = key_object.resource
    if len(key) != 32:
        raise ObjectError("Key should be 32 bytes in length")
    if "iv" not in props:
        raise ObjectError("IV is required to decrypt secret")
    iv = _base64(props["iv"].encode())
    if len(iv) != 16:
        raise ObjectError(f"IV should be 16 bytes in length not {len(iv)}")
    if len(ciphertext) % 16:
        raise ObjectError(f"Length {len(ciphertext)} must be a multiple of block size 16")
    if not ciphertext:
        raise ObjectError("Incorrect number of padding bytes (0) found on decrypted data")
    plain = aes.cbc_decrypt(key, iv, ciphertext)
    padding = plain[-1]
    if padding > 16 or padding > len(plain):
        raise ObjectError(f"Incorrect number of padding bytes ({padding}) found on "
                          "decrypted data")
    return plain[:len(plain) - padding]


def throttle_values(props: dict[str, Any]) -> dict[str, int]:
    """A throttle-group's limits keyed as block_set_io_throttle names them."""
    short = {"bps-total": "bps", "bps-read": "bps_rd", "bps-write": "bps_wr",
             "iops-total": "iops", "iops-read": "iops_rd", "iops-write": "iops_wr"}
    values: dict[str, int] = {}
    given = {k[2:]: v for k, v in props.items() if k.startswith("x-")}
    for key, value in given.items():         # the x- properties' own checks, as each is
        if value < 0:                        # set (the limits' come later, together)
            raise ObjectError("Property values cannot be negative")
        if key.endswith("-max-length") and value > 0xFFFF_FFFF:      # (QEMU's "therange")
            raise ObjectError(f"x-{key} value must be in therange [0, 4294967295]")
    given.update(props.get("limits", {}))
    for key, value in given.items():
        if not isinstance(value, int) or isinstance(value, bool):
            raise ObjectError(f"Invalid parameter type for '{key}', expected: integer")
        base, _, suffix = key.partition("-max")
        if key == "iops-size":
            values["iops_size"] = value
        elif base in short:
            values[short[base] + {"": "", "-length": "_max_length"}[suffix]
                   + ("_max" if key.endswith("-max") else "")] = value
        else:
            raise ObjectError(f"Invalid parameter '{key}'")
    return values


class Objects:
    """The machine's /objects: created in command-line order, deleted by object-del."""

    def __init__(self) -> None:
        self.by_id: dict[str, UserObject] = {}

    def add(self, members: dict[str, Any], strict: bool) -> UserObject:
        qom_type, object_id, props = check(members, strict)
        if object_id in self.by_id:
            raise ObjectError(f"attempt to add duplicate property '{object_id}' to object "
                              f"(type 'container')")
        obj = create(qom_type, object_id, props, self.by_id)
        self.by_id[object_id] = obj
        return obj

    def delete(self, object_id: str) -> UserObject:
        obj = self.by_id.get(object_id)
        if obj is None:
            raise ObjectError(f"object '{object_id}' not found")
        if obj.used_by is not None:
            raise ObjectError(f"object '{object_id}' is in use, can not be deleted")
        del self.by_id[object_id]
        obj.close()
        return obj

    def close(self) -> None:
        for obj in self.by_id.values():
            obj.close()
