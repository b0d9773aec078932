"""Device models as declared in vmm/devices/ against a live QEMU 7.2: the properties
libvirt reads (device-list-properties, qom-list-properties, -device X,help), the
types (qom-list-types), and -device's checks of each property's value, as text
and as JSON."""

from __future__ import annotations

import subprocess

import pytest
from guest import QEMU, kvmkit_command, qmp_answers

from vmm import qdev

pytestmark = [pytest.mark.kvm, pytest.mark.qemu]

MODELS = sorted(t.name for t in qdev.all_types() if not t.abstract and t.realize)
VIRTIO_DEVICES = sorted({t.virtio for t in qdev.all_types() if t.virtio})
QOM_TYPES = ["e1000", "isa-debug-exit", "pci-device", "virtio-device", "rtl8139", "virtio-pci",
             "isa-serial", "pci-testdev"]


def _by_name(answer: dict) -> dict[str, dict]:
    return {p["name"]: p for p in answer["return"]}


@pytest.fixture(scope="module")
def answers(tmp_path_factory):
    """Both VMMs' answers to the same introspection questions."""
    tmp = tmp_path_factory.mktemp("declarations")
    questions = [("device-list-properties", {"typename": t}) for t in MODELS + VIRTIO_DEVICES]
    questions += [("qom-list-properties", {"typename": t})
                  for t in QOM_TYPES]
    questions += [("qom-list-types", {"abstract": True}),
                  ("qom-list-types", {"implements": "pci-device"})]
    ours = qmp_answers(kvmkit_command(), str(tmp / "k.sock"), questions)
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp / "q.sock"), questions)
    return dict(zip([(n, a.get("typename", a.get("implements"))) for n, a in questions],
                    zip(ours, theirs)))


@pytest.mark.parametrize("typename", MODELS + VIRTIO_DEVICES)
def test_device_list_properties_are_qemus(answers, typename):
    """Every property QEMU lists, with its type, default and description, and no other."""
    ours, theirs = answers[("device-list-properties", typename)]
    assert _by_name(ours) == _by_name(theirs)


@pytest.mark.parametrize("typename", QOM_TYPES)
def test_qom_list_properties_are_qemus(answers, typename):
    ours, theirs = answers[("qom-list-properties", typename)]
    assert _by_name(ours) == _by_name(theirs)


def test_every_type_is_qemus_with_its_parent(answers):
    ours, theirs = answers[("qom-list-types", None)]
    qemu_types = {t["name"]: t.get("parent") for t in theirs["return"]}
    for t in ours["return"]:
        assert qemu_types[t["name"]] == t["parent"], t
    ours, theirs = answers[("qom-list-types", "pci-device")]
    qemu_pci = {t["name"] for t in theirs["return"]}
    assert {t["name"] for t in ours["return"]} <= qemu_pci
    assert {"e1000", "virtio-net-pci", "pci-testdev"} <= {t["name"] for t in ours["return"]}


def _stderr_and_stdout(argv: list[str]) -> tuple[int, str, str]:
    proc = subprocess.run(argv, capture_output=True, text=True, timeout=30,
                          stdin=subprocess.DEVNULL)
    # QEMU warns about the qemu64 model's pni on this host; kvmkit as well
    err = [ln for ln in proc.stderr.splitlines() if "CPUID" not in ln]
    return proc.returncode, "\n".join(err), proc.stdout


@pytest.mark.parametrize("model", MODELS + ["nosuch"])
def test_device_help_is_qemus(model):
    args = ["-nodefaults", "-display", "none", "-device", f"{model},help"]
    ours = _stderr_and_stdout(kvmkit_command() + args)
    theirs = _stderr_and_stdout([QEMU, "-accel", "kvm"] + args)
    assert ours[0] == theirs[0] and ours[2] == theirs[2]
    assert ours[1].split(": ", 1)[-1] == theirs[1].split(": ", 1)[-1]


BAD_DEVICES = [
    "isa-debug-exit,iobase=abc", "isa-debug-exit,iobase=-1",
    "isa-debug-exit,iobase=0x100000000", "e1000,mitigation=maybe", "e1000,nosuch=1",
    "virtio-rng-pci,disable-legacy=x", "virtio-net-pci,rx_queue_size=70000",
    "virtio-net-pci,rx_queue_size=abc", "virtio-blk-pci,physical_block_size=1x",
    "virtio-blk-pci,werror=x", "virtio-rng-pci,werror=x", "virtio-rng-pci,max-bytes=-5",
    "e1000,addr=zz", "e1000,bootindex=abc", "e1000,legacy-addr=1", "e1000,type=x",
    "virtio-balloon-pci,guest-stats=1", "virtio-balloon-pci,virtio-backend=1",
    "virtio-balloon-pci,guest-stats-polling-interval=abc", "virtio-rng-pci,rng=foo",
    "virtio-balloon-pci,iothread=x", "virtio-net-device", "virtconsole",
    '{"driver":"e1000","mitigation":"on"}', '{"id":"x"}', '{"driver":"nosuch"}',
    '{"driver":"isa-debug-exit","iobase":"0x501"}', '{"driver":"virtio-net-pci","speed":"1"}',
    '{"driver":"virtio-net-pci","tx":5}',
    '{"driver":"virtio-net-pci","rx_queue_size":70000}',
    '{"driver":"virtio-blk-pci","physical_block_size":"1x"}',
]


