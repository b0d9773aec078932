"""kvmkit's machine layer: KVM, guest memory, vCPUs, devices and boot."""

__version__ = "0.1.0"
