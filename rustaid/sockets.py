"""Unix socket files of the daemon's listeners (gRPC and HTTP): found, secured and
removed the same way for both."""

from __future__ import annotations

import contextlib
import grp
import os
import socket
from pathlib import Path

from rustaid.errors import InvalidArgument, Unavailable


def unix_path(address: str) -> Path | None:
    if address.startswith("unix://"):
        return Path(address.removeprefix("unix://"))
    if address.startswith("unix:"):
        return Path(address.removeprefix("unix:"))
    return None


def check_socket_free(path: Path) -> None:
    """Refuse to steal the socket of a daemon that is still running; remove a stale one."""
    if not path.exists():
        return
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as s:
        try:
            s.connect(str(path))
        except OSError:
            path.unlink()  # left by a daemon that died
            return
    raise Unavailable(f"another process is already listening on {path}")


def secure_socket(path: Path, mode: int, group: str) -> None:
    if group:
        try:
            gid = grp.getgrnam(group).gr_gid
        except KeyError as e:
            raise InvalidArgument(f"socket_group {group!r} does not exist") from e
        os.chown(path, -1, gid)
    path.chmod(mode)


def remove_sockets(listen: tuple[str, ...]) -> None:
    for address in listen:
        path = unix_path(address)
        if path is not None:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()
