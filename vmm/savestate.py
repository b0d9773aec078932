"""A device's saved state as plain data, and loading it back without trusting it.

Migration and snapshots carry each device's registers as a dict of plain values
(int, bool, str, bytes, lists and dicts of them). A stream comes from another
process or a file, so a load checks every field against the live object before
it changes anything: a field missing, of another type, or of another length
where the length is fixed (register files, config space) refuses the whole
section, and the device keeps its state.
"""

from __future__ import annotations

from collections import deque
from typing import Any

from vmm.errors import UserError


class StateError(UserError):
    """A saved state that cannot be loaded into this device."""


def save_fields(obj: Any, names: tuple[str, ...]) -> dict[str, Any]:
    """The named attributes, copied (a later change to the device must not alter
    a state already taken)."""
    return {name: _copy(getattr(obj, name)) for name in names}


def _copy(value: Any) -> Any:
    if isinstance(value, (bytearray, memoryview)):
        return bytes(value)
    if isinstance(value, (list, tuple, deque)):
        return [_copy(v) for v in value]
    if isinstance(value, dict):
        return {k: _copy(v) for k, v in value.items()}
    return value


def check_fields(obj: Any, names: tuple[str, ...], state: Any, where: str) -> None:
    """Raises StateError unless ``state`` has every field, shaped like the live one."""
    if not isinstance(state, dict):
        raise StateError(f"{where}: state is not a record")
    for name in names:
        if name not in state:
            raise StateError(f"{where}: field '{name}' is missing")
        check_value(getattr(obj, name), state[name], f"{where}.{name}")


def check_value(live: Any, saved: Any, where: str) -> None:
    """``saved`` must have ``live``'s type; byte strings also its length."""
    if isinstance(live, bool) or isinstance(saved, bool):
        ok = isinstance(live, bool) == isinstance(saved, bool)
    elif isinstance(live, (bytes, bytearray, memoryview)):
        ok = isinstance(saved, bytes) and len(saved) == len(live)
    elif isinstance(live, (list, tuple, deque)):
        ok = isinstance(saved, list)
    elif live is None:
        ok = True                 # optional fields (a timer's deadline, ...)
    elif isinstance(live, int):
        ok = isinstance(saved, int)
    else:
        ok = isinstance(saved, type(live))
    if not ok:
        raise StateError(f"{where}: saved value does not fit this device")


def load_fields(obj: Any, names: tuple[str, ...], state: dict, where: str) -> None:
    """Checks, then sets the named attributes (set_fields)."""
    check_fields(obj, names, state, where)
    set_fields(obj, names, state)


def set_fields(obj: Any, names: tuple[str, ...], state: dict) -> None:
    """Sets the named attributes from a state check_fields has passed (byte arrays
    and deques in place of their own kind, so references other code holds stay
    valid)."""
    for name in names:
        live, saved = getattr(obj, name), state[name]
        if isinstance(live, bytearray):
            live[:] = saved
        elif isinstance(live, deque):
            live.clear()
            live.extend(saved)
        elif isinstance(live, tuple):
            setattr(obj, name, tuple(saved))
        else:
            setattr(obj, name, _copy(saved))


def int_in(value: Any, low: int, high: int, where: str) -> int:
    """An int from a stream that must lie in [low, high]."""
    if isinstance(value, bool) or not isinstance(value, int) or not low <= value <= high:
        raise StateError(f"{where}: value {value!r} out of range")
    return value


class NoState:
    """For a device with nothing to carry (a port that only forwards writes)."""

    def save_state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        if state != {}:
            raise StateError(f"{type(self).__name__}: unexpected saved state")
