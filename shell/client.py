"""The shell's link to a monitor: qemu.qmp's QMPClient, so it works against QEMU too."""

from __future__ import annotations

import re

from qemu.qmp import QMPClient


def parse_address(text: str) -> str | tuple[str, int]:
    """A unix socket path, or HOST:PORT for tcp."""
    match = re.fullmatch(r"(\[?[^\[\]]*\]?|[^:]*):(\d+)", text)
    if match and not text.startswith(("/", ".")):
        return match.group(1).strip("[]") or "localhost", int(match.group(2))
    return text


class Connection:
    def __init__(self) -> None:
        self.client = QMPClient("kvmkit-shell")

    async def connect(self, address: str) -> None:
        await self.client.connect(parse_address(address))

    async def hmp(self, line: str) -> str:
        """QEMU's exact text for an HMP line (with \\n line ends)."""
        text = await self.client.execute("human-monitor-command", {"command-line": line})
        return str(text).replace("\r\n", "\n")

    async def qmp(self, name: str, **arguments):
        return await self.client.execute(name, arguments or None)

    async def close(self) -> None:
        await self.client.disconnect()
