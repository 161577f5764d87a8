"""The HTTP listener's TCP connections: streamed tokens leave at once (Nagle off)."""

from __future__ import annotations

import asyncio
import socket

from rustaid.addresses import HttpAddress
from rustaid.http.server import _bind


def test_connections_on_a_tcp_listener_send_small_writes_at_once() -> None:
    # The daemon's event loop serves the socket `_bind` makes, as uvicorn does. asyncio
    # turns Nagle's algorithm off only on sockets that say they are TCP; with it on, a
    # token written while the previous one was unacknowledged waited for the client's
    # delayed ACK (40 ms on Linux).
    async def main() -> int:
        accepted: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        def on_connect(_: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
            conn = writer.get_extra_info("socket")
            accepted.set_result(conn.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY))
            writer.close()

        sock = _bind(HttpAddress(host="127.0.0.1", port=0), 0o660, "")
        server = await asyncio.start_server(on_connect, sock=sock)
        async with server:
            _, writer = await asyncio.open_connection(*sock.getsockname())
            nodelay = await asyncio.wait_for(accepted, 10)
            writer.close()
        return nodelay

    assert asyncio.run(main()) != 0
