"""Runs the HTTP front end in the daemon's event loop: one uvicorn server per
`http_listen` address, on sockets the daemon binds itself (Unix sockets get
`socket_mode` and `socket_group`, like the gRPC socket), TLS from the same
certificate as gRPC. Imported only when `http_listen` is set."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from typing import TYPE_CHECKING

import uvicorn

from rustaid.addresses import HttpAddress, parse_http_listen
from rustaid.auth import tls
from rustaid.http.app import build_app
from rustaid.http.edge import Guard
from rustaid.sockets import check_socket_free, secure_socket

if TYPE_CHECKING:
    from rustaid.http.parts import HttpParts

log = logging.getLogger(__name__)

# Seconds an idle keep-alive connection stays open.
KEEP_ALIVE_S = 30
# Connections served at once per listener (beyond: 503 from uvicorn).
MAX_CONNECTIONS = 256


def _bind(address: HttpAddress, mode: int, group: str) -> socket.socket:
    if address.path is not None:
        address.path.parent.mkdir(parents=True, exist_ok=True, mode=0o750)
        check_socket_free(address.path)
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        old = os.umask(0o177)  # no window where the socket is open to others
        try:
            sock.bind(str(address.path))
        finally:
            os.umask(old)
        secure_socket(address.path, mode, group)
    else:
        family = socket.AF_INET6 if ":" in address.host else socket.AF_INET
        # IPPROTO_TCP named, not left 0: asyncio turns Nagle off (TCP_NODELAY) only on
        # connections whose socket says TCP. With it on, a streamed token written while
        # the previous one is unacknowledged waited for the client's delayed ACK (40 ms).
        sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((address.host, address.port))
        except OSError as e:
            sock.close()
            raise OSError(f"http_listen {address}: cannot listen: {e.strerror or e}") from e
    sock.listen(128)
    sock.setblocking(False)
    return sock


async def _serve(server: uvicorn.Server, sock: socket.socket) -> None:
    await server.main_loop()
    await server.shutdown(sockets=[sock])


class HttpFrontEnd:
    """Owned by the daemon while `http_listen` is set."""

    def __init__(self, parts: HttpParts) -> None:
        self.parts = parts
        self._servers: list[tuple[uvicorn.Server, asyncio.Task[None], HttpAddress]] = []
        # Where each listener ended up (port 0 picks a free port).
        self.bound: list[str] = []

    async def start(self) -> None:
        s = self.parts.settings()
        app = build_app(self.parts)
        # uvicorn's own lines ("Started server process") say nothing the daemon's do not.
        logging.getLogger("uvicorn.error").setLevel(logging.WARNING)
        for address in parse_http_listen(s.http_listen, tls=bool(s.tls_cert)):
            sock = _bind(address, s.socket_mode, s.socket_group)
            secure = address.path is None and bool(s.tls_cert)
            config = uvicorn.Config(
                Guard(app, self.parts.settings, self.parts.auth, address),
                lifespan="off",
                log_config=None,
                access_log=False,
                server_header=False,
                timeout_keep_alive=KEEP_ALIVE_S,
                limit_concurrency=MAX_CONNECTIONS,
                # A backstop: the daemon stops running generations after the grace period.
                timeout_graceful_shutdown=int(s.shutdown_grace_s) + 10,
                ssl_certfile=str(tls.setting_path(s, s.tls_cert)) if secure else None,
                ssl_keyfile=str(tls.setting_path(s, s.tls_key)) if secure else None,
            )
            # uvicorn's serve() without its signal handling (the daemon owns SIGTERM and
            # SIGHUP): start-up here, so that its errors stop the daemon's start.
            server = uvicorn.Server(config)
            config.load()
            server.lifespan = config.lifespan_class(config)
            await server.startup(sockets=[sock])
            task = asyncio.ensure_future(_serve(server, sock))
            name = str(address)
            if address.path is None:
                host, port = sock.getsockname()[:2]
                name = str(HttpAddress(host=host, port=port))
            scheme = "unix" if address.path is not None else "https" if secure else "http"
            self.bound.append(name if scheme == "unix" else f"{scheme}://{name}")
            self._servers.append((server, task, address))
            log.info("HTTP API (OpenAI and Ollama routes) on %s", self.bound[-1])

    async def drain(self, grace: float) -> None:
        """Stop taking connections and give running requests up to `grace` seconds."""
        for server, _, _ in self._servers:
            server.should_exit = True
        running = {t for server, _, _ in self._servers for t in server.server_state.tasks}
        if running:
            await asyncio.wait(running, timeout=grace)

    async def stop(self) -> None:
        """After the engine stopped what still ran: close every connection."""
        for server, _, _ in self._servers:
            server.should_exit = True
        for _, task, address in self._servers:
            with contextlib.suppress(Exception):
                await task
            if address.path is not None:
                with contextlib.suppress(FileNotFoundError):
                    address.path.unlink()
        self._servers.clear()
