"""The indexer's idempotence, step by step: a real ONNX embedder and a real Qdrant Edge
store, with the writes of an indexing run cut short exactly where a crash could cut
them."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import pytest

from rustaid.builtin.onnx_embeddings import OnnxEmbeddingProvider
from rustaid.builtin.parsers import PARSERS
from rustaid.builtin.qdrant_edge import QdrantEdgeStore
from rustaid.providers import Distance, EmbeddingOptions, FieldMatch, Filter, LoadedEmbedder
from rustaid.rag.pipeline import UPSERT_BATCH, Chunking, DocumentInput, Indexer, _Prepared
from tests.rag.models import write_model

T = TypeVar("T")


class OneModel:
    """The part of EmbedderCache the indexer uses, over one loaded model."""

    def __init__(self, embedder: LoadedEmbedder) -> None:
        self.embedder = embedder

    async def run(self, model_id: str, fn: Callable[[LoadedEmbedder], T]) -> T:
        return fn(self.embedder)

    tokenize = run

    async def embed_background(
        self,
        model_id: str,
        texts: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        vectors = self.embedder.embed(texts)
        if progress is not None:
            progress(len(texts))
        return vectors


@pytest.fixture
def indexer(tmp_path: Path) -> Iterator[Indexer]:
    embedder = OnnxEmbeddingProvider().load(write_model(tmp_path / "m"), EmbeddingOptions(1))
    store = QdrantEdgeStore().open(tmp_path / "store", {})
    store.create_collection("c", embedder.dimension, Distance.COSINE)
    executor = ThreadPoolExecutor(2)
    yield Indexer(
        collection="c",
        store=store,
        embedders=OneModel(embedder),  # type: ignore[arg-type]
        model_id="m",
        chunking=Chunking(size=12, overlap=0),
        parsers=lambda: {p.name: p for p in (cls() for cls in PARSERS)},
        executor=executor,
    )
    store.close()
    executor.shutdown()


def chunks_of(indexer: Indexer, document_id: str) -> list[dict[str, Any]]:
    only = Filter(must=(FieldMatch("document_id", document_id),))
    points, _ = indexer.store.scroll("c", only, limit=1000)
    return [dict(p.payload) for p in points]


V1 = DocumentInput(id="d", text="The cat sat. The dog ran. The red car. The blue car. " * 3)
V2 = DocumentInput(id="d", text="Paris is in France. Rome is in Italy. Berlin is in Germany. " * 3)


def test_unchanged_changed_and_cut_short_runs(indexer: Indexer) -> None:
    first = asyncio.run(indexer.index(V1))
    assert first.chunks > 2 and not first.unchanged
    assert asyncio.run(indexer.index(V1)).unchanged

    # A crash while writing v2: only its first chunk got in, next to all of v1.
    async def partial() -> _Prepared:
        (prepared,) = await indexer._prepare([V2])
        assert isinstance(prepared, _Prepared)
        vectors = await indexer.embedders.run(
            "m", lambda e: e.embed([c.embed_text for c in prepared.chunks])
        )
        indexer.store.upsert("c", [indexer._point(prepared, prepared.chunks[0], vectors[0], 0.0)])
        return prepared

    prepared = asyncio.run(partial())
    stored = chunks_of(indexer, "d")
    assert len(stored) == first.chunks + 1
    # Running it again completes v2 and removes v1: no duplicates, no leftovers.
    again = asyncio.run(indexer.index(V2))
    assert again.replaced and again.chunks == len(prepared.chunks)
    stored = chunks_of(indexer, "d")
    assert len(stored) == len(prepared.chunks)
    assert {c["content_hash"] for c in stored} == {prepared.hash}
    assert sorted(c["chunk_index"] for c in stored) == list(range(len(prepared.chunks)))


def test_a_crash_after_writing_before_cleaning_up(indexer: Indexer) -> None:
    asyncio.run(indexer.index(V1))
    v1 = len(chunks_of(indexer, "d"))

    # All of v2 written, then the crash: v1 was never deleted.
    async def written_not_cleaned() -> int:
        (prepared,) = await indexer._prepare([V2])
        assert isinstance(prepared, _Prepared)
        vectors = await indexer.embedders.run(
            "m", lambda e: e.embed([c.embed_text for c in prepared.chunks])
        )
        points = [
            indexer._point(prepared, c, vectors[i], 0.0) for i, c in enumerate(prepared.chunks)
        ]
        indexer.store.upsert("c", points)
        return len(points)

    v2 = asyncio.run(written_not_cleaned())
    assert len(chunks_of(indexer, "d")) == v1 + v2
    result = asyncio.run(indexer.index(V2))
    assert result.unchanged  # v2 is complete: nothing to embed again...
    assert len(chunks_of(indexer, "d")) == v2  # ...and the old version is gone


class CountingStore:
    """The real store, counting the calls the indexer makes on it."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.calls: dict[str, int] = {}

    def __getattr__(self, name: str) -> Any:
        method = getattr(self.store, name)

        def call(*args: Any, **kwargs: Any) -> Any:
            self.calls[name] = self.calls.get(name, 0) + 1
            return method(*args, **kwargs)

        return call


