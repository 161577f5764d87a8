"""Credentials of the process at the other end of a Unix socket (SO_PEERCRED).

The kernel records them when the peer calls connect(); they cannot be forged by the
peer. SO_PEERGROUPS (Linux 4.13) adds its supplementary groups, so group membership is
what the peer's process had, not what /etc/group says now.

Inside a user namespace (systemd's PrivateUsers=yes) ids that are not mapped read as
the overflow id (65534): only root, the service's user and group, and nobody are
mapped there. `unmapped()` finds configured ids that cannot be seen.
"""

from __future__ import annotations

import errno
import socket
import struct
from dataclasses import dataclass
from pathlib import Path

SO_PEERGROUPS = getattr(socket, "SO_PEERGROUPS", 59)
_UCRED = struct.Struct("iII")  # pid, uid, gid
# The kernel's limit on supplementary groups (NGROUPS_MAX).
_MAX_GROUPS = 65536


@dataclass(frozen=True)
class PeerCredentials:
    pid: int
    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials of `sock`'s peer, as they were when it connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid, _peer_groups(sock))


def _peer_groups(sock: socket.socket) -> tuple[int, ...]:
    size = 64 * 4
    while True:
        try:
            raw = sock.getsockopt(socket.SOL_SOCKET, SO_PEERGROUPS, size)
        except OSError as e:
            if e.errno == errno.ERANGE and size < _MAX_GROUPS * 4:
                size *= 16
                continue
            if e.errno == errno.ENOPROTOOPT:  # kernel older than 4.13
                return ()
            raise
        count = len(raw) // 4
        return struct.unpack(f"{count}I", raw[: count * 4])


def overflow_ids(proc_sys: Path = Path("/proc/sys/kernel")) -> tuple[int, int]:
    """The (uid, gid) that ids not mapped into this user namespace read as."""
    values = []
    for name in ("overflowuid", "overflowgid"):
        try:
            values.append(int((proc_sys / name).read_text()))
        except (OSError, ValueError):
            values.append(65534)
    return values[0], values[1]


def _mapped(map_file: Path, ident: int) -> bool:
    try:
        text = map_file.read_text()
    except OSError:
        return True  # no user namespaces here: every id is itself
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            inside, _outside, count = (int(p) for p in parts)
            if inside <= ident < inside + count:
                return True
    return False


def uid_mapped(uid: int, proc: Path = Path("/proc/self")) -> bool:
    """Whether `uid` is visible in this process's user namespace."""
    return _mapped(proc / "uid_map", uid)


def gid_mapped(gid: int, proc: Path = Path("/proc/self")) -> bool:
    return _mapped(proc / "gid_map", gid)
