"""#20: the whole monitor against QEMU 7.2's.

- QMP: every command of QEMU 7.2's query-commands goes to kvmkit and to QEMU,
  started alike: as it is (mandatory arguments missing), with arguments built
  from QEMU's schema (seeded, so a run is replayed), with a member too many and
  with a member of the wrong type. None answers CommandNotFound on kvmkit, and
  every answer has QEMU's shape: return or error, the error's class and text.
  What differs because kvmkit lacks a model or back end (the oracle's feature
  gaps) is counted, not failed; the test prints the table of differences.
- HMP: `help` and `info` list the same commands with the same help; `help NAME`
  is the same for every command; every command QEMU lists is run bare (those
  that would stop, reset or end the machine excepted) and every `info`
  subcommand is run, texts compared with machine-dependent values masked, and
  the texts that describe two different machines named with the reason.
"""

from __future__ import annotations

import json
import os
import re

import pytest
from guest import QEMU, kvm_usable, kvmkit_command, probe_elf, start_with_qmp
from guest import QmpLine as Qmp
from qmp_oracle import (
    QEMU_COMMANDS,
    RUN_CONTROL,
    MessageMaker,
    RandomChooser,
    tame,
)

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]
SEED = int(os.environ.get("KVMKIT_EVERY_SEED", "20"))     # another seed: another sample


def _messages(maker: MessageMaker, command: str) -> list[dict]:
    entity = maker.by_name[command]
    arg_type = maker.by_name[entity["arg-type"]]
    out: list[dict] = [{"execute": command}]
    for _ in range(2):
        args = maker.members(arg_type, 0)
        out.append({"execute": command, "arguments": args})
    out.append({"execute": command, "arguments": {**out[-1]["arguments"], "no-such-member": 1}})
    members = [m for m in arg_type.get("members", [])]
    if members:
        first = members[0]["name"]
        wrong = [] if maker.by_name[members[0]["type"]].get("json-type") != "array" else 1
        out.append({"execute": command, "arguments": {**out[1]["arguments"], first: wrong}})
    for message in out:
        if command in RUN_CONTROL:            # never run: refused for the extra member
            message.setdefault("arguments", {})["no-such-member"] = 1
        tame(message)
        args = message.get("arguments")
        if command == "human-monitor-command" and isinstance(args, dict) and \
                isinstance(args.get("command-line"), str):
            args["command-line"] = "info " + args["command-line"].removeprefix("info ")
    return out


@pytest.fixture(scope="module")
def pair(oracle_pair):
    return oracle_pair


def test_every_qmp_command_answers_as_qemu(pair):
    assert QEMU_COMMANDS <= pair.ours, sorted(QEMU_COMMANDS - pair.ours)
    maker = MessageMaker(RandomChooser(SEED), pair.ours)
    found = []
    for command in sorted(QEMU_COMMANDS):
        found += pair.run(_messages(maker, command))
    tally = pair.tally
    assert not tally.missing, tally.missing
    assert not tally.failures
    assert tally.compared > 3 * len(QEMU_COMMANDS)
    assert not found, "\n".join(found)


# -- HMP --------------------------------------------------------------------------------
ARGS = ["-S", "-display", "none", "-nodefaults", "-m", "128", "-kernel"]
# Commands not run bare: they would stop, reset, end or suspend the machine, start a
# server, or change a state the rest of the walk reads.
DISRUPTIVE = {"quit", "q", "stop", "s", "cont", "c", "system_reset", "system_powerdown",
              "gdbserver", "exit_preconfig", "x_colo_lost_heartbeat", "singlestep",
              "sync-profile", "migrate_cancel", "savevm", "announce_self", "nmi", "log",
              "trace-event", "watchdog_action", "set_link"}
MASKS = [(re.compile(p), r) for p, r in (
    (r"thread_id=\d+", "thread_id=N"),
    (r"filename=unix:[^,]*,server=on", "filename=unix:SOCK,server=on"),
    (r"^7\.2\.22.*", "7.2.22 VERSION"),
    (r'type: "[a-z0-9]+-x86_64-cpu"', 'type: "CPU"'))]
