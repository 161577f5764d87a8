"""What every HTTP request passes before a route sees it, per listener: the Host check
(DNS rebinding), the Origin check and CORS, the caller (bearer token on TCP), the
request id, and the error shape of the route family (Ollama's under /api/, OpenAI's
elsewhere). Errors raised here or in a route become answers in rustaid.http.errors.
"""

from __future__ import annotations

import json
import logging
import time
from typing import TYPE_CHECKING, Any

from rustaid.addresses import HttpAddress
from rustaid.core import caller as caller_mod
from rustaid.core import request_id
from rustaid.errors import PermissionDenied, RustaidError, Unauthenticated
from rustaid.http import errors as http_errors

if TYPE_CHECKING:
    from rustaid.auth.manager import Auth
    from rustaid.config import CurrentSettings

log = logging.getLogger(__name__)

Scope = dict[str, Any]
ASGIApp = Any

# What a client on this machine puts in Host (with or without a port).
_LOCAL_HOSTS = frozenset({"localhost", "127.0.0.1", "::1", "[::1]"})
_CORS_METHODS = "GET, POST, DELETE, OPTIONS"
_CORS_HEADERS = "authorization, content-type, x-request-id, openai-organization, openai-project"


# The scope key of the headers every response of the request carries (request id, CORS).
RESPONSE_HEADERS = "rustaid.response_headers"


def ollama_style(path: str) -> bool:
    return path.startswith("/api/")


def error_response(path: str, error: BaseException) -> tuple[int, dict[str, str], bytes]:
    """Status, headers and JSON body of `error`, shaped for the route family of `path`."""
    body = http_errors.ollama_body(error) if ollama_style(path) else http_errors.openai_body(error)
    return http_errors.status_of(error), http_errors.headers_of(error), json.dumps(body).encode()


def _host_name(host: str) -> str:
    if host.startswith("["):
        return host.split("]", 1)[0] + "]"
    return host.rsplit(":", 1)[0] if host.count(":") == 1 else host


