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
    # "uid:1000", "uid:1000/pid:4242:98765" (a process of the daemon's own user),
    # "token:NAME", "cert:CN", "dbus::1.42", "peer:ipv4:127.0.0.1" (anonymous TCP)...
    key: str
    # "unix", "tcp", "dbus", or "internal" for the daemon's own work.
    transport: str = "internal"
    uid: int | None = None
    # May call mutating RPCs (load plugins, apply updates, change power profile...).
    admin: bool = True


INTERNAL = Caller(key="internal")


def anonymous_key(peer: str) -> str:
    """The key of a caller known only by its address (gRPC's peer string): its host,
    without the port, so that opening more connections does not earn more shares
    ("ipv4:127.0.0.1:5555" -> "peer:ipv4:127.0.0.1")."""
    if peer.startswith(("ipv4:", "ipv6:")):
        host, _, port = peer.rpartition(":")
        if port.isdigit():
            return f"peer:{host}"
    return f"peer:{peer}"


_current: ContextVar[Caller] = ContextVar("rustaid_caller", default=INTERNAL)


def current() -> Caller:
    return _current.get()


def set_current(caller: Caller) -> None:
    """Set for the running task (and tasks it creates); each request runs in its own task."""
    _current.set(caller)
