"""A real daemon with its HTTP API on loopback, serving the real SmolLM2 chat model, the
real all-MiniLM-L6-v2 embedding model and a slow synthetic model (for streams cut
short), driven by the real `openai` and `ollama` client libraries."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rustaid.testing import real_model as real
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import add_model
from tests.rag.conftest import MINILM, link_embedding_model, needs_minilm, write_config

CHAT = real.MODEL_ID
EMBED = "embeddings/minilm"
SLOW = "slow"
ORIGIN = "http://localhost:3000"


@dataclass
class HttpDaemon:
    daemon: DaemonProcess
    url: str  # http://127.0.0.1:PORT

    @property
    def v1(self) -> str:
        return self.url + "/v1"


def start_http_daemon(data_dir: Path, config: str = "") -> Iterator[HttpDaemon]:
    write_config(
        data_dir,
        'http_listen = ["127.0.0.1:0"]\n'
        f'http_cors_origins = ["{ORIGIN}"]\n'
        f"{config}"
        f'[rag]\nembedding_model = "{EMBED}"\n',
    )
    with run_daemon(data_dir) as daemon:
        yield HttpDaemon(daemon, daemon.http_url())


@pytest.fixture(scope="package")
def http_daemon(
    tmp_path_factory: pytest.TempPathFactory, real_model: Path, model_files: dict[str, Path]
) -> Iterator[HttpDaemon]:
    if not (MINILM / "model.onnx").is_file():
        pytest.skip(f"the real all-MiniLM-L6-v2 is not at {MINILM}")
    data_dir = tmp_path_factory.mktemp("http")
    real.place(real_model, data_dir / "models")
    link_embedding_model(data_dir, MINILM, "minilm")
    add_model(data_dir, model_files["slow"], "slow.gguf")
    yield from start_http_daemon(data_dir, "max_message_mb = 1\n")


__all__ = ["CHAT", "EMBED", "ORIGIN", "SLOW", "HttpDaemon", "needs_minilm", "start_http_daemon"]
