"""Admission limits against real daemons and real gRPC clients: a full queue and a
client over its limit answer RESOURCE_EXHAUSTED with RetryInfo, a huge prompt is
refused before anything tokenizes it, messages over max_message_mb are refused, and a
waiting stream hears of every change of its queue position."""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from rustaid.api.v1 import (
    common_pb2,
    generate_pb2,
    generate_pb2_grpc,
    models_pb2,
    models_pb2_grpc,
)
from rustaid.auth.tokens import add_token
from rustaid.core.admission import RETRY_MAX_S, RETRY_MIN_S
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import Stubs, add_model

CODE = grpc.StatusCode
P = common_pb2.GenerationParams


def details(err: grpc.RpcError) -> dict[str, Any]:
    """The google.rpc.Status details of an error, by kind."""
    found: dict[str, Any] = {}
    for key, value in err.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key != "grpc-status-details-bin":
            continue
        for detail in status_pb2.Status.FromString(value).details:
            for kind in (
                error_details_pb2.ErrorInfo,
                error_details_pb2.RetryInfo,
                error_details_pb2.BadRequest,
            ):
                if detail.Is(kind.DESCRIPTOR):
                    message = kind()
                    detail.Unpack(message)
                    found[kind.__name__] = message
    return found


def retry_delay_s(err: grpc.RpcError) -> float:
    info = details(err).get("RetryInfo")
    assert info is not None, f"no RetryInfo in {err.code()}: {err.details()}"
    return float(info.retry_delay.ToMilliseconds()) / 1000


def reason(err: grpc.RpcError) -> str:
    info = details(err).get("ErrorInfo")
    return str(info.reason) if info is not None else ""


def error_of(call: Callable[[], object]) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class _Bearer(grpc.UnaryUnaryClientInterceptor, grpc.UnaryStreamClientInterceptor):  # type: ignore[misc]
    """Sends `authorization: Bearer TOKEN` with every call."""

    def __init__(self, token: str) -> None:
        self.token = token

    def _add(self, details: Any) -> Any:
        metadata = [*(details.metadata or ()), ("authorization", f"Bearer {self.token}")]
        return details._replace(metadata=metadata)

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._add(details), request)


@dataclass
class Limited:
    daemon: DaemonProcess
    tcp: str
    channels: list[grpc.Channel] = field(default_factory=list)

    def client(self, address: str = "") -> generate_pb2_grpc.GenerateServiceStub:
        """A client with a connection of its own; over TCP with a token of its own, so
        each is a distinct caller (without tokens, TCP clients of a host share one)."""
        channel = self.plain(address)
        if not address:
            name = f"client-{len(self.channels)}"
            token, _ = add_token(self.daemon.data_dir / "config" / "tokens.json", name)
            channel = grpc.intercept_channel(channel, _Bearer(token))
        return generate_pb2_grpc.GenerateServiceStub(channel)

    def plain(self, address: str = "") -> grpc.Channel:
        channel = grpc.insecure_channel(
            address or self.tcp, options=[("grpc.use_local_subchannel_pool", 1)]
        )
        self.channels.append(channel)
        return channel


