"""The openai provider against a scripted loopback HTTP server: the request it sends,
and every way an endpoint fails (401, 429 with Retry-After, 5xx then success, malformed
SSE, a stalled response, a connection lost mid-stream, connection refused)."""

from __future__ import annotations

import base64
import ipaddress
import json
import logging
import ssl
import threading
import time
from pathlib import Path
from typing import Any

import pytest

from rustaid.builtin.openai_compat import OpenAICompatProvider, OpenAIModel
from rustaid.builtin.remote_http import parse_retry_after, redact
from rustaid.errors import (
    InvalidArgument,
    PreconditionFailed,
    RustaidError,
    Unauthenticated,
    Unavailable,
)
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
from tests.remote.loopback import (
    LoopbackServer,
    data,
    free_port,
    hang_up,
    json_answer,
    silent,
    sse_answer,
    stall,
)

KEY_ENV = "RUSTAID_TEST_OPENAI_KEY"
KEY = "sk-test-Zq8W3xN5vB7mK2pL9rT4yU6e"
DONE = "data: [DONE]\n\n"


def text_chunk(text: str, finish: str | None = None) -> str:
    return data({"choices": [{"index": 0, "text": text, "finish_reason": finish}]})


def chat_chunk(content: str | None, finish: str | None = None) -> str:
    delta = {} if content is None else {"content": content}
    return data({"choices": [{"index": 0, "delta": delta, "finish_reason": finish}]})


def usage_chunk(prompt: int, completion: int) -> str:
    return data(
        {"choices": [], "usage": {"prompt_tokens": prompt, "completion_tokens": completion}}
    )


GOOD = [text_chunk("Hel"), text_chunk("lo"), text_chunk("!", "length"), usage_chunk(11, 3), DONE]


@pytest.fixture(autouse=True)
def api_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(KEY_ENV, KEY)


def load(server: LoopbackServer, **options: Any) -> OpenAIModel:
    opts = {"remote_model": "m1", "api_key_env": KEY_ENV, **options}
    model = OpenAICompatProvider().load(
        ModelSpec(id="remote", url=server.url("/v1"), options=opts), LoadOptions()
    )
    assert isinstance(model, OpenAIModel)
    return model


def complete(
    model: OpenAIModel, cancel: CancelToken | None = None, **params: Any
) -> tuple[Sink, CompletionStats]:
    sink = Sink()
    stats = model.complete("hi", GenerationParams(**params), sink, cancel or CancelToken())
    return sink, stats


def no_secret(error: RustaidError, caplog: pytest.LogCaptureFixture) -> None:
    for text in (error.message, str(error), caplog.text):
        assert KEY not in text
        assert KEY[-8:] not in text and KEY[:8] not in text


# --- what is sent ---------------------------------------------------------------------


def test_completion_request_and_streamed_answer(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer(GOOD))
    model = load(loopback)
    params = GenerationParams(
        max_tokens=7, temperature=0.5, top_p=0.9, seed=3, top_k=5, min_p=0.1,
        repeat_penalty=1.1, grammar='root ::= "a"',
    )  # fmt: skip
    sink = Sink()
    stats = model.complete("hi", params, sink, CancelToken())
    assert sink.pieces == ["Hel", "lo", "!"]
    assert stats.finish_reason is FinishReason.LENGTH
    assert (stats.prompt_tokens, stats.completion_tokens) == (11, 3)  # the server's usage
    (req,) = loopback.posts()
    assert req.path == "/v1/completions"
    assert req.headers["authorization"] == f"Bearer {KEY}"
    assert req.headers["accept"] == "text/event-stream"
    assert req.body == {
        "model": "m1", "prompt": "hi", "stream": True, "stream_options": {"include_usage": True},
        "max_tokens": 7, "temperature": 0.5, "top_p": 0.9, "seed": 3, "top_k": 5, "min_p": 0.1,
        "repeat_penalty": 1.1, "repetition_penalty": 1.1, "grammar": 'root ::= "a"',
    }  # fmt: skip
    # Params left unset are not sent: the server's defaults apply.
    loopback.then(sse_answer(GOOD))
    complete(model)
    assert loopback.posts()[-1].body["max_tokens"] == 512
    assert "temperature" not in loopback.posts()[-1].body


