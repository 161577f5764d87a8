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
    # The process's start time (process_start), which tells a reused pid apart.
    start_time: int = 0

    def in_group(self, gid: int) -> bool:
        return gid == self.gid or gid in self.groups


def peer_credentials(sock: socket.socket) -> PeerCredentials:
    """The credentials of `sock`'s peer, as they were when it connected."""
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
    pid, uid, gid = _UCRED.unpack(raw)
    return PeerCredentials(pid, uid, gid, _peer_groups(sock), process_start(pid))


def process_start(pid: int, proc: Path = Path("/proc")) -> int:
    """When process `pid` started (clock ticks after boot; 0 if it is gone): with the
    pid, it names one process even after the pid is reused."""
    try:
        stat_line = (proc / str(pid) / "stat").read_text()
        # The command name (field 2) may hold spaces and parentheses: split after it.
        return int(stat_line.rsplit(")", 1)[1].split()[19])
    except (OSError, ValueError, IndexError):
        return 0


def client_key(creds: PeerCredentials, own_uid: int) -> str:
    """Who a local client is for per-client limits: its uid, or, for processes of the
    daemon's own user (every app, for a user's own daemon), the process."""
    if creds.uid != own_uid:
        return f"uid:{creds.uid}"
    return f"uid:{creds.uid}/pid:{creds.pid}:{creds.start_time}"


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
