"""Which request the running code serves: its id, RPC method and trace context.

Set by the transport for the duration of one request, beside the caller
(rustaid.core.caller); every log line emitted while handling it carries these fields
(rustaid.log), and INTERNAL errors name the id so a user can find the log lines.
"""

from __future__ import annotations

import re
import secrets
from contextvars import ContextVar
from dataclasses import dataclass

# Metadata keys (gRPC metadata keys are lower case).
REQUEST_ID_HEADER = "x-request-id"
TRACEPARENT_HEADER = "traceparent"

MAX_REQUEST_ID_LENGTH = 128
# Characters that cannot break a log line, a JSON string or a header.
_REQUEST_ID = re.compile(rf"[A-Za-z0-9][A-Za-z0-9._:\-]{{0,{MAX_REQUEST_ID_LENGTH - 1}}}")
# W3C Trace Context: version-traceid-parentid-flags, lower-case hex.
_TRACEPARENT = re.compile(r"([0-9a-f]{2})-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})(-.*)?")


@dataclass(frozen=True)
class RequestInfo:
    id: str
    # "/rustaid.api.v1.GenerateService/Generate", or a D-Bus method; "" when unknown.
    method: str = ""
    # From the caller's `traceparent` (hex; "" when none was sent).
    trace_id: str = ""
    span_id: str = ""
    trace_flags: str = ""


_current: ContextVar[RequestInfo | None] = ContextVar("rustaid_request", default=None)


def current() -> RequestInfo | None:
    return _current.get()


def current_id() -> str:
    info = _current.get()
    return info.id if info is not None else ""


def set_current(info: RequestInfo) -> None:
    """Set for the running task (and the tasks it creates); each request runs in its own."""
    _current.set(info)


def new_id() -> str:
    """A fresh id: 16 hex digits (64 random bits)."""
    return secrets.token_hex(8)


def accept_id(value: str | None) -> str:
    """The client's id when it is well-formed (1-128 of A-Z a-z 0-9 . _ : -, starting
    with a letter or digit), a fresh one otherwise."""
    if value and _REQUEST_ID.fullmatch(value):
        return value
    return new_id()


def parse_traceparent(value: str | None) -> tuple[str, str, str]:
    """(trace_id, parent span_id, flags) from a W3C `traceparent`; empty when malformed."""
    if not value:
        return "", "", ""
    m = _TRACEPARENT.fullmatch(value.strip())
    if m is None:
        return "", "", ""
    version, trace_id, span_id, flags, rest = m.groups()
    if version == "ff" or (version == "00" and rest):
        return "", "", ""
    if trace_id == "0" * 32 or span_id == "0" * 16:
        return "", "", ""
    return trace_id, span_id, flags
