"""Domain errors. The gRPC edge maps each class to one status code, in one place."""

from __future__ import annotations

from collections.abc import Sequence


class RustaidError(Exception):
    """Base class: a failure a client can understand and act on."""

    def __init__(self, message: str, *, reason: str = "", field: str = "") -> None:
        super().__init__(message)
        self.message = message
        # Machine-readable reason (google.rpc.ErrorInfo.reason), e.g. "MODEL_NOT_FOUND".
        self.reason = reason
        # The request field at fault, for INVALID_ARGUMENT (google.rpc.BadRequest).
        self.field = field


class InvalidArgument(RustaidError):
    """The request is malformed; the message says which field and how to fix it."""

    def __init__(
        self,
        message: str,
        *,
        reason: str = "",
        field: str = "",
        violations: Sequence[tuple[str, str]] = (),
    ) -> None:
        super().__init__(message, reason=reason, field=field)
        # (field, message) of every field at fault (google.rpc.BadRequest lists them all).
        self.violations = list(violations) or [(field, message)]

    @classmethod
    def all_of(cls, found: Sequence[InvalidArgument]) -> InvalidArgument:
        """One error for every field at fault, so a client fixes them in one go."""
        if len(found) == 1:
            return found[0]
        pairs = [pair for e in found for pair in e.violations]
        return cls("; ".join(e.message for e in found), field=pairs[0][0], violations=pairs)


class NotFound(RustaidError):
    """A named thing (model, plugin, collection) does not exist."""


class AlreadyExists(RustaidError):
    pass


class PreconditionFailed(RustaidError):
    """The system is not in a state where the request can run (e.g. model broken)."""


class ResourceExhausted(RustaidError):
    """Queue full, memory budget exceeded; retry later."""

    def __init__(self, message: str, *, retry_after_s: float = 1.0, reason: str = "") -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class Unavailable(RustaidError):
    """Transient: the daemon is shutting down or a backend is unreachable."""

    def __init__(self, message: str, *, retry_after_s: float = 0.0, reason: str = "") -> None:
        super().__init__(message, reason=reason)
        self.retry_after_s = retry_after_s


class PermissionDenied(RustaidError):
    pass


class DataLoss(RustaidError):
    """Data arrived damaged (a checksum mismatch); what was received is discarded."""


class Unauthenticated(RustaidError):
    """Credentials are missing or were refused (e.g. a remote endpoint's 401)."""


class Cancelled(RustaidError):
    """The client went away or its deadline passed."""