def test_chat_request_and_json_schema_forms(loopback: LoopbackServer) -> None:
    schema = {"type": "object", "properties": {"a": {"type": "integer"}}}
    # First form refused the way llama-cpp-python's server does (HTTP 500, validation).
    refused = json_answer(500, {"error": {"message": "1 validation error: response_format.type"}})
    answer = sse_answer([chat_chunk('{"a": 1}'), chat_chunk(None, "stop"), DONE])
    loopback.then(refused, answer, sse_answer([chat_chunk("{}", "stop"), DONE]))
    model = load(loopback, max_retries=0)
    messages = [
        ChatMessage(Role.SYSTEM, "be brief"),
        ChatMessage(Role.USER, "hi", name="ann"),
        ChatMessage(Role.ASSISTANT, "hello"),
        ChatMessage(Role.USER, "json please"),
    ]
    sink = Sink()
    params = GenerationParams(json_schema=json.dumps(schema))
    stats = model.chat(messages, params, sink, CancelToken())
    assert sink.text == '{"a": 1}' and stats.finish_reason is FinishReason.STOP
    first, second = loopback.posts("/v1/chat/completions")
    assert first.body["messages"] == [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "hi", "name": "ann"},
        {"role": "assistant", "content": "hello"},
        {"role": "user", "content": "json please"},
    ]
    assert first.body["response_format"] == {
        "type": "json_schema", "json_schema": {"name": "output", "schema": schema},
    }  # fmt: skip
    assert second.body["response_format"] == {"type": "json_object", "schema": schema}
    # The form that worked is remembered.
    model.chat(messages, params, Sink(), CancelToken())
    assert (
        loopback.posts("/v1/chat/completions")[-1].body["response_format"]["type"] == "json_object"
    )


def test_stop_sequence_split_over_chunks_never_reaches_the_client(
    loopback: LoopbackServer,
) -> None:
    chunks = [text_chunk("hel"), text_chunk("lo ST"), text_chunk("OP and more"), DONE]
    loopback.then(sse_answer(chunks))
    sink, stats = complete(load(loopback), stop=("STOP",))
    assert sink.text == "hello "
    assert stats.finish_reason is FinishReason.STOP_SEQUENCE
    assert "stop" not in loopback.posts()[0].body  # handled here, exactly


def test_answer_without_usage_counts_chunks(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer([text_chunk("a"), text_chunk(""), text_chunk("b", "stop"), DONE]))
    sink, stats = complete(load(loopback))
    assert sink.text == "ab"
    assert stats.finish_reason is FinishReason.STOP
    assert stats.completion_tokens == 2  # chunks before the final one
    assert stats.prompt_tokens == 0  # no usage and no tokenizer endpoint


