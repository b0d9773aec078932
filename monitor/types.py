"""Argument types of QMP commands, checked the way QEMU's input visitor does.

A type is a small object that validates a JSON value and describes itself
for query-qmp-schema. Messages are QEMU's: ``Invalid parameter type for 'x',
expected: integer``, ``Parameter 'x' is missing``, ``Parameter 'x' is
unexpected``, ``Parameter 'x' does not accept value 'y'``.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from monitor.errors import QmpError
from monitor.qdict import qdict_order


def _type_error(name: str, expected: str) -> QmpError:
    return QmpError(f"Invalid parameter type for '{name}', expected: {expected}")


# QEMU's sized integers: visited as 64 bits, then checked against the size, with
# the member's own name (not its path) and the C type in the message.
_SIZED = {"int8": (-(1 << 7), (1 << 7) - 1), "int16": (-(1 << 15), (1 << 15) - 1),
          "int32": (-(1 << 31), (1 << 31) - 1), "uint8": (0, 255), "uint16": (0, 65535),
          "uint32": (0, (1 << 32) - 1)}
_INT64_MAX = (1 << 63) - 1


def raw_name(full_name: str) -> str:
    """The name QEMU's enum and sized-integer checks give: the member's own, or
    'null' for a list element (they see the visitor's name, not the path)."""
    return "null" if full_name.endswith("]") else full_name.rsplit(".", 1)[-1]


def _check_integer(schema_name: str, name: str, value: object) -> int:
    """QEMU's input visitor: a signed member takes any number that fits int64
    (else: the wrong type); an unsigned one any that fits uint64, and a negative
    int64 too, taken modulo 2^64 ("for backward compatibility"), else "expects
    uint64"."""
    whole = isinstance(value, int) and not isinstance(value, bool)
    if schema_name.startswith("uint") or schema_name == "size":
        if not whole:
            raise QmpError(f"Parameter '{name}' expects uint64")
        value = value % (1 << 64)
    elif not whole or value > _INT64_MAX:
        raise _type_error(name, "integer")
    if schema_name in _SIZED:
        lo, hi = _SIZED[schema_name]
        if not lo <= value <= hi:
            raise QmpError(f"Parameter '{raw_name(name)}' expects {schema_name}_t")
    return value


class Type:
    """Base of argument types; subclasses provide schema_name and json_type."""

    def check(self, name: str, value: object) -> object:
        raise NotImplementedError


@dataclass(frozen=True)
class Builtin(Type):
    schema_name: str
    json_type: str

    def check(self, name: str, value: object) -> object:
        kind = self.json_type
        if kind == "int":
            return _check_integer(self.schema_name, name, value)
        if kind == "number":
            if isinstance(value, bool) or not isinstance(value, (int, float)):
                raise _type_error(name, "number")
            return float(value)
        if kind == "string":
            if not isinstance(value, str):
                raise _type_error(name, "string")
            return value
        if kind == "boolean":
            if not isinstance(value, bool):
                raise _type_error(name, "boolean")
            return value
        if kind == "null":
            if value is not None:
                raise _type_error(name, "null")
            return None
        return value  # any


INT = Builtin("int", "int")
UINT64 = Builtin("uint64", "int")
UINT32 = Builtin("uint32", "int")
UINT16 = Builtin("uint16", "int")
UINT8 = Builtin("uint8", "int")
SIZE = Builtin("size", "int")
NUMBER = Builtin("number", "number")
STR = Builtin("str", "string")
BOOL = Builtin("bool", "boolean")
ANY = Builtin("any", "value")
NULL = Builtin("null", "null")


@dataclass(frozen=True)
class Enum(Type):
    schema_name: str
    values: tuple[str, ...]
    json_type = "string"

    def check(self, name: str, value: object) -> object:
        if not isinstance(value, str):
            raise _type_error(name, "string")
        if value not in self.values:
            raise QmpError(f"Parameter '{raw_name(name)}' does not accept value '{value}'")
        return value


@dataclass(frozen=True)
class ListOf(Type):
    element: Type
    json_type = "array"

    @property
    def schema_name(self) -> str:  # type: ignore[override]
        return f"[{self.element.schema_name}]"

    def check(self, name: str, value: object) -> object:
        if not isinstance(value, list):
            raise _type_error(name, "array")
        return [self.element.check(f"{name}[{index}]", item)
                for index, item in enumerate(value)]


@dataclass(frozen=True)
class Member:
    name: str
    type: Type
    optional: bool = False
    default: object = None


@dataclass(frozen=True)
class Struct(Type):
    schema_name: str
    members: tuple[Member, ...] = field(default_factory=tuple)
    json_type = "object"

    def check(self, name: str, value: object) -> dict:
        if not isinstance(value, dict):
            raise _type_error(name, "object")
        return check_members(self.members, value, prefix=f"{name}.")


def check_members(members: tuple[Member, ...] | list[Member], values: dict,
                  prefix: str = "") -> dict:
    """Validates a dict of members in declaration order, then rejects extras."""
    out: dict = {}
    for member in members:
        qualified = prefix + member.name
        if member.name not in values:
            if not member.optional:
                raise QmpError(f"Parameter '{qualified}' is missing")
            if member.default is not None:
                out[member.name] = member.default
            continue
        out[member.name] = member.type.check(qualified, values[member.name])
    known = {m.name for m in members}
    for key in qdict_order(list(values)):
        if key not in known:
            raise QmpError(f"Parameter '{prefix}{key}' is unexpected")
    return out


def option_text(value) -> str:
    """A QMP argument as the option text QEMU's -device/-netdev parsers take."""
    if isinstance(value, bool):
        return "on" if value else "off"
    return str(value)


@dataclass(frozen=True)
class Union(Type):
    """A flat union: the base members, then those of the variant the tag selects."""

    schema_name: str
    base: tuple[Member, ...]
    tag: str
    variants: tuple[tuple[str, Struct], ...]
    json_type = "object"

    def members_of(self, value: dict) -> tuple[Member, ...]:
        """The base members, and those of the branch ``value``'s tag selects."""
        variant = next((s for case, s in self.variants if case == value.get(self.tag)), None)
        return self.base + (variant.members if variant else ())

    def check(self, name: str, value: object) -> object:
        if not isinstance(value, dict):
            raise _type_error(name, "object")
        return check_members(self.members_of(value), value, prefix=f"{name}.")


@dataclass(frozen=True)
class Alternate(Type):
    """A value of one of several JSON types (QEMU's StrOrNull): the branch is picked
    by the value's own type; any other type is refused with the alternate's name."""

    schema_name: str
    choices: tuple[Type, ...]
    json_type = "value"

    def check(self, name: str, value: object) -> object:
        for choice in self.choices:
            if _json_kind(value) == _json_kind_of(choice):
                return choice.check(name, value)
        raise _type_error(raw_name(name), self.schema_name)


def _json_kind(value: object) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, (int, float)):
        return "number"
    return {str: "string", list: "array", dict: "object"}.get(type(value), "value")


