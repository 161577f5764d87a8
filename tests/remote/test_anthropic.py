"""The anthropic provider against a loopback HTTP server that replays the Messages API
wire format as Anthropic documents it (streaming events message_start,
content_block_start/delta/stop, ping, message_delta, message_stop and error; error
bodies {"type": "error", "error": {...}}; POST /v1/messages/count_tokens). No real
Anthropic endpoint can run here, so these are recorded shapes, not a live peer."""

from __future__ import annotations

import logging
import time
from typing import Any

import pytest

from rustaid.builtin.anthropic import API_VERSION, AnthropicModel, AnthropicProvider
from rustaid.errors import InvalidArgument, PreconditionFailed, Unauthenticated, Unavailable
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    CompletionStats,
    FinishReason,
    GenerationParams,
    LoadOptions,
    ModelSpec,
    Role,
)
from tests.remote.conftest import Sink
from tests.remote.loopback import LoopbackServer, event, json_answer, sse_answer

KEY_ENV = "RUSTAID_TEST_ANTHROPIC_KEY"
KEY = "sk-ant-api03-Hq7Lw2Xe9Rb4Tn6Yc1Vm8Kp3Jd5"
MODEL = "claude-test-1"


def message_start(input_tokens: int = 25) -> str:
    return event("message_start", {
        "type": "message_start",
        "message": {
            "id": "msg_01", "type": "message", "role": "assistant", "content": [],
            "model": MODEL, "stop_reason": None, "stop_sequence": None,
            "usage": {"input_tokens": input_tokens, "output_tokens": 1},
        },
    })  # fmt: skip


def text_delta(text: str) -> str:
    return event("content_block_delta", {
        "type": "content_block_delta", "index": 0, "delta": {"type": "text_delta", "text": text},
    })  # fmt: skip


def message_end(
    stop_reason: str, output_tokens: int, stop_sequence: str | None = None
) -> list[str]:
    return [
        event("content_block_stop", {"type": "content_block_stop", "index": 0}),
        event(
            "message_delta",
            {
                "type": "message_delta",
                "delta": {"stop_reason": stop_reason, "stop_sequence": stop_sequence},
                "usage": {"output_tokens": output_tokens},
            },
        ),
        event("message_stop", {"type": "message_stop"}),
    ]


def error_event(kind: str, message: str) -> str:
    return event("error", {"type": "error", "error": {"type": kind, "message": message}})


def error_body(kind: str, message: str) -> dict[str, Any]:
    return {"type": "error", "error": {"type": kind, "message": message}, "request_id": "req_1"}


BLOCK_START = event("content_block_start", {
    "type": "content_block_start", "index": 0, "content_block": {"type": "text", "text": ""},
})  # fmt: skip
PING = event("ping", {"type": "ping"})
HELLO = [message_start(), BLOCK_START, PING, text_delta("Hello"), text_delta(", "),
         text_delta("world"), *message_end("end_turn", 3)]  # fmt: skip


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def load(server: LoopbackServer, **options: Any) -> AnthropicModel:
    opts = {"remote_model": MODEL, "api_key_env": KEY_ENV, **options}
    model = AnthropicProvider().load(
        ModelSpec(id="claude", url=server.url(), options=opts), LoadOptions()
    )
    assert isinstance(model, AnthropicModel)
    return model


def chat(
    model: AnthropicModel, messages: list[ChatMessage] | None = None, **params: Any
) -> tuple[Sink, CompletionStats]:
    sink = Sink()
    msgs = messages or [ChatMessage(Role.USER, "hi")]
    stats = model.chat(msgs, GenerationParams(**params), sink, CancelToken())
    return sink, stats


