"""The openai provider against a real OpenAI-compatible peer: llama-cpp-python's server
(`python -m llama_cpp.server`) serving a synthetic GGUF on 127.0.0.1, started once for
this module. Outputs are compared with the server's own non-streamed answers."""

from __future__ import annotations

import json
import time

import pytest

from rustaid.builtin.openai_compat import OpenAICompatProvider, OpenAIModel
from rustaid.errors import Unauthenticated
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    FinishReason,
    GenerationParams,
    LoadOptions,
    ModelSpec,
    Role,
)
from tests.remote.conftest import PEER_KEY, PEER_MODEL, Peer, Sink

KEY_ENV = "RUSTAID_TEST_PEER_KEY"
MESSAGES = [
    ChatMessage(Role.SYSTEM, "You answer briefly."),
    ChatMessage(Role.USER, "hello, who are you?"),
]


@pytest.fixture
def model(peer: Peer, monkeypatch: pytest.MonkeyPatch) -> OpenAIModel:
    monkeypatch.setenv(KEY_ENV, PEER_KEY)
    spec = ModelSpec(
        id="peer",
        url=peer.url,
        options={"remote_model": PEER_MODEL, "api_key_env": KEY_ENV, "timeout_s": 30},
    )
    loaded = OpenAICompatProvider().load(spec, LoadOptions())
    assert isinstance(loaded, OpenAIModel)
    return loaded


def reference_completion(peer: Peer, prompt: str, max_tokens: int) -> dict[str, object]:
    return peer.post(  # type: ignore[no-any-return]
        "/completions",
        {"prompt": prompt, "max_tokens": max_tokens, "temperature": 0, "seed": 1},
    )


def test_streamed_completion_matches_the_servers_answer(model: OpenAIModel, peer: Peer) -> None:
    ref = reference_completion(peer, "hello world", 12)
    sink, cancel = Sink(), CancelToken()
    stats = model.complete(
        "hello world", GenerationParams(max_tokens=12, temperature=0, seed=1), sink, cancel
    )
    assert sink.text == ref["choices"][0]["text"]  # type: ignore[index]
    assert len(sink.pieces) > 1  # streamed, not delivered at once
    assert stats.finish_reason is FinishReason.LENGTH
    # This server reports no usage when streaming: counted chunks and its own tokenizer.
    assert stats.completion_tokens == ref["usage"]["completion_tokens"] == 12  # type: ignore[index]
    assert stats.prompt_tokens == ref["usage"]["prompt_tokens"]  # type: ignore[index]
    assert stats.prompt_eval_ms > 0 and stats.generation_ms >= 0


def test_streamed_chat_matches_the_servers_answer(model: OpenAIModel, peer: Peer) -> None:
    ref = peer.post(
        "/chat/completions",
        {
            "messages": [{"role": m.role.value, "content": m.content} for m in MESSAGES],
            "max_tokens": 10,
            "temperature": 0,
            "seed": 1,
        },
    )
    sink = Sink()
    stats = model.chat(
        MESSAGES, GenerationParams(max_tokens=10, temperature=0, seed=1), sink, CancelToken()
    )
    assert sink.text == ref["choices"][0]["message"]["content"]
    assert stats.finish_reason is FinishReason.LENGTH
    assert stats.prompt_tokens == ref["usage"]["prompt_tokens"]
    assert model.count_chat_tokens(MESSAGES) == ref["usage"]["prompt_tokens"]


def test_stop_sequence_ends_the_text_before_it(model: OpenAIModel, peer: Peer) -> None:
    full = str(reference_completion(peer, "the model", 40)["choices"][0]["text"])  # type: ignore[index]
    # A two-character stop string whose first occurrence is well inside the text.
    at = next(i for i in range(4, len(full) - 2) if full.find(full[i : i + 2]) == i)
    stop = full[at : at + 2]
    sink = Sink()
    stats = model.complete(
        "the model",
        GenerationParams(max_tokens=40, temperature=0, seed=1, stop=(stop,)),
        sink,
        CancelToken(),
    )
    assert sink.text == full[:at]
    assert stats.finish_reason is FinishReason.STOP_SEQUENCE


def test_cancel_stops_within_one_chunk(model: OpenAIModel) -> None:
    cancel = CancelToken()
    sink = Sink(cancel, cancel_after=1)
    t0 = time.monotonic()
    stats = model.complete("hello", GenerationParams(max_tokens=400, temperature=1), sink, cancel)
    assert stats.finish_reason is FinishReason.CANCELLED
    assert len(sink.pieces) == 1
    assert stats.completion_tokens < 400
    assert time.monotonic() - t0 < 10
    # The server goes on serving after the client went away mid-stream.
    again = Sink()
    model.complete("hello", GenerationParams(max_tokens=3), again, CancelToken())
    assert again.pieces


def test_json_schema_constrains_chat(model: OpenAIModel) -> None:
    schema = {"type": "object", "properties": {"ok": {"type": "boolean"}}, "required": ["ok"]}
    sink = Sink()
    stats = model.chat(
        MESSAGES,
        GenerationParams(max_tokens=60, temperature=0, json_schema=json.dumps(schema)),
        sink,
        CancelToken(),
    )
    assert stats.finish_reason is FinishReason.STOP
    assert isinstance(json.loads(sink.text)["ok"], bool)


def test_grammar_constrains_completion(model: OpenAIModel) -> None:
    sink = Sink()
    model.complete(
        "answer:",
        GenerationParams(max_tokens=10, grammar='root ::= "yes" | "no"'),
        sink,
        CancelToken(),
    )
    assert sink.text in ("yes", "no")


def test_tokenize_uses_the_servers_tokenizer(model: OpenAIModel, peer: Peer) -> None:
    import llama_cpp

    local = llama_cpp.Llama(str(peer.model_path), vocab_only=True, verbose=False)
    text = "hello world, this is a test"
    with_bos = model.tokenize(text, add_special=True)
    assert with_bos == local.tokenize(text.encode(), add_bos=True, special=True)
    assert model.tokenize(text, add_special=False) == with_bos[1:]
    pieces = model.token_pieces(with_bos)
    assert "".join(pieces).strip() == text


def test_wrong_key_is_unauthenticated_and_not_echoed(
    peer: Peer, monkeypatch: pytest.MonkeyPatch
) -> None:
    wrong = "wrong-key-0123456789abcdef"
    monkeypatch.setenv(KEY_ENV, wrong)
    spec = ModelSpec(id="peer", url=peer.url, options={"api_key_env": KEY_ENV})
    with pytest.raises(Unauthenticated) as info:
        OpenAICompatProvider().load(spec, LoadOptions())
    assert KEY_ENV in info.value.message and "HTTP 401" in info.value.message
    assert wrong not in info.value.message