def _json_kind_of(t: Type) -> str:
    kind = getattr(t, "json_type", "value")
    return "number" if kind == "int" else kind


STR_OR_NULL = Alternate("StrOrNull", (STR, NULL))


def reply_problems(t: Type | None, value: object, where: str = "return") -> list[str]:
    """How a command's reply differs from its declared return type (None: an empty
    object): missing or unexpected members, wrong JSON types, unknown enum values."""
    if t is None:
        return [] if value == {} else [f"{where}: expected {{}}"]
    if isinstance(t, Builtin):
        kinds = {"int": int, "number": (int, float), "string": str, "boolean": bool,
                 "null": type(None)}
        wanted = kinds.get(t.json_type)
        if wanted is None:
            return []
        if not isinstance(value, wanted) or (wanted in (int, (int, float)) and
                                             isinstance(value, bool)):
            return [f"{where}: {value!r} is not {t.json_type}"]
        return []
    if isinstance(t, Enum):
        return [] if value in t.values else [f"{where}: {value!r} not in {t.schema_name}"]
    if isinstance(t, ListOf):
        if not isinstance(value, list):
            return [f"{where}: not an array"]
        return [p for i, item in enumerate(value)
                for p in reply_problems(t.element, item, f"{where}[{i}]")]
    if isinstance(t, (Struct, Union)):
        if not isinstance(value, dict):
            return [f"{where}: not an object"]
        members = t.members if isinstance(t, Struct) else t.members_of(value)
        problems = [f"{where}: unexpected '{k}'" for k in value
                    if k not in {m.name for m in members}]
        for m in members:
            if m.name in value:
                problems += reply_problems(m.type, value[m.name], f"{where}.{m.name}")
            elif not m.optional:
                problems.append(f"{where}: missing '{m.name}'")
        return problems
    return []
