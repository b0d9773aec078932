"""Every QMP reply conforms to the return type its command declares (the registry is
the one source of query-qmp-schema), on a machine with every kind of device; and
QEMU 7.2's replies to the same queries conform to the same declarations."""

from __future__ import annotations

import pytest
from guest import QEMU, kvmkit_command, qmp_answers

import monitor.commands  # noqa: F401  (registers every command)
from monitor.registry import REGISTRY
from monitor.types import ListOf, Struct, reply_problems

pytestmark = pytest.mark.kvm

# Queries that change nothing, with arguments where they need some
QUERIES = [(name, {}) for name, c in REGISTRY.commands.items()
           if name.startswith("query-") and not any(not m.optional for m in c.args)]
QUERIES += [("qom-list-types", {}), ("qom-list", {"path": "/machine/peripheral/n0"}),
            ("qom-get", {"path": "/machine/peripheral/b0", "property": "guest-stats"}),
            ("device-list-properties", {"typename": "virtio-net-pci"}),
            ("qom-list-properties", {"typename": "e1000"}),
            ("query-rx-filter", {"name": "n0"}),
            ("query-cpu-model-expansion", {"type": "full", "model": {"name": "qemu64"}}),
            ("human-monitor-command", {"command-line": "info status"})]
DEVICES = ["-netdev", "user,id=u0", "-device", "virtio-net-pci,netdev=u0,id=n0",
           "-device", "e1000,id=e0", "-device", "virtio-balloon-pci,id=b0",
           "-device", "virtio-rng-pci,id=r0", "-device", "virtio-serial-pci,id=vs0",
           "-chardev", "null,id=c0", "-device", "virtconsole,chardev=c0,id=con0",
           "-device", "isa-debug-exit"]


def test_no_command_declares_a_placeholder_return():
    def placeholders(t):
        if isinstance(t, ListOf):
            return placeholders(t.element)
        return isinstance(t, Struct) and not t.members
    assert [c.name for c in REGISTRY.commands.values() if placeholders(c.returns)] == []


def test_every_reply_conforms_to_its_declared_type(tmp_path):
    disk = tmp_path / "disk.img"
    disk.write_bytes(bytes(1 << 20))
    argv = kvmkit_command() + DEVICES + [
        "-drive", f"file={disk},format=raw,if=none,id=d0",
        "-device", "virtio-blk-pci,drive=d0,id=blk0"]
    replies = qmp_answers(argv, str(tmp_path / "k.sock"), QUERIES)
    problems = {}
    for (name, _), reply in zip(QUERIES, replies):
        if "error" in reply:
            continue                      # answered with an error: nothing to conform
        found = reply_problems(REGISTRY.commands[name].returns, reply["return"])
        if found:
            problems[name] = found[:5]
    assert problems == {}
    answered = {name for (name, _), reply in zip(QUERIES, replies) if "return" in reply}
    assert {"query-pci", "query-block", "query-qmp-schema", "query-rx-filter",
            "query-jobs", "qom-get"} <= answered


QEMU_QUERIES = ["query-pci", "query-status", "query-version", "query-kvm", "query-jobs",
                "query-chardev", "query-name", "query-uuid", "query-balloon",
                "query-memory-size-summary", "query-target", "query-cpus-fast"]


@pytest.mark.qemu
def test_qemus_replies_conform_to_kvmkits_declarations(tmp_path):
    questions = [(name, {}) for name in QEMU_QUERIES]
    args = ["-device", "virtio-balloon-pci,id=b0", "-device", "e1000,id=e0",
            "-chardev", "null,id=c0"]
    replies = qmp_answers([QEMU, "-accel", "kvm"] + args, str(tmp_path / "q.sock"), questions)
    problems = {name: reply_problems(REGISTRY.commands[name].returns, reply.get("return"))
                for name, reply in zip(QEMU_QUERIES, replies)}
    assert {name: found for name, found in problems.items() if found} == {}


def test_hmp_commands_that_forward_name_a_registered_command():
    from monitor.hmp import COMMANDS

    forwarding = [c for c in COMMANDS.values() if c.qmp]
    assert {c.name for c in forwarding} >= {"stop", "cont", "balloon", "set_link"}
    for cmd in forwarding:
        declared = {m.name for m in REGISTRY.commands[cmd.qmp].args}
        hmp_args = {spec.split(":")[0] for spec in cmd.args_type.split(",") if spec}
        assert hmp_args <= declared, cmd.name
