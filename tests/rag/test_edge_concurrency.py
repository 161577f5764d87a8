"""Qdrant Edge: a search does not wait for a write to the same collection to finish, and
the shared lock keeps swaps and closes to themselves."""

from __future__ import annotations

import threading
import uuid
from pathlib import Path
from typing import Any

import numpy as np

from rustaid.builtin.qdrant_edge import QdrantEdgeStore
from rustaid.builtin.shared_lock import SharedLock
from rustaid.providers import Distance, VectorPoint

DIM = 64


def points(n: int, seed: int) -> list[VectorPoint]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((n, DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    return [
        VectorPoint(str(uuid.uuid4()), vectors[k].tolist(), {"document_id": f"d{seed}-{k}"})
        for k in range(n)
    ]


def test_a_search_completes_while_a_write_is_under_way(tmp_path: Path) -> None:
    store = QdrantEdgeStore().open(tmp_path, {})
    store.create_collection("c", DIM, Distance.COSINE)
    store.upsert("c", points(100, seed=1))
    collection = store._get("c")  # type: ignore[attr-defined]
    started, release = threading.Event(), threading.Event()

    def write(shard: Any) -> None:
        # A write that lasts until the search is done (a long upsert or delete).
        started.set()
        release.wait()

    writer = threading.Thread(target=lambda: collection.write(write))
    writer.start()
    started.wait()
    found: list[int] = []

    def search() -> None:
        found.append(len(store.search("c", points(1, seed=3)[0].vector, 5)))
        found.append(store.count("c"))

    searcher = threading.Thread(target=search)
    searcher.start()
    searcher.join(timeout=120)  # only so that a search that waits fails, not hangs
    finished_first = not searcher.is_alive()
    release.set()
    writer.join()
    searcher.join()
    assert finished_first and found == [5, 100]
    store.close()


def test_exclusive_waits_for_shared_holders_and_goes_before_new_ones() -> None:
    lock = SharedLock()
    order: list[str] = []
    inside = threading.Event()
    release = threading.Event()

    def reader(name: str, hold: bool) -> None:
        with lock.shared():
            order.append(name)
            if hold:
                inside.set()
                release.wait()

    def swapper() -> None:
        with lock.exclusive():
            order.append("exclusive")

    first = threading.Thread(target=reader, args=("reader 1", True))
    first.start()
    inside.wait()
    swap = threading.Thread(target=swapper)
    swap.start()
    while not lock._waiting:  # type: ignore[attr-defined]
        threading.Event().wait(0.001)
    late = threading.Thread(target=reader, args=("reader 2", False))
    late.start()
    release.set()
    for t in (first, swap, late):
        t.join()
    assert order == ["reader 1", "exclusive", "reader 2"]
