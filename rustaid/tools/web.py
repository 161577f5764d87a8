"""The `http_get` tool: fetches a URL from an allow-list of hosts. Off by default.

    [tools]
    enable = ["http_get"]

    [tools.http_get]
    allow_hosts = ["example.org", "127.0.0.1:8080"]   # "host" (any port) or "host:port"
    max_bytes = 262144      # body bytes kept; the rest is cut (truncated: true)
    timeout_s = 10          # connect and each read; the call's own timeout also applies
    max_redirects = 3       # each redirect target must be allowed too
    allow_private = false   # names may resolve to loopback, private, link-local addresses

Only http and https; no credentials in URLs; no proxies (environment variables are
ignored); the body is read in pieces, so a huge or endless response costs at most
max_bytes of memory. The check holds for the address connected to, not only the name:
an allowed name is resolved once, every address it resolves to must be public (or
itself listed, or `allow_private` set), and the connection goes to that checked
address, so DNS cannot point an allowed name at the daemon's own machine or network.
"""

from __future__ import annotations

import base64
import http.client
import ipaddress
import socket
import ssl
import time
from collections.abc import Mapping
from typing import Any
from urllib.parse import urljoin, urlsplit

from rustaid import __version__
from rustaid.errors import InvalidArgument, PreconditionFailed
from rustaid.providers import Tool, ToolError, tool_context
from rustaid.tools.config import integer, number, strings
from rustaid.tools.errors import SandboxTimeout

CHUNK = 64 << 10
TEXT_TYPES = ("text/", "application/json", "application/xml", "application/javascript")


def _allowed(host: str, port: int, allow: tuple[str, ...]) -> bool:
    host = host.lower().rstrip(".")
    for entry in allow:
        entry = entry.lower().strip()
        if entry.startswith("["):  # [::1]:8080
            name, _, rest = entry[1:].partition("]")
            entry_port = rest.removeprefix(":")
        elif entry.count(":") == 1:
            name, entry_port = entry.split(":")
        else:
            name, entry_port = entry, ""
        if name.rstrip(".") == host and (not entry_port or entry_port == str(port)):
            return True
    return False


def checked_addresses(
    host: str, port: int, allow: tuple[str, ...], allow_private: bool
) -> list[str]:
    """The addresses to connect to for an allowed `host`: resolved once, each public
    unless it is itself listed or `allow_private` is set (ToolError otherwise)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise ToolError(f"cannot resolve {host}: {e}") from None
    addresses = list(dict.fromkeys(str(info[4][0]) for info in infos))
    for address in addresses:
        ip = ipaddress.ip_address(address.split("%")[0])
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        if ip.is_global or allow_private or _allowed(str(ip), port, allow):
            continue
        kind = (
            "loopback" if ip.is_loopback
            else "link-local" if ip.is_link_local
            else "private" if ip.is_private
            else "non-public"
        )  # fmt: skip
        raise ToolError(
            f"host {host} resolves to {ip}, a {kind} address, which allow_hosts does not "
            f"list; list {ip} (or set allow_private = true) in [tools.http_get] to allow it"
        )
    if not addresses:
        raise ToolError(f"cannot resolve {host}: no address")
    return addresses


def _connect(addresses: list[str], port: int, timeout: float | None) -> socket.socket:
    """The first of `addresses` that answers (each was checked: no new lookup)."""
    error: OSError = OSError(f"no address to connect to on port {port}")
    for address in addresses:
        try:
            return socket.create_connection((address, port), timeout)
        except OSError as e:
            error = e
    raise error


class _PinnedHTTP(http.client.HTTPConnection):
    """Connects to checked addresses; Host header and everything else use the name."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        super().__init__(host, port, timeout=timeout)
        self.addresses = addresses

    def connect(self) -> None:
        self.sock = _connect(self.addresses, self.port, self.timeout)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """TLS to checked addresses; the certificate is checked against the name (SNI)."""

    def __init__(self, host: str, port: int, addresses: list[str], timeout: float) -> None:
        self.tls = ssl.create_default_context()
        super().__init__(host, port, timeout=timeout, context=self.tls)
        self.addresses = addresses

    def connect(self) -> None:
        sock = _connect(self.addresses, self.port, self.timeout)
        self.sock = self.tls.wrap_socket(sock, server_hostname=self.host)


