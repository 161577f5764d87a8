"""Fixtures for the remote engines: a real OpenAI-compatible peer (llama-cpp-python's
server on a synthetic GGUF) and a scripted loopback HTTP server."""

from __future__ import annotations

import json
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from rustaid.testing.synthetic import write_llama_gguf
from tests.remote.loopback import LoopbackServer, free_port

# The peer's API key (the server refuses requests without it).
PEER_KEY = "peer-test-key-7f3a9c1e5b2d4a60"
PEER_MODEL = "synthetic"


@dataclass(frozen=True)
class Peer:
    url: str  # base URL, ending in /v1
    model_path: Path
    log_path: Path

    def post(self, path: str, body: dict[str, Any]) -> Any:
        """A plain, non-streamed request, as a reference for what the server answers."""
        req = urllib.request.Request(
            self.url + path,
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "Authorization": f"Bearer {PEER_KEY}"},
        )
        with urllib.request.urlopen(req, timeout=60) as resp:
            return json.loads(resp.read())


@pytest.fixture(scope="module")
def peer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Peer]:
    """`python -m llama_cpp.server` on 127.0.0.1 serving a synthetic GGUF: one per module."""
    root = tmp_path_factory.mktemp("peer")
    model = write_llama_gguf(root / "synthetic.gguf", seed=7)
    port = free_port()
    log_path = root / "server.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
             "--model_alias", PEER_MODEL, "--host", "127.0.0.1", "--port", str(port),
             "--api_key", PEER_KEY, "--n_ctx", "1024", "--n_threads", "1"],
            stdout=log, stderr=subprocess.STDOUT,
        )  # fmt: skip
    url = f"http://127.0.0.1:{port}/v1"
    try:
        _wait_ready(proc, url, log_path)
        yield Peer(url, model, log_path)
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def _wait_ready(proc: subprocess.Popen[bytes], url: str, log_path: Path) -> None:
    deadline = time.monotonic() + 60
    req = urllib.request.Request(url + "/models", headers={"Authorization": f"Bearer {PEER_KEY}"})
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited: {log_path.read_text(errors='replace')}")
        try:
            with urllib.request.urlopen(req, timeout=2):
                return
        except (urllib.error.URLError, OSError):
            if time.monotonic() > deadline:
                raise TimeoutError("llama_cpp.server did not start within 60 s") from None
            time.sleep(0.1)


@pytest.fixture
def loopback() -> Iterator[LoopbackServer]:
    server = LoopbackServer()
    try:
        yield server
    finally:
        server.close()


class Sink:
    """Collects emitted text; optionally cancels the request after `cancel_after` pieces."""

    def __init__(self, cancel: Any = None, cancel_after: int = 0) -> None:
        self.pieces: list[str] = []
        self._cancel = cancel
        self._after = cancel_after

    def __call__(self, text: str) -> None:
        self.pieces.append(text)
        if self._cancel is not None and len(self.pieces) >= self._after:
            self._cancel.cancel()

    @property
    def text(self) -> str:
        return "".join(self.pieces)
