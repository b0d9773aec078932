"""QMP errors: a class QEMU clients switch on, and QEMU's message text."""

from __future__ import annotations

GENERIC = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_FOUND = "DeviceNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
KVM_MISSING_CAP = "KVMMissingCap"


class QmpError(Exception):
    def __init__(self, desc: str, error_class: str = GENERIC) -> None:
        super().__init__(desc)
        self.desc = desc
        self.error_class = error_class

    def to_json(self) -> dict:
        return {"class": self.error_class, "desc": self.desc}


def device_not_found(name: str) -> QmpError:
    return QmpError(f"Device '{name}' not found", DEVICE_NOT_FOUND)
