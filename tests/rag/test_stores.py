"""The two vector stores behave the same: the same operations on Qdrant Edge (embedded)
and on qdrant-client (its local mode standing in for a server) give the same results.
Plus Qdrant Edge's own duties: durability, background index builds, leftovers."""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from rustaid.builtin.qdrant_client_store import QdrantServerStore
from rustaid.builtin.qdrant_edge import CURRENT, QdrantEdgeStore
from rustaid.errors import AlreadyExists, InvalidArgument, NotFound
from rustaid.providers import (
    Distance,
    FieldAnyOf,
    FieldMatch,
    FieldRange,
    Filter,
    PayloadType,
    VectorPoint,
    VectorStoreClient,
)

DIM = 8


def points(n: int, seed: int = 0, start: int = 0) -> list[VectorPoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    return [
        VectorPoint(
            str(uuid.UUID(int=start + i + 1)),
            vectors[i].tolist(),
            {
                "document_id": f"doc{(start + i) % 5}",
                "page": (start + i) % 7,
                "flag": (start + i) % 2 == 0,
                "metadata": {"lang": ["en", "fr", "de"][(start + i) % 3], "year": 2000 + i},
                "text": f"point {start + i}",
            },
        )
        for i in range(n)
    ]


@pytest.fixture
def stores(tmp_path: Path) -> Iterator[dict[str, VectorStoreClient]]:
    opened = {
        "qdrant-edge": QdrantEdgeStore().open(tmp_path / "edge", {}),
        "qdrant": QdrantServerStore().open(tmp_path / "qc", {"path": "local"}),
    }
    yield opened
    for client in opened.values():
        client.close()


def run_everything(store: VectorStoreClient) -> list[object]:
    """A fixed script of operations; returns everything observable."""
    seen: list[object] = []
    store.create_collection("c", DIM, Distance.COSINE)
    store.create_payload_index("c", "document_id", PayloadType.KEYWORD)
    store.create_payload_index("c", "page", PayloadType.INTEGER)
    data = points(60)
    store.upsert("c", data[:40])
    store.upsert("c", data[40:])
    store.upsert("c", points(5, seed=9))  # replaces the first 5 points
    seen.append(store.list_collections())
    seen.append(store.count("c"))
    query = np.random.default_rng(42).standard_normal(DIM).tolist()
    filters = [
        None,
        Filter(must=(FieldMatch("document_id", "doc1"),)),
        Filter(must=(FieldAnyOf("metadata.lang", ("fr", "de")),)),
        Filter(must=(FieldRange("page", gte=2, lt=5),)),
        Filter(must=(FieldMatch("flag", True),), must_not=(FieldMatch("page", 4),)),
        Filter(should=(FieldMatch("page", 1), FieldMatch("metadata.year", 2010))),
        Filter(must=(FieldRange("metadata.year", gt=2030.5),)),
    ]
    for f in filters:
        hits = store.search("c", query, 7, f)
        seen.append([(h.id, round(h.score, 4), h.payload["text"]) for h in hits])
        seen.append(store.count("c", f))
    hits = store.search("c", query, 50, None, score_threshold=0.3)
    seen.append([h.id for h in hits])
    assert all(h.score >= 0.3 for h in hits)
    store.delete("c", ids=[data[10].id, data[11].id])
    store.delete("c", filter=Filter(must=(FieldMatch("document_id", "doc3"),)))
    seen.append(store.count("c"))
    page, offset = store.scroll("c", Filter(must=(FieldMatch("document_id", "doc2"),)), limit=100)
    seen.append(sorted(p.id for p in page))
    seen.append(offset)
    stats = store.stats("c")
    seen.append((stats.points, stats.dimension, stats.distance))
    return seen


def test_the_same_operations_give_the_same_results(
    stores: dict[str, VectorStoreClient],
) -> None:
    edge = run_everything(stores["qdrant-edge"])
    local = run_everything(stores["qdrant"])
    assert len(edge) == len(local)
    for i, (a, b) in enumerate(zip(edge, local, strict=True)):
        if isinstance(a, list) and a and isinstance(a[0], tuple):
            assert [(x[0], x[2]) for x in a] == [(y[0], y[2]) for y in b], f"step {i}"  # type: ignore[union-attr]
            assert np.allclose([x[1] for x in a], [y[1] for y in b], atol=1e-3), f"step {i}"  # type: ignore[union-attr]
        else:
            assert a == b, f"step {i}: {a!r} != {b!r}"


@pytest.mark.parametrize("name", ["qdrant-edge", "qdrant"])
def test_errors(stores: dict[str, VectorStoreClient], name: str) -> None:
    store = stores[name]
    with pytest.raises(NotFound):
        store.search("missing", [0.0] * DIM, 3)
    with pytest.raises(NotFound):
        store.count("missing")
    store.create_collection("c", DIM, Distance.DOT)
    with pytest.raises(AlreadyExists):
        store.create_collection("c", DIM, Distance.DOT)
    with pytest.raises(InvalidArgument):
        store.upsert("c", [VectorPoint(str(uuid.uuid4()), [1.0] * (DIM + 1), {})])
    with pytest.raises(InvalidArgument):
        store.search("c", [1.0] * (DIM - 1), 3)
    assert store.delete_collection("c") is True
    assert store.delete_collection("c") is False
    assert store.list_collections() == []


@pytest.mark.parametrize("distance", [Distance.DOT, Distance.EUCLID])
def test_other_distances_agree(stores: dict[str, VectorStoreClient], distance: Distance) -> None:
    results = []
    for store in stores.values():
        store.create_collection("d", DIM, distance)
        store.upsert("d", points(30, seed=5))
        hits = store.search("d", [0.5] * DIM, 5)
        results.append([h.id for h in hits])
        assert store.stats("d").distance is distance
    assert results[0] == results[1]


def test_edge_data_survives_a_reopen(tmp_path: Path) -> None:
    store = QdrantEdgeStore().open(tmp_path, {})
    store.create_collection("keep", DIM, Distance.COSINE)
    store.upsert("keep", points(20))
    store.close()
    again = QdrantEdgeStore().open(tmp_path, {})
    assert again.count("keep") == 20
    assert again.list_collections() == ["keep"]
    again.close()


def test_edge_cleans_up_after_interrupted_creates_and_builds(tmp_path: Path) -> None:
    store = QdrantEdgeStore().open(tmp_path, {})
    store.create_collection("c", DIM, Distance.COSINE)
    store.upsert("c", points(10))
    store.close()
    (tmp_path / "half-created").mkdir()  # a create killed before `current` was written
    (tmp_path / "c" / "g000002.building").mkdir()  # an index build killed midway
    (tmp_path / "c" / "g000002.building" / "junk").write_text("x")
    again = QdrantEdgeStore().open(tmp_path, {})
    assert not (tmp_path / "half-created").exists()
    assert again.count("c") == 10
    assert not (tmp_path / "c" / "g000002.building").exists()
    assert again.list_collections() == ["c"]
    again.close()


def test_edge_builds_the_index_in_the_background(tmp_path: Path) -> None:
    options = {"index_after_points": 1000, "index_settle_s": 0.0}
    store = QdrantEdgeStore().open(tmp_path, options)
    store.create_collection("big", DIM, Distance.COSINE)
    for start in range(0, 8000, 1000):
        store.upsert("big", points(1000, seed=start, start=start))
    store.create_payload_index("big", "document_id", PayloadType.KEYWORD)
    query = [0.1] * DIM
    before = [h.id for h in store.search("big", query, 5)]
    assert store.stats("big").indexed_points == 0
    store.maintain()
    stats = store.stats("big")
    assert stats.index_building
    # Searches and writes keep working while the child process builds the index.
    searched = 0
    late = points(3, seed=99, start=100_000)
    wrote = False
    deadline = time.monotonic() + 120
    while store.stats("big").index_building:
        assert time.monotonic() < deadline, "index build did not finish in 2 minutes"
        assert len(store.search("big", query, 5)) == 5
        searched += 1
        if not wrote:
            store.upsert("big", late)
            store.delete("big", ids=[before[0]])
            wrote = True
        time.sleep(0.05)
    assert searched > 0
    stats = store.stats("big")
    assert stats.indexed_points >= 8000 - 10, stats
    assert stats.points == 8000 + 3 - 1  # the writes made during the build were replayed
    assert store.count("big", Filter(must=(FieldMatch("document_id", "doc0"),))) > 0
    generations = sorted(p.name for p in (tmp_path / "big").iterdir() if p.is_dir())
    assert generations == ["g000002"]
    assert (tmp_path / "big" / CURRENT).read_text().strip() == "g000002"
    store.close()
    again = QdrantEdgeStore().open(tmp_path, options)
    assert again.count("big") == 8002
    assert again.stats("big").indexed_points >= 8000 - 10
    again.close()


def test_edge_concurrent_searches_and_writes(tmp_path: Path) -> None:
    store = QdrantEdgeStore().open(tmp_path, {})
    store.create_collection("c", DIM, Distance.COSINE)
    errors: list[BaseException] = []

    def writer(seed: int) -> None:
        try:
            for k in range(20):
                store.upsert("c", points(10, seed=seed * 100 + k, start=seed * 1000 + k * 10))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=writer, args=(s,)) for s in range(3)]
    for t in threads:
        t.start()
    for _ in range(50):
        store.search("c", [0.2] * DIM, 3)
    for t in threads:
        t.join()
    assert not errors
    assert store.count("c") == 600
    store.close()


