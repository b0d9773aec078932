"""human-monitor-command: HMP text through QMP."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command
from monitor.types import INT, STR, Member


@command("human-monitor-command", args=[Member("command-line", STR),
                                        Member("cpu-index", INT, True)],
         returns=STR, features=("savevm-monitor-nodes",))
async def human_monitor_command(ctx, command_line, cpu_index=None):
    from monitor.hmp import run_line

    if cpu_index is not None:            # QEMU passes it on as a C int: it wraps
        cpu_index = (cpu_index + (1 << 31)) % (1 << 32) - (1 << 31)
    if cpu_index is not None and not 0 <= cpu_index < len(ctx.machine.vcpus):
        raise QmpError("Parameter 'cpu-index' expects a CPU number")
    output = await run_line(ctx.monitor, ctx.session, command_line, cpu=cpu_index)
    return output.replace("\n", "\r\n")
