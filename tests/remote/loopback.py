"""A real HTTP server on 127.0.0.1 (stdlib http.server in a thread) that answers each
request with the next scripted responder: JSON, a Server-Sent Events stream written
chunk by chunk, a stall, a hang-up. Requests are recorded for assertions."""

from __future__ import annotations

import json
import socket
import ssl
import threading
import time
from collections import deque
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

Responder = Callable[["Handler"], None]


@dataclass(frozen=True)
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: Any


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def log_message(self, format: str, *args: Any) -> None:  # quiet
        pass

    def _handle(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        body = json.loads(raw) if raw else None
        owner = self.server.owner
        owner.requests.append(
            Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        responder = owner.routes.get((self.command, self.path))
        if responder is None:
            responder = (
                owner.script.popleft()
                if owner.script
                else json_answer(404, {"error": "no such route"})
            )
        responder(self)

    do_GET = _handle
    do_POST = _handle

    # -- writing ---------------------------------------------------------------------

    def start_events(self, content_type: str = "text/event-stream", status: int = 200) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.send_header("Cache-Control", "no-cache")
        self.end_headers()
        self.wfile.flush()

    def chunk(self, text: str) -> None:
        data = text.encode()
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
        self.wfile.flush()

    def end_chunks(self) -> None:
        self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    owner: LoopbackServer


class LoopbackServer:
    def __init__(self, tls: ssl.SSLContext | None = None) -> None:
        self.script: deque[Responder] = deque()
        # Fixed answers by (method, path); the model listing a provider reads at load.
        self.routes: dict[tuple[str, str], Responder] = {
            ("GET", "/v1/models"): json_answer(200, {"object": "list", "data": []}),
            # No tokenizer endpoints, as with OpenAI.
            ("POST", "/tokenize"): json_answer(404, {"error": "not found"}),
            ("POST", "/extras/tokenize"): json_answer(404, {"error": "not found"}),
        }
        self.requests: list[Recorded] = []
        # Stalled responders wait on this; set when the server closes.
        self.release = threading.Event()
        self._server = _Server(("127.0.0.1", 0), Handler)
        self._server.owner = self
        self.scheme = "http"
        if tls is not None:
            self._server.socket = tls.wrap_socket(self._server.socket, server_side=True)
            self.scheme = "https"
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self._thread.start()

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def url(self, path: str = "") -> str:
        return f"{self.scheme}://127.0.0.1:{self.port}{path}"

    def then(self, *responders: Responder) -> LoopbackServer:
        self.script.extend(responders)
        return self

    def posts(self, path: str | None = None) -> list[Recorded]:
        return [r for r in self.requests if r.method == "POST" and path in (None, r.path)]

    def close(self) -> None:
        self.release.set()
        self._server.shutdown()
        self._server.server_close()


def json_answer(status: int, doc: Any, headers: dict[str, str] | None = None) -> Responder:
    def respond(h: Handler) -> None:
        data = json.dumps(doc).encode()
        h.send_response(status)
        h.send_header("Content-Type", "application/json")
        h.send_header("Content-Length", str(len(data)))
        h.send_header("Connection", "close")
        for k, v in (headers or {}).items():
            h.send_header(k, v)
        h.end_headers()
        h.wfile.write(data)
        h.close_connection = True

    return respond


def sse_answer(
    events: Iterable[str],
    *,
    delay: float = 0.0,
    end: bool = True,
    content_type: str = "text/event-stream",
) -> Responder:
    """Write each event (raw SSE text, e.g. 'data: {...}\\n\\n') as one chunk; without
    `end`, hang up without finishing the body (a connection lost mid-stream)."""
    events = list(events)

    def respond(h: Handler) -> None:
        h.start_events(content_type)
        for e in events:
            h.chunk(e)
            if delay:
                time.sleep(delay)
        if end:
            h.end_chunks()
        else:
            h.connection.shutdown(socket.SHUT_RDWR)
        h.close_connection = True

    return respond


def stall(*first: str) -> Responder:
    """Send the headers and `first` events, then go silent until the server closes."""

    def respond(h: Handler) -> None:
        h.start_events()
        for e in first:
            h.chunk(e)
        h.server.owner.release.wait(60)
        h.close_connection = True

    return respond


def silent() -> Responder:
    """Accept the request and answer nothing at all until the server closes."""

    def respond(h: Handler) -> None:
        h.server.owner.release.wait(60)
        h.close_connection = True

    return respond


def hang_up() -> Responder:
    """Close the connection without any answer."""

    def respond(h: Handler) -> None:
        h.connection.shutdown(socket.SHUT_RDWR)
        h.close_connection = True

    return respond


def data(doc: Any) -> str:
    return f"data: {json.dumps(doc)}\n\n"


def event(name: str, doc: Any) -> str:
    return f"event: {name}\ndata: {json.dumps(doc)}\n\n"


def free_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])
