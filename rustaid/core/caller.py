"""Who is calling: set by the transport for the duration of one request.

The gRPC edge (after authentication) and the D-Bus adapter set it; admission control
(per-client limits), authorisation and logs read it. Core code never parses transport
details itself.
"""

from __future__ import annotations

from contextvars import ContextVar
from dataclasses import dataclass


@dataclass(frozen=True)
class Caller:
    # Stable per client identity, used to key per-client limits and in logs:
    # "uid:1000", "token:NAME", "cert:CN", "dbus::1.42", "peer:ipv4:127.0.0.1:5555"...
    key: str
    # "unix", "tcp", "dbus", or "internal" for the daemon's own work.
    transport: str = "internal"
    uid: int | None = None
    # May call mutating RPCs (load plugins, apply updates, change power profile...).
    admin: bool = True


INTERNAL = Caller(key="internal")

_current: ContextVar[Caller] = ContextVar("rustaid_caller", default=INTERNAL)


def current() -> Caller:
    return _current.get()


def set_current(caller: Caller) -> None:
    """Set for the running task (and tasks it creates); each request runs in its own task."""
    _current.set(caller)
