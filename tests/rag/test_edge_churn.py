"""Replacing documents over and over must not grow the Qdrant Edge store without bound."""

from __future__ import annotations

import contextlib
import os
import random
import signal
import time
import uuid
from pathlib import Path
from typing import Any

import pytest

from rustaid.builtin.qdrant_edge import QdrantEdgeStore
from rustaid.providers import Distance, FieldMatch, Filter, PayloadType, VectorPoint

DIM = 32
DOCS = 30
CHUNKS = 10


def segments_bytes(root: Path) -> int:
    """Bytes on disk of the shard segments (the write-ahead log left out)."""
    total = 0
    for folder, _, files in os.walk(root):
        if "wal" in Path(folder).parts:
            continue
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a generation being replaced
                total += (Path(folder) / name).stat().st_size
    return total


def replace_document(client: Any, doc: int, version: int, points: list[VectorPoint]) -> None:
    """As the RAG pipeline re-indexes a changed document: the new version's chunks in,
    then the other versions' out."""
    client.upsert("c", points)
    client.delete(
        "c",
        filter=Filter(
            must=(FieldMatch("document_id", f"d{doc}"),),
            must_not=(FieldMatch("version", version),),
        ),
    )


def test_replacement_churn_is_vacuumed(tmp_path: Path) -> None:
    client = QdrantEdgeStore().open(
        tmp_path, {"index_after_points": DOCS * CHUNKS // 2, "index_settle_s": 0.0}
    )
    client.create_collection("c", DIM, Distance.COSINE)
    client.create_payload_index("c", "document_id", PayloadType.KEYWORD)
    rng = random.Random(0)
    collection = client._get("c")  # type: ignore[attr-defined]

    def replace_all(version: int) -> None:
        for doc in range(DOCS):
            points = [
                VectorPoint(
                    str(uuid.uuid4()),
                    [rng.gauss(0.0, 1.0) for _ in range(DIM)],
                    {"document_id": f"d{doc}", "version": version, "text": "x" * 400},
                )
                for _ in range(CHUNKS)
            ]
            replace_document(client, doc, version, points)

    def settle() -> None:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            client.maintain()
            if collection.build is None or not collection.build.is_alive():
                client.maintain()
                if collection.build is None or not collection.build.is_alive():
                    return
            time.sleep(0.1)

    sizes = []
    generations = []
    for version in range(5):
        replace_all(version)
        settle()
        sizes.append(segments_bytes(tmp_path))
        generations.append(collection.generation)
    stats = client.stats("c")
    client.close()
    assert stats.points == DOCS * CHUNKS
    # Replacing points (no new ones: the unindexed count stays 0) still triggers the
    # rebuilds that vacuum them.
    assert len(set(generations[1:])) > 1, generations
    # The replaced points were vacuumed: the index holds the live points only...
    assert stats.indexed_points == stats.points, stats
    # ...and the segments do not keep growing with each round of replacements.
    assert sizes[-1] <= sizes[1] * 1.5, sizes


def _all_points(collection: Any) -> dict[str, tuple[dict[str, Any], list[float]]]:
    import qdrant_edge as qe

    request = qe.ScrollRequest(limit=100_000, with_payload=True, with_vector=True)
    records, _ = collection.read(lambda s: s.scroll(request))
    return {str(r.id): (dict(r.payload or {}), list(r.vector)) for r in records}


def test_writes_made_during_a_build_are_carried_over_by_id(tmp_path: Path) -> None:
    """The build records which points were written meanwhile, not the points themselves,
    and the new generation ends up exactly like the live shard."""
    client = QdrantEdgeStore().open(tmp_path, {"index_after_points": 50, "index_settle_s": 0.0})
    client.create_collection("c", DIM, Distance.COSINE)
    client.create_payload_index("c", "document_id", PayloadType.KEYWORD)
    rng = random.Random(1)
    collection = client._get("c")  # type: ignore[attr-defined]

    def point(doc: int, version: int, i: int, point_id: str | None = None) -> VectorPoint:
        return VectorPoint(
            point_id or str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc}/{version}/{i}")),
            [rng.gauss(0.0, 1.0) for _ in range(DIM)],
            {"document_id": f"d{doc}", "version": version, "flag": version % 2 == 0},
        )

    def replace(doc: int, version: int) -> list[str]:
        points = [point(doc, version, i) for i in range(CHUNKS)]
        replace_document(client, doc, version, points)
        return [p.id for p in points]

    for doc in range(DOCS):
        replace(doc, 0)
    # Hold the index builder (a real child process) stopped while writes go on.
    client.maintain()
    deadline = time.monotonic() + 60
    while collection.child is None:
        assert collection.build is not None and collection.build.is_alive(), "no build started"
        assert time.monotonic() < deadline
        time.sleep(0.001)
    child = collection.child
    os.kill(child.pid, signal.SIGSTOP)
    try:
        assert child.poll() is None, "the build finished before it could be held"
        generation = collection.generation
        written: set[str] = set()
        written |= set(replace(0, 1))
        written |= set(replace(0, 2))  # replaced twice: version 1 is gone again
        written |= set(replace(1, 1))
        client.delete("c", filter=Filter(must=(FieldMatch("document_id", "d2"),)))
        # The same id written, deleted by a filter, written again.
        reused = str(uuid.uuid4()).upper()
        client.upsert("c", [point(99, 1, 0, reused)])
        client.delete("c", filter=Filter(must=(FieldMatch("document_id", "d99"),)))
        client.upsert("c", [point(99, 2, 0, reused)])
        # A point of the copied shard changed in place; another deleted by id.
        kept = str(uuid.uuid5(uuid.NAMESPACE_URL, "3/0/0"))
        client.upsert("c", [point(3, 0, 0, kept)])
        dropped = str(uuid.uuid5(uuid.NAMESPACE_URL, "4/0/0"))
        client.delete("c", ids=[dropped])
        written |= {reused, kept, dropped}
        # Only the deletes by filter are kept as operations; points are kept as ids.
        assert len(collection.journal) == 5
        assert {str(k) for k in collection.touched} == {str(uuid.UUID(i)) for i in written}
        live = _all_points(collection)
    finally:
        os.kill(child.pid, signal.SIGCONT)
    collection.build.join(timeout=120)
    assert collection.generation != generation
    assert collection.journal is None and not collection.touched
    # The copy for the build kept the holes of the shard's preallocated files (its 32 MB
    # write-ahead log segments): the new generation takes what it holds on disk.
    folder = tmp_path / "c" / collection.generation
    on_disk = sum(f.stat().st_blocks * 512 for f in folder.rglob("*") if f.is_file())
    assert on_disk < 16 << 20, f"{on_disk} bytes on disk"
    for points_now in (_all_points(collection), None):
        if points_now is None:  # and once more from disk
            client.close()
            client = QdrantEdgeStore().open(tmp_path, {})
            points_now = _all_points(client._get("c"))  # type: ignore[attr-defined]
        assert points_now.keys() == live.keys()
        for key, (payload, vector) in live.items():
            assert points_now[key][0] == payload
            assert points_now[key][1] == pytest.approx(vector, abs=1e-6)
    assert client.count("c") == DOCS * CHUNKS - CHUNKS - 1 + 1
    client.close()
