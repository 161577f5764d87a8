"""Logging to stderr: text (journald's format under systemd) or JSON lines.

Every line emitted while a request is handled names it: its request id and caller
(rustaid.core.request_id, rustaid.core.caller), and in JSON its RPC method and the
caller's trace context. JSON lines follow the OpenTelemetry log data model (Timestamp,
SeverityText, SeverityNumber, Body, Resource, InstrumentationScope, Attributes,
TraceId, SpanId, TraceFlags), one record per line.

Credentials never reach the log on purpose (metadata is never logged); as a safety
net, anything that looks like one (`Bearer ...`, `authorization: ...`, `api_key=...`)
is replaced with [REDACTED] in every line.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from typing import Any

from rustaid import __version__
from rustaid.core import caller as caller_mod
from rustaid.core import request_id

# syslog priorities, which journald reads from a "<N>" line prefix.
_PRIORITY = {
    logging.DEBUG: 7,
    logging.INFO: 6,
    logging.WARNING: 4,
    logging.ERROR: 3,
    logging.CRITICAL: 2,
}
# OpenTelemetry SeverityNumber of each Python level (DEBUG, INFO, WARN, ERROR, FATAL).
_SEVERITY = {
    logging.DEBUG: 5,
    logging.INFO: 9,
    logging.WARNING: 13,
    logging.ERROR: 17,
    logging.CRITICAL: 21,
}

_REDACTED = "[REDACTED]"
_SECRETS = (
    # name: value / name=value for names that hold credentials (with their scheme).
    re.compile(
        r"(?i)(?<![A-Za-z0-9])(?<!caller=)((?:proxy-)?authorization|x-api-key|api[_-]?key|access[_-]?token|"
        r"refresh[_-]?token|auth[_-]?token|token|password|passwd|secret|client[_-]?secret)"
        r"(\"?'?\s*[:=]\s*\"?'?(?:(?:basic|bearer|digest|token)\s+)?)"
        r"(?!\[REDACTED\])[^\s\"',;&)]+"
    ),
    # An HTTP bearer credential anywhere.
    re.compile(r"(?i)(?<![A-Za-z0-9])(bearer\s+)[A-Za-z0-9._~+/=-]+"),
    # Credentials in URL query strings.
    re.compile(r"(?i)([?&](?:key|api_key|token|access_token|sig|signature)=)[^&\s\"']+"),
)


def _keep_name(m: re.Match[str]) -> str:
    return "".join(g or "" for g in m.groups()) + _REDACTED


def redact(text: str) -> str:
    """`text` with anything that looks like a credential replaced by [REDACTED]."""
    for pattern in _SECRETS:
        text = pattern.sub(_keep_name, text)
    return text


def _split_method(method: str) -> tuple[str, str, str]:
    """(rpc.system, rpc.service, rpc.method) of "/pkg.Service/Method" (gRPC) or a bare name."""
    if method.startswith("/") and method.count("/") == 2:
        _, service, name = method.split("/")
        return "grpc", service, name
    return "", "", method


class RequestContextFilter(logging.Filter):
    """Copies the running request's fields onto each record (in the emitting thread, so
    worker threads that run with the request's context name it too)."""

    def filter(self, record: logging.LogRecord) -> bool:
        info = request_id.current()
        caller = caller_mod.current()
        record.request_id = info.id if info is not None else ""
        record.rpc_method = info.method if info is not None else ""
        record.trace_id = info.trace_id if info is not None else ""
        record.span_id = info.span_id if info is not None else ""
        record.trace_flags = info.trace_flags if info is not None else ""
        record.caller = caller.key if caller is not caller_mod.INTERNAL else ""
        return True


def _field(record: logging.LogRecord, name: str) -> str:
    """A request field RequestContextFilter put on the record ("" when absent)."""
    value = getattr(record, name, "")
    return value if isinstance(value, str) else ""


