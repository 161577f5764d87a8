"""Replacing documents over and over must not grow the Qdrant Edge store without bound."""

from __future__ import annotations

import contextlib
import os
import random
import time
import uuid
from pathlib import Path

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
            client.upsert("c", points)
            client.delete(
                "c",
                filter=Filter(
                    must=(FieldMatch("document_id", f"d{doc}"),),
                    must_not=(FieldMatch("version", version),),
                ),
            )

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
