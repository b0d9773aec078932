"""stop, cont, system_reset, system_powerdown, system_wakeup, quit."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command


@command("stop", lock=False)
def stop(ctx):
    ctx.machine.stop()


@command("cont", lock=False)
def cont(ctx):
    from vmm.machine import RunStateError

    try:
        ctx.machine.cont()
    except RunStateError as e:
        raise QmpError(str(e)) from None


@command("system_reset", lock=False)
def system_reset(ctx):
    ctx.machine.system_reset(guest=False, reason="host-qmp-system-reset")


@command("system_wakeup", lock=False)
def system_wakeup(ctx):
    from vmm.machine import RunStateError

    try:
        ctx.machine.wakeup("other")
    except RunStateError as e:
        raise QmpError(str(e)) from None


@command("system_powerdown", lock=False)
def system_powerdown(ctx):
    ctx.machine.system_powerdown()


@command("quit", lock=False)
def quit_(ctx):
    ctx.machine.quit()