async def stream(docs: list[DocumentInput]) -> Any:
    for i, doc in enumerate(docs):
        yield i, doc


def test_small_documents_of_a_stream_share_store_calls(indexer: Indexer) -> None:
    counting = CountingStore(indexer.store)
    indexer.store = counting  # type: ignore[assignment]
    docs = [DocumentInput(id=f"line{i}", text=f"Line number {i} of the log.") for i in range(40)]
    summary = asyncio.run(indexer.index_stream(stream(docs)))
    assert summary.indexed == 40 and summary.replaced == 0
    assert counting.store.count("c") == summary.chunks
    # Upserts of UPSERT_BATCH points shared by the 40 documents, one count to know none
    # is indexed yet and two to know none had an old version.
    assert counting.calls["upsert"] == -(-summary.chunks // UPSERT_BATCH) < 40
    assert counting.calls["count"] == 1 + 2
    assert "delete" not in counting.calls


def test_a_stream_mixing_indexed_and_new_documents(indexer: Indexer) -> None:
    docs = [DocumentInput(id=f"line{i}", text=f"Line number {i} of the log.") for i in range(40)]
    asyncio.run(indexer.index_stream(stream(docs[:30])))
    changed = DocumentInput(id="line3", text="Line three, rewritten.")
    again = [*docs[:3], changed, *docs[4:]]
    summary = asyncio.run(indexer.index_stream(stream(again)))
    assert (summary.unchanged, summary.indexed, summary.replaced) == (29, 11, 1)
    assert summary.document_ids == [d.id for d in again]
    line3 = sorted(chunks_of(indexer, "line3"), key=lambda c: c["chunk_index"])
    assert " ".join(c["text"] for c in line3) == "Line three, rewritten."  # the old one is gone
    assert indexer.store.count("c") == summary.chunks + sum(
        len(chunks_of(indexer, d.id)) for d in again[:30] if d is not changed
    )


def test_a_stale_chunk_carrying_another_documents_hash_is_still_removed(indexer: Indexer) -> None:
    text_x = "The cat sat. The dog ran."
    asyncio.run(indexer.index(DocumentInput(id="a", text=text_x)))
    old = chunks_of(indexer, "a")
    # "b" gets the content "a" had (so the same hash); "a" gets new content.
    docs = [
        DocumentInput(id="a", text="Paris is in France."),
        DocumentInput(id="b", text=text_x),
    ]
    summary = asyncio.run(indexer.index_stream(stream(docs)))
    assert summary.indexed == 2 and summary.replaced == 1
    stored = chunks_of(indexer, "a")
    assert {c["content_hash"] for c in stored} != {old[0]["content_hash"]}
    assert all("Paris" in c["text"] for c in stored)
