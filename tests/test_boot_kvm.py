"""kvmkit boots kernels built by the tests: raw PVH ELFs, vmlinux, bzImages."""

from __future__ import annotations

import subprocess

import pytest
from guest import machine_args
from tinyguests import (
    MULTIBOOT_ASM,
    build_elf32,
    build_vmlinux,
    bzimage,
    compress,
    out_byte,
    pvh_serial_guest,
    stackless_pvh_guest,
)

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
    # 'L', the e820 entry count (5: low RAM, EBDA, BIOS area, high RAM, the firmware's
    # high tables), the command line
    assert vm.read_line(30) == "L5hi there"
    assert vm.wait_exit() == (0x21 << 1) | 1


def test_plain_vmlinux_elf_boots_at_its_64_bit_entry(launch, tmp_path):
    vm = run_kernel(launch, tmp_path, build_vmlinux(tmp_path), append="x")
    assert vm.read_line(30) == "L5x"
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



def test_multiboot_kernel_gets_modules_and_command_line_as_from_qemu(launch, tmp_path,
                                                                     vmm_kind):
    (tmp_path / "mod1").write_text("ABCD and more")
    (tmp_path / "mod2").write_text("WXYZ")
    kernel = tmp_path / "mb.elf"
    kernel.write_bytes(build_elf32(tmp_path, "mb", MULTIBOOT_ASM))
    args = machine_args(kernel=str(kernel),
                        extra=["-append", "hello world", "-initrd", "mod1 a1,,b1 x,mod2"])
    vm = launch(args, vmm=vmm_kind)
    # QEMU's command line is the kernel's file name, a space, then -append; ",," is a comma
    assert vm.read_line(30) == f"MB{kernel} hello world"
    assert vm.read_line(30) == "2"
    assert vm.read_line(30) == "mod1 a1,b1 x:ABCD"
    assert vm.read_line(30) == "mod2:WXYZ"
    assert vm.wait_exit() == (0x21 << 1) | 1


def test_pvh_entry_leaves_a_usable_stack_and_qemus_selectors(launch, tmp_path, vmm_kind):
    path = tmp_path / "stackless.elf"
    path.write_bytes(stackless_pvh_guest(tmp_path))
    vm = launch(machine_args(kernel=str(path)), vmm=vmm_kind)
    # it called a function before loading a stack; CS 0x08 and SS 0x10 as QEMU's ROM leaves
    assert vm.read_line(30) == "ok 08 10 "
    assert vm.wait_exit() == (0x21 << 1) | 1


def test_elf_without_a_boot_protocol_is_refused_with_one_line(tmp_path):
    from guest import kvmkit_command
    elf32 = build_elf32(tmp_path, "plain", ".globl _start\n_start: hlt\n")
    path = tmp_path / "plain.elf"
    path.write_bytes(elf32)
    proc = subprocess.run(kvmkit_command() + machine_args(kernel=str(path)),
                          capture_output=True, text=True, timeout=30, stdin=subprocess.DEVNULL)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines()[-1] == (
        "kvmkit: kernel is an ELF image with neither a PVH note nor a multiboot header, "
        "and not an x86-64 vmlinux")
