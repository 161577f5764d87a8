"""Turns on an embedding model, with the real all-MiniLM-L6-v2 in ONNX Runtime:
interactive work goes before background slices, waiting interactive embeddings share one
run and each still gets its own vectors."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from rustaid.builtin.onnx_embeddings import OnnxEmbedder
from rustaid.providers import EmbeddingOptions, LoadedEmbedder
from rustaid.rag.embedders import unpack
from rustaid.rag.turns import ModelTurns, Priority
from tests.rag.conftest import MINILM, needs_minilm

pytestmark = needs_minilm

QUERIES = [
    "how do I shrink the systemd journal",
    "battery",
    "which power profile saves the most energy on a laptop",
    "restart the daemon",
    "the vector index is built in the background once writes have settled",
    "zstd",
    "why is my search slow while indexing",
    "signed updates roll back when the health check fails",
]


class Recording(LoadedEmbedder):
    """The real model, recording the texts of each run in the order they run."""

    def __init__(self, inner: OnnxEmbedder) -> None:
        self.inner = inner
        self.dimension, self.max_tokens = inner.dimension, inner.max_tokens
        self.special_tokens, self.threads = inner.special_tokens, inner.threads
        self.pooling = inner.pooling
        self.runs: list[list[str]] = []
        self.third_run = threading.Event()

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        return self.inner.embed(texts)

    def embed_packed(self, texts: Sequence[str]) -> tuple[bytes, list[int]]:
        self.runs.append(list(texts))
        if len(self.runs) >= 3:
            self.third_run.set()
        return self.inner.embed_packed(texts)

    def token_offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        return self.inner.token_offsets(texts)

    def close(self) -> None:
        self.inner.close()


@pytest.fixture(scope="module")
def minilm() -> OnnxEmbedder:
    return OnnxEmbedder(MINILM, EmbeddingOptions(threads=1, batch_size=32))


@pytest.fixture
def executor() -> Iterator[ThreadPoolExecutor]:
    pool = ThreadPoolExecutor(4)
    yield pool
    pool.shutdown()


def alone(model: OnnxEmbedder, text: str) -> np.ndarray:
    return np.array(model.embed([text])[0], dtype=np.float32)


def test_waiting_interactive_embeddings_share_a_run_and_keep_their_vectors(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    model = Recording(minilm)
    turns = ModelTurns(model, executor, batch_size=32)

    async def main() -> list[tuple[bytes, list[int]]]:
        # Eight callers at once (each its own request); the first finds the model idle.
        return await asyncio.gather(*(turns.embed([q], Priority.INTERACTIVE) for q in QUERIES))

    results = asyncio.run(main())
    # The first ran alone; the seven that waited for it shared the next run.
    assert [len(r) for r in model.runs] == [1, 7]
    assert turns.runs == 2 and turns.served == 8
    for query, (packed, truncated) in zip(QUERIES, results, strict=True):
        assert truncated == []
        np.testing.assert_allclose(unpack(packed), alone(minilm, query), atol=1e-5)


def test_a_shared_run_reports_truncation_per_caller(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    turns = ModelTurns(Recording(minilm), executor, batch_size=32)
    long_text = "word " * 600  # longer than the model's 256 tokens

    async def main() -> list[tuple[bytes, list[int]]]:
        return await asyncio.gather(
            turns.embed(["first"], Priority.INTERACTIVE),
            turns.embed(["short", long_text], Priority.INTERACTIVE),
            turns.embed([long_text, "other"], Priority.INTERACTIVE),
        )

    first, second, third = asyncio.run(main())
    assert (first[1], second[1], third[1]) == ([], [1], [0])
    dim = minilm.dimension * 4
    assert len(second[0]) == len(third[0]) == 2 * dim
    np.testing.assert_allclose(unpack(second[0][dim:]), unpack(third[0][:dim]), atol=1e-5)


def test_a_much_longer_text_runs_apart_from_short_queries(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    model = Recording(minilm)
    turns = ModelTurns(model, executor, batch_size=32)
    long_text = "the journal keeps every message of every service " * 20

    async def main() -> None:
        await asyncio.gather(
            turns.embed(["first"], Priority.INTERACTIVE),
            turns.embed([QUERIES[0]], Priority.INTERACTIVE),
            turns.embed([long_text], Priority.INTERACTIVE),
            turns.embed([QUERIES[1]], Priority.INTERACTIVE),
        )

    asyncio.run(main())
    # Padding the two short queries to the long text would cost more than it saves.
    assert model.runs == [["first"], [QUERIES[0], QUERIES[1]], [long_text]]


def test_shared_runs_stop_at_the_batch_size(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    model = Recording(minilm)
    turns = ModelTurns(model, executor, batch_size=3)

    async def main() -> None:
        await asyncio.gather(*(turns.embed([q], Priority.INTERACTIVE) for q in QUERIES))

    asyncio.run(main())
    assert [len(r) for r in model.runs] == [1, 3, 3, 1]


def test_an_interactive_request_waits_for_one_background_slice_only(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    model = Recording(minilm)
    turns = ModelTurns(model, executor, batch_size=32)
    bulk = [f"chunk {i} of a long manual about power, heat and updates" for i in range(200)]

    async def main() -> tuple[list[bytes], int]:
        indexing = asyncio.ensure_future(turns.embed_background(bulk))
        await asyncio.to_thread(model.third_run.wait)  # the indexing job is under way
        query = asyncio.ensure_future(turns.embed([QUERIES[0]], Priority.INTERACTIVE))
        runs_before = len(model.runs)
        await query
        # The query ran right after the slice that was running when it came.
        position = next(i for i, run in enumerate(model.runs) if run == [QUERIES[0]])
        assert position <= runs_before
        assert not indexing.done()
        return await indexing, position

    rows, _ = asyncio.run(main())
    # Indexing was cut into slices of a few texts and still got every vector right.
    slices = [len(run) for run in model.runs if run != [QUERIES[0]]]
    assert sum(slices) == len(bulk) and max(slices) < 32 and len(slices) > 3
    assert turns.ms_per_char is not None
    for i in (0, 57, 199):
        np.testing.assert_allclose(unpack(rows[i]), alone(minilm, bulk[i]), atol=1e-5)


def test_the_next_background_slice_waits_queued_and_goes_with_its_job(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    model = Recording(minilm)
    turns = ModelTurns(model, executor, batch_size=32)
    bulk = [f"chunk {i} of a long manual about power, heat and updates" for i in range(400)]

    async def main() -> None:
        job = asyncio.ensure_future(turns.embed_background(bulk))
        await asyncio.to_thread(model.third_run.wait)
        # While a slice runs, the next one is already queued behind it.
        for _ in range(1000):
            if turns.waiting == 1:
                break
            await asyncio.sleep(0.001)
        assert turns.waiting == 1 and not job.done()
        job.cancel()
        with pytest.raises(asyncio.CancelledError):
            await job
        # The cancelled job's queued slice is dropped; at most the running one ends.
        runs = len(model.runs)
        await asyncio.sleep(0.3)
        assert turns.waiting == 0 and len(model.runs) == runs

    asyncio.run(main())
    assert sum(len(run) for run in model.runs) < len(bulk)


def test_interactive_calls_go_before_waiting_background_ones(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    turns = ModelTurns(Recording(minilm), executor, batch_size=32)
    order: list[str] = []

    def step(name: str) -> object:
        def fn(e: LoadedEmbedder) -> str:
            e.embed([name])
            order.append(name)
            return name

        return fn

    async def main() -> None:
        await asyncio.gather(
            turns.call(step("background 1"), Priority.BACKGROUND),  # runs at once
            turns.call(step("background 2"), Priority.BACKGROUND),
            turns.call(step("interactive"), Priority.INTERACTIVE),
        )

    asyncio.run(main())
    assert order == ["background 1", "interactive", "background 2"]


def test_a_cancelled_caller_gives_up_its_turn_and_errors_reach_their_caller(
    minilm: OnnxEmbedder, executor: ThreadPoolExecutor
) -> None:
    model = Recording(minilm)
    turns = ModelTurns(model, executor, batch_size=32)

    def boom(e: LoadedEmbedder) -> None:
        raise RuntimeError("broken model")

    async def main() -> None:
        first = asyncio.ensure_future(turns.embed(["first"], Priority.INTERACTIVE))
        await asyncio.sleep(0)
        waiting = asyncio.ensure_future(turns.embed(["never"], Priority.BACKGROUND))
        await asyncio.sleep(0)
        waiting.cancel()
        await first
        with pytest.raises(RuntimeError, match="broken model"):
            await turns.call(boom, Priority.INTERACTIVE)
        # The model is free again after the error.
        await turns.embed(["after"], Priority.INTERACTIVE)

    asyncio.run(main())
    assert model.runs == [["first"], ["after"]]


def test_interactive_runs_do_not_wait_for_busy_background_threads(minilm: OnnxEmbedder) -> None:
    background, interactive = ThreadPoolExecutor(1), ThreadPoolExecutor(1)
    release = threading.Event()
    background.submit(release.wait)  # e.g. the store writes of an indexing job
    turns = ModelTurns(minilm, background, 32, interactive=interactive)

    async def main() -> tuple[bytes, list[int]]:
        # The guard only keeps a broken version from hanging the test run.
        return await asyncio.wait_for(turns.embed(["query"], Priority.INTERACTIVE), 120)

    try:
        packed, _ = asyncio.run(main())
    finally:
        release.set()
        background.shutdown()
        interactive.shutdown()
    np.testing.assert_allclose(unpack(packed), alone(minilm, "query"), atol=1e-5)
