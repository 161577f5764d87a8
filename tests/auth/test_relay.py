"""The peer-credential relay as a transport: a client that dies mid-stream frees the
model, a killed daemon's leftovers do not stop the next one, a clean stop removes its
sockets. A real daemon (peer_credentials on) started without run_daemon's cleanup,
which expects only files in its socket folder."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc
from rustaid.auth.relay import Credentials, UnixRelay
from tests.conftest import add_model


@contextlib.contextmanager
def relayed_daemon(data_dir: Path, socket: Path) -> Iterator[subprocess.Popen[bytes]]:
    env = {
        **os.environ,
        "RUSTAID_ENTRY_POINT_PLUGINS": "0",
        "RUSTAID_THREADS": "1",
        "RUSTAID_PEER_CREDENTIALS": "1",
    }
    env.pop("NOTIFY_SOCKET", None)
    log = (data_dir / "daemon.log").open("ab")
    proc = subprocess.Popen(
        [sys.executable, "-m", "rustaid", "serve", "--user", "--data-dir", str(data_dir),
         "--listen", f"unix://{socket}"],
        env=env, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        with grpc.insecure_channel(f"unix://{socket}") as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
        yield proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            proc.wait(30)
        log.close()


@pytest.fixture
def socket(tmp_path: Path) -> Path:
    folder = Path(f"/tmp/rustaid-relay-test-{os.getpid()}-{time.monotonic_ns()}")
    folder.mkdir(mode=0o700)
    yield folder / "rustaid.sock"
    import shutil

    shutil.rmtree(folder, ignore_errors=True)


def _stream(model: str, max_tokens: int) -> generate_pb2.GenerateStreamRequest:
    return generate_pb2.GenerateStreamRequest(
        model_id=model,
        prompt="Once upon a time",
        params=common_pb2.GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=1),
    )


CLIENT = """
import sys, grpc
from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc
ch = grpc.insecure_channel(sys.argv[1])
req = generate_pb2.GenerateStreamRequest(model_id="slow", prompt="Once upon a time",
    params=common_pb2.GenerationParams(max_tokens=3000, temperature=0.0, seed=1))
for i, r in enumerate(generate_pb2_grpc.GenerateServiceStub(ch).GenerateStream(req)):
    if i == 3:
        print("streaming", flush=True)
"""


def test_a_client_killed_mid_stream_frees_the_model(
    tmp_path: Path, socket: Path, model_files: dict[str, Path]
) -> None:
    add_model(tmp_path, model_files["slow"])
    with relayed_daemon(tmp_path, socket):
        address = f"unix://{socket}"
        with grpc.insecure_channel(address) as channel:
            stub = generate_pb2_grpc.GenerateServiceStub(channel)
            list(stub.GenerateStream(_stream("slow", 1)))  # loaded
            t0 = time.monotonic()
            list(stub.GenerateStream(_stream("slow", 50)))
            per_50 = time.monotonic() - t0
            client = subprocess.Popen(
                [sys.executable, "-c", CLIENT, address], stdout=subprocess.PIPE, text=True
            )
            assert client.stdout is not None
            assert client.stdout.readline().strip() == "streaming"
            client.kill()  # no goodbye: the relay sees the connection close
            client.wait()
            t1 = time.monotonic()
            done = list(stub.GenerateStream(_stream("slow", 5)))
            waited = time.monotonic() - t1
        assert done[-1].done.usage.completion_tokens == 5
        # The dead client's 3000 tokens would take ~60x per_50.
        assert waited < per_50 * 5 + 1.0, (waited, per_50)


def test_killed_daemon_leftovers_do_not_stop_the_next_one(tmp_path: Path, socket: Path) -> None:
    private = socket.parent / ".rustaid.sock.d"
    with relayed_daemon(tmp_path, socket) as proc:
        proc.kill()
        proc.wait()
    assert socket.exists() and (private / "grpc.sock").exists()  # SIGKILL leaves them
    with relayed_daemon(tmp_path, socket) as proc, grpc.insecure_channel(f"unix://{socket}") as ch:
        r = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=20)
        assert r.status == health_pb2.HealthCheckResponse.SERVING
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0
    assert not socket.exists() and not private.exists()  # a clean stop removes both


def test_a_private_folder_of_someone_else_is_refused(tmp_path: Path, socket: Path) -> None:
    private = socket.parent / ".rustaid.sock.d"
    private.symlink_to(tmp_path)  # not a folder of ours: a link
    r = subprocess.run(
        [sys.executable, "-m", "rustaid", "serve", "--user", "--data-dir", str(tmp_path),
         "--listen", f"unix://{socket}"],
        env={**os.environ, "RUSTAID_PEER_CREDENTIALS": "1", "RUSTAID_ENTRY_POINT_PLUGINS": "0"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert r.returncode == 1
    assert f"{private} exists and is not a folder of this user: remove it" in r.stderr


# -- bytes that arrive before the relay reaches gRPC -------------------------------------


def _reads_even_when_paused(self: Any, fd: int, callback: Any, *args: Any) -> None:
    """The transport of Python 3.11.2 (Debian 12's): the reader it adds after
    connection_made ignores a pause made there."""
    if self._closing:
        return
    self._loop._add_reader(fd, callback, *args)


async def test_bytes_sent_before_the_relay_connects_are_passed_on(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from asyncio import selector_events

    monkeypatch.setattr(
        selector_events._SelectorSocketTransport, "_add_reader", _reads_even_when_paused
    )

    async def echo(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        writer.write(await reader.read(100))
        await writer.drain()
        writer.close()

    private = tmp_path / "grpc.sock"
    server = await asyncio.start_unix_server(echo, path=str(private))
    relay = UnixRelay(tmp_path / "public.sock", private, Credentials())
    relay.bind()
    await relay.start()
    try:
        # A gRPC client speaks first (its connection preface), at once.
        reader, writer = await asyncio.open_unix_connection(str(tmp_path / "public.sock"))
        writer.write(b"PRI * HTTP/2.0")
        await writer.drain()
        assert await asyncio.wait_for(reader.read(100), 10) == b"PRI * HTTP/2.0"
        writer.close()
    finally:
        await relay.stop()
        server.close()
