"""End to end: a real daemon whose config/models.toml declares remote models served by
the openai provider, in front of a real OpenAI-compatible peer (llama-cpp-python's
server on a synthetic GGUF). Failing remotes give their status codes over gRPC and the
daemon keeps serving."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2
from rustaid.testing.daemon import run_daemon
from tests.conftest import Stubs
from tests.remote.conftest import PEER_KEY, PEER_MODEL, Peer
from tests.remote.loopback import free_port

P = common_pb2.GenerationParams
WRONG_KEY = "wrong-key-for-the-peer-31415926"


def models_toml(peer: Peer, down_url: str) -> str:
    return f"""
[[model]]
id = "remote-mini"
provider = "openai"
url = "{peer.url}"
remote_model = "{PEER_MODEL}"
api_key_env = "RUSTAID_TEST_PEER_KEY"
timeout_s = 30

[[model]]
id = "remote-badkey"
provider = "openai"
url = "{peer.url}"
api_key_env = "RUSTAID_TEST_WRONG_KEY"

[[model]]
id = "remote-down"
provider = "openai"
url = "{down_url}"
max_retries = 0
"""


@pytest.fixture(scope="module")
def remote_daemon(tmp_path_factory: pytest.TempPathFactory, peer: Peer) -> Iterator[Stubs]:
    data_dir = tmp_path_factory.mktemp("remote-daemon")
    config = data_dir / "config"
    config.mkdir()
    down = f"http://127.0.0.1:{free_port()}/v1"
    (config / "models.toml").write_text(models_toml(peer, down))
    env = {"RUSTAID_TEST_PEER_KEY": PEER_KEY, "RUSTAID_TEST_WRONG_KEY": WRONG_KEY}
    with run_daemon(data_dir, env=env) as daemon:
        stubs = Stubs(daemon)
        yield stubs
        stubs.channel.close()


def reference(peer: Peer, max_tokens: int) -> str:
    doc = peer.post(
        "/completions",
        {"prompt": "hello world", "max_tokens": max_tokens, "temperature": 0, "seed": 1},
    )
    return str(doc["choices"][0]["text"])


def test_remote_model_is_listed(remote_daemon: Stubs) -> None:
    models = {
        m.id: m for m in remote_daemon.models.ListModels(models_pb2.ListModelsRequest()).models
    }
    assert {"remote-mini", "remote-badkey", "remote-down"} <= set(models)
    assert models["remote-mini"].provider == "openai"
    assert models["remote-mini"].state != models_pb2.MODEL_STATE_ERROR, models["remote-mini"].error


def test_generate_and_stream_through_the_peer(remote_daemon: Stubs, peer: Peer) -> None:
    expected = reference(peer, 10)
    params = P(max_tokens=10, temperature=0, seed=1)
    r = remote_daemon.generate.Generate(
        generate_pb2.GenerateRequest(model_id="remote-mini", prompt="hello world", params=params)
    )
    assert r.text == expected
    assert r.model_id == "remote-mini"
    assert r.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert r.usage.completion_tokens == 10 and r.usage.prompt_tokens > 0
    stream = list(
        remote_daemon.generate.GenerateStream(
            generate_pb2.GenerateStreamRequest(
                model_id="remote-mini", prompt="hello world", params=params
            )
        )
    )
    chunks = [e.chunk.text for e in stream if e.WhichOneof("event") == "chunk"]
    assert len(chunks) > 1 and "".join(chunks) == expected
    assert stream[-1].done.finish_reason == common_pb2.FINISH_REASON_LENGTH


def test_chat_stream_through_the_peer(remote_daemon: Stubs) -> None:
    request = generate_pb2.ChatStreamRequest(
        model_id="remote-mini",
        messages=[generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content="hi there")],
        params=P(max_tokens=6, temperature=0),
    )
    events = list(remote_daemon.generate.ChatStream(request))
    assert events[-1].WhichOneof("event") == "done"
    assert any(e.WhichOneof("event") == "chunk" for e in events)


def test_failing_remotes_give_their_status_and_the_daemon_goes_on(
    remote_daemon: Stubs, peer: Peer
) -> None:
    def generate(model_id: str) -> grpc.RpcError:
        with pytest.raises(grpc.RpcError) as info:
            remote_daemon.generate.Generate(
                generate_pb2.GenerateRequest(model_id=model_id, prompt="hi", params=P(max_tokens=2))
            )
        return info.value

    refused = generate("remote-badkey")
    assert refused.code() == grpc.StatusCode.UNAUTHENTICATED, refused.details()
    assert "RUSTAID_TEST_WRONG_KEY" in (refused.details() or "")
    down = generate("remote-down")
    assert down.code() == grpc.StatusCode.UNAVAILABLE, down.details()
    assert "unreachable" in (down.details() or "")
    ok = remote_daemon.generate.Generate(
        generate_pb2.GenerateRequest(model_id="remote-mini", prompt="hi", params=P(max_tokens=2))
    )
    assert ok.usage.completion_tokens == 2
    log = Path(remote_daemon.daemon.data_dir / "daemon.log").read_text(errors="replace")
    assert PEER_KEY not in log and WRONG_KEY not in log
