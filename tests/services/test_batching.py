"""Continuous batching through the daemon: a model serves `parallel` requests at once
(models.toml), the rest wait with their positions, and an interactive request pauses
background work rather than waiting behind it."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from rustaid.core.cache import OVERHEAD_BYTES
from rustaid.testing import real_model as real
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import add_model
from tests.services.test_limits import Stream, cancelling

P = common_pb2.GenerationParams
MODEL = real.MODEL_ID
SLOTS = 2  # of the synthetic `slow` model


@pytest.fixture(scope="module")
def daemon(
    tmp_path_factory: pytest.TempPathFactory, real_model: Path, model_files: dict[str, Path]
) -> Iterator[DaemonProcess]:
    data_dir = tmp_path_factory.mktemp("batching")
    real.place(real_model, data_dir / "models")
    add_model(data_dir, model_files["slow"])
    (data_dir / "config").mkdir()
    (data_dir / "config" / "models.toml").write_text(
        f'[[model]]\npath = "{real_model.name}"\nparallel = 4\ncontext_length = 1024\n\n'
        f'[[model]]\npath = "slow.gguf"\nparallel = {SLOTS}\ncontext_length = 4096\n'
    )
    with run_daemon(data_dir) as d:
        yield d


@pytest.fixture(scope="module")
def stub(daemon: DaemonProcess) -> Iterator[generate_pb2_grpc.GenerateServiceStub]:
    channel = grpc.insecure_channel(daemon.address)
    yield generate_pb2_grpc.GenerateServiceStub(channel)
    channel.close()


def stream(
    stub: generate_pb2_grpc.GenerateServiceStub,
    prompt: str = "hello world",
    model_id: str = "slow",
    priority: int = common_pb2.PRIORITY_UNSPECIFIED,
    **params: object,
) -> Stream:
    params.setdefault("max_tokens", 4000)
    request = generate_pb2.GenerateStreamRequest(
        model_id=model_id, prompt=prompt, params=P(**params), priority=priority
    )
    return Stream(stub.GenerateStream(request))


def text_of(events: list[generate_pb2.GenerateStreamResponse]) -> str:
    return "".join(e.chunk.text for e in events if e.WhichOneof("event") == "chunk")


def chunks(s: Stream) -> int:
    return sum(1 for e in s.events if e.WhichOneof("event") == "chunk")


# Greedy, stop sequences, a grammar, a JSON schema and seeded sampling side by side.
SETTINGS: list[tuple[str, dict[str, object]]] = [
    ("The capital of France is", {"temperature": 0, "max_tokens": 32}),
    ("Once upon a time", {"temperature": 0, "max_tokens": 40, "stop": ["\n"]}),
    ("def fibonacci(n):", {"temperature": 0, "max_tokens": 40, "stop": ["return"]}),
    ("My favourite colour is", {"temperature": 0, "max_tokens": 24,
                                "grammar": 'root ::= " " [a-z]+ "."'}),
    ("A JSON object for a cat:", {"temperature": 0, "max_tokens": 48, "json_schema":
        '{"type":"object","properties":{"name":{"type":"string"}},"required":["name"]}'}),
    ("List three fruits:", {"temperature": 0.9, "seed": 7, "max_tokens": 32}),
    ("The weather today", {"temperature": 0.7, "top_k": 5, "seed": 3, "max_tokens": 32}),
    ("Write a haiku about rain", {"repeat_penalty": 1.3, "seed": 11, "max_tokens": 32}),
]  # fmt: skip


def test_eight_concurrent_streams_each_match_their_solo_output(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    alone = [text_of(stream(stub, p, MODEL, **kw).finish()) for p, kw in SETTINGS]
    together = [stream(stub, p, MODEL, **kw) for p, kw in SETTINGS]
    assert [text_of(s.finish()) for s in together] == alone
    for s in together:
        assert s.error is None and s.events[-1].WhichOneof("event") == "done"
    # Four slots for eight requests: some waited for a place, and were told so.
    assert any(s.positions() for s in together)


def test_the_model_says_how_many_requests_it_serves_at_once(daemon: DaemonProcess) -> None:
    with grpc.insecure_channel(daemon.address) as channel:
        models = models_pb2_grpc.ModelsServiceStub(channel)
        loaded = models.LoadModel(models_pb2.LoadModelRequest(id="slow")).model
        assert loaded.parallel == SLOTS  # as models.toml says
        listed = {m.id: m for m in models.ListModels(models_pb2.ListModelsRequest()).models}
        assert listed["slow"].parallel == SLOTS


def test_requests_beyond_the_slots_wait_with_their_positions(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    running = [stream(stub, temperature=0).running() for _ in range(SLOTS)]  # every slot
    third = stream(stub, max_tokens=4).started()
    fourth = stream(stub, max_tokens=4).started()
    with cancelling(*running, third, fourth):
        assert third.positions() == [1] and fourth.positions() == [2]
        assert chunks(third) == 0
        running[0].cancel()  # its slot is free at once: the third takes it
        third.finish()
        assert third.events[-1].WhichOneof("event") == "done"
        assert fourth.positions()[:2] == [2, 1]
        fourth.finish()
        assert running[1].thread.is_alive()  # the other slot ran on meanwhile


def test_an_interactive_request_pauses_background_work(
    stub: generate_pb2_grpc.GenerateServiceStub,
) -> None:
    # Greedy: the synthetic model then never samples its end token.
    background = [
        stream(
            stub, priority=common_pb2.PRIORITY_BACKGROUND, temperature=0, max_tokens=1000
        ).running()
        for _ in range(SLOTS)
    ]
    with cancelling(*background):
        interactive = stream(stub, max_tokens=8)
        events = interactive.finish()
        # It never waited: a background request was paused to make room for it.
        assert interactive.positions() == [] and events[-1].WhichOneof("event") == "done"
        assert all(s.thread.is_alive() for s in background), [s.events[-1] for s in background]
        # The paused one resumes where it stopped once the interactive one is done.
        counts = [chunks(s) for s in background]
        for s, n in zip(background, counts, strict=True):
            s.wait_for(lambda s=s, n=n: chunks(s) > n + 5)


def test_the_memory_budget_holds_the_kv_of_every_sequence(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    # `slow` at its 4096-token context: 16 MiB of KV per sequence. The budget holds the
    # weights, llama.cpp's buffers and the KV of two sequences and a half: two at once.
    mib = 1 << 20
    weights_mb = -(-model_files["slow"].stat().st_size // mib)
    budget_mb = weights_mb + OVERHEAD_BYTES // mib + 40
    add_model(tmp_path, model_files["slow"])
    env = {"RUSTAID_MEMORY_BUDGET_MB": str(budget_mb), "RUSTAID_PARALLEL": "4"}
    with run_daemon(tmp_path, env=env) as d, grpc.insecure_channel(d.address) as channel:
        stub = generate_pb2_grpc.GenerateServiceStub(channel)
        running = [stream(stub, temperature=0).running() for _ in range(2)]
        third = stream(stub, max_tokens=4).started()
        with cancelling(*running, third):
            assert third.positions() == [1]
        assert "2 at once" in d.stderr()
