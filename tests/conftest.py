"""Shared fixtures. KVM tests skip without /dev/kvm, except in CI
(KVMKIT_REQUIRE_KVM=1), where a missing /dev/kvm is a failure."""

from __future__ import annotations

import os
import shutil

import pytest
from guest import QEMU, kvm_usable, machine_args, start_kvmkit, start_qemu

REQUIRE_KVM = os.environ.get("KVMKIT_REQUIRE_KVM") == "1"


def require_kvm() -> None:
    if kvm_usable():
        return
    if REQUIRE_KVM:
        pytest.fail("/dev/kvm is missing or not accessible, and KVMKIT_REQUIRE_KVM=1")
    pytest.skip("/dev/kvm is not available")


def require_qemu() -> None:
    require_kvm()
    if shutil.which(QEMU) is None:
        if REQUIRE_KVM:
            pytest.fail(f"{QEMU} is missing (the tests' install step puts it there)")
        pytest.skip(f"{QEMU} is not installed")


def require_reference() -> None:
    from qmp_replay import REFERENCE

    if REFERENCE.exists():
        return
    if REQUIRE_KVM:
        pytest.fail(f"QEMU 7.2 reference captures not found at {REFERENCE}")
    pytest.skip("QEMU 7.2 reference captures not found")


@pytest.fixture(autouse=True)
def _kvm_marker(request):
    if request.node.get_closest_marker("reference"):
        require_reference()
    if request.node.get_closest_marker("qemu"):
        require_qemu()
    elif request.node.get_closest_marker("kvm"):
        require_kvm()


@pytest.fixture
def launch(tmp_path):
    """launch(args, vmm='kvmkit'|'qemu') -> Vmm, closed at the end of the test."""
    started = []

    def _launch(args, vmm="kvmkit", preexec_fn=None):
        start = start_kvmkit if vmm == "kvmkit" else start_qemu
        proc = start(args, cwd=str(tmp_path), preexec_fn=preexec_fn)
        started.append(proc)
        return proc

    yield _launch
    for proc in started:
        proc.close()


@pytest.fixture(params=["kvmkit", "qemu"])
def vmm_kind(request):
    """Runs a scenario on kvmkit and on QEMU 7.2 (the reference)."""
    if request.param == "qemu":
        require_qemu()
    else:
        require_kvm()
    return request.param


@pytest.fixture(scope="session")
def vnc_connect():
    """connect("HOST::PORT") -> a vncdotool client. Its Twisted reactor runs once per
    session (it cannot be started again once stopped)."""
    api = pytest.importorskip("vncdotool.api")
    yield lambda server, **kwargs: api.connect(server, timeout=30, **kwargs)
    api.shutdown()


__all__ = ["machine_args"]


@pytest.fixture
def netns():
    """A network namespace of the test's own, removed at the end."""
    import uuid

    pyroute2 = pytest.importorskip("pyroute2")
    if os.geteuid() != 0 or not os.path.exists("/dev/net/tun"):
        pytest.skip("needs root and /dev/net/tun for network namespaces and taps")
    name = f"kvmkit-{uuid.uuid4().hex[:8]}"
    pyroute2.netns.create(name)
    yield name
    pyroute2.netns.remove(name)


@pytest.fixture(scope="module")
def oracle_pair(tmp_path_factory):
    """kvmkit and QEMU 7.2 started alike (tests/qmp_oracle.py), for the module's
    tests to send the same messages; its tally is printed at the end."""
    from guest import kvm_usable
    from qmp_oracle import Pair, report

    if not kvm_usable():
        pytest.skip("/dev/kvm is not available")
    both = Pair(tmp_path_factory.mktemp("oracle"))
    yield both
    print("\n" + report(both.tally))
    both.close()
