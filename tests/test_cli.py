"""The command line: QEMU's syntax, QEMU's messages, exit status 1, no traceback."""

from __future__ import annotations

import subprocess

import pytest
from guest import kvmkit_command, probe_elf

from vmm.config import ConfigError, parse_args
from vmm.qemuopts import parse_opts, parse_size


def test_opts_syntax():
    assert parse_opts("virtio-net-pci,id=n0,mac=52:54:00:12:34:56", implied="driver") == {
        "driver": "virtio-net-pci", "id": "n0", "mac": "52:54:00:12:34:56"}
    assert parse_opts("file,path=a,,b,append=on", implied="backend") == {
        "backend": "file", "path": "a,b", "append": "on"}
    assert parse_opts("socket,server,nowait", implied="backend") == {
        "backend": "socket", "server": "on", "wait": "off"}


def test_sizes():
    assert parse_size("512M") == 512 << 20
    assert parse_size("1G") == 1 << 30
    assert parse_size("1.5G") == 3 << 29
    assert parse_size("1024", default_shift=20) == 1 << 30
    assert parse_size("64k") == 65536


def test_machine_config_from_a_typical_command_line():
    cfg = parse_args(["-machine", "pc,accel=kvm", "-enable-kvm", "-cpu", "host", "-m", "1G",
                      "-smp", "cpus=2", "-name", "guest=vm1", "-uuid",
                      "12345678-1234-1234-1234-123456789abc", "-nodefaults", "-display", "none",
                      "-kernel", "k", "-initrd", "i", "-append", "console=ttyS0", "-S",
                      "-no-reboot", "-no-shutdown",
                      "-chardev", "socket,id=c0,path=/tmp/s,server=on,wait=off",
                      "-serial", "chardev:c0", "-device", "isa-debug-exit,iobase=0xf4,iosize=4"])
    assert (cfg.memory, cfg.cpus, cfg.name, cfg.kernel, cfg.initrd, cfg.append) == (
        1 << 30, 2, "vm1", "k", "i", "console=ttyS0")
    assert cfg.start_paused and cfg.no_reboot and cfg.no_shutdown and cfg.nodefaults
    assert cfg.serials == ["c0"] and cfg.chardevs[0].options["path"] == "/tmp/s"
    assert cfg.devices[0].driver == "isa-debug-exit"
    assert cfg.devices[0].options == {"iobase": "0xf4", "iosize": "4"}


def test_smp_topology_product():
    assert parse_args(["-smp", "sockets=1,cores=2,threads=2"]).cpus == 4
    assert parse_args(["-smp", "3"]).cpus == 3


@pytest.mark.parametrize("argv,message", [
    (["-m", "foo"], "-m foo: Parameter 'size' expects a non-negative number below 2^64"),
    (["-foo"], "-foo: invalid option"),
    (["-kernel"], "-kernel: requires an argument"),
    (["-smp", "abc"], "Parameter 'smp.cpus' expects integer"),
    (["-smp", "0"], "-smp 0: CPU topology parameters must be greater than zero"),
    (["-machine", "q35x"], "unsupported machine type"),
    (["-accel", "tcg"], "-accel tcg: accelerator 'tcg' is not supported"),
    (["-cpu", "foo"], "unable to find CPU model 'foo'"),
    (["-uuid", "xyz"], "-uuid xyz: failed to parse UUID string: wrong format"),
    (["-display", "gtk"], "-display gtk: Parameter 'type' does not accept value 'gtk'"),
    (["-chardev", "foo,id=c"], "-chardev foo,id=c: 'foo' is not a valid char driver name"),
    (["-chardev", "file,id=c"], "-chardev file,id=c: chardev: file: no filename given"),
    (["-serial", "bogus:x"], "-serial bogus:x: 'bogus:x' is not a valid char driver"),
])
def test_config_errors_have_qemus_text(argv, message):
    with pytest.raises(ConfigError) as err:
        parse_args(argv)
    assert str(err.value).startswith(message)


def run_kvmkit(*args, timeout=30):
    return subprocess.run(kvmkit_command() + list(args), capture_output=True, text=True,
                          timeout=timeout, stdin=subprocess.DEVNULL)


