"""Request ids and structured logs: every RPC gets an id (the client's when well-formed),
sent back as initial metadata, found in every log line of the request (text and JSON
in the OpenTelemetry log data model, with the caller's trace context) and in INTERNAL
errors; credentials never reach the log."""

from __future__ import annotations

import contextlib
import contextvars
import functools
import io
import json
import logging
import os
import re
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from rustaid.core import caller as caller_mod
from rustaid.core import request_id
from rustaid.errors import NotFound
from rustaid.log import (
    JournalFormatter,
    JsonFormatter,
    RequestContextFilter,
    TextFormatter,
    redact,
)
from rustaid.services.context import RequestContextInterceptor
from rustaid.services.errors import ErrorInterceptor
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import add_model

CODE = grpc.StatusCode
TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
SECRETS = ("SUPERSECRET-TOKEN-123", "SUPERSECRET-KEY-456")


def start(tmp: Path, model: Path, **env: str) -> Iterator[DaemonProcess]:
    add_model(tmp, model)
    with run_daemon(tmp, env={"RUSTAID_LOG_LEVEL": "debug", **env}) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def text_daemon(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[DaemonProcess]:
    yield from start(tmp_path_factory.mktemp("text"), model_files["tiny"])


@pytest.fixture(scope="module")
def json_daemon(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[DaemonProcess]:
    yield from start(
        tmp_path_factory.mktemp("json"), model_files["tiny"], RUSTAID_LOG_FORMAT="json"
    )


def stubs(daemon: DaemonProcess) -> tuple[Any, Any]:
    channel = grpc.insecure_channel(daemon.address)
    return generate_pb2_grpc.GenerateServiceStub(channel), models_pb2_grpc.ModelsServiceStub(
        channel
    )


def returned_id(metadata: Any) -> str:
    ids = [v for k, v in metadata or () if k == "x-request-id"]
    assert len(ids) == 1, metadata
    return str(ids[0])


def generate(stub: Any, *metadata: tuple[str, str], model_id: str = "tiny") -> str:
    """A Generate; returns the request id the daemon sent back."""
    request = generate_pb2.GenerateRequest(
        model_id=model_id, prompt="hello", params=common_pb2.GenerationParams(max_tokens=2)
    )
    _, call = stub.Generate.with_call(request, metadata=metadata)
    return returned_id(call.initial_metadata())


def log_lines(daemon: DaemonProcess, containing: str, timeout: float = 5) -> list[str]:
    """The daemon's log lines that contain `containing` (waiting for the first)."""
    deadline = time.monotonic() + timeout
    while True:
        lines = [line for line in daemon.stderr().splitlines() if containing in line]
        if lines or time.monotonic() > deadline:
            return lines
        time.sleep(0.05)


def test_the_clients_request_id_comes_back_and_names_the_log_lines(
    text_daemon: DaemonProcess,
) -> None:
    gen, models = stubs(text_daemon)
    assert generate(gen, ("x-request-id", "client-id-42")) == "client-id-42"
    lines = log_lines(text_daemon, "request_id=client-id-42")
    # The model load (logged in the model's worker thread) and the RPC's own line.
    assert any("loaded tiny.gguf" in line for line in lines), lines
    assert any("GenerateService/Generate OK" in line for line in lines), lines
    # The daemon's own user's processes are told apart: the caller is this process.
    me = rf"uid:{os.geteuid()}/pid:{os.getpid()}:\d+"
    assert all(re.search(rf"caller={me}\]", line) for line in lines), lines
    # Errors carry it too, in the initial metadata of the failed call.
    with pytest.raises(grpc.RpcError) as info:
        models.GetModel(
            models_pb2.GetModelRequest(id="nope"), metadata=(("x-request-id", "lookup.7:a_b"),)
        )
    assert info.value.code() == CODE.NOT_FOUND
    assert returned_id(info.value.initial_metadata()) == "lookup.7:a_b"  # type: ignore[attr-defined]
    line = log_lines(text_daemon, "GetModel NOT_FOUND")[0]
    assert re.search(rf" \[request_id=lookup\.7:a_b caller={me}\]$", line), line


def test_without_a_well_formed_id_the_daemon_makes_one(text_daemon: DaemonProcess) -> None:
    gen, models = stubs(text_daemon)
    made = generate(gen)
    assert re.fullmatch(r"[0-9a-f]{16}", made)
    assert generate(gen) != made  # one per RPC
    _, call = models.ListModels.with_call(models_pb2.ListModelsRequest())
    assert re.fullmatch(r"[0-9a-f]{16}", returned_id(call.initial_metadata()))
    # (gRPC clients refuse to send control characters or non-ASCII: parsing tests below.)
    for bad in ("has spaces", "a" * 129, "-leading-dash", "semi;colon", '"quoted"', "a/b"):
        got = generate(gen, ("x-request-id", bad))
        assert got != bad and re.fullmatch(r"[0-9a-f]{16}", got), (bad, got)
    assert generate(gen, ("x-request-id", "b" * 128)) == "b" * 128  # the longest accepted


def test_credentials_never_reach_the_log(text_daemon: DaemonProcess) -> None:
    gen, models = stubs(text_daemon)
    metadata = (
        ("authorization", f"Bearer {SECRETS[0]}"),
        ("x-api-key", SECRETS[1]),
        ("x-request-id", "with-secrets"),
    )
    generate(gen, *metadata)
    with pytest.raises(grpc.RpcError):
        models.GetModel(models_pb2.GetModelRequest(id="missing"), metadata=metadata)
    assert log_lines(text_daemon, "request_id=with-secrets")
    log = text_daemon.stderr()
    assert not any(secret in log for secret in SECRETS)


def test_json_lines_follow_the_opentelemetry_log_data_model(json_daemon: DaemonProcess) -> None:
    gen, models = stubs(json_daemon)
    generate(gen, ("x-request-id", "traced-1"), ("traceparent", TRACEPARENT))
    generate(gen, ("x-request-id", "untraced-1"), ("traceparent", "00-zz-bad-01"))
    with pytest.raises(grpc.RpcError):
        models.GetModel(models_pb2.GetModelRequest(id="nope"), metadata=(("x-request-id", "e1"),))
    log_lines(json_daemon, '"e1"')
    records = [json.loads(line) for line in json_daemon.stderr().splitlines()]  # every line
    assert len(records) > 5
    for r in records:
        assert set(r) >= {"Timestamp", "SeverityText", "SeverityNumber", "Body", "Attributes"}
        assert r["Timestamp"].isdigit() and abs(int(r["Timestamp"]) / 1e9 - time.time()) < 3600
        assert r["SeverityNumber"] in (5, 9, 13, 17, 21)
        assert r["Resource"]["service.name"] == "rustaid"
        assert r["Attributes"]["code.namespace"] == r["InstrumentationScope"]["Name"]
    startup = [r for r in records if "ready in" in r["Body"]]
    assert startup and startup[0]["SeverityText"] == "INFO" and startup[0]["SeverityNumber"] == 9
    assert "rustaid.request.id" not in startup[0]["Attributes"]  # not part of a request

    traced = [r for r in records if r["Attributes"].get("rustaid.request.id") == "traced-1"]
    assert len(traced) >= 2  # the model load and the RPC's own line
    for r in traced:
        assert r["TraceId"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert r["SpanId"] == "00f067aa0ba902b7" and r["TraceFlags"] == "01"
        attributes = r["Attributes"]
        assert attributes["rpc.system"] == "grpc"
        assert attributes["rpc.service"] == "rustaid.api.v1.GenerateService"
        assert attributes["rpc.method"] == "Generate"
        assert attributes["rustaid.caller.key"].startswith(f"uid:{os.geteuid()}/pid:")
    untraced = [r for r in records if r["Attributes"].get("rustaid.request.id") == "untraced-1"]
    assert untraced and not any("TraceId" in r for r in untraced)
    failed = [r for r in records if r["Attributes"].get("rustaid.request.id") == "e1"]
    assert failed[0]["Attributes"]["rpc.method"] == "GetModel"
    assert "NOT_FOUND" in failed[0]["Body"]


# -- in-process: the interceptors with a servicer that has a bug -------------------------


@contextlib.asynccontextmanager
async def health_server(
    tmp_path: Path, servicer: health_pb2_grpc.HealthServicer, *interceptors: Any
) -> AsyncIterator[health_pb2_grpc.HealthStub]:
    """An in-process server with `interceptors` and only `servicer`, and a stub for it."""
    server = grpc.aio.server(interceptors=list(interceptors))
    health_pb2_grpc.add_HealthServicer_to_server(servicer, server)
    address = f"unix://{tmp_path}/s.sock"
    server.add_insecure_port(address)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            yield health_pb2_grpc.HealthStub(channel)
    finally:
        await server.stop(None)


class BuggyHealth(health_pb2_grpc.HealthServicer):
    async def Check(self, request: Any, context: Any) -> Any:
        logging.getLogger("rustaid.test").error(
            "about to fail; the client sent authorization: Bearer %s", SECRETS[0]
        )
        raise RuntimeError("a bug")


async def test_an_internal_error_names_the_request_id(tmp_path: Path) -> None:
    out = io.StringIO()
    handler = logging.StreamHandler(out)
    handler.addFilter(RequestContextFilter())
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        async with health_server(
            tmp_path, BuggyHealth(), RequestContextInterceptor(), ErrorInterceptor()
        ) as stub:
            call = stub.Check(
                health_pb2.HealthCheckRequest(), metadata=(("x-request-id", "bug-1"),)
            )
            with pytest.raises(grpc.aio.AioRpcError) as info:
                await call
    finally:
        root.removeHandler(handler)
    err = info.value
    assert err.code() == CODE.INTERNAL
    assert err.details() == "internal error; see the log, request id bug-1"
    records = [json.loads(line) for line in out.getvalue().splitlines()]
    bug = next(r for r in records if r["Body"].startswith("bug in"))
    assert bug["SeverityText"] == "ERROR" and bug["SeverityNumber"] == 17
    assert bug["Attributes"]["rustaid.request.id"] == "bug-1"
    assert bug["Attributes"]["rustaid.caller.key"] == "peer:unix:"  # the fallback caller
    assert bug["Attributes"]["exception.type"] == "RuntimeError"
    assert "a bug" in bug["Attributes"]["exception.stacktrace"]
    assert SECRETS[0] not in out.getvalue()


class WatchingHealth(health_pb2_grpc.HealthServicer):
    """Stream handlers written as coroutines that call context.write(), as grpcio's own
    health service is: one that works, one that fails with a domain error."""

    async def Watch(self, request: Any, context: Any) -> None:
        if request.service == "missing":
            raise NotFound(f"no service {request.service!r}")
        await context.write(
            health_pb2.HealthCheckResponse(status=health_pb2.HealthCheckResponse.SERVING)
        )


async def test_error_mapping_serves_stream_handlers_that_write(tmp_path: Path) -> None:
    async with health_server(tmp_path, WatchingHealth(), ErrorInterceptor()) as stub:
        answers = [r async for r in stub.Watch(health_pb2.HealthCheckRequest())]
        assert [a.status for a in answers] == [health_pb2.HealthCheckResponse.SERVING]
        with pytest.raises(grpc.aio.AioRpcError) as info:
            _ = [r async for r in stub.Watch(health_pb2.HealthCheckRequest(service="missing"))]
    assert info.value.code() == CODE.NOT_FOUND
    assert info.value.details() == "no service 'missing'"


# -- formats and helpers -----------------------------------------------------------------


def record(message: str, *args: object, level: int = logging.INFO) -> logging.LogRecord:
    r = logging.LogRecord("rustaid.x", level, __file__, 1, message, args, None)
    RequestContextFilter().filter(r)
    return r


def in_own_context(test: Callable[[], None]) -> Callable[[], None]:
    """Run a test in a context of its own: what it sets does not leak into other tests."""
    return functools.wraps(test)(lambda: contextvars.copy_context().run(test))


@in_own_context
def test_text_and_journal_lines_carry_the_request() -> None:
    caller_mod.set_current(caller_mod.Caller(key="uid:1000", transport="unix"))
    request_id.set_current(request_id.RequestInfo("r-9", "/rustaid.api.v1.GenerateService/Chat"))
    text = TextFormatter("%(levelname)s %(name)s: %(message)s").format(record("hi\nthere"))
    assert text == "INFO rustaid.x: hi\nthere [request_id=r-9 caller=uid:1000]"
    journal = JournalFormatter("%(name)s: %(message)s").format(record("x", level=logging.WARNING))
    assert journal == "<4>rustaid.x: x [request_id=r-9 caller=uid:1000]"
    line = JsonFormatter(journal=True).format(record("y", level=logging.ERROR))
    assert line.startswith("<3>{") and json.loads(line[3:])["Body"] == "y"


def test_outside_a_request_lines_are_as_before() -> None:
    text = TextFormatter("%(name)s: %(message)s").format(record("idle"))
    assert text == "rustaid.x: idle"
    body = json.loads(JsonFormatter().format(record("idle %d", 3)))
    assert body["Body"] == "idle 3" and "TraceId" not in body
    assert "rustaid.request.id" not in body["Attributes"]


def test_redaction_safety_net() -> None:
    cases = {
        "Authorization: Bearer abc.def-123": "Authorization: Bearer [REDACTED]",
        "authorization=Basic dXNlcjpwYXNz rest": "authorization=Basic [REDACTED] rest",
        "x-api-key: sk-123456": "x-api-key: [REDACTED]",
        '{"api_key": "sk-abc", "n": 1}': '{"api_key": "[REDACTED]", "n": 1}',
        "GET https://h/v1?key=SECRET&x=1": "GET https://h/v1?key=[REDACTED]&x=1",
        "password=hunter2": "password=[REDACTED]",
        "bearer TOKEN123": "bearer [REDACTED]",
    }
    for text, expected in cases.items():
        assert redact(text) == expected
    for harmless in ("max_tokens=5 and 600 tokens", "the basic idea", "prompt is 9 tokens"):
        assert redact(harmless) == harmless


def test_ids_and_trace_context_parsing() -> None:
    assert request_id.accept_id("abc-DEF_1.2:3") == "abc-DEF_1.2:3"
    for bad in (None, "", " x", "x y", "ä", "_x", "x" * 129, "a\nb"):
        assert re.fullmatch(r"[0-9a-f]{16}", request_id.accept_id(bad))
    ok = request_id.parse_traceparent(TRACEPARENT)
    assert ok == ("4bf92f3577b34da6a3ce929d0e0e4736", "00f067aa0ba902b7", "01")
    for bad in (
        None,
        "",
        "garbage",
        "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",  # version ff
        "00-00000000000000000000000000000000-00f067aa0ba902b7-01",  # zero trace id
        "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",  # zero span id
        "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",  # upper case
        TRACEPARENT + "-extra",  # version 00 has exactly four fields
    ):
        assert request_id.parse_traceparent(bad) == ("", "", ""), bad
    # A later version may add fields: the first four still count.
    assert request_id.parse_traceparent("01-" + TRACEPARENT[3:] + "-more")[0]
