"""Loaded models under a memory budget: LRU eviction of idle models, pins, models in use,
keep-alive expiry (per model, per request), and models too large for the budget."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf.duration_pb2 import Duration

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2
from rustaid.core.admission import RETRY_MIN_S
from rustaid.testing.daemon import run_daemon
from tests.conftest import Stubs, add_model
from tests.helpers import wait_until
from tests.services.test_limits import retry_delay_s

# tiny: 0.6 MB weights + KV cache + 32 MiB engine overhead = about 33 MiB each.
BUDGET_FOR_TWO_TINY = "80"


@contextlib.contextmanager
def start(tmp_path: Path, model_files: dict[str, Path], **env: str) -> Iterator[Stubs]:
    for name in ("a", "b", "c"):
        add_model(tmp_path, model_files["tiny"], f"{name}.gguf")
    add_model(tmp_path, model_files["slow"])
    with run_daemon(tmp_path, env=env) as d:
        stubs = Stubs(d)
        yield stubs
        stubs.channel.close()


@pytest.fixture
def two_fit(tmp_path: Path, model_files: dict[str, Path]) -> Iterator[Stubs]:
    with start(tmp_path, model_files, RUSTAID_MEMORY_BUDGET_MB=BUDGET_FOR_TWO_TINY) as s:
        yield s


def loaded(s: Stubs) -> set[str]:
    return {
        m.id for m in s.models.ListModels(models_pb2.ListModelsRequest(loaded_only=True)).models
    }


def gen(s: Stubs, model_id: str, **kw: object) -> generate_pb2.GenerateResponse:
    return s.generate.Generate(
        generate_pb2.GenerateRequest(
            model_id=model_id, prompt="hi", params=common_pb2.GenerationParams(max_tokens=2), **kw
        )
    )


def test_least_recently_used_idle_model_is_evicted(two_fit: Stubs) -> None:
    gen(two_fit, "a")
    gen(two_fit, "b")
    assert loaded(two_fit) == {"a", "b"}
    gen(two_fit, "a")  # a is now the most recently used
    gen(two_fit, "c")
    assert loaded(two_fit) == {"a", "c"}  # b went
    listing = {m.id: m for m in two_fit.models.ListModels(models_pb2.ListModelsRequest()).models}
    assert listing["b"].memory_bytes == 0
    assert listing["a"].memory_bytes > 30 << 20  # weights + KV cache + overhead estimate


def test_pinned_model_is_never_evicted(two_fit: Stubs) -> None:
    two_fit.models.LoadModel(models_pb2.LoadModelRequest(id="a", pin=True))
    gen(two_fit, "b")
    gen(two_fit, "c")
    gen(two_fit, "b")
    assert "a" in loaded(two_fit)


def test_model_in_use_is_not_evicted_and_the_loader_is_told_why(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    with start(tmp_path, model_files, RUSTAID_MEMORY_BUDGET_MB="90") as s:
        params = common_pb2.GenerationParams(max_tokens=150)
        request = generate_pb2.GenerateStreamRequest(model_id="slow", prompt="hi", params=params)
        t0 = time.monotonic()
        list(s.generate.GenerateStream(request))  # one turn: how long slow's requests take
        turn = time.monotonic() - t0
        stream = iter(s.generate.GenerateStream(request))
        next(stream)  # slow (about 74 MiB) is now generating
        with pytest.raises(grpc.RpcError) as info:
            gen(s, "a")
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "in use" in info.value.details() and "slow" in info.value.details()
        # Retry when slow's request should be over: what is left of its turn.
        assert RETRY_MIN_S <= retry_delay_s(info.value) <= max(RETRY_MIN_S, turn), turn
        rest = list(stream)
        assert rest[-1].done.usage.completion_tokens == 150  # never cut short
        gen(s, "a")  # now slow is idle and gives way
        assert loaded(s) == {"a"}


def test_model_larger_than_the_whole_budget_is_refused_with_numbers(
    tmp_path: Path, model_files: dict[str, Path]
) -> None:
    with start(tmp_path, model_files, RUSTAID_MEMORY_BUDGET_MB="20") as s:
        with pytest.raises(grpc.RpcError) as info:
            s.models.LoadModel(models_pb2.LoadModelRequest(id="a"))
        assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
        assert "MiB" in info.value.details() and "budget is 20 MiB" in info.value.details()
        # The router does not pick what cannot fit, and says why.
        with pytest.raises(grpc.RpcError) as info:
            s.models.SelectModel(models_pb2.SelectModelRequest())
        assert info.value.code() == grpc.StatusCode.FAILED_PRECONDITION
        assert "memory budget" in info.value.details()


def test_keep_alive_unloads_idle_models(tmp_path: Path, model_files: dict[str, Path]) -> None:
    with start(tmp_path, model_files, RUSTAID_KEEP_ALIVE_S="0.5") as s:
        gen(s, "a")
        gen(s, "b", keep_alive=common_pb2.KeepAlive(forever=True))
        gen(s, "c", keep_alive=common_pb2.KeepAlive(duration=Duration(seconds=0)))
        assert "c" not in loaded(s)  # keep_alive 0: unloaded right after the request
        wait_until(lambda: loaded(s) == {"b"}, timeout=5)  # a expired, b kept forever
        time.sleep(0.7)
        assert loaded(s) == {"b"}


def test_bad_keep_alive_is_invalid_argument(two_fit: Stubs) -> None:
    with pytest.raises(grpc.RpcError) as info:
        gen(two_fit, "a", keep_alive=common_pb2.KeepAlive(duration=Duration(seconds=-5)))
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "keep_alive.duration" in info.value.details()


def test_concurrent_requests_for_one_model_load_it_once(two_fit: Stubs) -> None:
    results: list[float] = []
    threads = [
        threading.Thread(target=lambda: results.append(gen(two_fit, "a").timings.load_ms))
        for _ in range(4)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert len(results) == 4
    assert sum(1 for ms in results if ms > 0) == 1
