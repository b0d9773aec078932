"""HMP: QEMU's human monitor commands, with QEMU 7.2's text.

table.py has the table and argument syntax; the commands live in
commands.py (control and devices), block.py (drives and their info), info.py
(`info ...`), migration.py (migrate and its info), snapshots.py (savevm,
loadvm, delvm), memory.py (x, xp,
gpa2hva), machine.py (nmi, memsave, port I/O, chardevs, memory `info`) and
registers.py (`info registers`).
"""

from monitor.hmp import (  # noqa: F401  (registration)
    block,
    block_jobs,
    commands,
    info,
    interrupts,
    machine,
    memory,
    migration,
    misc,
    qemu_io,
    registers,
    snapshots,
)
from monitor.hmp.table import COMMANDS, INFO, HmpState, run_line

__all__ = ["COMMANDS", "INFO", "HmpState", "run_line"]
