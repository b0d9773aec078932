"""The one registry of QMP commands and events.

Each command is declared once, with typed arguments and a return type; the
registry validates calls with QEMU's messages and generates query-commands
and query-qmp-schema. HMP commands and shell completion read it too.

    @command("balloon", args=[Member("value", INT)])
    def balloon(ctx, value): ...
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from monitor.errors import COMMAND_NOT_FOUND, QmpError
from monitor.types import (
    Alternate,
    Builtin,
    Enum,
    ListOf,
    Member,
    Struct,
    Type,
    Union,
    check_members,
)


@dataclass
class Command:
    name: str
    handler: Callable[..., Any]
    args: tuple[Member, ...]
    returns: Type | None            # None: returns an empty object
    allow_oob: bool = False
    features: tuple[str, ...] = ()
    extra_args: bool = False        # device_add: unchecked, all passed as ``props``
    lock: bool = True               # runs under the machine lock (run control must not)
    variants: Union | None = None   # a flat union's branches (netdev_add): their members
                                    # are checked, and reach the handler as ``props``


@dataclass
class Event:
    name: str
    data: tuple[Member, ...] = ()


@dataclass
class Registry:
    commands: dict[str, Command] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)

    def command(self, name: str, args: list[Member] | tuple[Member, ...] = (),
                returns: Type | None = None, allow_oob: bool = False,
                features: tuple[str, ...] = (), extra_args: bool = False,
                lock: bool = True, variants: Union | None = None) -> Callable:
        def register(handler: Callable) -> Callable:
            if name in self.commands:
                raise ValueError(f"QMP command {name} declared twice")
            self.commands[name] = Command(name, handler, tuple(args), returns, allow_oob,
                                          features, extra_args, lock, variants)
            return handler
        return register

    def event(self, name: str, data: list[Member] | tuple[Member, ...] = ()) -> None:
        self.events[name] = Event(name, tuple(data))

    def find(self, name: str) -> Command:
        try:
            return self.commands[name]
        except KeyError:
            raise QmpError(f"The command {name} has not been found", COMMAND_NOT_FOUND) from None

    def check_args(self, command: Command, arguments: dict) -> dict:
        if command.variants is not None:
            checked = check_members(command.variants.members_of(arguments), arguments)
            base = {m.name for m in command.args}
            return {**{k: v for k, v in checked.items() if k in base},
                    "props": {k: v for k, v in checked.items() if k not in base}}
        if command.extra_args:            # QEMU's 'gen': false: the handler reads them all
            return {"props": dict(arguments)}
        return check_members(command.args, arguments)

    # -- introspection -----------------------------------------------------
    def command_names(self) -> list[str]:
        return list(self.commands)

    def schema(self) -> list[dict]:
        """query-qmp-schema: commands and events by name, other types masked as numbers."""
        builder = _SchemaBuilder()
        for cmd in self.commands.values():
            arg_type = builder.object_type(cmd.args) if cmd.variants is None else \
                builder.object_type(cmd.args, (cmd.variants.tag, cmd.variants.variants))
            entry = {"name": cmd.name, "meta-type": "command", "arg-type": arg_type,
                     "ret-type": builder.type_name(cmd.returns)}
            if cmd.allow_oob:
                entry["allow-oob"] = True
            if cmd.features:
                entry["features"] = list(cmd.features)
            builder.entities.append(entry)
        for event in self.events.values():
            builder.entities.append({"name": event.name, "meta-type": "event",
                                     "arg-type": builder.object_type(event.data)})
        return builder.entities + builder.types


class _SchemaBuilder:
    def __init__(self) -> None:
        self.entities: list[dict] = []
        self.types: list[dict] = []
        self.names: dict[object, str] = {}
        self.counter = 0
        self.object_type(())  # "0": the empty object, as in QEMU

    def _new_name(self) -> str:
        name = str(self.counter)
        self.counter += 1
        return name

    def object_type(self, members: tuple[Member, ...],
                    variants: tuple[str, tuple[tuple[str, Struct], ...]] | None = None) -> str:
        key = ("object", members, variants)
        if key in self.names:
            return self.names[key]
        name = self._new_name()
        self.names[key] = name
        entry: dict = {"name": name, "meta-type": "object"}
        self.types.append(entry)
        entry_members = []
        for m in members:
            member = {"name": m.name, "type": self.type_name(m.type)}
            if m.optional:
                member["default"] = None
            entry_members.append(member)
        entry["members"] = entry_members
        if variants is not None:
            tag, cases = variants
            entry["tag"] = tag
            entry["variants"] = [{"case": case, "type": self.object_type(struct.members)}
                                 for case, struct in cases]
        return name

    def type_name(self, t: Type | None) -> str:
        if t is None:
            return self.object_type(())
        if isinstance(t, Builtin):      # QEMU names every integer type 'int' here
            name = {"string": "str", "boolean": "bool", "value": "any"}.get(t.json_type,
                                                                            t.json_type)
            if ("builtin", name) not in self.names:
                self.names[("builtin", name)] = name
                self.types.append({"name": name, "meta-type": "builtin",
                                   "json-type": t.json_type})
            return name
        if isinstance(t, Alternate):
            if t not in self.names:
                name = self._new_name()
                self.names[t] = name
                entry = {"name": name, "meta-type": "alternate"}
                self.types.append(entry)
                entry["members"] = [{"type": self.type_name(c)} for c in t.choices]
            return self.names[t]
        if isinstance(t, ListOf):
            element = self.type_name(t.element)
            name = f"[{element}]"
            if ("array", name) not in self.names:
                self.names[("array", name)] = name
                self.types.append({"name": name, "meta-type": "array", "element-type": element})
            return name
        if isinstance(t, Enum):
            if t not in self.names:
                name = self._new_name()
                self.names[t] = name
                self.types.append({"name": name, "meta-type": "enum", "values": list(t.values),
                                   "members": [{"name": v} for v in t.values]})
            return self.names[t]
        if isinstance(t, Struct):
            return self.object_type(t.members)
        if isinstance(t, Union):
            return self.object_type(t.base, (t.tag, t.variants))
        raise TypeError(t)


REGISTRY = Registry()
command = REGISTRY.command
