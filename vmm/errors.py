"""The one user-error type: what a user, a client or an option asked for is refused.

It carries QEMU's message and the QMP error class a client switches on; the
monitor turns it into a QMP error or HMP text in one place. Any other exception
escaping a command is a bug in kvmkit, never the user's.
"""

from __future__ import annotations

GENERIC_ERROR = "GenericError"
DEVICE_NOT_FOUND = "DeviceNotFound"


class UserError(Exception):
    def __init__(self, message: str, error_class: str = GENERIC_ERROR, hint: str = "") -> None:
        super().__init__(message)
        self.error_class = error_class
        self.hint = hint            # a line QEMU adds on the command line only (error_append_hint)