# `info` texts that describe the two machines, not the monitor: why they differ
DIFFERENT_MACHINES = {
    "mtree": "QEMU's memory regions include its firmware ROMs, PAM aliases and "
             "devices' BARs; kvmkit maps RAM and its own devices",
    "qtree": "QEMU's device tree holds devices kvmkit does not model (hpet, fdc, "
             "port92, ...)",
    "qom-tree": "QEMU's QOM tree holds firmware ROM regions and its full device set",
    "qdm": "the device models each VMM has",
    "roms": "QEMU loads SeaBIOS and option ROMs; kvmkit loads the kernel and its own "
            "boot tables",
    "ramblock": "QEMU's firmware ROMs are RAM blocks of their own",
    "registers": "-S with -kernel: QEMU stops at the reset vector, kvmkit at the "
                 "kernel's entry (it boots without firmware)",
    "lapic": "kvmkit sets the LAPIC as firmware leaves it (LINT0 ExtINT, LINT1 NMI); "
             "QEMU shows the reset state before SeaBIOS runs",
    "pic": "kvmkit programs the 8259s as firmware leaves them; QEMU shows them unset "
           "before SeaBIOS runs",
    "trace-events": "each VMM's own trace points",
    "version": "the package string after the version",
    "usbhost": "Debian's QEMU loads its usb-host module on demand, and `info qdm` "
               "above loaded every module; kvmkit answers as QEMU before that (it passes "
               "no host USB device through)",
}


def _hmp(argv: list[str], sock: str, lines: list[str]) -> list[str]:
    proc = start_with_qmp(argv + ARGS + [probe_elf()], sock)
    try:
        qmp = Qmp(sock)
        return [qmp.execute("human-monitor-command", **{"command-line": line})["return"]
                for line in lines]
    finally:
        proc.kill()
        proc.wait()


def _masked(text: str) -> str:
    for pattern, replacement in MASKS:
        text = pattern.sub(replacement, text)
    return text


def test_every_hmp_command_and_info_as_qemu(tmp_path):
    if not kvm_usable():
        pytest.skip("/dev/kvm is not available")
    qemu = [QEMU, "-accel", "kvm"]
    listing = _hmp(qemu, str(tmp_path / "q0.sock"), ["help", "info"])
    assert _hmp(kvmkit_command(), str(tmp_path / "k0.sock"), ["help", "info"]) == listing
    commands = sorted({line.split(" ")[0].split("|")[0] for line in listing[0].split("\r\n")
                       if re.match(r"[\w-]+[ |]", line)})     # not drive_add's 2nd line
    infos = sorted({line.split(" ")[1].split("|")[0]
                    for line in listing[1].split("\r\n") if line.startswith("info ")})
    assert len(commands) >= 108 and len(infos) >= 67
    lines = ["help nosuch", "help info nosuch", "[,x=y", "object_add iothread,id=x y"] + \
        [f"help {c}" for c in commands] + \
        [c for c in commands if c not in DISRUPTIVE and c != "info"] + \
        [f"info {i}" for i in infos]
    theirs = _hmp(qemu, str(tmp_path / "q.sock"), lines)
    ours = _hmp(kvmkit_command(), str(tmp_path / "k.sock"), lines)
    differences, explained = [], []
    for line, mine, reference in zip(lines, ours, theirs):
        if _masked(mine) == _masked(reference):
            continue
        subcommand = line.split(" ")[1] if line.startswith("info ") else None
        if subcommand in DIFFERENT_MACHINES:
            explained.append(f"{line}: {DIFFERENT_MACHINES[subcommand]}")
            continue
        differences.append(f"{line}\n  kvmkit {json.dumps(mine)[:300]}\n"
                           f"  QEMU   {json.dumps(reference)[:300]}")
    print(f"\n{len(lines)} HMP lines, {len(explained)} explained:\n  " +
          "\n  ".join(explained))
    assert not differences, "\n".join(differences)
