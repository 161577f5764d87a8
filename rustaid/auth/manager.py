"""Authentication and authorisation of gRPC callers: who they are, what they may do.

- Unix sockets, `peer_credentials` on (the system service's default): the peer's uid
  and groups from SO_PEERCRED, through the relay (rustaid.auth.relay). Root, the
  daemon's own user, `admin_uids` and members of `admin_group` are administrators;
  members of the socket's group may use the daemon.
- Unix sockets, `peer_credentials` off (a user's daemon, whose socket sits in the
  user's private runtime folder): whoever can open the socket is an administrator.
- TCP: TLS, with client certificates (`tls_client_ca`; `admin_cert_names` are
  administrators) or bearer tokens (`authorization: Bearer ...`, see
  rustaid.auth.tokens). Plain TCP only on loopback with `allow_insecure_tcp`: without
  a token, anyone there may use the daemon but not administer it.

What each RPC needs is in rustaid.auth.policy. Denials: UNAUTHENTICATED when the
credentials are missing, unknown or expired; PERMISSION_DENIED when the caller is known
but not allowed. Messages say what to fix; logs never carry tokens.
"""

from __future__ import annotations

import grp
import logging
import os
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from rustaid.auth import tls
from rustaid.auth.peercred import (
    PeerCredentials,
    client_key,
    gid_mapped,
    overflow_ids,
    uid_mapped,
)
from rustaid.auth.policy import Access
from rustaid.auth.relay import Credentials, UnixRelay, connection_limits, private_socket
from rustaid.auth.tokens import TokenStore
from rustaid.core.caller import Caller, anonymous_key
from rustaid.errors import InvalidArgument, PermissionDenied, Unauthenticated

if TYPE_CHECKING:
    from rustaid.config import Settings

log = logging.getLogger(__name__)

# Identical denials are logged at most once per this many seconds (per caller/reason).
LOG_EVERY_S = 10.0
_LOG_MEMORY = 1024


def is_tcp(address: str) -> bool:
    return not address.startswith("unix:")


