"""The Unix socket relay that gives gRPC calls their peer's credentials.

gRPC's Python API shows a server nothing about a Unix socket peer (`context.peer()` is
"unix:", the auth context is empty) and cannot adopt a socket accepted elsewhere. So
the daemon accepts on the public socket itself, reads the peer's credentials there
(SO_PEERCRED, SO_PEERGROUPS), and copies the connection's bytes to the gRPC server,
which listens on a private socket in a directory only the daemon's user may enter
(0700).

The identity travels in the relay's own end of that private connection: before
connecting, the relay binds its socket to a fresh abstract address,
"rustaid-relay-<16 random hex digits>", and records the credentials under that name.
gRPC reports it as the call's peer ("unix-abstract:rustaid-relay-..."), and the
interceptor looks it up. A client cannot forge it: it would have to connect to the
private socket, which only the daemon's user (and root) can reach, and a name is
random per connection and dropped when the connection ends, so it cannot be guessed
or reused.

The bytes are copied by asyncio protocols in the daemon's event loop, with flow
control both ways (a slow reader pauses the other side). The HTTP/2 stream is not
parsed: the relay adds one copy per direction and nothing else.

Connections are shared out (ConnectionLimits): each client (its uid; a process, for the
daemon's own user, see peercred.client_key) may hold `per_client` of them, all together
`total`, of which `reserved` only administrators may take, so no user can lock root
out. The total follows the open-file limit: each relayed connection costs three file
descriptors.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import logging
import os
import resource
import secrets
import socket
import stat
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from rustaid.auth.peercred import PeerCredentials, client_key, peer_credentials
from rustaid.errors import InvalidArgument

log = logging.getLogger(__name__)

PEER_PREFIX = "unix-abstract:"
NAME_PREFIX = "rustaid-relay-"
# Connections relayed at once at most; more are closed at once (and logged).
MAX_CONNECTIONS = 1024
# File descriptors one relayed connection holds: the client's, the relay's own
# connection to gRPC, and gRPC's end of it.
FDS_PER_CONNECTION = 3
# Kept for everything else the daemon opens (models, stores, logs, D-Bus...).
FDS_KEPT = 128
# A refused connection is logged at most this often (a flood must not flood the log).
REFUSAL_LOG_INTERVAL_S = 10.0
# Longest AF_UNIX path (sun_path is 108 bytes with the terminating NUL).
MAX_UNIX_PATH = 107


@dataclass(frozen=True)
class ConnectionLimits:
    total: int = MAX_CONNECTIONS  # connections relayed at once
    per_client: int = 32  # of one client at once (0: no limit; root has none)
    reserved: int = 64  # of `total`, only administrators may take these


def connection_limits(per_client: int, total: int = 0) -> ConnectionLimits:
    """Shares for this process: `total` (0: as many as the open-file limit carries, at
    most MAX_CONNECTIONS), a sixteenth of it (at least 4) reserved to administrators."""
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    carried = MAX_CONNECTIONS if soft == resource.RLIM_INFINITY else soft
    carried = max(8, (carried - FDS_KEPT) // FDS_PER_CONNECTION)
    total = min(total or MAX_CONNECTIONS, carried)
    return ConnectionLimits(total, per_client, min(total // 2, max(4, total // 16)))


class Credentials:
    """Connection name -> the credentials its peer had; shared with the interceptor."""

    def __init__(self) -> None:
        self._by_name: dict[str, PeerCredentials] = {}

    def lookup(self, peer: str) -> PeerCredentials | None:
        """The credentials of a relayed connection, from gRPC's peer string."""
        if not peer.startswith(PEER_PREFIX + NAME_PREFIX):
            return None
        return self._by_name.get(peer.removeprefix(PEER_PREFIX))

    def add(self, name: str, creds: PeerCredentials) -> None:
        self._by_name[name] = creds

    def remove(self, name: str) -> None:
        self._by_name.pop(name, None)

    def __len__(self) -> int:
        return len(self._by_name)


