"""Tab completion from what the server says: HMP commands and info subcommands
(from `help`), QMP commands with their argument names and enum values (from
query-qmp-schema, so the same on kvmkit and QEMU), device drivers and their
properties, device ids and netdev ids."""

from __future__ import annotations

import re

from prompt_toolkit.completion import Completer, Completion

from shell.client import Connection

HELP_LINE = re.compile(r"^(?:info )?([A-Za-z0-9_?|.-]+)")


def names_from_help(text: str) -> list[str]:
    names: set[str] = set()
    for line in text.splitlines():
        match = HELP_LINE.match(line)
        if match and not line.startswith(("\t", " ")):
            names.update(n for n in match.group(1).split("|") if n)
    return sorted(names)


class Vocabulary:
    """Everything completion offers, fetched once and refreshed after changes."""

    def __init__(self) -> None:
        self.commands: list[str] = []
        self.info: list[str] = []
        self.drivers: list[str] = []
        self.device_ids: list[str] = []
        self.netdev_ids: list[str] = []
        self.properties: dict[str, list[str]] = {}
        self.qmp_args: dict[str, dict[str, list[str]]] = {}   # command -> arg -> values

    async def refresh(self, conn: Connection) -> None:
        self.commands = names_from_help(await conn.hmp("help"))
        self.info = names_from_help(await conn.hmp("info"))
        try:
            self.qmp_args = qmp_arguments(await conn.qmp("query-qmp-schema"))
        except Exception:
            self.qmp_args = {}
        try:
            types = await conn.qmp("qom-list-types", implements="device", abstract=False)
            self.drivers = sorted(t["name"] for t in types)
        except Exception:
            self.drivers = []
        await self.refresh_ids(conn)

    async def refresh_ids(self, conn: Connection) -> None:
        try:
            peripherals = await conn.qmp("qom-list", path="/machine/peripheral")
            self.device_ids = sorted(p["name"] for p in peripherals
                                     if p["type"].startswith("child<"))
        except Exception:
            self.device_ids = []
        network = await conn.hmp("info network")
        self.netdev_ids = sorted({m.group(1) for m in
                                  re.finditer(r"^(?: \\ )?([^:\s]+): index=", network, re.M)})

    async def properties_of(self, conn: Connection, driver: str) -> list[str]:
        if driver not in self.properties:
            try:
                props = await conn.qmp("device-list-properties", typename=driver)
                self.properties[driver] = sorted(p["name"] for p in props)
            except Exception:
                self.properties[driver] = []
        return self.properties[driver]


def qmp_arguments(schema: list[dict]) -> dict[str, dict[str, list[str]]]:
    """Each QMP command's argument names, and for enum-typed ones their values."""
    types = {entity["name"]: entity for entity in schema}
    commands = {}
    for entity in schema:
        if entity.get("meta-type") != "command":
            continue
        members = types.get(entity["arg-type"], {}).get("members", [])
        commands[entity["name"]] = {
            m["name"]: list(types.get(m["type"], {}).get("values", [])) for m in members}
    return commands


class ShellCompleter(Completer):
    def __init__(self, vocabulary: Vocabulary, conn: Connection | None = None) -> None:
        self.vocab = vocabulary
        self.conn = conn

    def candidates(self, text: str) -> list[str]:
        words = text.split(" ")
        if len(words) == 1:
            return sorted({*self.vocab.commands, "qmp"})
        command = words[0]
        if command == "qmp":
            return self._qmp_candidates(words[1:])
        if len(words) == 2:
            if command == "info":
                return self.vocab.info
            if command == "help":
                return self.vocab.commands
            if command in ("device_del", "qom-list"):
                return self.vocab.device_ids
            if command == "set_link":
                return self.vocab.device_ids + self.vocab.netdev_ids
            if command == "netdev_del":
                return self.vocab.netdev_ids
            if command == "device_add":
                current = words[1]
                if "," not in current:
                    return self.vocab.drivers
                driver = current.split(",")[0]
                stem = current.rsplit(",", 1)[0]
                return [f"{stem},{p}=" for p in self.vocab.properties.get(driver, [])]
        if len(words) == 3 and command == "set_link":
            return ["on", "off"]
        return []

    def _qmp_candidates(self, words: list[str]) -> list[str]:
        """`qmp COMMAND arg=value ...`: command names, then its arguments and values."""
        if len(words) == 1:
            return sorted(self.vocab.qmp_args)
        args = self.vocab.qmp_args.get(words[0], {})
        current = words[-1]
        if "=" in current:
            name = current.split("=", 1)[0]
            return [f"{name}={value}" for value in args.get(name, [])]
        given = {w.split("=", 1)[0] for w in words[1:-1]}
        return [f"{name}=" for name in args if name not in given]

    def get_completions(self, document, complete_event):
        text = document.text_before_cursor
        word = text.split(" ")[-1]
        for candidate in self.candidates(text):
            if candidate.startswith(word):
                yield Completion(candidate, start_position=-len(word))

    async def get_completions_async(self, document, complete_event):
        text = document.text_before_cursor
        words = text.split(" ")
        if self.conn is not None and len(words) == 2 and words[0] == "device_add" \
                and "," in words[1]:
            await self.vocab.properties_of(self.conn, words[1].split(",")[0])
        for completion in self.get_completions(document, complete_event):
            yield completion
