"""kvmkit-shell: an interactive HMP shell over QMP, for kvmkit or QEMU.

    kvmkit-shell /run/vm/qmp.sock            interactive
    kvmkit-shell localhost:4444 -c 'info status'   one-shot, for scripts

It runs HMP through human-monitor-command and prints QEMU's exact text
(--rich: tables and trees for info status/balloon/network/pci/qtree).
Completion comes from the server; history persists; events show up above
the prompt as they arrive.
"""

from __future__ import annotations

import argparse
import asyncio
import datetime
import json
import os
import sys
from pathlib import Path

from shell.client import Connection
from shell.completion import ShellCompleter, Vocabulary
from shell.render import RENDERERS

PROMPT = "(qemu) "
REFRESH_AFTER = ("device_add", "device_del", "netdev_add", "netdev_del")


def history_path() -> Path:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local",
                                                            "state")
    return Path(base) / "kvmkit" / "shell_history"


def format_event(event: dict) -> str:
    ts = event.get("timestamp", {})
    when = datetime.datetime.fromtimestamp(ts.get("seconds", 0)
                                           + ts.get("microseconds", 0) / 1e6)
    data = event.get("data")
    suffix = f" {json.dumps(data)}" if data is not None else ""
    return f"[{when:%H:%M:%S.%f}] event {event['event']}{suffix}"


async def run_line(conn: Connection, line: str, rich: bool, console) -> None:
    """An HMP line, or `qmp COMMAND [arg=value ...]` (values read as JSON where they
    parse, else as strings), whose reply is printed as JSON."""
    key = " ".join(line.split())
    if key.split(" ")[0] == "qmp":
        words = key.split(" ")[1:]
        if not words:
            raise ValueError("usage: qmp COMMAND [arg=value ...]")
        reply = await conn.qmp(words[0], **dict(qmp_argument(w) for w in words[1:]))
        sys.stdout.write(json.dumps(reply, indent=2) + "\n")
        sys.stdout.flush()
        return
    if rich and key in RENDERERS:
        try:
            console.print(await RENDERERS[key](conn))
            return
        except Exception:  # the query is not there (e.g. no balloon): show QEMU's text
            pass
    text = await conn.hmp(line)
    if text:
        sys.stdout.write(text)
        sys.stdout.flush()


def qmp_argument(word: str) -> tuple[str, object]:
    name, _, text = word.partition("=")
    try:
        return name, json.loads(text)
    except ValueError:
        return name, text


async def one_shot(args, conn: Connection, console) -> int:
    for line in args.command:
        await run_line(conn, line, args.rich, console)
    return 0


async def interactive(args, conn: Connection, console) -> int:
    from prompt_toolkit import PromptSession
    from prompt_toolkit.history import FileHistory, InMemoryHistory
    from prompt_toolkit.patch_stdout import patch_stdout

    vocab = Vocabulary()
    await vocab.refresh(conn)
    path = Path(args.history) if args.history else history_path()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        history = FileHistory(str(path))
    except OSError:
        history = InMemoryHistory()
    session = PromptSession(history=history, completer=ShellCompleter(vocab, conn),
                            complete_while_typing=False)

    async def show_events():
        async for event in conn.client.events:
            print(format_event(event))

    with patch_stdout(raw=True):
        events = asyncio.get_running_loop().create_task(show_events())
        try:
            while True:
                try:
                    line = await session.prompt_async(PROMPT)
                except KeyboardInterrupt:
                    continue
                except EOFError:
                    return 0
                if not line.strip():
                    continue
                try:
                    await run_line(conn, line, args.rich, console)
                except Exception as e:   # the VM went away (quit) or the link broke
                    if line.split()[0] in ("quit", "q"):
                        return 0
                    print(f"kvmkit-shell: {e}", file=sys.stderr)
                    return 1
                if line.split()[0] in ("quit", "q"):
                    return 0
                if line.split()[0] in REFRESH_AFTER:
                    await vocab.refresh_ids(conn)
        finally:
            events.cancel()


async def amain(args) -> int:
    from rich.console import Console

    console = Console()
    conn = Connection()
    try:
        await conn.connect(args.address)
    except Exception as e:
        print(f"kvmkit-shell: cannot connect to {args.address}: {e}", file=sys.stderr)
        return 1
    try:
        if args.command:
            return await one_shot(args, conn, console)
        return await interactive(args, conn, console)
    finally:
        try:
            await conn.close()
        except Exception:
            pass


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kvmkit-shell", description=__doc__.splitlines()[0])
    parser.add_argument("address", help="QMP socket: a unix path, or HOST:PORT")
    parser.add_argument("-c", "--command", action="append", default=[],
                        help="run this HMP command and exit (repeatable)")
    parser.add_argument("--rich", action="store_true",
                        help="tables and trees for info status/balloon/network/pci/qtree")
    parser.add_argument("--history", help="history file (default: "
                        "$XDG_STATE_HOME/kvmkit/shell_history)")
    args = parser.parse_args(argv)
    return asyncio.run(amain(args))


def entry_point() -> None:
    sys.exit(main())