class Auth:
    """Owned by the daemon: listeners' credentials, the relays, the token file."""

    def __init__(self, settings: Callable[[], Settings]) -> None:
        self._settings = settings
        self.credentials = Credentials()
        self.relays: list[UnixRelay] = []
        self.tokens: TokenStore | None = None
        self._gids: dict[str, int | None] = {}
        self._logged: dict[tuple[str, str], float] = {}
        self._overflow_uid = overflow_ids()[0]
        self._in_userns = not uid_mapped(1 << 31)  # the initial namespace maps every id
        self._peer_credentials = False
        self._socket_group_name = ""
        self._warned_overflow = False

    @property
    def settings(self) -> Settings:
        return self._settings()

    # -- start-up -------------------------------------------------------------------

    def prepare(self) -> None:
        """Check what can only be checked at start: files, groups, id mappings.
        Raises InvalidArgument naming the setting to fix."""
        s = self.settings
        # Fixed for the daemon's life, like the sockets they describe.
        self._peer_credentials = s.peer_credentials
        self._socket_group_name = s.socket_group
        tcp = [a for a in s.listen if is_tcp(a)]
        store = TokenStore(tls.token_path(s))
        store.load()  # refuses an unsafe or malformed file
        self.tokens = store
        if tcp and s.tls_cert and not s.tls_client_ca and not store.exists:
            raise InvalidArgument(
                f"listen address {tcp[0]!r} uses TLS but no client authentication is "
                "configured: set tls_client_ca (client certificates), or create a token "
                f"with `rustaid token add NAME` (stored in {store.path})",
                field="tls_client_ca",
            )
        if s.admin_group:
            gid = self._gid(s.admin_group)
            if gid is None:
                raise InvalidArgument(
                    f"admin_group {s.admin_group!r} does not exist", field="admin_group"
                )
        if s.peer_credentials:
            self._check_overflow(s)
            self._warn_unmapped(s)

    def _check_overflow(self, s: Settings) -> None:
        # Peers whose ids are not mapped into our user namespace all read as the
        # overflow ids: naming those as administrators would make everyone one.
        uid, gid = overflow_ids()
        if uid in s.admin_uids:
            raise InvalidArgument(
                f"admin_uids must not contain {uid}: every user outside the daemon's user "
                "namespace reads as that uid",
                field="admin_uids",
            )
        if s.admin_group and self._gid(s.admin_group) == gid:
            raise InvalidArgument(
                f"admin_group {s.admin_group!r} is gid {gid}, which every group outside "
                "the daemon's user namespace reads as: choose another group",
                field="admin_group",
            )

    def _warn_unmapped(self, s: Settings) -> None:
        # systemd's PrivateUsers=yes maps only root, the service's user and group.
        hidden = [f"uid {u}" for u in s.admin_uids if not uid_mapped(u)]
        gid = self._gid(s.admin_group) if s.admin_group else None
        if gid is not None and not gid_mapped(gid):
            hidden.append(f"admin_group {s.admin_group!r} (gid {gid})")
        if hidden:
            log.warning(
                "%s cannot be seen in this user namespace (systemd PrivateUsers=yes?): "
                "such peers look like uid 65534 and will not be administrators; use "
                "PrivateUsers=no or identity for the service",
                ", ".join(hidden),
            )

    def add_tcp_port(self, server: grpc.aio.Server, address: str) -> None:
        s = self.settings
        if s.tls_cert:
            server.add_secure_port(address, tls.server_credentials(s))
            return
        # config.py allows plain TCP only on loopback with allow_insecure_tcp.
        log.warning(
            "listening on %s without TLS (allow_insecure_tcp): every local user can "
            "connect and use the daemon; administration needs an admin token",
            address,
        )
        server.add_insecure_port(address)

    def add_unix_relay(self, server: grpc.aio.Server, public: Path) -> None:
        """gRPC on a private socket; the public one accepted by the relay."""
        private = private_socket(public)
        s = self.settings
        relay = UnixRelay(
            public,
            private,
            self.credentials,
            connection_limits(s.max_connections_per_client, s.max_connections),
            lambda creds: self._is_admin(creds, self.settings),
        )
        old = os.umask(0o177)
        try:
            server.add_insecure_port(relay.private_address)
        finally:
            os.umask(old)
        relay.bind()
        self.relays.append(relay)

    async def start(self) -> None:
        for relay in self.relays:
            await relay.start()

    async def stop(self) -> None:
        for relay in self.relays:
            await relay.stop()
        self.relays.clear()

    # -- per call ---------------------------------------------------------------------

    def _gid(self, name: str) -> int | None:
        if name not in self._gids:
            try:
                self._gids[name] = grp.getgrnam(name).gr_gid
            except KeyError:
                self._gids[name] = None
        return self._gids[name]

    def _is_admin(self, creds: PeerCredentials, s: Settings) -> bool:
        if creds.uid in (0, os.geteuid()) or creds.uid in s.admin_uids:
            return True
        gid = self._gid(s.admin_group) if s.admin_group else None
        return gid is not None and creds.in_group(gid)

    def _socket_group(self) -> tuple[str, int | None]:
        if self._socket_group_name:
            return self._socket_group_name, self._gid(self._socket_group_name)
        gid = os.getegid()
        try:
            return grp.getgrgid(gid).gr_name, gid
        except KeyError:
            return str(gid), gid

    def authenticate(
        self, method: str, access: Access, peer: str, context: grpc.aio.ServicerContext[Any, Any]
    ) -> Caller:
        """The caller of one call, or Unauthenticated / PermissionDenied."""
        try:
            if peer.startswith("unix"):
                return self._unix(method, access, peer)
            return self._tcp(method, access, peer, context)
        except (Unauthenticated, PermissionDenied) as e:
            if access is Access.PUBLIC:
                # Health and reflection answer anyone who may connect.
                return Caller(key=anonymous_key(peer), transport=_transport(peer), admin=False)
            self._log_denial(method, peer, e)
            raise

    def _unix(self, method: str, access: Access, peer: str) -> Caller:
        s = self.settings
        if not self._peer_credentials:
            return Caller(key=anonymous_key(peer), transport="unix", admin=True)
        creds = self.credentials.lookup(peer)
        if creds is None:
            sockets = ", ".join(str(r.public) for r in self.relays) or "the daemon's socket"
            raise Unauthenticated(
                f"the caller of this connection is unknown (it did not come through "
                f"{sockets}): connect to that socket",
                reason="PEER_UNKNOWN",
            )
        if creds.uid == self._overflow_uid and not self._warned_overflow and self._in_userns:
            self._warned_overflow = True
            log.warning(
                "a client's uid is not mapped into the daemon's user namespace (it reads "
                "as %d; systemd PrivateUsers=yes?): all such clients share one identity "
                "and per-client limits",
                creds.uid,
            )
        admin = self._is_admin(creds, s)
        caller = Caller(
            key=client_key(creds, os.geteuid()), transport="unix", uid=creds.uid, admin=admin
        )
        if admin or access is Access.PUBLIC:
            return caller
        if access is Access.ADMIN:
            who = ["root", "the daemon's user"]
            if s.admin_group:
                who.append(f"members of group {s.admin_group!r}")
            if s.admin_uids:
                who.append("admin_uids")
            raise PermissionDenied(
                f"{method} changes the daemon for every user and is reserved to "
                f"administrators ({', '.join(who)}); uid {creds.uid} is not one. Ask an "
                "administrator, or have them add the user to admin_group or admin_uids "
                "in rustaid.toml",
                reason="ADMIN_REQUIRED",
            )
        group, gid = self._socket_group()
        if gid is not None and creds.in_group(gid):
            return caller
        raise PermissionDenied(
            f"uid {creds.uid} is not a member of group {group!r}, whose members may use "
            f"the daemon: add the user to it (usermod -aG {group} USER) and log in again",
            reason="GROUP_REQUIRED",
        )

    def _tcp(
        self,
        method: str,
        access: Access,
        peer: str,
        context: grpc.aio.ServicerContext[Any, Any],
    ) -> Caller:
        s = self.settings
        auth = context.auth_context()
        is_tls = auth.get("transport_security_type") == [b"ssl"]
        token = _bearer(context.invocation_metadata() or ())
        caller: Caller | None = None
        if token is not None:
            caller = self._token_caller(token)
        elif is_tls:
            names = _cert_names(auth)
            if names:
                admin = any(n in s.admin_cert_names for n in names)
                caller = Caller(key=f"cert:{names[0]}", transport="tcp", admin=admin)
            elif access is not Access.PUBLIC:
                raise Unauthenticated(
                    "this daemon needs a token on TCP: send the metadata "
                    "`authorization: Bearer TOKEN` (rustaictl --token-file FILE, or "
                    "RUSTAID_TOKEN); an administrator creates one with "
                    "`rustaid token add NAME`",
                    reason="TOKEN_REQUIRED",
                )
        if caller is None:  # plain loopback TCP (allow_insecure_tcp), or a health check
            caller = Caller(key=anonymous_key(peer), transport="tcp", admin=False)
        if access is Access.ADMIN and not caller.admin:
            fix = (
                "use an admin token (rustaid token add NAME --admin)"
                if token is not None or not is_tls or not s.tls_client_ca
                else "use a certificate named in admin_cert_names, or an admin token"
            )
            raise PermissionDenied(
                f"{method} changes the daemon for every user and is reserved to "
                f"administrators; {_describe(caller)} is not one: {fix}",
                reason="ADMIN_REQUIRED",
            )
        return caller

    def _token_caller(self, token: str) -> Caller:
        assert self.tokens is not None
        match = self.tokens.check(token)
        if match.problem == "unusable":
            raise Unauthenticated(
                "the daemon cannot check tokens now (its token file is unsafe or "
                "malformed; see its log): ask the administrator",
                reason="TOKEN_FILE_UNUSABLE",
            )
        if match.problem == "unknown" or match.entry is None:
            raise Unauthenticated(
                "the token is not valid (mistyped, or removed): ask an "
                "administrator for a new one (rustaid token add NAME)",
                reason="TOKEN_INVALID",
            )
        entry = match.entry
        if match.problem == "expired":
            assert entry.expires is not None
            raise Unauthenticated(
                f"token {entry.name!r} expired at "
                f"{entry.expires:%Y-%m-%d %H:%M} UTC: ask an administrator for a new one "
                "(rustaid token add NAME --expires ...)",
                reason="TOKEN_EXPIRED",
            )
        return Caller(key=f"token:{entry.name}", transport="tcp", admin=entry.admin)

    def caller_for_token(self, token: str) -> Caller:
        """The caller a bearer token names (the HTTP front end's TCP clients), or
        Unauthenticated saying what to fix."""
        return self._token_caller(token)

    def _log_denial(self, method: str, peer: str, error: Exception) -> None:
        who = peer
        creds = self.credentials.lookup(peer)
        if creds is not None:
            who = f"uid {creds.uid} (pid {creds.pid})"
        reason = getattr(error, "reason", "") or type(error).__name__
        now = time.monotonic()
        key = (who, reason)
        if now - self._logged.get(key, -LOG_EVERY_S) < LOG_EVERY_S:
            return
        if len(self._logged) >= _LOG_MEMORY:
            self._logged.clear()
        self._logged[key] = now
        # The message names no secret: tokens are never part of it.
        log.warning("denied %s to %s: %s", method, who, error)


def _describe(caller: Caller) -> str:
    kind, _, name = caller.key.partition(":")
    if kind == "token":
        return f"token {name!r}"
    if kind == "cert":
        return f"certificate {name!r}"
    return name


def _transport(peer: str) -> str:
    return "unix" if peer.startswith("unix") else "tcp"


def _bearer(metadata: Iterable[Any]) -> str | None:
    values = [v for k, v in metadata if k == "authorization"]  # keys arrive lower-case
    if not values:
        return None
    if len(values) > 1:
        raise Unauthenticated(
            "send one authorization metadata entry, not several", reason="TOKEN_INVALID"
        )
    value = values[0]
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    scheme, _, token = str(value).strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "the authorization metadata must be `Bearer TOKEN`", reason="TOKEN_INVALID"
        )
    return token


def _cert_names(auth: Mapping[str, Iterable[bytes]]) -> list[str]:
    """The client certificate's names: subject CN first, then its DNS/URI SANs."""
    names: list[str] = []
    for key in ("x509_common_name", "x509_subject_alternative_name"):
        for value in auth.get(key, []):
            name = value.decode("utf-8", "replace")
            if name not in names:
                names.append(name)
    return names
