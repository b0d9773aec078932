"""--rich: tables and trees for the `info` commands people read most.

Each renderer asks the monitor over QMP (so it works against QEMU too) and
returns a rich renderable; other commands print QEMU's exact text.
"""

from __future__ import annotations

import re

from rich.table import Table
from rich.tree import Tree

from shell.client import Connection


async def info_status(conn: Connection):
    st = await conn.qmp("query-status")
    table = Table(title="VM status", show_header=False)
    colour = "green" if st["running"] else "yellow"
    table.add_row("status", f"[{colour}]{st['status']}[/{colour}]")
    table.add_row("running", str(st["running"]).lower())
    return table


async def info_balloon(conn: Connection):
    info = await conn.qmp("query-balloon")
    table = Table(title="Balloon", show_header=True)
    table.add_column("actual (MiB)", justify="right")
    table.add_column("actual (bytes)", justify="right")
    table.add_row(str(info["actual"] >> 20), str(info["actual"]))
    return table


async def info_network(conn: Connection):
    """NICs at the top, each with the back end QEMU prints under it (' \\ ')."""
    tree = Tree("network")
    nic = tree
    for line in (await conn.hmp("info network")).splitlines():
        match = re.match(r"^( \\ )?([^:]+): (.*)$", line)
        if not match:
            continue
        label = f"[bold]{match.group(2)}[/bold] {match.group(3)}"
        if match.group(1):
            nic.add(label)
        else:
            nic = tree.add(label)
    return tree


async def info_pci(conn: Connection):
    table = Table(title="PCI")
    for column in ("bdf", "class", "id", "subsystem", "irq", "BARs", "qdev id"):
        table.add_column(column)
    for bus in await conn.qmp("query-pci"):
        for dev in bus["devices"]:
            ci = dev["class_info"]
            ids = dev["id"]
            bars = []
            for r in dev["regions"]:
                addr = r["address"] & 0xFFFFFFFFFFFFFFFF
                where = "unassigned" if r["address"] == -1 else f"0x{addr:x}"
                bars.append(f"{r['bar']}: {r['type']} {where} ({r['size']:#x})")
            table.add_row(f"{dev['bus']:02x}:{dev['slot']:02x}.{dev['function']}",
                          ci.get("desc", f"class {ci['class']:04x}"),
                          f"{ids['vendor']:04x}:{ids['device']:04x}",
                          f"{ids.get('subsystem-vendor', 0):04x}:{ids.get('subsystem', 0):04x}",
                          str(dev.get("irq", "")), "\n".join(bars), dev["qdev_id"])
    return table


async def info_qtree(conn: Connection):
    root = Tree("qtree")
    stack: list[tuple[int, Tree]] = [(-1, root)]
    for line in (await conn.hmp("info qtree")).splitlines():
        depth = len(line) - len(line.lstrip(" "))
        text = line.strip()
        if not text.startswith(("bus:", "dev:")):
            continue
        while stack[-1][0] >= depth:
            stack.pop()
        style = "bold cyan" if text.startswith("bus:") else "bold"
        stack.append((depth, stack[-1][1].add(f"[{style}]{text}[/{style}]")))
    return root


RENDERERS = {"info status": info_status, "info balloon": info_balloon,
             "info network": info_network, "info pci": info_pci, "info qtree": info_qtree}
