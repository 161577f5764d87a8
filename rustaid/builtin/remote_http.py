"""HTTP plumbing shared by the remote engine plugins (`openai`, `anthropic`).

- Endpoint settings from a models.toml entry (url, remote_model, api_key_env,
  timeout_s, max_retries), checked when the model loads.
- The API key is read from the environment variable named by `api_key_env` (or from a
  systemd credential of that name); it is only ever put in a request header. Messages a
  server sends back are scrubbed of it before they reach a log or an error.
- Requests stream Server-Sent Events over `http.client` (standard library only). Every
  read waits at most `timeout_s`; a CancelToken closes the socket at once, so a
  cancelled request stops even while the server is silent.
- Connection failures, 429 and 5xx are retried with exponential backoff (honouring
  Retry-After) only while no text has reached the client.
- One mapping of HTTP failures to rustaid errors (status codes at the gRPC edge).

`http.client` is imported on first use, never at daemon start-up.
"""

from __future__ import annotations

import base64
import contextlib
import json
import logging
import os
import random
import re
import socket
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar
from urllib.parse import urlsplit

from rustaid import __version__
from rustaid.errors import (
    InvalidArgument,
    PreconditionFailed,
    RustaidError,
    Unauthenticated,
    Unavailable,
)
from rustaid.providers import CancelToken, ModelSpec

if TYPE_CHECKING:
    import http.client

log = logging.getLogger(__name__)
T = TypeVar("T")

DEFAULT_TIMEOUT_S = 60.0
MAX_TIMEOUT_S = 3600.0
DEFAULT_MAX_RETRIES = 2
MAX_RETRIES_LIMIT = 10
# Waits between attempts: 0.5 s, 1 s, 2 s ... (+-25 % jitter), at most BACKOFF_MAX_S.
BACKOFF_BASE_S = 0.5
BACKOFF_MAX_S = 8.0
# A Retry-After longer than this is not waited out inside a request: the client gets
# UNAVAILABLE with the delay in its RetryInfo and decides.
MAX_RETRY_WAIT_S = 30.0
MAX_RETRY_AFTER_S = 86400.0
# Limits on what a server may send: one SSE line, a JSON body, an error message.
MAX_LINE_BYTES = 1 << 20
MAX_BODY_BYTES = 16 << 20
MAX_MESSAGE_CHARS = 500
CANCEL_POLL_S = 0.05
USER_AGENT = f"rustaid/{__version__}"

_ENV_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
# What an HTTP header value may hold: visible ASCII, no spaces or control characters.
_KEY_CHARS = re.compile(r"[\x21-\x7e]+")
_MASKED = re.compile(r"\S*\*{3,}\S*")


# --- settings ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    url: str  # as configured (for messages)
    scheme: str
    host: str
    port: int
    path: str  # base path, no trailing slash ("" or "/v1")


@dataclass(frozen=True)
class RemoteSettings:
    model_id: str
    provider: str
    endpoint: Endpoint
    remote_model: str
    api_key_env: str
    timeout_s: float
    max_retries: int
    api_key: str = field(default="", repr=False)


def _config_error(model_id: str, message: str) -> PreconditionFailed:
    return PreconditionFailed(
        f"model {model_id!r}: {message} (fix its entry in models.toml)",
        reason="REMOTE_CONFIG_INVALID",
    )


def parse_endpoint(model_id: str, url: str) -> Endpoint:
    if not url:
        raise _config_error(model_id, "a remote model needs a url")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise _config_error(model_id, f"url must be http:// or https:// with a host (got {url!r})")
    if parts.username or parts.password:
        raise _config_error(
            model_id, "url must not contain credentials; name the key's variable in api_key_env"
        )
    if parts.query or parts.fragment:
        raise _config_error(model_id, f"url must not have a query or fragment (got {url!r})")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError as e:
        raise _config_error(model_id, f"url has an invalid port: {e}") from e
    return Endpoint(url, parts.scheme, parts.hostname, port, parts.path.rstrip("/"))


def read_api_key(model_id: str, env_name: str) -> str:
    """The key from the environment variable `env_name`, else from the systemd credential
    of that name ($CREDENTIALS_DIRECTORY/<env_name>, see LoadCredential=)."""
    if not _ENV_NAME.fullmatch(env_name):
        raise _config_error(
            model_id, f"api_key_env must be an environment variable name (got {env_name!r})"
        )
    key = os.environ.get(env_name, "")
    creds = os.environ.get("CREDENTIALS_DIRECTORY", "")
    if not key and creds:
        with contextlib.suppress(OSError):
            key = (Path(creds) / env_name).read_text(encoding="utf-8").strip()
    if not key:
        raise Unauthenticated(
            f"model {model_id!r}: no API key: the environment variable {env_name} is not set "
            "for the daemon (nor a systemd credential of that name)",
            reason="REMOTE_KEY_MISSING",
        )
    if not _KEY_CHARS.fullmatch(key):
        raise Unauthenticated(
            f"model {model_id!r}: the API key in {env_name} contains spaces or control "
            "characters, which an HTTP header cannot carry",
            reason="REMOTE_KEY_INVALID",
        )
    return key


