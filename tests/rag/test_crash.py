"""Crash safety: the daemon killed with SIGKILL while it indexes (and while it builds a
vector index) restarts with a collection that opens and answers, and running the same
indexing again completes it without duplicates."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import rag_pb2
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.rag.conftest import RagStubs, link_embedding_model, write_config

N_DOCS = 150
WORDS = [
    "the",
    "cat",
    "dog",
    "car",
    "red",
    "blue",
    "green",
    "apple",
    "banana",
    "paris",
    "rome",
    "music",
    "piano",
    "water",
    "fire",
]


def corpus() -> list[rag_pb2.Document]:
    docs = []
    for i in range(N_DOCS):
        words = [WORDS[(i * 7 + j * 3) % len(WORDS)] for j in range(120)]
        sentences = [" ".join(words[k : k + 12]) + "." for k in range(0, 120, 12)]
        docs.append(
            rag_pb2.Document(id=f"doc{i:04d}", text=f"Document {i}. " + " ".join(sentences))
        )
    return docs


def stream(
    collection: str, docs: list[rag_pb2.Document]
) -> Iterator[rag_pb2.IndexDocumentsRequest]:
    chunking = rag_pb2.ChunkingOptions(chunk_size=16, chunk_overlap=2)
    for i in range(0, len(docs), 5):
        yield rag_pb2.IndexDocumentsRequest(
            collection=collection if i == 0 else "", documents=docs[i : i + 5], chunking=chunking
        )


def collection(stubs: RagStubs, name: str) -> rag_pb2.Collection:
    for c in stubs.rag.ListCollections(rag_pb2.ListCollectionsRequest()).collections:
        if c.name == name:
            return c
    raise AssertionError(f"no collection {name}")


def kill_when(d: DaemonProcess, condition: object, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not condition():  # type: ignore[operator]
        assert time.monotonic() < deadline, "the moment to kill the daemon never came"
        time.sleep(0.02)
    d.proc.kill()
    d.proc.wait()


def assert_complete(stubs: RagStubs, name: str, expected_points: int) -> None:
    assert collection(stubs, name).points_count == expected_points
    for i in range(0, N_DOCS, 37):
        only = rag_pb2.Filter(
            must=[
                rag_pb2.Condition(key="document_id", value=rag_pb2.MatchValue(text=f"doc{i:04d}"))
            ]
        )
        hits = stubs.rag.Search(
            rag_pb2.SearchRequest(collection=name, query="cat", top_k=1000, filter=only)
        ).hits
        indexes = sorted(h.chunk_index for h in hits)
        assert indexes == list(range(len(indexes))), f"doc{i:04d} has gaps or duplicates"


@pytest.mark.slow
def test_kill_during_indexing_then_resume(tmp_path: Path, tiny_models: dict[str, Path]) -> None:
    link_embedding_model(tmp_path, tiny_models["tiny"], "tiny")
    write_config(
        tmp_path,
        '[rag]\nembedding_model = "embeddings/tiny"\n'
        "[rag.stores.qdrant-edge]\nindex_after_points = 500\nindex_settle_s = 0.0\n",
    )
    docs = corpus()
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="reference"))
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="crash"))
        reference = stubs.rag.IndexDocuments(stream("reference", docs))
        # Let the background index build of the reference pass, so it does not race.
        stubs.rag.DeleteCollection(rag_pb2.DeleteCollectionRequest(name="reference"))
        failure: list[BaseException] = []

        def run() -> None:
            try:
                stubs.rag.IndexDocuments(stream("crash", docs))
            except grpc.RpcError as e:
                failure.append(e)

        writer = threading.Thread(target=run)
        writer.start()
        kill_when(
            d, lambda: collection(stubs, "crash").points_count > reference.chunks_indexed // 3
        )
        writer.join()
        assert failure and failure[0].code() == grpc.StatusCode.UNAVAILABLE  # type: ignore[attr-defined]
        stubs.channel.close()

    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        partial = collection(stubs, "crash")
        assert 0 < partial.points_count < reference.chunks_indexed
        hits = stubs.rag.Search(rag_pb2.SearchRequest(collection="crash", query="cat piano")).hits
        assert hits  # the collection opens and answers
        again = stubs.rag.IndexDocuments(stream("crash", docs))
        assert again.documents_indexed + again.documents_unchanged == N_DOCS
        assert again.documents_unchanged > 0  # the documents finished before the kill
        assert_complete(stubs, "crash", reference.chunks_indexed)
        # Now kill it while it builds the vector index in the background.
        kill_when(d, lambda: collection(stubs, "crash").index_building)
        stubs.channel.close()

    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        assert_complete(stubs, "crash", reference.chunks_indexed)
        deadline = time.monotonic() + 60
        while collection(stubs, "crash").indexed_points_count == 0:  # the build runs again
            assert time.monotonic() < deadline, "the index was never built after the restart"
            time.sleep(0.1)
        assert_complete(stubs, "crash", reference.chunks_indexed)
        stubs.channel.close()


@pytest.fixture(autouse=True)
def _no_leftover_builders() -> Iterator[None]:
    yield
    # A builder child dies with its daemon (PR_SET_PDEATHSIG): none may outlive the test.
    import psutil

    time.sleep(0.2)
    leftovers = [
        p.info["pid"]
        for p in psutil.process_iter(["pid", "cmdline"])
        if "rustaid.builtin.qdrant_edge" in " ".join(p.info["cmdline"] or [])
        and p.info["pid"] != 0
        and p.ppid() == 1
    ]
    assert not leftovers, f"orphaned index builders: {leftovers}"
