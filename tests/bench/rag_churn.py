"""Re-indexing churn in the embedded vector store: resident memory and folder size.

    .venv/bin/python tests/bench/rag_churn.py [--quick] [--points 10000] [--dim 384]
        [--chunks 10] [--replacements 20000] [--samples 10] [--json out.json]

A Qdrant Edge collection (the daemon's store plugin, in this process) is filled with
--points points (documents of --chunks chunks, --dim random unit vectors, a 500-character
text in each payload, keyword indexes on document_id and content_hash, as the daemon's
RAG pipeline writes them) and left to build its index. Then documents picked at random
are replaced the way the pipeline re-indexes a changed document: upsert the new version,
count and delete the other versions by filter, with one search per replacement, until
--replacements points were replaced; meanwhile a thread calls maintain() every 2 s as the
daemon does. RSS (anonymous and file-backed), the folder size (blocks on disk) and the
write-ahead log are sampled --samples times; the final sample is taken once maintenance
has settled (no build running, writes flushed). Under steady replacement of the same
documents, the folder and the memory must stay bounded: the figures are their growth
from the filled collection to the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import random
import shutil
import statistics
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

MAINTENANCE_S = 2.0
# The folder may end at most this much bigger than the filled collection (the write-ahead
# log and the appendable segment between two optimisations).
TARGET_FOLDER_GROWTH_PCT = 60.0
# Anonymous memory (the heap: what would be a leak); file-backed pages are the store's
# mapped files, reported without a target.
TARGET_ANON_GROWTH_MB = 10.0


def rss_mb() -> dict[str, float]:
    out = {}
    for line in Path("/proc/self/status").read_text().splitlines():
        key = line.split(":", 1)[0]
        if key in ("VmRSS", "RssAnon", "RssFile"):
            out[key] = int(line.split()[1]) / 1024
    return out


def disk_mb(path: Path, part: str = "") -> float:
    total = 0
    for root, _, files in os.walk(path):
        if part and part not in Path(root).parts:
            continue
        for name in files:
            with contextlib.suppress(FileNotFoundError):  # a generation being replaced
                total += (Path(root) / name).stat().st_blocks * 512
    return total / 2**20


def run(args: argparse.Namespace) -> dict[str, Any]:
    from rustaid.builtin.qdrant_edge import QdrantEdgeStore
    from rustaid.providers import Distance, FieldMatch, Filter, PayloadType, VectorPoint

    rng = random.Random(0)
    work = Path(tempfile.mkdtemp(prefix="rustaid-churn-"))
    client = QdrantEdgeStore().open(work, {})
    name = "churn"
    client.create_collection(name, args.dim, Distance.COSINE)
    for key in ("document_id", "content_hash"):
        client.create_payload_index(name, key, PayloadType.KEYWORD)

    def vector() -> list[float]:
        v = [rng.gauss(0.0, 1.0) for _ in range(args.dim)]
        norm = sum(x * x for x in v) ** 0.5
        return [x / norm for x in v]

    versions: dict[int, int] = {}
    text = "lorem ipsum " * 42

    def write(doc: int, version: int) -> None:
        doc_id, doc_hash = f"doc-{doc}", f"v{version}"
        points = [
            VectorPoint(
                str(uuid.uuid5(uuid.NAMESPACE_URL, f"{doc_id}/{doc_hash}/{i}")),
                vector(),
                {"document_id": doc_id, "content_hash": doc_hash, "chunk_index": i, "text": text},
            )
            for i in range(args.chunks)
        ]
        client.upsert(name, points)
        others = Filter(
            must=(FieldMatch("document_id", doc_id),),
            must_not=(FieldMatch("content_hash", doc_hash),),
        )
        if client.count(name, others):
            client.delete(name, filter=others)

    documents = max(1, args.points // args.chunks)
    for doc in range(documents):
        versions[doc] = 0
        write(doc, 0)

    stop = threading.Event()

    def maintain() -> None:
        while not stop.wait(MAINTENANCE_S):
            client.maintain()

    def settle(timeout: float = 300.0) -> None:
        """Wait until maintenance has nothing left to do (no build, writes flushed)."""
        deadline = time.monotonic() + timeout
        collection = client._get(name)  # type: ignore[attr-defined]
        time.sleep(MAINTENANCE_S * 2)
        while time.monotonic() < deadline:
            client.maintain()
            build = collection.build
            if (build is None or not build.is_alive()) and not getattr(collection, "unflushed", 0):
                return
            time.sleep(0.5)

    settle()
    samples: list[dict[str, Any]] = []
    latencies: list[float] = []

    def sample(done: int) -> None:
        stats = client.stats(name)
        row = {
            "replaced": done,
            **rss_mb(),
            "folder_mb": disk_mb(work),
            "wal_mb": disk_mb(work, "wal"),
            "points": stats.points,
            "indexed_points": stats.indexed_points,
            "search_p50_ms": statistics.median(latencies[-200:]) if latencies else None,
        }
        samples.append(row)
        print(
            f"{done:>7} replaced  rss {row['VmRSS']:6.1f} MB (anon {row['RssAnon']:5.1f})  "
            f"folder {row['folder_mb']:6.1f} MB (wal {row['wal_mb']:5.1f})  "
            f"points {stats.points}",
            file=sys.stderr,
            flush=True,
        )

    sample(0)
    thread = threading.Thread(target=maintain, daemon=True)
    thread.start()
    every = max(args.chunks, args.replacements // max(1, args.samples))
    done = 0
    t0 = time.monotonic()
    query = vector()
    while done < args.replacements:
        doc = rng.randrange(documents)
        versions[doc] += 1
        write(doc, versions[doc])
        t = time.perf_counter()
        client.search(name, query, 5)
        latencies.append((time.perf_counter() - t) * 1000)
        done += args.chunks
        if done % every < args.chunks:
            sample(done)
    churn_s = time.monotonic() - t0
    stop.set()
    thread.join()
    settle()
    sample(done)
    client.close()
    shutil.rmtree(work, ignore_errors=True)
    return {"samples": samples, "churn_s": churn_s, "settings": vars(args)}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--points", type=int, default=10000)
    parser.add_argument("--dim", type=int, default=384)
    parser.add_argument("--chunks", type=int, default=10, help="points per document")
    parser.add_argument("--replacements", type=int, default=20000, help="points replaced")
    parser.add_argument("--samples", type=int, default=10)
    args = common.parse_args(parser, argv, quick={"points": 2000, "replacements": 6000})
    data = run(args)
    first, last = data["samples"][0], data["samples"][-1]
    peak = max(s["folder_mb"] for s in data["samples"])
    growth_pct = (last["folder_mb"] - first["folder_mb"]) / first["folder_mb"] * 100
    figures = [
        common.figure(
            "store folder growth after churn",
            growth_pct,
            "%",
            target=f"<= {TARGET_FOLDER_GROWTH_PCT}",
            note=f"{first['folder_mb']:.0f} -> {last['folder_mb']:.0f} MB, peak {peak:.0f} MB, "
            f"{args.replacements} points replaced among {args.points}",
        ),
        common.figure(
            "anonymous memory growth after churn",
            last["RssAnon"] - first["RssAnon"],
            "MB",
            target=f"<= {TARGET_ANON_GROWTH_MB}",
            note="heap and other memory the kernel cannot take back",
        ),
        common.figure(
            "RSS growth after churn",
            last["VmRSS"] - first["VmRSS"],
            "MB",
            note=f"file-backed {last['RssFile'] - first['RssFile']:+.1f} MB: the store's mapped "
            "files (vectors pre-warmed on each index build, write-ahead log), which the "
            "kernel reclaims under memory pressure",
        ),
        common.figure("write-ahead log at the end", last["wal_mb"], "MB"),
        common.figure(
            "search p50 during the last 200 replacements",
            data["samples"][-2]["search_p50_ms"] if len(data["samples"]) > 1 else None,
            "ms",
        ),
    ]
    print(common.figures_table(figures))
    common.write_json(args.json, data, figures)
    return 0 if all(f["pass"] is not False for f in figures) else 1


if __name__ == "__main__":
    raise SystemExit(main())
