"""`/api/pull` with the real `ollama` client: the references `rustaictl models pull` takes,
fetched from a loopback server laid out like the hub."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import ollama
import pytest

from rustaid.auth.tokens import add_token
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.pull.hub import Hub, serve_hub
from tests.rag.conftest import write_config


@pytest.fixture(scope="module")
def hub() -> Iterator[Hub]:
    with serve_hub() as h:
        yield h


@dataclass
class Pulling:
    daemon: DaemonProcess
    admin: ollama.Client
    user: ollama.Client


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, hub: Hub) -> Iterator[Pulling]:
    data_dir = tmp_path_factory.mktemp("http-pull")
    write_config(data_dir, 'http_listen = ["127.0.0.1:0"]\n')
    tokens = data_dir / "config" / "tokens.json"
    admin, _ = add_token(tokens, "ops", admin=True)
    user, _ = add_token(tokens, "app")
    with run_daemon(data_dir, env={"HF_ENDPOINT": hub.url}) as d:
        url = d.http_url()
        yield Pulling(
            d,
            ollama.Client(host=url, headers={"Authorization": f"Bearer {admin}"}),
            ollama.Client(host=url, headers={"Authorization": f"Bearer {user}"}),
        )


def test_pull_streams_progress_and_serves_the_model(
    hub: Hub, served: Pulling, model_files: dict[str, Path]
) -> None:
    hub.add("acme/tiny/tiny-http.gguf", model_files["tiny"].read_bytes())
    client = served.admin
    progress = list(client.pull("hf://acme/tiny/tiny-http.gguf", stream=True))
    statuses = [p.status for p in progress]
    assert statuses[0] == "pulling manifest" and statuses[-1] == "success"
    assert "verifying sha256 digest" in statuses
    assert any((p.status or "").startswith("downloading") and p.total for p in progress)
    assert "tiny-http" in [m.model for m in client.list().models]
    assert client.generate("tiny-http", "Hello", options={"num_predict": 4}).response is not None


def test_pull_errors_have_the_right_status(hub: Hub, served: Pulling) -> None:
    client = served.admin
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("hf://acme/none/missing.gguf")
    assert e.value.status_code == 404 and "missing.gguf" in e.value.error
    with pytest.raises(ollama.ResponseError) as e:
        client.pull("llama3:8b")  # an Ollama library name: not a reference rustaid pulls
    assert e.value.status_code == 400 and "hf://OWNER/REPO/FILE.gguf" in e.value.error
    hub.add("acme/tiny/other.gguf", b"GGUF" + bytes(64))
    with pytest.raises(ollama.ResponseError) as e:
        served.user.pull("hf://acme/tiny/other.gguf")  # not an administrator
    assert e.value.status_code == 403 and "administrators only" in e.value.error
