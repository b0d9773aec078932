"""QMP fuzzing with QEMU 7.2 as the oracle, CI's seeded run (#17): a hypothesis
state machine sends kvmkit and QEMU, started alike, the same messages, built
from QEMU's schema by tests/qmp_oracle.py (valid ones, mutated ones, raw bytes),
one at a time or in pipelined bursts, and makes things (netdevs, devices,
objects) whose ids later messages use. Where QEMU has the command, kvmkit's
answer must be QEMU's: return or error, the error's class and text, the id.
Neither may hang or die. The long campaign is `python tests/qmp_oracle.py`."""

from __future__ import annotations

import itertools

import pytest
from hypothesis import HealthCheck, Phase, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule, run_state_machine_as_test
from qmp_oracle import IDS, MessageMaker

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]


class HypothesisChooser:
    def __init__(self, data) -> None:
        self.data = data

    def integer(self, lo: int, hi: int) -> int:
        return self.data.draw(st.integers(lo, hi))


@pytest.fixture(scope="module")
def pair(oracle_pair):
    return oracle_pair


_fresh = (f"made{n}" for n in itertools.count())
MAKE = [("netdev_add", lambda i: {"type": "user", "id": i}),
        ("object-add", lambda i: {"qom-type": "iothread", "id": i}),
        ("object-add", lambda i: {"qom-type": "rng-builtin", "id": i}),
        ("device_add", lambda i: {"driver": "virtio-rng-pci", "id": i}),
        ("device_add", lambda i: {"driver": "e1000", "id": i, "netdev": "n0"})]


def test_kvmkit_answers_as_qemu(pair):
    class Session(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.ids: list[str] = []          # what this run made, for its messages to name

        def maker(self, data) -> MessageMaker:
            return MessageMaker(HypothesisChooser(data), pair.ours, ids=IDS + self.ids)

        @rule(data=st.data())
        def one_message(self, data):
            differences = pair.run([self.maker(data).message()])
            assert not differences, differences[0]

        @rule(data=st.data(), size=st.integers(2, 8))
        def a_burst(self, data, size):
            maker = self.maker(data)
            differences = pair.run([maker.message() for _ in range(size)])
            assert not differences, differences

        @rule(kind=st.sampled_from(MAKE))
        def make_something(self, kind):
            command, arguments = kind
            new_id = next(_fresh)
            differences = pair.run([{"execute": command, "arguments": arguments(new_id)}])
            assert not differences, differences
            self.ids.append(new_id)

        @invariant()
        def both_answer(self):
            assert pair.kvmkit.alive() and pair.qemu.alive()

    run_state_machine_as_test(Session, settings=settings(
        max_examples=60, stateful_step_count=25, deadline=None, derandomize=True,
        phases=[Phase.generate], suppress_health_check=list(HealthCheck)))
    assert pair.tally.compared > 500