def test_a_qdrant_server_that_is_down_or_refuses_the_key(tmp_path: Path) -> None:
    """Real HTTP: nothing listening, then a loopback server answering 401 and 503."""
    import http.server
    import socket

    from rustaid.errors import Unauthenticated, Unavailable

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        closed_port = s.getsockname()[1]
    down = QdrantServerStore().open(tmp_path, {"url": f"http://127.0.0.1:{closed_port}"})
    with pytest.raises(Unavailable, match="cannot reach the Qdrant server"):
        down.search("c", [0.0] * DIM, 3)
    down.close()

    status = {"code": 401}

    class Handler(http.server.BaseHTTPRequestHandler):
        def _answer(self) -> None:
            body = b'{"status": {"error": "nope"}}'
            self.send_response(status["code"])
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        do_GET = do_POST = do_PUT = _answer

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        store = QdrantServerStore().open(tmp_path, {"url": url})
        with pytest.raises(Unauthenticated, match="refused the API key"):
            store.count("c")
        status["code"] = 503
        with pytest.raises(Unavailable, match="answered 503"):
            store.count("c")
        status["code"] = 404
        with pytest.raises(NotFound):
            store.search("c", [0.0] * DIM, 3)
        store.close()
    finally:
        server.shutdown()
        server.server_close()


def test_qdrant_store_options_are_checked(tmp_path: Path) -> None:
    for options, words in (
        ({}, "needs url"),
        ({"url": "http://x", "path": "y"}, "not both"),
        ({"url": "http://x", "collection_prefix": "a b"}, "collection_prefix"),
        ({"url": "http://x", "timeout_s": 0}, "timeout_s"),
        ({"url": "http://x", "api_key_env": "RUSTAID_NO_SUCH_VARIABLE"}, "not set"),
        ({"url": "http://x", "colour": "red"}, "unknown option"),
    ):
        with pytest.raises(InvalidArgument, match=words):
            QdrantServerStore().open(tmp_path, options)
    with pytest.raises(InvalidArgument, match="index_after_points"):
        QdrantEdgeStore().open(tmp_path, {"index_after_points": -1})
