"""QMP errors: a class QEMU clients switch on, and QEMU's message text."""

from __future__ import annotations

from vmm.errors import UserError

GENERIC = "GenericError"
COMMAND_NOT_FOUND = "CommandNotFound"
DEVICE_NOT_FOUND = "DeviceNotFound"
DEVICE_NOT_ACTIVE = "DeviceNotActive"
KVM_MISSING_CAP = "KVMMissingCap"


class QmpError(UserError):
    """A user error as the monitor answers it (vmm.errors.UserError with its class)."""

    def __init__(self, desc: str, error_class: str = GENERIC) -> None:
        super().__init__(desc, error_class)
        self.desc = desc

    @classmethod
    def of(cls, error: UserError) -> QmpError:
        if isinstance(error, QmpError):
            return error
        out = cls(str(error), error.error_class)
        out.hint = error.hint                  # HMP prints it, as QEMU's error_report_err
        return out

    def to_json(self) -> dict:
        return {"class": self.error_class, "desc": self.desc}


def device_not_found(name: str) -> QmpError:
    return QmpError(f"Device '{name}' not found", DEVICE_NOT_FOUND)