@pytest.mark.parametrize("device", BAD_DEVICES)
def test_bad_property_values_are_refused_as_qemu(device):
    args = ["-nodefaults", "-display", "none", "-S", "-device", device]
    ours = _stderr_and_stdout(kvmkit_command() + args)
    theirs = _stderr_and_stdout([QEMU, "-accel", "kvm"] + args)
    assert ours[0] == theirs[0] == 1
    assert ours[1].split(": ", 1)[1] == theirs[1].split(": ", 1)[1]


def test_json_device_and_netdev_are_accepted(tmp_path):
    """libvirt's form: -netdev and -device as JSON, values with their JSON types."""
    argv = kvmkit_command() + [
        "-netdev", '{"type":"user","id":"u0","ipv4":true,"hostfwd":[{"str":"tcp::0-:22"}]}',
        "-device", '{"driver":"e1000","id":"e0","netdev":"u0","addr":"0x5","mitigation":true}',
        "-device", '{"driver":"virtio-rng-pci","id":"r0","max-bytes":1024,"period":1000}']
    answers = qmp_answers(argv, str(tmp_path / "k.sock"), [
        ("qom-get", {"path": "/machine/peripheral/r0", "property": "max-bytes"}),
        ("human-monitor-command", {"command-line": "info network"})])
    assert answers[0] == {"return": 1024}
    assert answers[1]["return"].startswith("e0: index=0,type=nic,model=e1000,")


NETDEVS = [
    {"id": "n0", "type": "user", "ipv4": "yes"},
    {"id": "n1", "type": "user", "hostfwd": [{"str": "tcp::0-:22"}]},
    {"id": "n2", "type": "user", "restrict": 1},
    {"id": "n3", "type": "user", "hostfwd": "tcp::0-:22"},
    {"id": "n4", "type": "user", "nosuch": "x"},
]


def test_netdev_add_checks_member_types_as_qemu(tmp_path):
    questions = [("netdev_add", args) for args in NETDEVS]
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "k.sock"), questions)
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "q.sock"), questions)
    assert ours == theirs
    assert theirs[1] == {"return": {}}


def test_netdev_add_from_hmp_and_its_schema(tmp_path):
    """HMP's option text is typed as QEMU's keyval does, and the schema describes each
    back end's members (QEMU's Netdev union), as libvirt reads them."""
    lines = ["netdev_add user,id=u1,ipv4=on,restrict=off", "netdev_add user,id=u2,ipv4=maybe",
             "netdev_add user,id=u3,hostfwd=tcp::0-:22", "info network"]
    questions = [("human-monitor-command", {"command-line": line}) for line in lines]
    ours = qmp_answers(kvmkit_command(), str(tmp_path / "k.sock"),
                       questions + [("query-qmp-schema", {})])
    theirs = qmp_answers([QEMU, "-accel", "kvm"], str(tmp_path / "q.sock"), questions)
    assert ours[:-1] == theirs
    schema = {entity["name"]: entity for entity in ours[-1]["return"]}
    union = schema[schema["netdev_add"]["arg-type"]]
    assert union["tag"] == "type" and [m["name"] for m in union["members"]] == ["id", "type"]
    user = schema[next(v["type"] for v in union["variants"] if v["case"] == "user")]
    members = {m["name"]: m["type"] for m in user["members"]}
    assert members["ipv4"] == "bool" and schema[members["hostfwd"]]["meta-type"] == "array"


@pytest.mark.parametrize("args", [
    ["-global", "e1000.nosuch=1", "-device", "e1000"],
    ["-global", "e1000.mitigation=maybe", "-device", "e1000"],
    ["-global", "virtio-pci.disable-legacy=x", "-device", "virtio-rng-pci"]])
def test_globals_that_do_not_apply_are_refused_as_qemu(args):
    argv = ["-nodefaults", "-display", "none", "-S", *args]
    ours = _stderr_and_stdout(kvmkit_command() + argv)
    theirs = _stderr_and_stdout([QEMU, "-accel", "kvm"] + argv)
    assert ours[0] == theirs[0] == 1
    assert ours[1].split(": ", 1)[1] == theirs[1].split(": ", 1)[1]


def test_a_global_for_a_parent_type_reaches_its_devices(tmp_path):
    argv = kvmkit_command() + ["-global", "virtio-pci.disable-legacy=on",
                               "-device", "virtio-rng-pci,id=r0"]
    answers = qmp_answers(argv, str(tmp_path / "k.sock"), [
        ("qom-get", {"path": "/machine/peripheral/r0", "property": "disable-legacy"}),
        ("human-monitor-command", {"command-line": "info pci"})])
    assert answers[0] == {"return": "on"}
    assert "1af4:1044" in answers[1]["return"]            # modern only: 0x1040 + 4