class HttpGet(Tool):
    name = "http_get"
    description = (
        "Fetches a web page or API response with HTTP GET (only from the hosts the owner "
        "allowed). Returns the status, content type and body text."
    )
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "url": {
                "type": "string",
                "minLength": 8,
                "maxLength": 2048,
                "description": "an http:// or https:// URL",
            }
        },
        "required": ["url"],
        "additionalProperties": False,
    }
    enabled_by_default = False
    timeout_s = 20.0

    @staticmethod
    def _settings() -> tuple[tuple[str, ...], int, float, int]:
        table = tool_context().settings
        redirects = table.get("max_redirects", 3)
        if isinstance(redirects, bool) or not isinstance(redirects, int) or redirects < 0:
            raise InvalidArgument(
                f"[tools.http_get] max_redirects must be an integer >= 0 (got {redirects!r})"
            )
        return (
            strings(table, "allow_hosts", where="http_get"),
            integer(table, "max_bytes", 256 << 10, where="http_get"),
            number(table, "timeout_s", 10.0, where="http_get"),
            redirects,
        )

    @staticmethod
    def _allow_private() -> bool:
        value = tool_context().settings.get("allow_private", False)
        if not isinstance(value, bool):
            raise InvalidArgument(
                f"[tools.http_get] allow_private must be true or false (got {value!r})"
            )
        return value

    def check_available(self) -> None:
        try:
            allow, *_ = self._settings()
            self._allow_private()
        except InvalidArgument as e:
            raise PreconditionFailed(
                f"http_get is misconfigured: {e.message}", reason="TOOL_NOT_CONFIGURED"
            ) from None
        if not allow:
            raise PreconditionFailed(
                "http_get has no allowed hosts: list them with `allow_hosts = [...]` in "
                "[tools.http_get] of rustaid.toml",
                reason="TOOL_NOT_CONFIGURED",
            )

    def run(self, arguments: Mapping[str, Any]) -> Any:
        allow, max_bytes, timeout_s, max_redirects = self._settings()
        url = arguments["url"]
        for _ in range(max_redirects + 1):
            status, headers, body, truncated = self._get(url, allow, max_bytes, timeout_s)
            location = headers.get("location")
            if status in (301, 302, 303, 307, 308) and location:
                url = urljoin(url, location)
                continue
            content_type = headers.get("content-type", "")
            result: dict[str, Any] = {
                "url": url,
                "status": status,
                "content_type": content_type,
                "bytes": len(body),
                "truncated": truncated,
            }
            if not content_type or content_type.lower().startswith(TEXT_TYPES):
                charset = "utf-8"
                for part in content_type.split(";")[1:]:
                    key, _, value = part.strip().partition("=")
                    if key.lower() == "charset" and value:
                        charset = value.strip('"')
                try:
                    result["body"] = body.decode(charset, errors="replace")
                except LookupError:
                    result["body"] = body.decode("utf-8", errors="replace")
            else:
                result["body_base64"] = base64.b64encode(body).decode("ascii")
            return result
        raise ToolError(f"more than {max_redirects} redirects")

    def _get(
        self, url: str, allow: tuple[str, ...], max_bytes: int, timeout_s: float
    ) -> tuple[int, dict[str, str], bytes, bool]:
        context = tool_context()
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https"):
            raise ToolError(f"only http and https URLs are allowed, not {parts.scheme or url!r}")
        if parts.username or parts.password:
            raise ToolError("URLs with credentials are not allowed")
        host = parts.hostname or ""
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ToolError(f"bad port in {url!r}") from None
        if not host or not _allowed(host, port, allow):
            raise ToolError(
                f"host {host}:{port} is not allowed; allowed: {', '.join(allow)} "
                "(allow_hosts in [tools.http_get])"
            )
        addresses = checked_addresses(host, port, allow, self._allow_private())
        timeout = min(timeout_s, max(context.remaining, 0.001))
        conn: http.client.HTTPConnection
        if parts.scheme == "https":
            conn = _PinnedHTTPS(host, port, addresses, timeout)
        else:
            conn = _PinnedHTTP(host, port, addresses, timeout)
        path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        try:
            conn.request(
                "GET",
                path,
                headers={
                    "User-Agent": f"rustaid/{__version__} http_get",
                    "Accept-Encoding": "identity",
                    "Connection": "close",
                },
            )
            response = conn.getresponse()
            chunks: list[bytes] = []
            size = 0
            truncated = False
            while True:
                if context.cancel.cancelled or time.monotonic() > context.deadline:
                    raise SandboxTimeout(f"gave up reading {url} at the call's deadline")
                chunk = response.read1(CHUNK) if size < max_bytes else b""
                if size >= max_bytes:
                    truncated = bool(response.read1(1))
                    break
                if not chunk:
                    break
                keep = chunk[: max_bytes - size]
                chunks.append(keep)
                size += len(keep)
                if len(keep) < len(chunk):
                    truncated = True
                    break
            headers = {k.lower(): v for k, v in response.getheaders()}
            return response.status, headers, b"".join(chunks), truncated
        except TimeoutError:
            raise ToolError(f"{url}: no answer within {timeout:g} s") from None
        except (OSError, http.client.HTTPException, ssl.SSLError, socket.gaierror) as e:
            raise ToolError(f"{url}: {e}") from None
        finally:
            conn.close()
