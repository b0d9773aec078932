"""stop, cont, system_reset, system_powerdown, system_wakeup, quit."""

from __future__ import annotations

from monitor.errors import QmpError
from monitor.registry import command


@command("stop")
def stop(ctx):
    ctx.machine.stop()


@command("cont")
def cont(ctx):
    from vmm.machine import RunStateError

    try:
        ctx.machine.cont()
    except RunStateError as e:
        raise QmpError(str(e)) from None


@command("system_reset")
def system_reset(ctx):
    ctx.machine.system_reset(guest=False, reason="host-qmp-system-reset")


@command("system_wakeup")
def system_wakeup(ctx):
    from vmm.machine import RunStateError

    try:
        ctx.machine.wakeup("other")
    except RunStateError as e:
        raise QmpError(str(e)) from None


@command("system_powerdown")
def system_powerdown(ctx):
    ctx.machine.system_powerdown()


@command("quit")
def quit_(ctx):
    ctx.machine.quit()