def remote_settings(spec: ModelSpec, provider: str) -> RemoteSettings:
    """Check and read a remote model's entry; raises PreconditionFailed (bad entry) or
    Unauthenticated (key variable missing)."""
    opts = spec.options
    endpoint = parse_endpoint(spec.id, spec.url)
    remote_model = opts.get("remote_model", spec.id)
    if not isinstance(remote_model, str) or not remote_model:
        raise _config_error(
            spec.id, f"remote_model must be a non-empty string (got {remote_model!r})"
        )
    env_name = opts.get("api_key_env", "")
    if not isinstance(env_name, str):
        raise _config_error(spec.id, f"api_key_env must be a string (got {env_name!r})")
    timeout = opts.get("timeout_s", DEFAULT_TIMEOUT_S)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, int | float)
        or not 0 < timeout <= MAX_TIMEOUT_S
    ):
        raise _config_error(
            spec.id,
            f"timeout_s must be seconds, more than 0 and at most {MAX_TIMEOUT_S:g} "
            f"(got {timeout!r})",
        )
    retries = opts.get("max_retries", DEFAULT_MAX_RETRIES)
    if (
        isinstance(retries, bool)
        or not isinstance(retries, int)
        or not 0 <= retries <= MAX_RETRIES_LIMIT
    ):
        raise _config_error(
            spec.id,
            f"max_retries must be an integer from 0 to {MAX_RETRIES_LIMIT} (got {retries!r})",
        )
    key = read_api_key(spec.id, env_name) if env_name else ""
    if key and endpoint.scheme == "http" and not _is_loopback(endpoint.host):
        log.warning(
            "model %s: the API key from %s goes to %s over plain http (use https)",
            spec.id, env_name, endpoint.host,
        )  # fmt: skip
    return RemoteSettings(
        model_id=spec.id,
        provider=provider,
        endpoint=endpoint,
        remote_model=remote_model,
        api_key_env=env_name,
        timeout_s=float(timeout),
        max_retries=retries,
        api_key=key,
    )


def _is_loopback(host: str) -> bool:
    return host in ("localhost", "::1") or host.startswith("127.")


# --- errors ------------------------------------------------------------------------------


class Retry(Exception):
    """A failure worth another attempt, if nothing has reached the client yet."""

    def __init__(self, error: Unavailable, wait_s: float = 0.0) -> None:
        super().__init__(error.message)
        self.error = error
        self.wait_s = wait_s


def _spaced(piece: str) -> str:
    """A pattern for `piece` in any case, with spaces or separators between characters."""
    return r"[\s._:-]*".join(re.escape(c) for c in piece)


