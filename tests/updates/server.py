"""A real HTTP server on 127.0.0.1 serving a release repository folder, with fault
injection per path: truncate mid-file, flip a byte, stall, HTTP errors, a wrong
Content-Length, endless data, no Range support. It records every request and the
bytes it sent, and collects POSTed reports."""

from __future__ import annotations

import contextlib
import http.server
import json
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

_RANGE = re.compile(r"^bytes=(\d+)-$")


@dataclass
class Fault:
    """kind: truncate (send `value` bytes of the body, then close), flip (invert the byte
    at offset `value`), stall (send `value` bytes, then nothing), status (answer HTTP
    `value`), content_length (announce `value` bytes, send the real body), endless
    (no Content-Length, the body then zeros forever), no_range (ignore Range), trickle
    (`value` bytes every 0.1 s), hold (send `value` bytes, then wait for `release`),
    redirect (HTTP 302 to `location`).
    `times`: how many requests it applies to (-1: all)."""

    kind: str
    value: int = 0
    times: int = 1
    location: str = ""  # redirect: where to


@dataclass
class Request:
    method: str
    path: str
    range: str
    status: int
    sent: int


@dataclass
class RepoServer:
    root: Path
    faults: dict[str, Fault] = field(default_factory=dict)
    requests: list[Request] = field(default_factory=list)
    reports: list[dict[str, Any]] = field(default_factory=list)
    stopping: threading.Event = field(default_factory=threading.Event)
    # hold: set while a response waits; the test sets `release` to let it go on.
    holding: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)
    url: str = ""

    def fault(
        self, path: str, kind: str, value: int = 0, times: int = 1, location: str = ""
    ) -> None:
        self.faults[path.lstrip("/")] = Fault(kind, value, times, location)

    def requests_for(self, path: str) -> list[Request]:
        return [r for r in self.requests if r.path.lstrip("/") == path.lstrip("/")]

    def bytes_sent(self, path: str) -> int:
        return sum(r.sent for r in self.requests_for(path))

    def artifact_requests(self) -> list[Request]:
        return [r for r in self.requests if r.path.startswith("/artifacts/")]

    def _take(self, path: str) -> Fault | None:
        fault = self.faults.get(path.lstrip("/"))
        if fault is None or fault.times == 0:
            return None
        if fault.times > 0:
            fault.times -= 1
        return fault


def _handler(server: RepoServer) -> type[http.server.BaseHTTPRequestHandler]:
    class Handler(http.server.BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.0"

        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _record(self, status: int, sent: int) -> None:
            self._request.status, self._request.sent = status, sent

        def parse_request(self) -> bool:
            ok = super().parse_request()
            if ok:  # listed when it arrives (a stalled one is listed while it stalls)
                self._request = Request(
                    self.command, self.path, self.headers.get("Range", ""), 0, 0
                )
                server.requests.append(self._request)
            return ok

        def do_POST(self) -> None:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length)
            with contextlib.suppress(ValueError):
                server.reports.append(json.loads(body))
            self.send_response(204)
            self.end_headers()
            self._record(204, 0)

        def do_GET(self) -> None:
            rel = self.path.split("?", 1)[0].lstrip("/")
            target = (server.root / rel).resolve()
            fault = server._take(rel)
            if fault is not None and fault.kind == "status":
                self.send_error(fault.value)
                self._record(fault.value, 0)
                return
            if fault is not None and fault.kind == "redirect":
                self.send_response(302)
                self.send_header("Location", fault.location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                self._record(302, 0)
                return
            if not target.is_relative_to(server.root.resolve()) or not target.is_file():
                self.send_error(404)
                self._record(404, 0)
                return
            data = target.read_bytes()
            start = 0
            match = _RANGE.match(self.headers.get("Range", ""))
            if match and not (fault is not None and fault.kind == "no_range"):
                start = int(match[1])
                if start >= len(data):
                    self.send_response(416)
                    self.send_header("Content-Range", f"bytes */{len(data)}")
                    self.end_headers()
                    self._record(416, 0)
                    return
                self.send_response(206)
                self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
                status = 206
            else:
                self.send_response(200)
                status = 200
            body = data[start:]
            if fault is not None and fault.kind == "flip":
                offset = fault.value - start
                if 0 <= offset < len(body):
                    body = body[:offset] + bytes([body[offset] ^ 0xFF]) + body[offset + 1 :]
            if fault is not None and fault.kind == "content_length":
                self.send_header("Content-Length", str(fault.value))
            elif not (fault is not None and fault.kind == "endless"):
                self.send_header("Content-Length", str(len(body)))
            self.send_header("Accept-Ranges", "bytes")
            self.end_headers()
            sent = 0
            self._record(status, 0)
            try:
                if fault is not None and fault.kind in ("truncate", "stall"):
                    part = body[: fault.value]
                    self.wfile.write(part)
                    self.wfile.flush()
                    sent = len(part)
                    if fault.kind == "stall":
                        server.stopping.wait(30)
                elif fault is not None and fault.kind == "trickle":
                    for i in range(0, len(body), fault.value):
                        if server.stopping.wait(0.1):
                            break
                        self.wfile.write(body[i : i + fault.value])
                        self.wfile.flush()
                        sent += len(body[i : i + fault.value])
                elif fault is not None and fault.kind == "hold":
                    self.wfile.write(body[: fault.value])
                    self.wfile.flush()
                    server.holding.set()
                    server.release.wait(30)
                    self.wfile.write(body[fault.value :])
                    sent = len(body)
                elif fault is not None and fault.kind == "endless":
                    self.wfile.write(body)
                    sent = len(body)
                    zeros = bytes(65536)
                    deadline = time.monotonic() + 30
                    while not server.stopping.is_set() and time.monotonic() < deadline:
                        self.wfile.write(zeros)
                        sent += len(zeros)
                else:
                    self.wfile.write(body)
                    sent = len(body)
            except (BrokenPipeError, ConnectionResetError):
                pass
            self._record(status, sent)

    return Handler


@contextlib.contextmanager
def serve(root: Path) -> Any:
    repo = RepoServer(root)
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _handler(repo))
    httpd.daemon_threads = True
    repo.url = f"http://127.0.0.1:{httpd.server_address[1]}"
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.daemon = True
    thread.start()
    try:
        yield repo
    finally:
        repo.stopping.set()
        httpd.shutdown()
        httpd.server_close()
        thread.join(5)
