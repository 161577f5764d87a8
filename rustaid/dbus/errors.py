"""Domain errors -> named D-Bus errors, in one table (as services/errors.py does for gRPC).

Handlers raise rustaid.errors.*; the dispatcher turns each into an error reply named
`org.rustai.Daemon1.Error.<Name>` whose text is the error's message.
"""

from __future__ import annotations

from dbus_next.errors import DBusError

from rustaid import errors

PREFIX = "org.rustai.Daemon1.Error."

INVALID_ARGUMENT = PREFIX + "InvalidArgument"
NOT_FOUND = PREFIX + "NotFound"
ALREADY_EXISTS = PREFIX + "AlreadyExists"
PRECONDITION_FAILED = PREFIX + "PreconditionFailed"
RESOURCE_EXHAUSTED = PREFIX + "ResourceExhausted"
UNAVAILABLE = PREFIX + "Unavailable"
PERMISSION_DENIED = PREFIX + "PermissionDenied"
UNAUTHENTICATED = PREFIX + "Unauthenticated"
DATA_LOSS = PREFIX + "DataLoss"
CANCELLED = PREFIX + "Cancelled"
FAILED = PREFIX + "Failed"
INTERNAL = PREFIX + "Internal"
# Standard D-Bus error for arguments of the wrong type (the bus-level contract).
INVALID_ARGS = "org.freedesktop.DBus.Error.InvalidArgs"

NAMES: dict[type[errors.RustaidError], str] = {
    errors.InvalidArgument: INVALID_ARGUMENT,
    errors.NotFound: NOT_FOUND,
    errors.AlreadyExists: ALREADY_EXISTS,
    errors.PreconditionFailed: PRECONDITION_FAILED,
    errors.ResourceExhausted: RESOURCE_EXHAUSTED,
    errors.Unavailable: UNAVAILABLE,
    errors.PermissionDenied: PERMISSION_DENIED,
    errors.Unauthenticated: UNAUTHENTICATED,
    errors.DataLoss: DATA_LOSS,
    errors.Cancelled: CANCELLED,
}

# Every name a client may see from org.rustai.Daemon1 (documented in docs/dbus.md).
ALL_NAMES = (*NAMES.values(), FAILED, INTERNAL)


def error_name(error: errors.RustaidError) -> str:
    for cls in type(error).__mro__:
        if cls in NAMES:
            return NAMES[cls]
    return FAILED


def to_dbus_error(error: errors.RustaidError) -> DBusError:
    return DBusError(error_name(error), error.message)
