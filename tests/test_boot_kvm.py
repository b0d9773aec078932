"""kvmkit boots kernels built by the tests: raw PVH ELFs, vmlinux, bzImages."""

from __future__ import annotations

import pytest
from guest import machine_args
from tinyguests import build_vmlinux, bzimage, compress, out_byte, pvh_serial_guest

pytestmark = pytest.mark.kvm


def run_kernel(launch, tmp_path, image: bytes, extra=(), append="console=ttyS0"):
    path = tmp_path / "kernel.img"
    path.write_bytes(image)
    args = machine_args(kernel=str(path), extra=["-append", append, *extra])
    return launch(args)


def test_raw_pvh_guest_prints_and_exits_with_chosen_status(launch, tmp_path):
    vm = run_kernel(launch, tmp_path, pvh_serial_guest(b"hello from pvh\n", 42))
    assert vm.read_line(30) == "hello from pvh"
    assert vm.wait_exit() == (42 << 1) | 1


@pytest.mark.parametrize("fmt", ["gzip", "bzip2", "lzma", "xz", "lz4", "zstd", "none"])
def test_bzimage_payload_is_decompressed_and_entered_at_64_bit(launch, tmp_path, fmt):
    vmlinux = build_vmlinux(tmp_path)
    vm = run_kernel(launch, tmp_path, bzimage(compress(vmlinux, fmt)), append="hi there")
    # 'L', the e820 entry count (4: low RAM, EBDA, BIOS area, high RAM), the command line
    assert vm.read_line(30) == "L4hi there"
    assert vm.wait_exit() == (0x21 << 1) | 1


def test_plain_vmlinux_elf_boots_at_its_64_bit_entry(launch, tmp_path):
    vm = run_kernel(launch, tmp_path, build_vmlinux(tmp_path), append="x")
    assert vm.read_line(30) == "L4x"
    assert vm.wait_exit() == 0x43


def test_guest_reset_through_i8042_reboots_the_guest(launch, tmp_path):
    # Each boot prints "boot" and pulses the reset line through the keyboard controller.
    image = pvh_serial_guest(b"boot\n", None, tail=out_byte(0x64, 0xFE))
    vm = run_kernel(launch, tmp_path, image)
    for _ in range(3):
        assert vm.read_line(30) == "boot"
    assert vm.proc.poll() is None


def test_no_reboot_turns_a_guest_reset_into_exit(launch, tmp_path):
    image = pvh_serial_guest(b"boot\n", None, tail=out_byte(0xCF9, 0x06))
    vm = run_kernel(launch, tmp_path, image, extra=["-no-reboot"])
    assert vm.read_line(30) == "boot"
    assert vm.wait_exit() == 0


def test_acpi_s5_powers_off(launch, tmp_path):
    # PM1a_CNT (0x604): SLP_TYP=0 (S5 in the DSDT), SLP_EN
    tail = b"\x66\xba\x04\x06\x66\xb8\x00\x20\x66\xef"  # mov dx,0x604; mov ax,0x2000; out dx,ax
    vm = run_kernel(launch, tmp_path, pvh_serial_guest(b"off\n", None, tail=tail))
    assert vm.read_line(30) == "off"
    assert vm.wait_exit() == 0


def test_no_shutdown_keeps_the_vmm_after_power_off(launch, tmp_path):
    tail = b"\x66\xba\x04\x06\x66\xb8\x00\x20\x66\xef"
    vm = run_kernel(launch, tmp_path, pvh_serial_guest(b"off\n", None, tail=tail),
                    extra=["-no-shutdown"])
    assert vm.read_line(30) == "off"
    with pytest.raises(AssertionError):
        vm.wait_exit(timeout=2)