class _Half(asyncio.Protocol):
    """One socket of a relayed connection; writes what it reads to the other half."""

    def __init__(self, link: _Link) -> None:
        self.link = link
        self.transport: asyncio.Transport | None = None
        self.other: _Half | None = None
        self.eof = False
        # What arrived before the other half was connected, written to it on joining.
        self.early: list[bytes] = []

    @property
    def joined(self) -> bool:
        return self.other is not None and self.other.transport is not None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        if self.other is None:  # the other half is not connected yet
            transport.pause_reading()

    def data_received(self, data: bytes) -> None:
        if not self.joined:
            # Pausing in connection_made does not hold on every Python: 3.11.2 (Debian 12)
            # starts reading right after it anyway. Keep the bytes and pause now, which
            # holds once reading has started.
            self.early.append(data)
            if self.transport is not None:
                self.transport.pause_reading()
            return
        assert self.other is not None and self.other.transport is not None
        self.other.transport.write(data)

    def eof_received(self) -> bool:
        self.eof = True
        other = self.other
        if other is not None and other.transport is not None and other.transport.can_write_eof():
            other.transport.write_eof()  # before joining, pass_early() passes it on
        if other is not None and other.eof:
            self.link.close()
        return True  # keep the transport open for what the other side still sends

    def pass_early(self) -> None:
        """On joining: what this half read (and its end) before the other was there."""
        assert self.other is not None and self.other.transport is not None
        if self.early:
            self.other.transport.write(b"".join(self.early))
            self.early.clear()
        if self.eof and self.other.transport.can_write_eof():
            self.other.transport.write_eof()

    def pause_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.pause_reading()

    def resume_writing(self) -> None:
        if self.other is not None and self.other.transport is not None:
            self.other.transport.resume_reading()

    def connection_lost(self, exc: Exception | None) -> None:
        self.link.close()


class _Link:
    """A client's connection and the relay's connection to the gRPC server."""

    def __init__(self, relay: UnixRelay, name: str) -> None:
        self.relay = relay
        self.name = name
        self.client = _Half(self)
        self.server = _Half(self)
        self.closed = False
        self.key = ""  # the client's share it counts against, once admitted

    def join(self) -> None:
        self.client.other, self.server.other = self.server, self.client
        for half in (self.client, self.server):
            half.pass_early()
        for half in (self.client, self.server):
            if half.transport is not None:
                half.transport.resume_reading()

    def close(self) -> None:
        if self.closed:
            return
        self.closed = True
        for half in (self.client, self.server):
            if half.transport is not None:
                half.transport.close()  # flushes what is buffered
        self.relay._forget(self)