def test_streamed_chat_request_and_answer(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer(HELLO))
    model = load(loopback)
    messages = [
        ChatMessage(Role.SYSTEM, "Be brief."),
        ChatMessage(Role.USER, "hi"),
        ChatMessage(Role.ASSISTANT, "hello"),
        ChatMessage(Role.SYSTEM, "Answer in English."),
        ChatMessage(Role.USER, "greet the world"),
    ]
    sink, stats = chat(
        model, messages, max_tokens=50, temperature=0.2, top_p=0.9, top_k=7, seed=5,
        stop=("END",),
    )  # fmt: skip
    assert sink.pieces == ["Hello", ", ", "world"]
    assert stats.finish_reason is FinishReason.STOP
    assert (stats.prompt_tokens, stats.completion_tokens) == (25, 3)
    (req,) = loopback.posts()
    assert req.path == "/v1/messages"
    assert req.headers["x-api-key"] == KEY
    assert req.headers["anthropic-version"] == API_VERSION
    assert "authorization" not in req.headers
    # No seed: the API has none.
    assert req.body == {
        "model": MODEL,
        "max_tokens": 50,
        "stream": True,
        "system": "Be brief.\n\nAnswer in English.",
        "messages": [
            {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"},
            {"role": "user", "content": "greet the world"},
        ],
        "temperature": 0.2,
        "top_p": 0.9,
        "top_k": 7,
        "stop_sequences": ["END"],
    }


def test_completion_is_sent_as_one_user_message(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer(HELLO))
    sink = Sink()
    load(loopback).complete("Once upon a time", GenerationParams(), sink, CancelToken())
    assert sink.text == "Hello, world"
    body = loopback.posts()[0].body
    assert body["messages"] == [{"role": "user", "content": "Once upon a time"}]
    assert body["max_tokens"] == 512 and "system" not in body


@pytest.mark.parametrize(
    ("reason", "finish"),
    [("stop_sequence", FinishReason.STOP_SEQUENCE), ("max_tokens", FinishReason.LENGTH),
     ("end_turn", FinishReason.STOP)],
)  # fmt: skip
def test_stop_reasons(loopback: LoopbackServer, reason: str, finish: FinishReason) -> None:
    seq = "END" if reason == "stop_sequence" else None
    loopback.then(sse_answer([message_start(), text_delta("a"), *message_end(reason, 1, seq)]))
    _, stats = chat(load(loopback), stop=("END",))
    assert stats.finish_reason is finish


def test_overloaded_529_is_retried_then_succeeds(loopback: LoopbackServer) -> None:
    overloaded = json_answer(529, error_body("overloaded_error", "Overloaded"))
    loopback.then(overloaded, sse_answer(HELLO))
    sink, _ = chat(load(loopback, max_retries=1))
    assert sink.text == "Hello, world"
    assert len(loopback.posts()) == 2


def test_overloaded_529_after_all_retries_is_unavailable(loopback: LoopbackServer) -> None:
    overloaded = json_answer(529, error_body("overloaded_error", "Overloaded"))
    loopback.then(overloaded, overloaded)
    with pytest.raises(Unavailable) as info:
        chat(load(loopback, max_retries=1))
    assert "HTTP 529" in info.value.message and "Overloaded" in info.value.message
    assert info.value.reason == "REMOTE_UNAVAILABLE"


def test_error_event_before_text_is_retried(loopback: LoopbackServer) -> None:
    loopback.then(
        sse_answer([message_start(), error_event("overloaded_error", "Overloaded")]),
        sse_answer(HELLO),
    )
    sink, _ = chat(load(loopback, max_retries=1))
    assert sink.text == "Hello, world" and len(loopback.posts()) == 2


def test_error_event_after_text_ends_the_request(loopback: LoopbackServer) -> None:
    loopback.then(
        sse_answer(
            [message_start(), text_delta("Hel"), error_event("overloaded_error", "Overloaded")]
        ),
        sse_answer(HELLO),
    )
    model = load(loopback, max_retries=2)
    sink = Sink()
    with pytest.raises(Unavailable) as info:
        model.chat([ChatMessage(Role.USER, "hi")], GenerationParams(), sink, CancelToken())
    assert sink.text == "Hel" and "Overloaded" in info.value.message
    assert len(loopback.posts()) == 1


def test_429_carries_retry_after(loopback: LoopbackServer) -> None:
    limited = json_answer(
        429, error_body("rate_limit_error", "Number of requests exceeded"), {"Retry-After": "45"}
    )
    loopback.then(limited)
    with pytest.raises(Unavailable) as info:
        chat(load(loopback))
    assert info.value.retry_after_s == 45 and info.value.reason == "REMOTE_RATE_LIMITED"


def test_401_is_unauthenticated_without_the_key(
    loopback: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    loopback.routes[("GET", "/v1/models")] = json_answer(
        401, error_body("authentication_error", f"invalid x-api-key {KEY}")
    )
    with pytest.raises(Unauthenticated) as info:
        load(loopback)
    assert KEY_ENV in info.value.message and "invalid x-api-key" in info.value.message
    for text in (info.value.message, caplog.text):
        assert KEY not in text and KEY[-8:] not in text


def test_400_is_invalid_argument_with_the_servers_message(loopback: LoopbackServer) -> None:
    msg = "messages: roles must alternate between user and assistant"
    loopback.then(json_answer(400, error_body("invalid_request_error", msg)))
    with pytest.raises(InvalidArgument) as info:
        chat(load(loopback))
    assert msg in info.value.message


def test_malformed_event_is_unavailable(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer([message_start(), "event: content_block_delta\ndata: {oops\n\n"]))
    with pytest.raises(Unavailable) as info:
        chat(load(loopback))
    assert info.value.reason == "REMOTE_MALFORMED" and "malformed response" in info.value.message


def test_stream_ending_before_message_stop_is_unavailable(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer([message_start(), text_delta("cut")]))
    with pytest.raises(Unavailable) as info:
        chat(load(loopback, max_retries=0))
    assert "message_stop" in info.value.message


def test_cancel_stops_within_one_chunk(loopback: LoopbackServer) -> None:
    deltas = [text_delta(f"w{i} ") for i in range(40)]
    loopback.then(sse_answer([message_start(), *deltas, *message_end("end_turn", 40)], delay=0.02))
    model = load(loopback)
    cancel = CancelToken()
    sink = Sink(cancel, cancel_after=2)
    t0 = time.monotonic()
    stats = model.chat([ChatMessage(Role.USER, "count")], GenerationParams(), sink, cancel)
    assert stats.finish_reason is FinishReason.CANCELLED
    assert sink.pieces == ["w0 ", "w1 "]
    assert time.monotonic() - t0 < 0.5  # did not read the remaining ~0.8 s of stream


def test_count_tokens_uses_the_count_endpoint(loopback: LoopbackServer) -> None:
    loopback.routes[("POST", "/v1/messages/count_tokens")] = json_answer(200, {"input_tokens": 14})
    model = load(loopback)
    messages = [ChatMessage(Role.SYSTEM, "sys"), ChatMessage(Role.USER, "hi")]
    assert model.count_chat_tokens(messages) == 14
    assert loopback.posts()[-1].body == {
        "model": MODEL, "system": "sys", "messages": [{"role": "user", "content": "hi"}],
    }  # fmt: skip
    with pytest.raises(PreconditionFailed) as info:
        model.tokenize("hi", True)
    assert "does not expose tokenization" in info.value.message


def test_params_and_messages_it_cannot_honour(loopback: LoopbackServer) -> None:
    model = load(loopback)
    for params, field in [
        (GenerationParams(grammar='root ::= "a"'), "params.grammar"),
        (GenerationParams(json_schema="{}"), "params.json_schema"),
    ]:
        with pytest.raises(InvalidArgument) as info:
            model.validate_params(params)
        assert info.value.field == field
    with pytest.raises(InvalidArgument) as info:
        chat(model, [ChatMessage(Role.USER, "hi"), ChatMessage(Role.TOOL, "42", name="calc")])
    assert info.value.field == "messages[1].role"
    assert loopback.posts() == []


def test_base_url_with_or_without_v1(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer(HELLO))
    spec = ModelSpec(id="c", url=loopback.url("/v1"), options={"remote_model": MODEL})
    model = AnthropicProvider().load(spec, LoadOptions())
    model.chat([ChatMessage(Role.USER, "hi")], GenerationParams(), Sink(), CancelToken())
    assert loopback.posts()[0].path == "/v1/messages"
