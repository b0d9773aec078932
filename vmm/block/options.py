"""Block node options as QEMU's BlockdevOptions types them, for the drivers kvmkit
has: -blockdev (JSON or dotted keys), blockdev-add, and what -drive becomes.

``check`` takes JSON values and checks them as QEMU's QAPI visitor does, with its
errors; ``from_keyval`` first gives dotted option text (file.filename=x) its
nesting and types. A child (file, backing) is a node name or a nested object.
"""

from __future__ import annotations

from typing import Any

from vmm.errors import UserError
from vmm.qemuopts import OptsError, parse_bool, parse_int

STR, BOOL, INT, REF, REF_OR_NULL, ANY = "str", "bool", "int", "BlockdevRef", \
    "BlockdevRefOrNull", "any"
CACHE = "BlockdevCacheOptions"
DISCARD = ("ignore", "unmap")
DETECT_ZEROES = ("off", "on", "unmap")
ON_OFF_AUTO = ("off", "on", "auto")
AIO = ("threads", "native", "io_uring")

BASE: dict[str, Any] = {"driver": STR, "node-name": STR, "discard": DISCARD, "cache": CACHE,
                        "read-only": BOOL, "auto-read-only": BOOL, "force-share": BOOL,
                        "detect-zeroes": DETECT_ZEROES}
_FILE = {"filename": STR, "pr-manager": STR, "locking": ON_OFF_AUTO, "aio": AIO,
         "aio-max-batch": INT, "drop-cache": BOOL, "x-check-cache-dropped": BOOL}
DRIVERS: dict[str, dict[str, Any]] = {
    "file": _FILE,
    "host_device": _FILE,
    "raw": {"file": REF, "offset": INT, "size": INT},
    "qcow2": {"file": REF, "backing": REF_OR_NULL, "lazy-refcounts": BOOL,
              "pass-discard-request": BOOL, "pass-discard-snapshot": BOOL,
              "pass-discard-other": BOOL, "overlap-check": ANY, "cache-size": INT,
              "l2-cache-size": INT, "l2-cache-entry-size": INT, "refcount-cache-size": INT,
              "cache-clean-interval": INT, "encrypt": ANY, "data-file": REF},
}
CACHE_MEMBERS = {"direct": BOOL, "no-flush": BOOL}
# members QEMU has that would change what the guest sees if kvmkit ignored them
UNSUPPORTED = {"pr-manager": "persistent reservations", "encrypt": "encrypted images",
               "data-file": "external data files"}
_TYPE_NAMES = {STR: "string", BOOL: "boolean", INT: "integer", CACHE: "object"}


def _kind_error(where: str, kind: Any) -> UserError:
    expected = _TYPE_NAMES.get(kind, "string" if isinstance(kind, tuple) else "object")
    return UserError(f"Invalid parameter type for '{where}', expected: {expected}")


def _check_value(where: str, kind: Any, value: Any) -> Any:
    if isinstance(kind, tuple):                       # an enum
        if not isinstance(value, str):
            raise _kind_error(where, kind)
        if value not in kind:
            raise UserError(f"Parameter '{where}' does not accept value '{value}'")
        return value
    if kind == STR:
        if not isinstance(value, str):
            raise _kind_error(where, kind)
    elif kind == BOOL:
        if not isinstance(value, bool):
            raise _kind_error(where, kind)
    elif kind == INT:
        if not isinstance(value, int) or isinstance(value, bool):
            raise _kind_error(where, kind)
    elif kind == CACHE:
        if not isinstance(value, dict):
            raise _kind_error(where, kind)
        for key, item in value.items():
            if key not in CACHE_MEMBERS:
                raise UserError(f"Parameter '{where}.{key}' is unexpected")
            _check_value(f"{where}.{key}", CACHE_MEMBERS[key], item)
    elif kind in (REF, REF_OR_NULL):
        if value is None and kind == REF_OR_NULL:
            return None
        if isinstance(value, dict):
            return check(value, f"{where}.")
        if not isinstance(value, str):
            raise UserError(f"Invalid parameter type for '{where}', expected: "
                            f"{'BlockdevRefOrNull' if kind == REF_OR_NULL else 'BlockdevRef'}")
    return value


def check(options: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """JSON options checked as QEMU checks BlockdevOptions; nested children too."""
    if "driver" not in options:
        raise UserError(f"Parameter '{prefix}driver' is missing")
    driver = options["driver"]
    if not isinstance(driver, str):
        raise _kind_error(f"{prefix}driver", STR)
    if driver not in DRIVERS:
        raise UserError(f"Parameter '{prefix}driver' does not accept value '{driver}'")
    members = {**BASE, **DRIVERS[driver]}
    out = {}
    for key, value in options.items():
        if key not in members:
            raise UserError(f"Parameter '{prefix}{key}' is unexpected")
        if key in UNSUPPORTED:
            raise UserError(f"kvmkit does not support {UNSUPPORTED[key]} ('{prefix}{key}')")
        out[key] = _check_value(f"{prefix}{key}", members[key], value)
    for needed in ("filename",) if driver in ("file", "host_device") else ("file",):
        if needed not in out:
            raise UserError(f"Parameter '{prefix}{needed}' is missing")
    return out


def nest(flat: dict[str, str]) -> dict[str, Any]:
    """Dotted keys as nested objects: {"file.filename": "x"} -> {"file": {"filename": "x"}}."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        *path, last = key.split(".")
        at = out
        for part in path:
            child = at.setdefault(part, {})
            if not isinstance(child, dict):
                raise UserError(f"Parameter '{part}' used inconsistently")
            at = child
        if isinstance(at.get(last), dict):
            raise UserError(f"Parameter '{key}' used inconsistently")
        at[last] = value
    return out


def from_keyval(flat: dict[str, str]) -> dict[str, Any]:
    """Option text (-blockdev driver=qcow2,file.filename=x) with QEMU's types."""
    return _typed(nest(flat), "")


def _typed(options: dict[str, Any], prefix: str) -> dict[str, Any]:
    driver = options.get("driver")
    members = {**BASE, **DRIVERS.get(driver, {})} if isinstance(driver, str) else BASE
    out: dict[str, Any] = {}
    for key, value in options.items():
        kind = members.get(key)
        where = f"{prefix}{key}"
        try:
            if kind == BOOL and isinstance(value, str):
                out[key] = parse_bool(where, value)
            elif kind == INT and isinstance(value, str):
                out[key] = parse_int(where, value)
            elif kind == CACHE and isinstance(value, dict):
                out[key] = {k: parse_bool(f"{where}.{k}", v) if CACHE_MEMBERS.get(k) == BOOL
                            and isinstance(v, str) else v for k, v in value.items()}
            elif kind in (REF, REF_OR_NULL) and isinstance(value, dict):
                out[key] = _typed(value, f"{where}.")
            elif kind == REF_OR_NULL and value == "":
                out[key] = None                       # backing= : no backing file
            else:
                out[key] = value
        except OptsError as e:
            raise UserError(str(e)) from None
    return out
