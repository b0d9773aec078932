"""Interactive HMP monitors (-monitor, -mon mode=readline) with QEMU's readline.

Byte for byte what QEMU 7.2 sends: the banner, the ``(qemu) `` prompt, and an
echo that redraws the line on every keystroke (cursor left over the old
text, the whole buffer, erase to end of line). Output turns ``\\n`` into
``\\r\\n``. Editing keys, history (Up/Down) and Tab completion of command
names work as in QEMU.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable

from monitor.frontend import ChardevFrontend
from monitor.hmp import COMMANDS, INFO, HmpState, run_line
from monitor.monitor import Monitor, Session

log = logging.getLogger(__name__)

BANNER = "QEMU 7.2.22 monitor - type 'help' for more information\n"
PROMPT = "(qemu) "
HISTORY_MAX = 64
ESC = 27


class Readline:
    """QEMU's line editor state machine (util/readline.c's behaviour)."""

    def __init__(self, write: Callable[[str], None],
                 complete: Callable[[str], list[str]]) -> None:
        self.write = write
        self.complete = complete
        self.buf = ""
        self.index = 0
        self.last_buf = ""
        self.last_index = 0
        self.history: list[str] = []
        self.history_pos = -1
        self.esc_state = 0      # 0 normal, 1 after ESC, 2 after ESC [ (or O)
        self.esc_param = 0

    def start_line(self) -> None:
        self.buf, self.index, self.last_buf, self.last_index = "", 0, "", 0
        self.history_pos = -1

    def _update(self) -> None:
        if self.buf != self.last_buf:
            self.write("\x1b[D" * self.last_index + self.buf + "\x1b[K")
            self.last_buf = self.buf
            self.last_index = len(self.buf)
        if self.index != self.last_index:
            delta = self.index - self.last_index
            self.write(("\x1b[C" * delta) if delta > 0 else ("\x1b[D" * -delta))
            self.last_index = self.index

    def _insert(self, text: str) -> None:
        self.buf = self.buf[:self.index] + text + self.buf[self.index:]
        self.index += len(text)

    def _set(self, text: str) -> None:
        self.buf, self.index = text, len(text)

    def feed(self, byte: int) -> str | None:
        """One input byte; returns a finished line on Enter."""
        if self.esc_state == 1:
            self.esc_state = 2 if byte in (ord("["), ord("O")) else 0
            self.esc_param = 0
            return None
        if self.esc_state == 2:
            if ord("0") <= byte <= ord("9"):
                self.esc_param = self.esc_param * 10 + byte - ord("0")
                return None
            self.esc_state = 0
            self._escape(byte)
            self._update()
            return None
        if byte in (10, 13):
            line = self.buf
            if line and (not self.history or self.history[-1] != line):
                self.history = (self.history + [line])[-HISTORY_MAX:]
            self.write("\n")
            return line
        if byte == ESC:
            self.esc_state = 1
        elif byte in (8, 127):                       # backspace
            if self.index > 0:
                self.buf = self.buf[:self.index - 1] + self.buf[self.index:]
                self.index -= 1
        elif byte == 1:                              # ^A
            self.index = 0
        elif byte == 5:                              # ^E
            self.index = len(self.buf)
        elif byte == 11:                             # ^K
            self.buf = self.buf[:self.index]
        elif byte == 21:                             # ^U
            self.buf, self.index = self.buf[self.index:], 0
        elif byte == 23:                             # ^W: word before the cursor
            start = self.buf.rstrip()[:self.index].rstrip().rfind(" ") + 1
            self.buf, self.index = self.buf[:start] + self.buf[self.index:], start
        elif byte == 9:                              # Tab
            self._tab()
        elif 32 <= byte < 127:
            self._insert(chr(byte))
        self._update()
        return None

    def _escape(self, final: int) -> None:
        if final == ord("D") and self.index > 0:
            self.index -= 1
        elif final == ord("C") and self.index < len(self.buf):
            self.index += 1
        elif final == ord("A") and self.history:
            self.history_pos = len(self.history) - 1 if self.history_pos < 0 else \
                max(self.history_pos - 1, 0)
            self._set(self.history[self.history_pos])
        elif final == ord("B") and self.history_pos >= 0:
            self.history_pos += 1
            if self.history_pos >= len(self.history):
                self.history_pos = -1
                self._set("")
            else:
                self._set(self.history[self.history_pos])
        elif final in (ord("H"),) or (final == ord("~") and self.esc_param in (1, 7)):
            self.index = 0
        elif final in (ord("F"),) or (final == ord("~") and self.esc_param in (4, 8)):
            self.index = len(self.buf)
        elif final == ord("~") and self.esc_param == 3 and self.index < len(self.buf):
            self.buf = self.buf[:self.index] + self.buf[self.index + 1:]

    def _tab(self) -> None:
        before = self.buf[:self.index]
        matches = self.complete(before)
        if not matches:
            return
        word_start = before.rfind(" ") + 1
        prefix = matches[0]
        for m in matches[1:]:
            while not m.startswith(prefix):
                prefix = prefix[:-1]
        if len(matches) == 1:
            prefix += " "
        if len(prefix) > len(before) - word_start:
            self._insert(prefix[len(before) - word_start:])
            return
        if len(matches) > 1:      # QEMU lists the candidates, then redraws the line
            self.write("\n" + "".join(f"{m}\n" for m in matches) + PROMPT)
            self.last_buf, self.last_index = "", 0


def complete_command(text: str) -> list[str]:
    words = text.split(" ")
    if len(words) == 1:
        return sorted({n for n in COMMANDS if n.startswith(words[0])})
    if len(words) == 2 and words[0] in ("info", "help"):
        table = INFO if words[0] == "info" else COMMANDS
        return sorted({n for n in table if n.startswith(words[1])})
    return []


class ReadlineServer(ChardevFrontend):
    """An HMP monitor on a chardev (-monitor, -mon mode=readline)."""

    def __init__(self, monitor: Monitor, chardev) -> None:
        super().__init__(chardev, lambda write: ReadlineSession(monitor, write))


class ReadlineSession:
    """One interactive client: banner, prompt, echo; input after a finished line
    waits until that command's output and the next prompt are out, as in QEMU."""

    def __init__(self, monitor: Monitor, send: Callable[[bytes], None]) -> None:
        self.monitor = monitor
        self.send = send
        self.session = Session(name="hmp")
        self.state = HmpState()
        self.readline = Readline(self.write, complete_command)
        self.state.history = self.readline.history          # `info history` lists it
        self.pending = bytearray()
        self.wakeup = asyncio.Event()
        self.worker: asyncio.Task | None = None
        self.closed = False

    def write(self, text: str) -> None:
        if not self.closed:
            self.send(text.replace("\n", "\r\n").encode("utf-8", errors="replace"))

    def start(self) -> None:
        self.write(BANNER)
        self.write(PROMPT)
        self.worker = asyncio.get_running_loop().create_task(self._work())

    def feed(self, data: bytes) -> None:
        self.pending += data
        self.wakeup.set()

    def focus(self, focused: bool) -> None:
        """On a mux: a new prompt when the monitor gets the focus, a newline when it goes."""
        self.write(PROMPT if focused else "\n")

    async def _work(self) -> None:
        while True:
            await self.wakeup.wait()
            self.wakeup.clear()
            while self.pending:
                byte = self.pending.pop(0)
                line = self.readline.feed(byte)
                if line is None:
                    continue
                self.readline.start_line()
                if not await self._run(line):
                    return

    async def _run(self, line: str) -> bool:
        """Runs one line; False once the VM is quitting (no prompt after quit)."""
        try:
            output = await run_line(self.monitor, self.session, line, self.state)
        except asyncio.CancelledError:
            raise
        except Exception as e:   # a bug in one command must not end the monitor
            log.exception("HMP command failed")
            output = f"Error: internal error: {e}\n"
        self.write(output)
        exit_status = self.monitor.machine.exit_status
        if exit_status is not None and exit_status.done():
            return False
        self.write(PROMPT)
        return True

    def close(self) -> None:
        self.closed = True
        if self.worker is not None:
            self.worker.cancel()