@pytest.fixture(scope="module")
def limited(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[Limited]:
    data_dir = tmp_path_factory.mktemp("limited")
    add_model(data_dir, model_files["slow"])
    add_model(data_dir, model_files["tiny"])
    tcp = f"127.0.0.1:{free_port()}"
    env = {
        "RUSTAID_MAX_REQUESTS_PER_CLIENT": "2",
        "RUSTAID_MAX_QUEUE_PER_MODEL": "3",
        # One request at a time per model: these tests are about the ones that wait.
        "RUSTAID_PARALLEL": "1",
        "RUSTAID_MAX_MESSAGE_MB": "1",
        "RUSTAID_MAX_PROMPT_BYTES": "65536",
        # Plain TCP on loopback: each connection is a distinct caller without credentials.
        "RUSTAID_ALLOW_INSECURE_TCP": "true",
    }
    with run_daemon(data_dir, "--listen", tcp, env=env) as daemon:
        limited = Limited(daemon, tcp)
        yield limited
        for channel in limited.channels:
            channel.close()


class Stream:
    """A GenerateStream/ChatStream read by a thread of its own, events kept in order."""

    def __init__(self, call: Any) -> None:
        self.call = call
        self.events: list[Any] = []
        self.error: grpc.RpcError | None = None
        self.first = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.events.append(event)
                self.first.set()
        except grpc.RpcError as e:
            self.error = e
        self.first.set()

    def started(self, timeout: float = 30) -> Stream:
        assert self.first.wait(timeout), "the stream sent nothing"
        assert self.error is None, self.error
        return self

    def running(self, timeout: float = 30) -> Stream:
        """Wait for the first token: the request holds the model, and nothing that an
        earlier test cancelled is still queued ahead of what comes next."""
        self.started(timeout)
        self.wait_for(lambda: any(e.WhichOneof("event") == "chunk" for e in self.events), timeout)
        return self

    def positions(self) -> list[int]:
        return [e.queued.position for e in self.events if e.WhichOneof("event") == "queued"]

    def wait_for(self, condition: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not condition():
            assert time.monotonic() < deadline, (self.events, self.error)
            time.sleep(0.01)

    def finish(self, timeout: float = 60) -> list[Any]:
        self.thread.join(timeout)
        assert not self.thread.is_alive()
        return self.events

    def cancel(self) -> None:
        self.call.cancel()
        self.thread.join(10)


def long_stream(stub: generate_pb2_grpc.GenerateServiceStub, **params: Any) -> Stream:
    params.setdefault("max_tokens", 4000)
    request = generate_pb2.GenerateStreamRequest(
        model_id="slow", prompt="hello world", params=P(**params)
    )
    return Stream(stub.GenerateStream(request))


def short(model_id: str = "tiny") -> generate_pb2.GenerateRequest:
    return generate_pb2.GenerateRequest(model_id=model_id, prompt="hello", params=P(max_tokens=2))


@contextlib.contextmanager
def cancelling(*streams: Stream) -> Iterator[None]:
    try:
        yield
    finally:
        for s in streams:
            s.cancel()


def until_admitted(call: Callable[[], object], timeout: float = 10) -> object:
    """`call` once the server has noticed cancelled requests (and released places)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            return call()
        except grpc.RpcError as e:
            if e.code() != CODE.RESOURCE_EXHAUSTED or time.monotonic() > deadline:
                raise
            time.sleep(0.05)


# -- per-client concurrency --------------------------------------------------------------


def test_a_client_over_its_limit_is_refused_with_retry_info(limited: Limited) -> None:
    a = limited.client()
    running = long_stream(a).started()
    waiting = long_stream(a).started()  # queued behind its own first request
    with cancelling(running, waiting):
        err = error_of(lambda: a.Generate(short()))
        assert err.code() == CODE.RESOURCE_EXHAUSTED
        assert reason(err) == "TOO_MANY_REQUESTS"
        assert "already has 2 requests in flight (max_requests_per_client is 2)" in err.details()
        assert RETRY_MIN_S <= retry_delay_s(err) <= RETRY_MAX_S
        # Streams, chat and tokenization count too; listings do not.
        chat = generate_pb2.ChatRequest(
            model_id="tiny",
            messages=[generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content="hi")],
        )
        assert error_of(lambda: a.Chat(chat)).code() == CODE.RESOURCE_EXHAUSTED
        tokenize = generate_pb2.TokenizeRequest(model_id="tiny", text="hi")
        assert error_of(lambda: a.Tokenize(tokenize)).code() == CODE.RESOURCE_EXHAUSTED
        stream = generate_pb2.GenerateStreamRequest(model_id="tiny", prompt="hi")
        assert error_of(lambda: list(a.GenerateStream(stream))).code() == CODE.RESOURCE_EXHAUSTED
        models = models_pb2_grpc.ModelsServiceStub(limited.channels[-1])
        assert models.ListModels(models_pb2.ListModelsRequest()).models
        # Another client (another token: another caller key) is not affected.
        b = limited.client()
        assert b.Generate(short()).usage.completion_tokens == 2
    # Once its requests end, the client gets its places back.
    r = until_admitted(lambda: a.Generate(short()))
    assert r.usage.completion_tokens == 2  # type: ignore[attr-defined]


def test_tcp_clients_without_a_token_share_their_hosts_limit(limited: Limited) -> None:
    """More connections earn no more places: 2 of them used to admit 2 each."""
    first, second, third = (
        generate_pb2_grpc.GenerateServiceStub(limited.plain()) for _ in range(3)
    )
    one = long_stream(first).started()
    two = long_stream(second).started()
    with cancelling(one, two):
        err = error_of(lambda: third.Generate(short()))
        assert err.code() == CODE.RESOURCE_EXHAUSTED
        assert "caller 'peer:ipv4:127.0.0.1' already has 2 requests in flight" in err.details()
        assert "give each a token of its own, `rustaid token add NAME`" in err.details()
        # A client with a token of its own has its own share.
        assert limited.client().Generate(short()).usage.completion_tokens == 2


def test_connections_of_one_local_user_share_one_limit(limited: Limited) -> None:
    unix = limited.daemon.address  # every connection here is this test's user
    first = long_stream(limited.client(unix)).started()
    second = long_stream(limited.client(unix)).started()
    with cancelling(first, second):
        err = error_of(lambda: limited.client(unix).Generate(short()))
        assert err.code() == CODE.RESOURCE_EXHAUSTED
        assert "already has 2 requests in flight" in err.details()
        assert limited.client().Generate(short()).usage.completion_tokens == 2  # TCP


# -- a full queue ------------------------------------------------------------------------


def test_full_queue_answers_with_a_retry_delay_from_recent_turns(limited: Limited) -> None:
    warm = limited.client()
    forty = generate_pb2.GenerateRequest(model_id="slow", prompt="hi", params=P(max_tokens=40))
    warm.Generate(forty)  # loads the model (not part of the turn)
    t0 = time.monotonic()
    warm.Generate(forty)
    turn = time.monotonic() - t0
    streams = [long_stream(limited.client()).running()]
    # Three waiting (max_queue_per_model), each from a client of its own.
    streams += [long_stream(limited.client(), max_tokens=40).started() for _ in range(3)]
    with cancelling(*streams):
        assert [s.positions()[0] for s in streams[1:]] == [1, 2, 3]
        err = error_of(lambda: limited.client().Generate(short("slow")))
        assert err.code() == CODE.RESOURCE_EXHAUSTED
        assert reason(err) == "QUEUE_FULL"
        assert "model 'slow' has 3 requests waiting (limit 3)" in err.details()
        delay = retry_delay_s(err)
        # About three recent turns (the running one is older than a turn already).
        assert max(RETRY_MIN_S, turn) <= delay <= RETRY_MAX_S, (delay, turn)
        # Another model's queue is its own.
        assert limited.client().Generate(short("tiny")).usage.completion_tokens == 2


# -- queue positions ---------------------------------------------------------------------


def test_a_waiting_stream_hears_every_position_change(limited: Limited) -> None:
    running = long_stream(limited.client()).running()
    bg_request = generate_pb2.GenerateStreamRequest(
        model_id="slow", prompt="hello", params=P(max_tokens=2),
        priority=common_pb2.PRIORITY_BACKGROUND,
    )  # fmt: skip
    bg = Stream(limited.client().GenerateStream(bg_request)).started()
    with cancelling(running, bg):
        assert bg.positions() == [1]
        chat_request = generate_pb2.ChatStreamRequest(
            model_id="slow",
            messages=[generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content="hi")],
            params=P(max_tokens=2),
        )
        chat = Stream(limited.client().ChatStream(chat_request)).started()
        # The interactive chat goes ahead of the background request, which moves back.
        assert chat.positions() == [1]
        bg.wait_for(lambda: bg.positions() == [1, 2], timeout=5)
        running.cancel()  # the chat runs, then the background request
        chat_events = chat.finish()
        assert chat_events[-1].WhichOneof("event") == "done"
        bg_events = bg.finish()
        assert bg.positions() == [1, 2, 1]
        assert bg_events[-1].WhichOneof("event") == "done"


# -- prompt and message size -------------------------------------------------------------


def test_a_huge_prompt_is_refused_before_tokenizing(served: Stubs) -> None:
    """Default settings: max_prompt_bytes 1 MiB, messages up to 16 MiB."""
    huge = "hello world " * ((8 << 20) // 12)  # ~8 MiB
    t0 = time.monotonic()
    err = error_of(
        lambda: served.generate.Generate(generate_pb2.GenerateRequest(model_id="tiny", prompt=huge))
    )
    elapsed = time.monotonic() - t0
    assert err.code() == CODE.INVALID_ARGUMENT
    assert reason(err) == "PROMPT_TOO_LARGE"
    assert f"prompt is {len(huge)} bytes, more than the 1048576 bytes" in err.details()
    assert "max_prompt_bytes" in err.details() and "shorten it" in err.details()
    assert [v.field for v in details(err)["BadRequest"].field_violations] == ["prompt"]
    # Refused before the model was even loaded: nothing tokenized those megabytes.
    model = served.models.GetModel(models_pb2.GetModelRequest(id="tiny")).model
    assert model.state != models_pb2.MODEL_STATE_LOADED
    assert elapsed < 5, elapsed  # (sending 8 MiB over a local socket included)
    # Chat: the messages of the turn together.
    half = "é" * (300 << 10)  # 600 KiB of UTF-8 each
    messages = [generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content=half)] * 2
    err = error_of(
        lambda: list(
            served.generate.ChatStream(
                generate_pb2.ChatStreamRequest(model_id="tiny", messages=messages)
            )
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert "messages is 1228800 bytes" in err.details()
    # Just under the limit is accepted (then checked in tokens against the context).
    err = error_of(
        lambda: served.generate.Generate(
            generate_pb2.GenerateRequest(model_id="tiny", prompt="a" * (1 << 20))
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert "tokens but the model is loaded with a context of" in err.details()


def test_messages_over_max_message_mb_are_refused(limited: Limited) -> None:
    client = limited.client(limited.daemon.address)
    big = "x" * (1 << 20)  # the message (prompt + framing) is just over 1 MiB
    err = error_of(
        lambda: client.Generate(generate_pb2.GenerateRequest(model_id="tiny", prompt=big))
    )
    assert err.code() == CODE.RESOURCE_EXHAUSTED
    assert "larger than max" in (err.details() or "")
    # Under it, the prompt limit of this daemon (64 KiB) answers, naming it.
    err = error_of(
        lambda: client.Generate(
            generate_pb2.GenerateRequest(model_id="tiny", prompt="x" * (100 << 10))
        )
    )
    assert err.code() == CODE.INVALID_ARGUMENT
    assert "prompt is 102400 bytes, more than the 65536 bytes" in err.details()
    assert client.Generate(short()).usage.completion_tokens == 2