class Guard:
    """ASGI middleware in front of the routes of one listener."""

    def __init__(
        self, app: ASGIApp, settings: CurrentSettings, auth: Auth, address: HttpAddress
    ) -> None:
        self.app = app
        self.settings = settings
        self.auth = auth
        self.address = address

    def _allowed_hosts(self) -> set[str]:
        s = self.settings()
        hosts = set(_LOCAL_HOSTS) | set(s.http_allowed_hosts)
        if self.address.host:
            hosts.add(self.address.host)
            hosts.add(f"[{self.address.host}]")
        return hosts

    def _check_host(self, headers: dict[str, str]) -> None:
        if self.address.path is not None:
            return  # a browser cannot reach a Unix socket: nothing to rebind
        host = _host_name(headers.get("host", "").strip().lower())
        if host not in self._allowed_hosts():
            raise PermissionDenied(
                f"Host {host!r} is not a name of this daemon (a check against DNS "
                "rebinding): connect to 127.0.0.1 or localhost, or add the name to "
                "http_allowed_hosts in rustaid.toml",
                reason="HOST_NOT_ALLOWED",
            )

    def _check_origin(self, headers: dict[str, str]) -> str:
        """The request's Origin when it may call (CORS), "" when none was sent."""
        origin = headers.get("origin", "")
        if not origin:
            return ""
        if origin in self.settings().http_cors_origins:
            return origin
        raise PermissionDenied(
            f"web pages from {origin!r} may not call this daemon: add the origin to "
            "http_cors_origins in rustaid.toml to allow it",
            reason="ORIGIN_NOT_ALLOWED",
        )

    def _caller(self, scope: Scope, headers: dict[str, str]) -> caller_mod.Caller:
        s = self.settings()
        if self.address.path is not None:
            # Like gRPC without peer credentials: the socket's mode and group decide who
            # connects; on the system service nobody is an administrator here.
            return caller_mod.Caller(
                key="peer:unix:", transport="unix", admin=not s.peer_credentials
            )
        token = _bearer(headers.get("authorization", ""))
        tokens = self.auth.tokens
        if tokens is not None and tokens.exists:
            if token is None:
                raise Unauthenticated(
                    "this daemon needs a token: send `Authorization: Bearer TOKEN` (the "
                    "api_key of OpenAI clients); an administrator creates one with "
                    "`rustaid token add NAME`",
                    reason="TOKEN_REQUIRED",
                )
            return self.auth.caller_for_token(token)
        if self.address.port and not self.address.loopback:
            raise Unauthenticated(  # config.py allows this only with TLS; tokens too
                "this listener needs tokens: an administrator creates one with "
                "`rustaid token add NAME`",
                reason="TOKEN_REQUIRED",
            )
        # No token file: every local client is one anonymous user (the api_key is ignored).
        client = scope.get("client") or ("local", 0)
        return caller_mod.Caller(key=f"http:{client[0]}", transport="tcp", admin=False)

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        path: str = scope.get("path", "")
        info = request_id.RequestInfo(
            request_id.accept_id(headers.get(request_id.REQUEST_ID_HEADER)),
            f"{scope.get('method', '')} {path}",
            *request_id.parse_traceparent(headers.get(request_id.TRACEPARENT_HEADER)),
        )
        request_id.set_current(info)
        extra = [(b"x-request-id", info.id.encode())]
        t0 = time.perf_counter()
        try:
            self._check_host(headers)
            origin = self._check_origin(headers)
            if origin:
                extra += [(b"access-control-allow-origin", origin.encode()), (b"vary", b"Origin")]
                if scope["method"] == "OPTIONS":  # a preflight: nothing else to do
                    await _send(send, 204, extra + _preflight(headers), b"")
                    return
            caller_mod.set_current(self._caller(scope, headers))
            _check_length(headers, self.settings().max_message_mb << 20)
        except RustaidError as e:
            self._deny(info, e)
            status, more, body = error_response(path, e)
            headers_out = extra + [(k.lower().encode(), v.encode()) for k, v in more.items()]
            await _send(send, status, [*headers_out, (b"content-type", b"application/json")], body)
            return

        # Added to the response by the routes (rustaid.http.app.guarded): wrapping `send`
        # instead would cost a call on every chunk of a stream.
        scope[RESPONSE_HEADERS] = [(k.decode(), v.decode()) for k, v in extra]
        try:
            await self.app(scope, receive, send)
        finally:
            if log.isEnabledFor(logging.DEBUG):
                log.debug("%s in %.1f ms", info.method, (time.perf_counter() - t0) * 1000)

    def _deny(self, info: request_id.RequestInfo, error: RustaidError) -> None:
        if isinstance(error, Unauthenticated | PermissionDenied):
            # Never the headers: they carry tokens.
            log.warning("HTTP %s refused: %s", info.method, error.message)


def _preflight(headers: dict[str, str]) -> list[tuple[bytes, bytes]]:
    # The origin is one the operator listed: the headers its page asks for are allowed
    # (SDKs add their own, e.g. the openai package's x-stainless-*).
    asked = headers.get("access-control-request-headers", "") or _CORS_HEADERS
    return [
        (b"access-control-allow-methods", _CORS_METHODS.encode()),
        (b"access-control-allow-headers", asked.encode("latin-1")),
        (b"access-control-max-age", b"600"),
    ]


def _bearer(value: str) -> str | None:
    if not value:
        return None
    scheme, _, token = value.strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token:
        raise Unauthenticated(
            "the Authorization header must be `Bearer TOKEN`", reason="TOKEN_INVALID"
        )
    return token


def _check_length(headers: dict[str, str], limit: int) -> None:
    length = headers.get("content-length", "")
    if length.isdigit() and int(length) > limit:
        raise http_errors.BodyTooLarge(limit)


async def _send(send: Any, status: int, headers: list[tuple[bytes, bytes]], body: bytes) -> None:
    headers = [*headers, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})
