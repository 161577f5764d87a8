"""Keyword and hybrid search in both vector stores: Qdrant Edge (embedded) and qdrant-client
(its local mode standing in for a server), with real BM25 keyword vectors."""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rustaid.builtin.qdrant_client_store import QdrantServerStore
from rustaid.builtin.qdrant_edge import RRF_K, QdrantEdgeStore
from rustaid.errors import PreconditionFailed
from rustaid.providers import Distance, FieldMatch, Filter, VectorPoint, VectorStoreClient
from rustaid.rag.keywords import KeywordEncoder

DIM = 8
TEXTS = [
    "Use journalctl --vacuum-size to shrink the systemd journal on disk.",
    "apt-get autoremove removes packages that were installed as dependencies.",
    "sed -i edits files in place instead of printing to standard output.",
    "zstd compresses files; levels above 19 need the --ultra option.",
    "The quick brown fox jumps over the lazy dog.",
    "Cats sleep for most of the day and hunt at night.",
]
ENCODER = KeywordEncoder("english")


def make_points(keywords: bool = True) -> list[VectorPoint]:
    rng = np.random.default_rng(3)
    vectors = rng.standard_normal((len(TEXTS), DIM)).astype(np.float32)
    return [
        VectorPoint(
            str(uuid.UUID(int=i + 1)),
            vectors[i].tolist(),
            {"text": text, "document_id": f"doc{i}"},
            ENCODER.document(text) if keywords else None,
        )
        for i, text in enumerate(TEXTS)
    ]


@pytest.fixture(params=["qdrant-edge", "qdrant"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[VectorStoreClient]:
    if request.param == "qdrant-edge":
        client = QdrantEdgeStore().open(tmp_path / "edge", {})
    else:
        client = QdrantServerStore().open(tmp_path / "qc", {"path": "local"})
    yield client
    client.close()


def texts(hits: list[object]) -> list[str]:
    return [h.payload["text"] for h in hits]  # type: ignore[attr-defined]


def test_keyword_search_ranks_the_passage_with_the_rare_word_first(
    store: VectorStoreClient,
) -> None:
    assert store.supports_keywords
    store.create_collection("k", DIM, Distance.COSINE, keywords=True)
    store.upsert("k", make_points())
    assert store.stats("k").keywords
    hits = store.search_keywords("k", ENCODER.query("how to autoremove packages"), 3)
    assert texts(hits)[0] == TEXTS[1]
    # Stemming: "edited" and "edits" share a term.
    assert texts(store.search_keywords("k", ENCODER.query("edited in place"), 1)) == [TEXTS[2]]
    # Only passages sharing a word come back, each once.
    assert len(store.search_keywords("k", ENCODER.query("zstd"), 10)) == 1
    # Filters apply.
    other = Filter(must_not=(FieldMatch("document_id", "doc1"),))
    assert TEXTS[1] not in texts(store.search_keywords("k", ENCODER.query("autoremove"), 3, other))


def test_hybrid_fuses_dense_and_keyword_ranks(store: VectorStoreClient) -> None:
    store.create_collection("h", DIM, Distance.COSINE, keywords=True)
    data = make_points()
    store.upsert("h", data)
    # The dense query points at the cat passage; the keywords at the zstd one.
    dense = list(data[5].vector)
    keywords = ENCODER.query("zstd ultra")
    assert texts(store.search("h", dense, 1)) == [TEXTS[5]]
    dense_rank = texts(store.search("h", dense, 6)).index(TEXTS[3])
    hits = store.search_keywords("h", keywords, 6, vector=dense, candidates=6)
    assert len(hits) == 6  # every dense candidate is there too
    # Reciprocal rank fusion, k=10, ranks from 0: the zstd passage is first by keywords
    # and somewhere in the dense list; the cat passage is first in the dense list only.
    assert texts(hits)[:2] == [TEXTS[3], TEXTS[5]]
    assert hits[0].score == pytest.approx(1 / RRF_K + 1 / (RRF_K + dense_rank), rel=1e-4)
    assert hits[1].score == pytest.approx(1 / RRF_K, rel=1e-4)
    # The threshold applies to the dense similarity of the dense candidates.
    cut = store.search_keywords("h", keywords, 6, score_threshold=0.99, vector=dense, candidates=6)
    assert set(texts(cut)) == {TEXTS[3], TEXTS[5]}


def test_a_collection_without_keywords_refuses_keyword_search(store: VectorStoreClient) -> None:
    store.create_collection("d", DIM, Distance.COSINE)
    store.upsert("d", make_points(keywords=False))
    assert not store.stats("d").keywords
    with pytest.raises(PreconditionFailed):
        store.search_keywords("d", ENCODER.query("zstd"), 3)


def test_edge_keeps_keyword_vectors_through_an_index_build(tmp_path: Path) -> None:
    options = {"index_after_points": 50, "index_settle_s": 0.0}
    store = QdrantEdgeStore().open(tmp_path, options)
    store.create_collection("big", DIM, Distance.COSINE, keywords=True)
    rng = np.random.default_rng(0)
    filler = [
        VectorPoint(
            str(uuid.UUID(int=1000 + i)),
            rng.standard_normal(DIM).tolist(),
            {"text": f"filler passage number {i}"},
            ENCODER.document(f"filler passage number {i}"),
        )
        for i in range(200)
    ]
    store.upsert("big", filler + make_points())
    store.maintain()
    late = make_points()[3]
    late = VectorPoint(str(uuid.UUID(int=99)), late.vector, {"text": "late zstd"}, late.keywords)
    wrote = False
    deadline = time.monotonic() + 120
    while store.stats("big").index_building:
        assert time.monotonic() < deadline, "index build did not finish in 2 minutes"
        if not wrote:  # written during the build: carried over with its keyword vector
            store.upsert("big", [late])
            wrote = True
        time.sleep(0.05)
    assert (tmp_path / "big" / "current").read_text().strip() == "g000002"
    found = texts(store.search_keywords("big", ENCODER.query("zstd"), 5))
    assert sorted(found) == sorted([TEXTS[3], "late zstd"])
    store.close()
    again = QdrantEdgeStore().open(tmp_path, options)
    assert TEXTS[3] in texts(again.search_keywords("big", ENCODER.query("zstd"), 5))
    again.close()
