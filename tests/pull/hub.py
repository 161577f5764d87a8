"""A real HTTP server on loopback laid out like the model hubs a pull reads from.

- `/OWNER/REPO/resolve/REVISION/PATH`: the Hugging Face hub's download route. It answers
  302 to `/cdn/SHA256` on *another host name* (`localhost` instead of `127.0.0.1`, as the
  hub sends downloads to its CDN), or 401 for repositories in `private` without the
  right bearer token, or 404.
- `/cdn/SHA256`: the bytes, with `ETag`, `Range` and `If-Range` (a stale validator gets
  the whole file with 200, as RFC 9110 says).
- `/simple/NAME/`: a package index page in PEP 691 JSON; `/files/WHEEL`: the wheel.

Faults: `truncate_next` sends only that many bytes of the next body, then closes.
Every request is recorded with the headers that matter (Range, If-Range, Authorization).
"""

from __future__ import annotations

import contextlib
import hashlib
import http.server
import json
import re
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Seen:
    host: str
    path: str
    range: str
    if_range: str
    authorization: str
    status: int = 0


@dataclass
class Hub:
    port: int = 0
    files: dict[str, bytes] = field(default_factory=dict)  # "OWNER/REPO/REV/PATH" -> bytes
    packages: dict[str, dict[str, bytes]] = field(default_factory=dict)  # name -> wheel files
    listed_sha: dict[str, str] = field(default_factory=dict)  # wheel -> sha256 the index lists
    private: set[str] = field(default_factory=set)  # "OWNER/REPO" needing the token
    token: str = "hf_secret_token_123"
    etag_salt: str = "v1"
    truncate_next: int = -1
    seen: list[Seen] = field(default_factory=list)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def add(self, repo_path: str, data: bytes, revision: str = "main") -> str:
        owner, repo, *rest = repo_path.split("/")
        self.files[f"{owner}/{repo}/{revision}/{'/'.join(rest)}"] = data
        return hashlib.sha256(data).hexdigest()

    def add_wheel(self, name: str, filename: str, data: bytes, listed_sha: str = "") -> None:
        self.packages.setdefault(name, {})[filename] = data
        self.listed_sha[filename] = listed_sha or hashlib.sha256(data).hexdigest()

    def blobs(self) -> dict[str, bytes]:
        return {hashlib.sha256(d).hexdigest(): d for d in self.files.values()}


def _handler(hub: Hub) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"
        seen: Seen

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(
            self, status: int, body: bytes = b"", headers: dict[str, str] | None = None
        ) -> None:
            self.send_response(status)
            for k, v in (headers or {}).items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            self.seen.status = status

        def do_GET(self) -> None:
            h = self.headers
            # This request's own record: another connection's request may be appended
            # before this one's reply is written (the CDN request follows a redirect at once).
            self.seen = Seen(
                h.get("Host", ""),
                self.path,
                h.get("Range", ""),
                h.get("If-Range", ""),
                h.get("Authorization", ""),
            )
            hub.seen.append(self.seen)
            parts = self.path.split("?", 1)[0].strip("/").split("/")
            if len(parts) >= 5 and parts[2] == "resolve":
                owner, repo, _, revision, *rest = parts
                if (
                    f"{owner}/{repo}" in hub.private
                    and h.get("Authorization") != f"Bearer {hub.token}"
                ):
                    return self._reply(401, b"Invalid credentials")
                data = hub.files.get(f"{owner}/{repo}/{revision}/{'/'.join(rest)}")
                if data is None:
                    return self._reply(404, b"Entry not found")
                sha = hashlib.sha256(data).hexdigest()
                return self._reply(
                    302, headers={"Location": f"http://localhost:{hub.port}/cdn/{sha}"}
                )
            if len(parts) == 2 and parts[0] == "cdn":
                data = hub.blobs().get(parts[1])
                if data is None:
                    return self._reply(404)
                return self._send_blob(data, f'"{parts[1][:16]}-{hub.etag_salt}"')
            if len(parts) == 2 and parts[0] == "simple":
                wheels = hub.packages.get(parts[1])
                if wheels is None:
                    return self._reply(404)
                page = {
                    "meta": {"api-version": "1.1"},
                    "name": parts[1],
                    "files": [
                        {
                            "filename": f,
                            "url": f"../../files/{f}",
                            "hashes": {"sha256": hub.listed_sha[f]},
                        }
                        for f in wheels
                    ],
                }
                body = json.dumps(page).encode()
                return self._reply(
                    200, body, {"Content-Type": "application/vnd.pypi.simple.v1+json"}
                )
            if len(parts) == 2 and parts[0] == "files":
                for wheels in hub.packages.values():
                    if parts[1] in wheels:
                        return self._send_blob(wheels[parts[1]], '"wheel"')
            return self._reply(404)

        def _send_blob(self, data: bytes, etag: str) -> None:
            start = 0
            match = _RANGE.match(self.headers.get("Range", ""))
            if_range = self.headers.get("If-Range")
            status = 200
            headers = {"ETag": etag, "Accept-Ranges": "bytes"}
            if match and (if_range is None or if_range == etag):
                start = int(match[1])
                if start >= len(data):
                    return self._reply(416, headers={"Content-Range": f"bytes */{len(data)}"})
                status = 206
                headers["Content-Range"] = f"bytes {start}-{len(data) - 1}/{len(data)}"
            body = data[start:]
            self.send_response(status)
            for k, v in headers.items():
                self.send_header(k, v)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.seen.status = status
            if hub.truncate_next >= 0:
                body, hub.truncate_next = body[: hub.truncate_next], -1
                self.wfile.write(body)
                self.wfile.flush()
                self.close_connection = True
                return
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):
                self.wfile.write(body)

    return Handler


@contextlib.contextmanager
def serve_hub() -> Iterator[Hub]:
    hub = Hub()
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(hub))
    httpd.daemon_threads = True
    hub.port = httpd.server_address[1]
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield hub
    finally:
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
