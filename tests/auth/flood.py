"""Opens COUNT idle connections to a Unix socket and holds them: prints how many the
server kept open (a refused one is closed by it), then holds them until its standard
input closes. The tests run it as other users (setpriv).

    python tests/auth/flood.py SOCKET COUNT
"""

from __future__ import annotations

import select
import socket
import sys
import time

# The preface of an HTTP/2 client, so the connections look like gRPC clients' ones.
PREFACE = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n"


def kept_open(sockets: list[socket.socket]) -> int:
    """Connections the server has not closed (after giving it a moment to do so)."""
    time.sleep(1.0)
    alive = 0
    for s in sockets:
        readable, _, _ = select.select([s], [], [], 0)
        if readable:
            try:
                data = s.recv(65536, socket.MSG_PEEK)
            except OSError:
                continue
            if not data:
                continue  # closed by the server
        alive += 1
    return alive


def main(path: str, count: int) -> None:
    sockets = []
    for _ in range(count):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.connect(path)
        s.sendall(PREFACE)
        sockets.append(s)
    print(kept_open(sockets), flush=True)
    sys.stdin.read()  # hold them until the test is done
    for s in sockets:
        s.close()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
