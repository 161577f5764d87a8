"""What clients are told of a failure, the same over gRPC, HTTP and D-Bus: messages
cut to a size a status line carries, and for bugs only where to look."""

from __future__ import annotations

from rustaid.core import request_id

# Longest status message sent, in UTF-8 bytes. The message travels in the trailers twice
# (grpc-message, percent-encoded, and the details); past the client's metadata limit
# (8 KiB soft, 16 KiB hard in gRPC core) the client gets RESOURCE_EXHAUSTED "Stream
# removed" instead of the error, e.g. for a message that quotes a huge request field.
MAX_STATUS_MESSAGE_BYTES = 1024


def bounded(message: str) -> str:
    """`message`, its middle cut when longer than MAX_STATUS_MESSAGE_BYTES."""
    data = message.encode()
    if len(data) <= MAX_STATUS_MESSAGE_BYTES:
        return message
    head = data[: MAX_STATUS_MESSAGE_BYTES * 3 // 4].decode(errors="ignore")
    tail = data[-(MAX_STATUS_MESSAGE_BYTES // 8) :].decode(errors="ignore")
    return f"{head} [... {len(message) - len(head) - len(tail)} characters cut ...] {tail}"


def internal_error_message() -> str:
    """What a client sees of a bug: where to look, and the id that finds its log lines."""
    rid = request_id.current_id()
    suffix = f", request id {rid}" if rid else ""
    return f"internal error; see the log{suffix}"