def _suffix(record: logging.LogRecord) -> str:
    parts = []
    if rid := _field(record, "request_id"):
        parts.append(f"request_id={rid}")
    if key := _field(record, "caller"):
        parts.append(f"caller={key}")
    return f" [{' '.join(parts)}]" if parts else ""


class TextFormatter(logging.Formatter):
    """The message, then `[request_id=... caller=...]` while a request is handled."""

    def formatMessage(self, record: logging.LogRecord) -> str:
        return super().formatMessage(record) + _suffix(record)

    def format(self, record: logging.LogRecord) -> str:
        return redact(super().format(record))


class JournalFormatter(TextFormatter):
    def format(self, record: logging.LogRecord) -> str:
        prio = _PRIORITY.get(record.levelno, 6)
        text = super().format(record)
        # One journal entry per line: prefix each line of tracebacks too.
        return "\n".join(f"<{prio}>{line}" for line in text.splitlines())


class JsonFormatter(logging.Formatter):
    """One OpenTelemetry log record per line. Timestamp is nanoseconds since the epoch,
    as a string (the OTLP/JSON encoding of 64-bit integers). Under journald each line
    starts with its syslog priority ("<6>{...}"), which journald strips."""

    def __init__(self, journal: bool = False) -> None:
        super().__init__()
        self.journal = journal
        self.resource = {
            "service.name": "rustaid",
            "service.version": __version__,
            "process.pid": os.getpid(),
        }

    def format(self, record: logging.LogRecord) -> str:
        attributes: dict[str, Any] = {
            "code.namespace": record.name,
            "code.function": record.funcName,
            "code.lineno": record.lineno,
            "thread.name": record.threadName,
        }
        method = _field(record, "rpc_method")
        if method:
            system, service, name = _split_method(method)
            if system:
                attributes["rpc.system"] = system
                attributes["rpc.service"] = service
            attributes["rpc.method"] = name
        if rid := _field(record, "request_id"):
            attributes["rustaid.request.id"] = rid
        if key := _field(record, "caller"):
            attributes["rustaid.caller.key"] = key
        if record.exc_info and record.exc_info[0] is not None:
            attributes["exception.type"] = record.exc_info[0].__qualname__
            attributes["exception.message"] = redact(str(record.exc_info[1]))
            attributes["exception.stacktrace"] = redact(self.formatException(record.exc_info))
        elif record.exc_text:
            attributes["exception.stacktrace"] = redact(record.exc_text)
        if record.stack_info:
            attributes["code.stacktrace"] = redact(record.stack_info)
        out: dict[str, Any] = {
            "Timestamp": str(int(record.created * 1_000_000_000)),
            "SeverityText": record.levelname,
            "SeverityNumber": _SEVERITY.get(record.levelno, 9),
            "Body": redact(record.getMessage()),
            "Resource": self.resource,
            "InstrumentationScope": {"Name": record.name},
            "Attributes": attributes,
        }
        if trace_id := _field(record, "trace_id"):
            out["TraceId"] = trace_id
            out["SpanId"] = _field(record, "span_id")
            out["TraceFlags"] = _field(record, "trace_flags")
        line = json.dumps(out, ensure_ascii=True, default=str)
        if self.journal:
            return f"<{_PRIORITY.get(record.levelno, 6)}>{line}"
        return line


def setup_logging(level: str, fmt: str = "text") -> None:
    """Log to stderr at `level`, as "text" or "json" (see the module's doc)."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(RequestContextFilter())
    journal = bool(os.environ.get("JOURNAL_STREAM"))
    if fmt == "json":
        handler.setFormatter(JsonFormatter(journal=journal))
    elif journal:  # journald adds its own timestamps
        handler.setFormatter(JournalFormatter("%(name)s: %(message)s"))
    else:
        handler.setFormatter(
            TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s", "%H:%M:%S")
        )
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())
    # Python's warnings too go through the handler (one format for every line).
    logging.captureWarnings(True)
    # Third-party debug chatter (one line per grpc call) drowns our own debug output.
    for noisy in ("grpc", "asyncio"):
        logging.getLogger(noisy).setLevel(max(root.level, logging.INFO))