@pytest.mark.parametrize("args,line", [
    (["-m", "foo"], "kvmkit: -m foo: Parameter 'size' expects a non-negative number below 2^64"),
    (["-nodefaults", "-kernel", "/nonexistent"],
     "kvmkit: could not open kernel file '/nonexistent': No such file or directory"),
    (["-nodefaults", "-device", "foo"],
     "kvmkit: -device foo: 'foo' is not a valid device model name"),
    (["-nodefaults", "-device", "isa-serial,bogus=1"],
     "kvmkit: -device isa-serial,bogus=1: Property 'isa-serial.bogus' not found"),
    (["-nodefaults", "-device", "isa-serial,chardev=nochr"],
     "kvmkit: -device isa-serial,chardev=nochr: "
     "Property 'serial.chardev' can't find value 'nochr'"),
    (["-nodefaults", "-device", "isa-debug-exit,iosize=zz"],
     "kvmkit: -device isa-debug-exit,iosize=zz: Parameter 'iosize' expects integer"),
    (["-nodefaults", "-initrd", "/nonexistent"],
     "kvmkit: could not load initial ram disk '/nonexistent': No such file or directory"),
])
def test_user_errors_print_one_line_and_exit_1(args, line):
    result = run_kvmkit(*args)
    assert result.returncode == 1
    assert result.stderr.splitlines()[0] == line
    assert "Traceback" not in result.stderr
    assert result.stdout == ""


def test_version_and_help():
    version = run_kvmkit("-version")
    assert version.returncode == 0 and "QEMU 7.2.22" in version.stdout
    help_ = run_kvmkit("-h")
    assert help_.returncode == 0 and "-kernel" in help_.stdout
    machines = run_kvmkit("-machine", "help")
    assert machines.returncode == 0 and machines.stdout.splitlines()[1].startswith("pc ")
    devices = run_kvmkit("-device", "help")
    assert 'name "isa-serial"' in devices.stdout


def test_missing_kvm_is_one_line_and_status_1(monkeypatch, capsys):
    from qmp import cli

    monkeypatch.setattr(cli, "KVM_DEVICE", "/nonexistent/kvm")
    assert cli.main(["-nodefaults", "-kernel", probe_elf()]) == 1
    err = capsys.readouterr().err
    assert err == "kvmkit: Could not access KVM kernel module: No such file or directory\n"


def test_help_names_the_qemu_version_as_harnesses_read_it():
    first = run_kvmkit("-h").stdout.splitlines()[0]
    assert first.startswith("QEMU emulator version 7.2.22 (kvmkit ")
    # kvm-unit-tests: IFS='[ .]' read -r _ _ _ MAJOR MINOR MICRO rest
    assert first.replace(".", " ").split()[3:6] == ["7", "2", "22"]


@pytest.mark.qemu
def test_device_help_lines_are_qemus_for_every_model_kvmkit_has():
    from guest import QEMU

    ours = run_kvmkit("-device", "?").stdout
    theirs = subprocess.run([QEMU, "-device", "help"], capture_output=True, text=True,
                            timeout=30).stdout
    for line in ours.splitlines():
        assert not line or line in theirs.splitlines(), line
    headers = [line for line in ours.splitlines() if line.endswith("devices:")]
    their_headers = [line for line in theirs.splitlines() if line.endswith("devices:")]
    assert headers == [h for h in their_headers if h in headers]     # QEMU's order
    assert 'name "pc-testdev", bus ISA' in ours
    assert 'name "pci-testdev", bus PCI, desc "PCI Test Device"' in ours


@pytest.mark.parametrize("args,line", [
    (["-cpu", "Haswel"], "kvmkit: unable to find CPU model 'Haswel'"),
    (["-cpu", "qemu64,+bogus"], "kvmkit: Property 'qemu64-x86_64-cpu.bogus' not found"),
    (["-global", "foo"], "kvmkit: -global foo: Invalid parameter 'foo'"),
    (["-nodefaults", "-global", "kvm-pit.lost_tick_policy=often", "-kernel", "PROBE"],
     "kvmkit: Parameter 'lost_tick_policy' does not accept value 'often'"),
    (["-machine", "pit=maybe"],
     "kvmkit: -machine pit=maybe: Parameter 'pit' expects 'on' or 'off'"),
])
def test_cpu_global_and_machine_errors(args, line):
    args = [probe_elf() if a == "PROBE" else a for a in args]
    proc = run_kvmkit(*args)
    assert proc.returncode == 1
    assert proc.stderr.splitlines()[-1] == line


def test_cpu_help_lists_the_models():
    out = run_kvmkit("-cpu", "help").stdout.splitlines()
    assert out[0] == "Available CPUs:"
    models = out[1:out.index("")]
    assert {"host", "max", "qemu64", "SandyBridge", "EPYC"} <= {line.split()[1] for line in models}
    assert "x86 SandyBridge-IBRS      (alias of SandyBridge-v2)" in models
    assert out[out.index("") + 1] == "Recognized CPUID flags:"