class UnixRelay:
    """Accepts on the public socket `public`, relays to gRPC on `private`."""

    def __init__(
        self,
        public: Path,
        private: Path,
        credentials: Credentials,
        limits: ConnectionLimits | None = None,
        is_admin: Callable[[PeerCredentials], bool] = lambda c: c.uid == 0,
    ) -> None:
        self.public = public
        self.private = private
        self.credentials = credentials
        self.limits = limits or ConnectionLimits()
        self.is_admin = is_admin
        self._per_client: dict[str, int] = {}
        self._admitted = 0
        self._refused = 0
        self._refusal_logged = 0.0
        self._listener: socket.socket | None = None
        self._server: asyncio.AbstractServer | None = None
        self._links: set[_Link] = set()
        self._tasks: set[asyncio.Task[None]] = set()
        self._bound = False

    @property
    def private_address(self) -> str:
        return f"unix://{self.private}"

    def bind(self) -> None:
        """Create the public socket (owner-only until the caller sets its mode)."""
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # no window where the socket is open to others
        try:
            sock.bind(str(self.public))
        except OSError:
            sock.close()
            raise
        finally:
            os.umask(old)
        sock.listen(socket.SOMAXCONN)
        sock.setblocking(False)
        self._listener = sock
        self._bound = True

    async def start(self) -> None:
        if self._listener is None or self._server is not None:
            return
        loop = asyncio.get_running_loop()
        self._server = await loop.create_unix_server(
            self._accepted, sock=self._listener, start_serving=True
        )

    def _accepted(self) -> asyncio.Protocol:
        return _Accepted(self)

    def _connect(self, transport: asyncio.Transport, protocol: _Half) -> None:
        task = asyncio.ensure_future(self._relay(transport, protocol))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _relay(self, transport: asyncio.Transport, client: _Half) -> None:
        link = client.link
        if link.closed:  # the client left before the task ran
            return
        raw = transport.get_extra_info("socket")
        try:
            creds = peer_credentials(raw)
        except OSError as e:
            log.warning("cannot read the credentials of a client of %s: %s", self.public, e)
            link.close()
            return
        key = client_key(creds, os.geteuid())
        why = self._over_share(key, creds)
        if why:
            self._log_refusal(creds, why)
            link.close()
            return
        link.key = key
        self._per_client[key] = self._per_client.get(key, 0) + 1
        self._admitted += 1
        out: socket.socket | None = None
        try:
            out = self._bind_unique(link)
            self.credentials.add(link.name, creds)
            loop = asyncio.get_running_loop()
            await loop.sock_connect(out, str(self.private))
            await loop.create_unix_connection(lambda: link.server, sock=out)
            out = None
        except OSError as e:
            if not link.closed:
                log.warning("cannot relay a client of %s to gRPC: %s", self.public, e)
            link.close()
            return
        finally:
            if out is not None:
                out.close()
        if link.closed:  # the client left meanwhile, or the relay stopped
            if link.server.transport is not None:
                link.server.transport.close()
            return
        link.join()

    def _bind_unique(self, link: _Link) -> socket.socket:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        sock.setblocking(False)
        for _ in range(8):
            name = NAME_PREFIX + secrets.token_hex(8)
            try:
                sock.bind("\0" + name)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    continue  # taken (by chance or on purpose): draw again
                sock.close()
                raise
            link.name = name
            return sock
        sock.close()
        raise OSError(errno.EADDRINUSE, "no free relay address after 8 draws")

    def _over_share(self, key: str, creds: PeerCredentials) -> str:
        """Why this client may not have another connection now ("" when it may)."""
        limits = self.limits
        admin = self.is_admin(creds)
        total = limits.total if admin else limits.total - limits.reserved
        if self._admitted >= total:
            kept = "" if admin else f" ({limits.reserved} more are kept for administrators)"
            return f"{self._admitted} connections are open already{kept}"
        held = self._per_client.get(key, 0)
        if creds.uid != 0 and limits.per_client and held >= limits.per_client:
            return f"{key} holds {held} connections already (max_connections_per_client)"
        return ""

    def _log_refusal(self, creds: PeerCredentials, why: str) -> None:
        self._refused += 1
        now = time.monotonic()
        if now - self._refusal_logged < REFUSAL_LOG_INTERVAL_S:
            return
        self._refusal_logged = now
        log.warning(
            "refused a connection from uid %d (pid %d) to %s: %s (%d refused since the "
            "last such line)",
            creds.uid, creds.pid, self.public, why, self._refused,
        )  # fmt: skip
        self._refused = 0

    def _track(self, link: _Link) -> None:
        self._links.add(link)

    def _forget(self, link: _Link) -> None:
        self._links.discard(link)
        if link.key:
            self._admitted -= 1
            left = self._per_client[link.key] - 1
            if left:
                self._per_client[link.key] = left
            else:
                del self._per_client[link.key]
            link.key = ""
        if link.name:
            self.credentials.remove(link.name)

    async def stop(self) -> None:
        """Stop accepting, close every relayed connection, remove the private folder."""
        if self._server is not None:
            self._server.close()
            self._server = None
        elif self._listener is not None:
            self._listener.close()
        self._listener = None
        for link in list(self._links):
            link.close()
        for task in list(self._tasks):
            task.cancel()
        if self._bound:  # ours: created by bind()
            self._bound = False
            with contextlib.suppress(FileNotFoundError):
                self.public.unlink()
        with contextlib.suppress(FileNotFoundError):
            self.private.unlink()
        with contextlib.suppress(OSError):
            self.private.parent.rmdir()


class _Accepted(_Half):
    """The client's half: starts the relay once the connection is accepted."""

    def __init__(self, relay: UnixRelay) -> None:
        link = _Link(relay, "")
        super().__init__(link)
        link.client = self
        relay._track(link)

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)
        assert self.transport is not None
        self.link.relay._connect(self.transport, self)


def private_socket(public: Path) -> Path:
    """Where gRPC listens behind the relay of `public`: a folder only we may enter,
    next to the public socket (`.NAME.d/grpc.sock`), or a fresh temporary folder when
    that path would be too long for a Unix socket. Leftovers of a killed daemon are
    removed; a folder someone else owns is refused."""
    folder = public.parent / f".{public.name}.d"
    if len(str(folder / "grpc.sock")) > MAX_UNIX_PATH:
        return Path(tempfile.mkdtemp(prefix="rustaid-")) / "grpc.sock"
    try:
        folder.mkdir(mode=0o700)
    except FileExistsError:
        st = folder.lstat()
        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid():
            raise InvalidArgument(
                f"{folder} exists and is not a folder of this user: remove it",
                field="listen",
            ) from None
        with contextlib.suppress(FileNotFoundError):
            (folder / "grpc.sock").unlink()  # left by a daemon that was killed
    folder.chmod(0o700)
    return folder / "grpc.sock"