def test_server_that_ignores_stream_answers_at_once(loopback: LoopbackServer) -> None:
    whole = {
        "choices": [{"index": 0, "text": "all at once", "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 2, "completion_tokens": 3},
    }
    loopback.then(json_answer(200, whole))
    sink, stats = complete(load(loopback))
    assert sink.pieces == ["all at once"]
    assert (stats.prompt_tokens, stats.completion_tokens) == (2, 3)


def test_key_from_a_systemd_credential(
    loopback: LoopbackServer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv(KEY_ENV)
    (tmp_path / KEY_ENV).write_text(KEY + "\n")
    monkeypatch.setenv("CREDENTIALS_DIRECTORY", str(tmp_path))
    loopback.then(sse_answer(GOOD))
    complete(load(loopback))
    assert loopback.posts()[0].headers["authorization"] == f"Bearer {KEY}"


def test_no_key_configured_sends_no_authorization(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer(GOOD))
    model = OpenAICompatProvider().load(
        ModelSpec(id="local", url=loopback.url()), LoadOptions()
    )  # no path: the usual /v1
    complete(model)  # type: ignore[arg-type]
    (req,) = loopback.posts()
    assert req.path == "/v1/completions" and "authorization" not in req.headers
    assert req.body["model"] == "local"  # remote_model defaults to the id


# --- failures -------------------------------------------------------------------------


def test_401_is_unauthenticated_and_the_key_never_shows(
    loopback: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    echo = f"Incorrect API key provided: sk-t****{KEY[-4:]}. Yours was {KEY}, and {KEY[:10]}"
    loopback.routes[("GET", "/v1/models")] = json_answer(401, {"error": {"message": echo}})
    with pytest.raises(Unauthenticated) as info:
        load(loopback)
    assert info.value.reason == "REMOTE_UNAUTHENTICATED"
    assert KEY_ENV in info.value.message and "HTTP 401" in info.value.message
    assert "Incorrect API key provided" in info.value.message
    no_secret(info.value, caplog)
    # Refused mid-life too (a key revoked after load): 403 during a generation.
    del loopback.routes[("GET", "/v1/models")]
    model = load(loopback)
    loopback.then(json_answer(403, {"error": {"message": f"key {KEY} revoked"}}))
    with pytest.raises(Unauthenticated) as info:
        complete(model)
    no_secret(info.value, caplog)
    assert len(loopback.posts()) == 1  # not retried


def test_echoes_of_the_key_in_another_case_spaced_or_base64_never_show(
    loopback: LoopbackServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    basic = base64.b64encode(f"user:{KEY}".encode()).decode()
    echoes = {
        "upper": KEY.upper(),
        "spaced": " ".join(KEY),
        "grouped": " ".join(KEY[i : i + 4] for i in range(0, len(KEY), 4)),
        "basic": basic,
        "base64": base64.b64encode(KEY.encode()).decode(),
        "urlsafe": base64.urlsafe_b64encode(b"k=" + KEY.encode()).decode(),
    }
    echo = "Incorrect API key provided. " + "; ".join(f"{k}: {v}" for k, v in echoes.items())
    loopback.routes[("GET", "/v1/models")] = json_answer(401, {"error": {"message": echo}})
    with pytest.raises(Unauthenticated) as info:
        load(loopback)
    assert "Incorrect API key provided" in info.value.message
    for text in (info.value.message, caplog.text):
        for name, value in echoes.items():
            assert value not in text, name
        assert KEY[4:12].upper() not in text.upper()
    no_secret(info.value, caplog)


def test_missing_or_unusable_key(loopback: LoopbackServer, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(KEY_ENV)
    with pytest.raises(Unauthenticated) as info:
        load(loopback)
    assert info.value.reason == "REMOTE_KEY_MISSING" and KEY_ENV in info.value.message
    bad = "sk-line\r\nX-Injected: 1"
    monkeypatch.setenv(KEY_ENV, bad)
    with pytest.raises(Unauthenticated) as info:
        load(loopback)
    assert info.value.reason == "REMOTE_KEY_INVALID" and "sk-line" not in info.value.message
    assert loopback.requests == []  # nothing was sent


def test_429_waits_for_retry_after_then_succeeds(loopback: LoopbackServer) -> None:
    busy = json_answer(429, {"error": {"message": "slow down"}}, {"Retry-After": "1"})
    loopback.then(busy, sse_answer(GOOD))
    model = load(loopback)
    t0 = time.monotonic()
    sink, _ = complete(model)
    assert sink.text == "Hello!"
    assert time.monotonic() - t0 >= 0.9
    assert len(loopback.posts()) == 2


def test_429_with_a_long_retry_after_is_returned_at_once(loopback: LoopbackServer) -> None:
    busy = json_answer(429, {"error": {"message": "quota window"}}, {"Retry-After": "120"})
    loopback.then(busy)
    model = load(loopback)
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        complete(model)
    assert time.monotonic() - t0 < 5
    assert info.value.retry_after_s == 120
    assert info.value.reason == "REMOTE_RATE_LIMITED" and "quota window" in info.value.message
    assert len(loopback.posts()) == 1


def test_5xx_is_retried_then_succeeds(loopback: LoopbackServer) -> None:
    fail = json_answer(500, {"error": {"message": "boom"}})
    loopback.then(fail, json_answer(503, {"error": "warming up"}), sse_answer(GOOD))
    sink, stats = complete(load(loopback, max_retries=2))
    assert sink.text == "Hello!" and stats.completion_tokens == 3
    assert len(loopback.posts()) == 3


def test_5xx_after_all_retries_is_unavailable(loopback: LoopbackServer) -> None:
    fail = json_answer(502, {"error": {"message": "bad gateway"}})
    loopback.then(fail, fail, fail)
    model = load(loopback, max_retries=1)
    with pytest.raises(Unavailable) as info:
        complete(model)
    assert info.value.reason == "REMOTE_UNAVAILABLE"
    assert "HTTP 502" in info.value.message and "bad gateway" in info.value.message
    assert len(loopback.posts()) == 2


def test_connection_lost_before_text_is_retried(loopback: LoopbackServer) -> None:
    # A hang-up before any answer, then a stream that dies after a keep-alive comment.
    loopback.then(hang_up(), sse_answer([": ping\n\n"], end=False), sse_answer(GOOD))
    sink, _ = complete(load(loopback, max_retries=2))
    assert sink.text == "Hello!"
    assert len(loopback.posts()) == 3


def test_connection_lost_after_text_is_never_retried(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer([text_chunk("partial ")], end=False), sse_answer(GOOD))
    model = load(loopback, max_retries=2)
    sink = Sink()
    with pytest.raises(Unavailable) as info:
        model.complete("hi", GenerationParams(), sink, CancelToken())
    assert sink.text == "partial "  # what reached the client stays the only text
    assert info.value.reason == "REMOTE_DISCONNECTED"
    assert len(loopback.posts()) == 1


@pytest.mark.parametrize(
    "answer",
    [
        sse_answer(["data: {not json\n\n"]),
        sse_answer([data({"choices": "nope"})]),
        sse_answer([data({"choices": [{"index": 0, "text": 42}]})]),
        sse_answer(["<html>oops</html>"], content_type="text/html"),
    ],
    ids=["not-json", "choices-not-a-list", "text-not-a-string", "html"],
)
def test_malformed_answers_are_unavailable(loopback: LoopbackServer, answer: Any) -> None:
    loopback.then(answer)
    with pytest.raises(Unavailable) as info:
        complete(load(loopback))
    assert info.value.reason == "REMOTE_MALFORMED"
    assert "malformed response" in info.value.message
    assert len(loopback.posts()) == 1  # a malformed answer is not retried


def test_stalled_response_times_out(loopback: LoopbackServer) -> None:
    loopback.then(stall(text_chunk("first ")))
    model = load(loopback, timeout_s=0.5)
    sink = Sink()
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        model.complete("hi", GenerationParams(), sink, CancelToken())
    assert 0.4 < time.monotonic() - t0 < 5
    assert info.value.reason == "REMOTE_TIMEOUT" and "timeout_s" in info.value.message
    assert sink.text == "first "


@pytest.mark.parametrize("quiet", [stall(), silent()], ids=["after-headers", "before-headers"])
def test_cancel_during_a_stall_returns_at_once(loopback: LoopbackServer, quiet: Any) -> None:
    loopback.then(quiet)
    model = load(loopback, timeout_s=60)
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel).start()
    t0 = time.monotonic()
    _, stats = complete(model, cancel)
    assert stats.finish_reason is FinishReason.CANCELLED
    assert time.monotonic() - t0 < 3


def test_cancel_during_a_retry_wait_ends_it(loopback: LoopbackServer) -> None:
    loopback.then(json_answer(429, {"error": "busy"}, {"Retry-After": "20"}), sse_answer(GOOD))
    model = load(loopback)
    cancel = CancelToken()
    threading.Timer(0.3, cancel.cancel).start()
    t0 = time.monotonic()
    sink, stats = complete(model, cancel)
    assert stats.finish_reason is FinishReason.CANCELLED and sink.pieces == []
    assert time.monotonic() - t0 < 3
    assert len(loopback.posts()) == 1


def test_connection_refused_is_unavailable() -> None:
    url = f"http://127.0.0.1:{free_port()}/v1"
    spec = ModelSpec(id="down", url=url, options={"max_retries": 1})
    t0 = time.monotonic()
    with pytest.raises(Unavailable) as info:
        OpenAICompatProvider().load(spec, LoadOptions())
    assert info.value.reason == "REMOTE_UNREACHABLE" and url in info.value.message
    assert time.monotonic() - t0 >= 0.3  # one retry after a backoff


def test_400_is_invalid_argument_with_the_servers_message(loopback: LoopbackServer) -> None:
    msg = "This model's maximum context length is 8 tokens"
    loopback.then(json_answer(400, {"error": {"message": msg, "type": "invalid_request_error"}}))
    with pytest.raises(InvalidArgument) as info:
        complete(load(loopback))
    assert msg in info.value.message and "HTTP 400" in info.value.message


def test_404_names_the_setting_to_check(loopback: LoopbackServer) -> None:
    loopback.then(json_answer(404, {"error": {"message": "The model `m1` does not exist"}}))
    with pytest.raises(PreconditionFailed) as info:
        complete(load(loopback))
    assert info.value.reason == "REMOTE_NOT_FOUND"
    assert "remote_model" in info.value.message and "does not exist" in info.value.message


def test_error_event_inside_the_stream(loopback: LoopbackServer) -> None:
    loopback.then(sse_answer([text_chunk("a"), data({"error": {"message": "engine died"}})]))
    sink = Sink()
    with pytest.raises(Unavailable) as info:
        load(loopback).complete("hi", GenerationParams(), sink, CancelToken())
    assert "engine died" in info.value.message and sink.text == "a"


# --- bad settings and params ----------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "options", "words"),
    [
        ("ftp://host/v1", {}, "http:// or https://"),
        ("http://user:pw@host/v1", {}, "credentials"),
        ("http://host/v1?x=1", {}, "query"),
        ("http://host/v1", {"timeout_s": "soon"}, "timeout_s"),
        ("http://host/v1", {"timeout_s": 0}, "timeout_s"),
        ("http://host/v1", {"max_retries": -1}, "max_retries"),
        ("http://host/v1", {"remote_model": ""}, "remote_model"),
        ("http://host/v1", {"api_key_env": "NOT A NAME"}, "api_key_env"),
    ],
)
def test_bad_entries_are_refused_at_load(url: str, options: dict[str, Any], words: str) -> None:
    with pytest.raises(PreconditionFailed) as info:
        OpenAICompatProvider().load(ModelSpec(id="bad", url=url, options=options), LoadOptions())
    assert info.value.reason == "REMOTE_CONFIG_INVALID"
    assert words in info.value.message and "models.toml" in info.value.message


def test_bad_params_are_invalid_argument(loopback: LoopbackServer) -> None:
    model = load(loopback)
    cases = [
        (GenerationParams(json_schema="{nope"), "params.json_schema"),
        (GenerationParams(json_schema="[1]"), "params.json_schema"),
        (GenerationParams(grammar="not a grammar"), "params.grammar"),
    ]
    for params, field in cases:
        with pytest.raises(InvalidArgument) as info:
            model.validate_params(params)
        assert info.value.field == field
    with pytest.raises(InvalidArgument) as info:  # completions take no response_format
        complete(model, json_schema="{}")
    assert info.value.field == "params.json_schema"
    assert loopback.posts() == []


# --- tokenization ---------------------------------------------------------------------


def test_endpoint_without_tokenization(loopback: LoopbackServer) -> None:
    model = load(loopback)
    with pytest.raises(PreconditionFailed) as info:
        model.tokenize("hi", True)
    assert "does not expose tokenization" in info.value.message
    assert [r.path for r in loopback.posts()] == ["/tokenize", "/extras/tokenize"]
    with pytest.raises(PreconditionFailed):  # found out once, not probed again
        model.count_chat_tokens([ChatMessage(Role.USER, "hi")])
    assert len(loopback.posts()) == 2


def test_llama_server_tokenizer_endpoints(loopback: LoopbackServer) -> None:
    """llama.cpp's own server (llama-server), replayed: POST /tokenize with pieces,
    /apply-template; the documented shapes of its README."""
    tokens = {
        "tokens": [
            {"id": 1, "piece": "<s>"},
            {"id": 22, "piece": " hi"},
            {"id": 9, "piece": [226, 130]},
        ]
    }
    loopback.routes[("POST", "/tokenize")] = json_answer(200, tokens)
    loopback.routes[("POST", "/apply-template")] = json_answer(200, {"prompt": "<|user|>hi"})
    model = load(loopback)
    ids = model.tokenize("hi", add_special=True)
    assert ids == [1, 22, 9]
    assert model.token_pieces(ids) == ["<s>", " hi", "\ufffd"]
    assert model.count_chat_tokens([ChatMessage(Role.USER, "hi")]) == 3
    last = loopback.posts("/tokenize")[-1].body
    assert last == {"content": "<|user|>hi", "add_special": True, "with_pieces": True}
    with pytest.raises(InvalidArgument):  # ids the server never gave could crash it
        model.token_pieces([123456])


# --- helpers --------------------------------------------------------------------------


def test_retry_after_and_redaction_helpers() -> None:
    assert parse_retry_after("3") == 3.0
    assert parse_retry_after(None) == 0.0
    assert parse_retry_after("soon") == 0.0
    assert parse_retry_after("99999999") == 86400.0
    in_10s = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 10))
    assert 8 <= parse_retry_after(in_10s) <= 11
    secret = "sk-abcdefgh12345678XYZ"
    out = redact(f"got {secret}; key sk-a***8XYZ; prefix {secret[:9]}...", secret)
    assert "abcdefgh" not in out and "8XYZ" not in out and out.startswith("got [redacted]")
    assert (
        redact("model gpt-4o is overloaded, retry", secret) == "model gpt-4o is overloaded, retry"
    )


# --- TLS ------------------------------------------------------------------------------


def self_signed(tmp_path: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 signed by itself, and its key."""
    import datetime

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "rustaid test")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def test_https_verifies_the_certificate(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cert, key = self_signed(tmp_path)
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(cert, key)
    server = LoopbackServer(tls=context)
    try:
        # Not trusted: refused before anything (the key included) is sent.
        with pytest.raises(Unavailable) as info:
            load(server)
        assert info.value.reason == "REMOTE_TLS" and "not trusted" in info.value.message
        assert server.requests == []
        # Trusted through the system's usual override (SSL_CERT_FILE): served.
        monkeypatch.setenv("SSL_CERT_FILE", str(cert))
        server.then(sse_answer(GOOD))
        sink, _ = complete(load(server))
        assert sink.text == "Hello!"
        assert server.posts()[0].headers["authorization"] == f"Bearer {KEY}"
    finally:
        server.close()
