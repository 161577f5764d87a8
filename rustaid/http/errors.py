"""Domain errors as HTTP answers, in one place: the status code, the `Retry-After`
header, and the body in the shape each family of clients reads (OpenAI's error object,
Ollama's `{"error": "..."}`)."""

from __future__ import annotations

import math
from typing import Any

from rustaid import errors
from rustaid.core.messages import bounded, internal_error_message


class BodyTooLarge(errors.InvalidArgument):
    """A request body over max_message_mb (HTTP 413)."""

    def __init__(self, limit: int) -> None:
        super().__init__(
            f"the request body is larger than {limit >> 20} MiB (max_message_mb): send less",
            field="body",
            reason="BODY_TOO_LARGE",
        )


# The HTTP mapping of the gRPC codes (google.rpc.Code), so both APIs agree.
STATUS: dict[type[errors.RustaidError], int] = {
    BodyTooLarge: 413,
    errors.InvalidArgument: 400,
    errors.PreconditionFailed: 400,
    errors.Unauthenticated: 401,
    errors.PermissionDenied: 403,
    errors.NotFound: 404,
    errors.AlreadyExists: 409,
    errors.ResourceExhausted: 429,
    errors.Cancelled: 499,
    errors.DataLoss: 500,
    errors.Unavailable: 503,
}
# OpenAI's error `type` for each status.
_OPENAI_TYPE = {
    400: "invalid_request_error",
    401: "authentication_error",
    403: "permission_error",
    404: "invalid_request_error",
    409: "invalid_request_error",
    413: "invalid_request_error",
    429: "rate_limit_error",
}


def status_of(error: BaseException) -> int:
    if isinstance(error, errors.RustaidError):
        for cls in type(error).__mro__:
            if cls in STATUS:
                return STATUS[cls]
    return 500


def message_of(error: BaseException) -> str:
    """What the client reads: the domain error's message, or where to look for a bug."""
    if isinstance(error, errors.RustaidError):
        return bounded(error.message)
    return internal_error_message()


def headers_of(error: BaseException) -> dict[str, str]:
    retry = getattr(error, "retry_after_s", 0.0)
    if isinstance(error, errors.ResourceExhausted | errors.Unavailable) and retry:
        return {"Retry-After": str(max(1, math.ceil(retry)))}
    return {}


def openai_body(error: BaseException) -> dict[str, Any]:
    status = status_of(error)
    field = getattr(error, "field", "") or None
    reason = getattr(error, "reason", "") or None
    return {
        "error": {
            "message": message_of(error),
            "type": _OPENAI_TYPE.get(status, "server_error"),
            "param": field,
            "code": reason.lower() if reason else None,
        }
    }


def ollama_body(error: BaseException) -> dict[str, Any]:
    return {"error": message_of(error)}