def _base64_cores(secret: str) -> set[str]:
    """What the key looks like inside any base64 text (e.g. `Basic base64(user:key)`):
    for each of the three byte alignments, the characters that depend on the key only;
    standard and URL-safe alphabets."""
    raw = secret.encode()
    cores = set()
    for k in range(3):
        encoded = base64.b64encode(b"\0" * k + raw).decode("ascii")
        core = encoded[-(-8 * k // 6) : 8 * (k + len(raw)) // 6]
        if len(core) >= 8:
            cores |= {core, core.translate(str.maketrans("+/", "-_"))}
    return cores


def redact(text: str, secret: str) -> str:
    """Remove the key, and anything that looks like an echo of it, from `text`: in any
    case, spaced out, cut to its first or last 8 characters, masked, or base64."""
    if secret:
        text = re.sub(rf"(?i){_spaced(secret)}", "[redacted]", text)
        for core in _base64_cores(secret):
            text = re.sub(rf"\S*{re.escape(core)}\S*", "[redacted]", text)
    text = _MASKED.sub("[redacted]", text)  # "sk-abc*****wxyz" as some servers echo keys
    if len(secret) >= 12:
        for piece in {secret[:8], secret[-8:]}:
            text = re.sub(rf"(?i)\S*{_spaced(piece)}\S*", "[redacted]", text)
    return text


def server_message(body: bytes, secret: str) -> str:
    """The human-readable part of an error body (OpenAI, Anthropic, FastAPI, Ollama...)."""
    text = body.decode("utf-8", errors="replace")
    try:
        doc: Any = json.loads(text)
    except (ValueError, RecursionError):  # not JSON, or nested past the recursion limit
        doc = None
    message: Any = None
    if isinstance(doc, dict):  # {"error": {"message"}}, {"error": "..."}, {"detail": ...}
        err = doc.get("error")
        if isinstance(err, dict):
            message = err.get("message") or err.get("type")
        elif isinstance(err, str):
            message = err
        message = message or doc.get("message") or doc.get("detail")
        if message is not None and not isinstance(message, str):
            message = json.dumps(message)
    out = message if isinstance(message, str) else text
    out = redact(" ".join("".join(c if c.isprintable() else " " for c in out).split()), secret)
    if len(out) > MAX_MESSAGE_CHARS:
        out = out[:MAX_MESSAGE_CHARS] + "..."
    return out


def parse_retry_after(value: str | None) -> float:
    """Seconds from a Retry-After header (delta-seconds or an HTTP date); 0 if absent."""
    if not value:
        return 0.0
    value = value.strip()
    if re.fullmatch(r"\d+(\.\d+)?", value):
        seconds = float(value)
    else:
        from email.utils import parsedate_to_datetime

        try:
            seconds = float(parsedate_to_datetime(value).timestamp()) - time.time()
        except (TypeError, ValueError):
            return 0.0
    return min(max(0.0, seconds), MAX_RETRY_AFTER_S)


def backoff_s(attempt: int) -> float:
    base = min(BACKOFF_MAX_S, BACKOFF_BASE_S * 2.0**attempt)
    return base * random.uniform(0.75, 1.25)  # jitter, not security


# --- Server-Sent Events -----------------------------------------------------------------


@dataclass(frozen=True)
class SseEvent:
    event: str  # "message" unless the server named it
    data: str


class _CancelWatch:
    """Shuts the socket down when the request is cancelled, so a read blocked on a
    silent server returns at once instead of after the timeout."""

    def __init__(self, cancel: CancelToken, sock: socket.socket) -> None:
        self.fired = False
        self._done = threading.Event()
        self._thread = threading.Thread(
            target=self._run, args=(cancel, sock), name="rustaid-remote-cancel", daemon=True
        )
        self._thread.start()

    def _run(self, cancel: CancelToken, sock: socket.socket) -> None:
        while not self._done.wait(CANCEL_POLL_S):
            if cancel.cancelled:
                self.fired = True
                with contextlib.suppress(OSError):
                    # The plain socket's shutdown, also under TLS: it wakes a blocked read.
                    socket.socket.shutdown(sock, socket.SHUT_RDWR)
                return

    def stop(self) -> None:
        self._done.set()
        self._thread.join()


class Stream:
    """A 200 response being read: SSE events, or a whole JSON body."""

    def __init__(
        self, client: RemoteClient, resp: http.client.HTTPResponse, cancel: CancelToken
    ) -> None:
        self._client = client
        self._resp = resp
        self._cancel = cancel
        self.content_type = (resp.getheader("Content-Type") or "").split(";")[0].strip().lower()

    @property
    def is_event_stream(self) -> bool:
        return self.content_type == "text/event-stream"

    def _readline(self) -> bytes:
        import http.client

        try:
            line: bytes = self._resp.readline(MAX_LINE_BYTES + 1)
            return line
        except TimeoutError:
            if self._cancel.cancelled:
                return b""
            raise self._client.timeout_error() from None
        except (OSError, http.client.HTTPException) as e:
            if self._cancel.cancelled:
                return b""
            raise Retry(self._client.dropped_error(f"connection lost mid-response ({e})")) from e

    def events(self) -> Iterator[SseEvent]:
        """Events as the server sends them (WHATWG EventSource parsing rules). Ends at
        the end of the body, or quietly when the request is cancelled."""
        event, data = "", list[str]()
        while True:
            raw = self._readline()
            if not raw:
                if data and not self._cancel.cancelled:
                    yield SseEvent(event or "message", "\n".join(data))
                return
            if len(raw) > MAX_LINE_BYTES:
                raise self._client.malformed(f"an event line is longer than {MAX_LINE_BYTES} bytes")
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError:
                raise self._client.malformed("an event line is not UTF-8") from None
            if not line:
                if data:
                    yield SseEvent(event or "message", "\n".join(data))
                event, data = "", []
                continue
            if line.startswith(":"):
                continue  # comment / keep-alive ping
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if name == "data":
                data.append(value)
            elif name == "event":
                event = value
            # "id" and "retry" mean nothing to a one-shot request.

    def read_json(self) -> Any:
        """The whole body as JSON (servers that answer a streamed request at once)."""
        body = bytearray()
        while len(body) <= MAX_BODY_BYTES:
            line = self._readline()
            if not line:
                break
            body += line
        if len(body) > MAX_BODY_BYTES:
            raise self._client.malformed(f"the body is larger than {MAX_BODY_BYTES} bytes")
        return self._client.parse_json(bytes(body))


# --- the client ---------------------------------------------------------------------------


class RemoteClient:
    """Talks to one endpoint for one model; errors name the model and the endpoint."""

    def __init__(self, settings: RemoteSettings, auth_headers: Mapping[str, str]) -> None:
        self.settings = settings
        self._headers = {"User-Agent": USER_AGENT, **auth_headers}
        s = settings
        self.where = f"model {s.model_id!r}: the {s.provider} endpoint {s.endpoint.url}"
        # Status codes whose rejection means "this request is bad" although the server
        # says 5xx (llama-cpp-python answers request validation errors with 500).
        self.validation_markers: tuple[str, ...] = ()

    # -- error construction -----------------------------------------------------------

    def malformed(self, what: str) -> Unavailable:
        return Unavailable(
            f"{self.where} sent a malformed response: {what}", reason="REMOTE_MALFORMED"
        )

    def timeout_error(self) -> Unavailable:
        return Unavailable(
            f"{self.where} sent nothing for {self.settings.timeout_s:g} s (timeout_s)",
            reason="REMOTE_TIMEOUT",
        )

    def dropped_error(self, what: str) -> Unavailable:
        return Unavailable(f"{self.where}: {what}", reason="REMOTE_DISCONNECTED")

    def parse_json(self, body: bytes) -> Any:
        try:
            return json.loads(body)
        except (ValueError, RecursionError):  # not JSON, or nested past the recursion limit
            snippet = redact(body[:80].decode("utf-8", errors="replace"), self.settings.api_key)
            raise self.malformed(f"expected JSON, got {snippet!r}") from None

    def status_error(
        self, status: int, body: bytes, retry_after: str | None = None, location: str | None = None
    ) -> RustaidError | Retry:
        """The error for a non-2xx answer; a Retry when another attempt may succeed."""
        msg = server_message(body, self.settings.api_key)
        detail = f" (HTTP {status}): {msg}" if msg else f" (HTTP {status})"
        s = self.settings
        if status in (401, 403):
            if s.api_key:
                text = f"{self.where} refused the API key from {s.api_key_env}{detail}"
            else:
                text = (
                    f"{self.where} wants an API key{detail}; set api_key_env in models.toml to "
                    "the name of the environment variable that holds it"
                )
            return Unauthenticated(text, reason="REMOTE_UNAUTHENTICATED")
        wait = parse_retry_after(retry_after)
        if status == 429:
            err = Unavailable(
                f"{self.where} is rate limiting requests{detail}",
                retry_after_s=wait or 1.0,
                reason="REMOTE_RATE_LIMITED",
            )
            if "insufficient_quota" in body.decode(errors="replace"):
                return err  # a spent quota does not come back by waiting a second
            return Retry(err, wait)
        if status >= 500 and any(m in msg for m in self.validation_markers):
            return InvalidArgument(
                f"{self.where} rejected the request{detail}", reason="REMOTE_BAD_REQUEST"
            )
        if status in (408, 409, 425) or (status >= 500 and status != 501):
            err = Unavailable(
                f"{self.where} failed{detail}", retry_after_s=wait, reason="REMOTE_UNAVAILABLE"
            )
            return Retry(err, wait)
        if status in (400, 413, 422):
            return InvalidArgument(
                f"{self.where} rejected the request{detail}", reason="REMOTE_BAD_REQUEST"
            )
        if status in (404, 405, 501):
            return PreconditionFailed(
                f"{self.where} has no such model or API{detail}; check url and remote_model "
                "in models.toml",
                reason="REMOTE_NOT_FOUND",
            )
        if 300 <= status < 400:
            where_to = redact(location or "elsewhere", s.api_key)
            return PreconditionFailed(
                f"{self.where} redirects to {where_to} (HTTP {status}); put the final URL in "
                "models.toml (redirects are not followed: they would carry the key along)",
                reason="REMOTE_REDIRECT",
            )
        return Unavailable(f"{self.where} answered{detail}", reason="REMOTE_ERROR")

    # -- requests ---------------------------------------------------------------------

    def path(self, sub: str) -> str:
        """The request path of `sub` under the endpoint's base path."""
        return self.settings.endpoint.path + sub

    def _connection(self) -> http.client.HTTPConnection:
        import http.client

        ep = self.settings.endpoint
        if ep.scheme == "https":
            import ssl

            return http.client.HTTPSConnection(
                ep.host, ep.port, timeout=self.settings.timeout_s,
                context=ssl.create_default_context(),
            )  # fmt: skip
        return http.client.HTTPConnection(ep.host, ep.port, timeout=self.settings.timeout_s)

    @contextlib.contextmanager
    def _exchange(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None,
        accept: str,
        cancel: CancelToken | None,
    ) -> Iterator[http.client.HTTPResponse]:
        """Connect, send to `path` (from the server root), and yield a 2xx response;
        failures are raised as rustaid errors or Retry."""
        import http.client
        import ssl

        conn = self._connection()
        watch: _CancelWatch | None = None
        try:
            try:
                conn.connect()
            except ssl.SSLCertVerificationError as e:
                raise Unavailable(
                    f"{self.where}: its TLS certificate is not trusted ({e.verify_message})",
                    reason="REMOTE_TLS",
                ) from e
            except OSError as e:  # refused, unreachable, DNS, connect timeout
                raise Retry(
                    Unavailable(f"{self.where} is unreachable ({e})", reason="REMOTE_UNREACHABLE")
                ) from e
            if cancel is not None and conn.sock is not None:
                watch = _CancelWatch(cancel, conn.sock)
            headers = {**self._headers, "Accept": accept}
            payload = None
            if body is not None:
                payload = json.dumps(body).encode("utf-8")
                headers["Content-Type"] = "application/json"
            try:
                conn.request(method, path, payload, headers)
                resp = conn.getresponse()
            except TimeoutError:
                raise self.timeout_error() from None
            except (OSError, http.client.HTTPException) as e:
                if cancel is not None and cancel.cancelled:
                    raise _Cancelled from None
                raise Retry(self.dropped_error(f"connection lost before an answer ({e})")) from e
            if not 200 <= resp.status < 300:
                err_body = b""
                with contextlib.suppress(OSError, http.client.HTTPException):
                    err_body = resp.read(MAX_BODY_BYTES)
                error = self.status_error(
                    resp.status, err_body, resp.getheader("Retry-After"), resp.getheader("Location")
                )
                raise error
            yield resp
        finally:
            if watch is not None:
                watch.stop()
            conn.close()

    @contextlib.contextmanager
    def open_stream(
        self, path: str, body: Mapping[str, Any], cancel: CancelToken
    ) -> Iterator[Stream | None]:
        """POST and yield the response being streamed; None if cancelled meanwhile."""
        try:
            with self._exchange("POST", path, body, "text/event-stream", cancel) as resp:
                yield Stream(self, resp, cancel)
        except _Cancelled:
            yield None

    def call_json(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        optional: bool = False,
        retries: bool = True,
    ) -> Any:
        """One JSON request/response with retries. With `optional`, an endpoint that does
        not offer `path` (400, 404, 405, 422, 501) gives None instead of an error."""

        def attempt() -> Any:
            try:
                with self._exchange(method, path, body, "application/json", None) as resp:
                    data = resp.read(MAX_BODY_BYTES + 1)
            except (InvalidArgument, PreconditionFailed):
                if optional:
                    return None
                raise
            if len(data) > MAX_BODY_BYTES:
                raise self.malformed(f"the body is larger than {MAX_BODY_BYTES} bytes")
            return self.parse_json(data)

        if not retries:
            try:
                return attempt()
            except Retry as r:
                raise r.error from None
        return self.with_retries(attempt, None)

    def with_retries(
        self,
        attempt: Callable[[], T],
        cancel: CancelToken | None,
        may_retry: Callable[[], bool] = lambda: True,
    ) -> T:
        """Run `attempt`; on Retry wait (backoff or Retry-After) and run it again, up to
        max_retries times, while `may_retry()` (nothing sent to the client yet)."""
        n = 0
        while True:
            try:
                return attempt()
            except Retry as r:
                wait = r.wait_s or backoff_s(n)
                if n >= self.settings.max_retries or not may_retry() or wait > MAX_RETRY_WAIT_S:
                    raise r.error from None
                n += 1
                log.info(
                    "%s; attempt %d of %d in %.1f s",
                    r.error.message, n + 1, self.settings.max_retries + 1, wait,
                )  # fmt: skip
                deadline = time.monotonic() + wait
                while (left := deadline - time.monotonic()) > 0:
                    if cancel is not None and cancel.cancelled:
                        break  # the next attempt sees the cancellation and ends at once
                    time.sleep(min(left, CANCEL_POLL_S))


class _Cancelled(Exception):
    """The request was cancelled while it was being sent."""
