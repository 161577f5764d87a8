"""Built-in plugin: the embedded vector store, Qdrant Edge (PyPI `qdrant-edge-py`).

Each collection is one `qdrant_edge.EdgeShard` in its own folder under the daemon's state:

    <state>/rag/qdrant-edge/<collection>/
        collection.json       dimension and distance
        current               name of the live generation, replaced atomically
        g000001/              the shard (segments + write-ahead log)

Writes go through the shard's write-ahead log, so a killed daemon loses nothing it
acknowledged. New points land in a plain segment that is searched exhaustively; once
enough of them have piled up and writes have paused, the HNSW index is built in the
background by a child process working on a copy of the shard (EdgeShard.optimize() holds
the interpreter lock for its whole run, which would freeze the daemon). Searches keep
using the live shard meanwhile; writes made during the build are recorded and replayed on
the new generation, which then replaces the old one with an atomic rename of `current`.
The record keeps the ids of the points written or deleted, not the points themselves (a
build under steady re-indexing can last long, and holding every vector and payload
written meanwhile grew the daemon's heap with each write): the swap copies those points
from the live shard, or deletes them where the live shard no longer has them.
A daemon killed at any point of a build restarts on the last complete generation.

Replacing points (re-indexing a document: upsert the new version, delete the old one)
only marks the old points deleted; their vectors and payloads stay in the segments until
the optimizer vacuums them, and every write also grows the write-ahead log until a flush
lets it drop what the segments hold. So the store counts the points written and deleted
since the live generation was built, and a build also runs once that count reaches
`index_after_points` (its optimize() vacuums the deleted points and merges the segments);
and maintenance flushes a shard once its writes have settled (or every FLUSH_INTERVAL_S
under steady writes), which truncates the write-ahead log. Under steady replacement the
folder and the mapped memory therefore stay bounded instead of growing with every write.

qdrant_edge is imported when the first collection is opened.
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rustaid.builtin.shared_lock import SharedLock
from rustaid.core.diskspace import MIB, free_bytes, full_disk_is_exhausted, require_free
from rustaid.errors import AlreadyExists, InvalidArgument, NotFound, PreconditionFailed
from rustaid.hookspecs import hookimpl
from rustaid.memory import release_freed_memory
from rustaid.providers import (
    CollectionStats,
    Condition,
    Distance,
    FieldAnyOf,
    FieldMatch,
    Filter,
    PayloadType,
    PluginInfo,
    ResourceRequirements,
    ScoredPoint,
    SparseVector,
    VectorPoint,
    VectorStore,
    VectorStoreClient,
)

if TYPE_CHECKING:
    import qdrant_edge

PLUGIN = PluginInfo(
    name="qdrant-edge",
    version="0.1.0",
    description="Embedded vector store: Qdrant Edge shards under the daemon's state folder.",
    requirements=ResourceRequirements(min_memory_bytes=32 << 20, cores=1, thermal_impact=20),
)

log = logging.getLogger(__name__)

CURRENT = "current"
META = "collection.json"
# Name of the keyword (sparse) vector beside the unnamed dense one.
KEYWORDS = "keywords"
# Reciprocal rank fusion: a point's fused score is the sum of 1 / (RRF_K + rank).
RRF_K = 10
_GENERATION = re.compile(r"^g(\d{6})$")
# Defaults of the [rag.stores.qdrant-edge] options.
DEFAULTS: dict[str, Any] = {
    # Build the HNSW index once this many points are only searchable exhaustively...
    "index_after_points": 5000,
    # ...and no write came for this long.
    "index_settle_s": 2.0,
    # Build indexes at all (off: every search is exhaustive, fine for small collections).
    "background_index": True,
    "hnsw_m": 16,
    "hnsw_ef_construct": 100,
    # Threads of each shard's search pool (0: one per CPU).
    "search_threads": 0,
    # Space kept free on the disk: writes, flushes and builds wait while less is free.
    # The shard maps its files (write-ahead log segments of 32 MiB among them), and a
    # mapped page a full disk cannot back kills the process with SIGBUS.
    "min_free_mb": 64,
}
# After a failed build, wait this long before trying again.
BUILD_RETRY_S = 300.0
# Under steady writes, flush a shard (and so truncate its write-ahead log) at least this often.
FLUSH_INTERVAL_S = 30.0
# Build even while writes go on once this many times index_after_points were written or
# deleted since the live generation was built.
CHURN_UNSETTLED = 4


def _options(options: Mapping[str, Any]) -> dict[str, Any]:
    unknown = set(options) - set(DEFAULTS)
    if unknown:
        raise InvalidArgument(
            f"[rag.stores.qdrant-edge]: unknown option(s) {', '.join(sorted(unknown))}; "
            f"known: {', '.join(DEFAULTS)}",
            field="rag.stores.qdrant-edge",
        )
    merged = {**DEFAULTS, **options}
    for key, default in DEFAULTS.items():
        value = merged[key]
        if isinstance(default, bool):
            ok = isinstance(value, bool)
        elif isinstance(default, float):
            ok = isinstance(value, int | float) and not isinstance(value, bool) and value >= 0
        else:
            ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        if not ok:
            raise InvalidArgument(
                f"[rag.stores.qdrant-edge] {key} must be a "
                f"{'boolean' if isinstance(default, bool) else 'number >= 0'} (got {value!r})",
                field=f"rag.stores.qdrant-edge.{key}",
            )
    return merged


def _distance(distance: Distance) -> Any:
    import qdrant_edge as qe

    return {
        Distance.COSINE: qe.Distance.Cosine,
        Distance.DOT: qe.Distance.Dot,
        Distance.EUCLID: qe.Distance.Euclid,
    }[distance]


# qdrant-edge-py 0.9 turns a Python bool in MatchValue into the integer 1, so a boolean
# payload value can never match. Every boolean of a payload is therefore mirrored as 0/1
# under this key (same path below it), boolean conditions and indexes use the mirror,
# and payloads are returned without it.
BOOL_MIRROR = "_rustaid_bools"


def _bool_mirror(value: Any) -> Any:
    """The booleans in `value` as 0/1 at the same paths (None when there are none)."""
    if isinstance(value, bool):
        return int(value)
    if isinstance(value, dict):
        mirrored = {k: m for k, v in value.items() if (m := _bool_mirror(v)) is not None}
        return mirrored or None
    if isinstance(value, list):
        items = [m for v in value if (m := _bool_mirror(v)) is not None]
        return items or None
    return None


def stored_payload(payload: Mapping[str, Any]) -> dict[str, Any]:
    data = dict(payload)
    mirror = _bool_mirror(data)
    if mirror is not None:
        data[BOOL_MIRROR] = mirror
    return data


def read_payload(payload: Mapping[str, Any] | None) -> dict[str, Any]:
    data = dict(payload or {})
    data.pop(BOOL_MIRROR, None)
    return data


def _condition(c: Condition) -> Any:
    import qdrant_edge as qe

    if isinstance(c, FieldMatch):
        if isinstance(c.value, bool):
            key = f"{BOOL_MIRROR}.{c.key}"
            return qe.FieldCondition(key=key, match=qe.MatchValue(int(c.value)))
        return qe.FieldCondition(key=c.key, match=qe.MatchValue(c.value))
    if isinstance(c, FieldAnyOf):
        return qe.FieldCondition(key=c.key, match=qe.MatchAny(list(c.values)))
    return qe.FieldCondition(key=c.key, range=qe.RangeFloat(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte))


def edge_filter(f: Filter | None) -> Any:
    if f is None or f.empty:
        return None
    import qdrant_edge as qe

    return qe.Filter(
        must=[_condition(c) for c in f.must] or None,
        must_not=[_condition(c) for c in f.must_not] or None,
        should=[_condition(c) for c in f.should] or None,
    )


def _schema(field_type: PayloadType) -> Any:
    import qdrant_edge as qe

    return {
        PayloadType.KEYWORD: qe.PayloadSchemaType.Keyword,
        PayloadType.INTEGER: qe.PayloadSchemaType.Integer,
        PayloadType.FLOAT: qe.PayloadSchemaType.Float,
        PayloadType.BOOL: qe.PayloadSchemaType.Bool,
    }[field_type]


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    with tmp.open("w", encoding="utf-8") as f:
        f.write(text)
        f.flush()
        os.fsync(f.fileno())
    tmp.replace(path)
    _fsync_dir(path.parent)


def _fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    """Every file and folder under `root` on disk: `current` must never name a generation
    whose files a power loss could still take back (a clean file's fsync is cheap)."""
    for folder, _dirs, files in os.walk(root):
        for name in files:
            fd = os.open(Path(folder) / name, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        _fsync_dir(Path(folder))


def _edge_error(name: str, e: Exception) -> Exception:
    message = str(e)
    if "dimension" in message.lower():
        return InvalidArgument(f"collection {name!r}: {message}", reason="DIMENSION_MISMATCH")
    if isinstance(e, ValueError):
        return InvalidArgument(f"collection {name!r}: {message}")
    return e


# Operations recorded while an index is built, replayed on the new generation.
_Op = Callable[["qdrant_edge.EdgeShard"], None]
# Points copied from the live shard to the new generation per call when it is swapped in.
SYNC_BATCH = 256


def _point_key(point_id: Any) -> int | uuid.UUID:
    """A point id as the shard returns it (integer or UUID), whatever spelling it came in."""
    if isinstance(point_id, int | uuid.UUID):
        return point_id
    return uuid.UUID(str(point_id))


def _copy_sparse(src: str, dst: str) -> str:
    """shutil.copy2 that leaves holes as holes. Qdrant preallocates its write-ahead log and
    appendable storage as sparse files of 32 MB; a plain copy writes their holes out as
    zeros, so each generation would take the full size on disk whatever it holds."""
    with Path(src).open("rb") as fin, Path(dst).open("wb") as fout:
        size = os.fstat(fin.fileno()).st_size
        offset = 0
        while offset < size:
            try:
                start = os.lseek(fin.fileno(), offset, os.SEEK_DATA)
            except OSError:  # no data past `offset` (ENXIO): the rest is a hole
                break
            end = os.lseek(fin.fileno(), start, os.SEEK_HOLE)
            os.lseek(fin.fileno(), start, os.SEEK_SET)
            fout.seek(start)
            remaining = end - start
            while remaining > 0:
                chunk = fin.read(min(remaining, 1 << 20))
                if not chunk:
                    break
                fout.write(chunk)
                remaining -= len(chunk)
            offset = end
        fout.truncate(size)
    shutil.copystat(src, dst)
    return dst


def _tree_bytes(root: Path) -> int:
    """Disk space the files under `root` take (blocks, not lengths: files are sparse)."""
    total = 0
    for path in root.rglob("*"):
        with contextlib.suppress(OSError):
            st = path.lstat()
            total += st.st_blocks * 512
    return total


class _Collection:
    """One collection: the live shard, its generations and its background builds."""

    def __init__(self, folder: Path, options: dict[str, Any]) -> None:
        import qdrant_edge as qe

        self.name = folder.name
        self.folder = folder
        self.options = options
        meta = json.loads((folder / META).read_text(encoding="utf-8"))
        self.dimension = int(meta["dimension"])
        self.distance = Distance(meta["distance"])
        self.keywords = bool(meta.get("keywords", False))
        generation = (folder / CURRENT).read_text(encoding="utf-8").strip()
        if not _GENERATION.match(generation) or not (folder / generation).is_dir():
            raise PreconditionFailed(
                f"vector store folder {folder} is damaged: {CURRENT} names {generation!r}",
                reason="STORE_DAMAGED",
            )
        self.generation = generation
        for stale in folder.iterdir():  # leftovers of a build the daemon did not finish
            if stale.is_dir() and stale.name != generation:
                log.info("removing unfinished index build %s", stale)
                shutil.rmtree(stale, ignore_errors=True)
        self.shard: qdrant_edge.EdgeShard = qe.EdgeShard.load(str(folder / generation))
        # Shared by every call on the live shard, so a search does not wait behind a write
        # or a flush (the shard orders its own reads and writes); held alone to swap
        # generations and to close.
        self.lock = SharedLock()
        # Held by writers and flushes, and by a build while it copies the shard and swaps
        # generations.
        self.write_lock = threading.Lock()
        # While an index is built: the operations that are not point writes (deletes by
        # filter, payload indexes), and the ids of the points written or deleted.
        self.journal: list[_Op] | None = None
        self.touched: set[int | uuid.UUID] = set()
        self.last_write = 0.0
        # Points written or deleted since the live generation was built (its optimizer
        # has not seen them: unindexed vectors, deleted points not yet vacuumed).
        self.churn = 0
        # Writes not flushed yet (the write-ahead log keeps them until a flush).
        self.unflushed = 0
        self.last_flush = time.monotonic()
        self.build: threading.Thread | None = None
        self.child: subprocess.Popen[bytes] | None = None
        self.retry_at = 0.0
        self.closed = False
        self.indexed_fields = set(self.shard.info().payload_schema)

    @staticmethod
    def create(
        folder: Path, dimension: int, distance: Distance, options: dict[str, Any], keywords: bool
    ) -> None:
        import qdrant_edge as qe

        folder.mkdir(parents=True)
        meta = {"dimension": dimension, "distance": distance.value, "keywords": keywords}
        (folder / META).write_text(json.dumps(meta), encoding="utf-8")
        hnsw = qe.HnswIndexConfig(
            m=options["hnsw_m"],
            ef_construct=options["hnsw_ef_construct"],
            full_scan_threshold=10000,
        )
        # optimize() indexes segments holding more than this many KB of vectors: match
        # it to the number of points that triggers a build.
        threshold_kb = max(1, options["index_after_points"] * dimension * 4 // 1024)
        # Vectors keep the default tier (memory-mapped, pre-warmed when a generation is
        # loaded). Cold (paged in on first touch) saves nothing once searches have run
        # (same RSS after 300 queries at 100k points) and makes the first searches after
        # every index build take 20-75 ms instead of 2-5 ms.
        vectors = qe.EdgeVectorParams(size=dimension, distance=_distance(distance))
        # Keyword weights are term frequencies; the IDF modifier weighs terms by how rare
        # they are in the shard at search time (BM25).
        sparse = {KEYWORDS: qe.EdgeSparseVectorParams(modifier=qe.Modifier.Idf)}
        config = qe.EdgeConfig(
            vectors=vectors,
            sparse_vectors=sparse if keywords else None,
            hnsw_config=hnsw,
            optimizers=qe.EdgeOptimizersConfig(indexing_threshold=threshold_kb),
            max_search_threads=options["search_threads"] or None,
        )
        shard = qe.EdgeShard.create(str(folder / "g000001"), config)
        shard.flush()
        shard.close()
        _write_atomic(folder / CURRENT, "g000001\n")

    # -- calls --------------------------------------------------------------------------

    def read(self, fn: Callable[[qdrant_edge.EdgeShard], Any]) -> Any:
        with self.lock.shared():
            self._check_open()
            try:
                return fn(self.shard)
            except Exception as e:
                raise _edge_error(self.name, e) from e

    @property
    def reserve(self) -> int:
        return int(self.options["min_free_mb"]) * MIB

    def has_room(self, extra: int = 0) -> bool:
        try:
            return free_bytes(self.folder) >= self.reserve + extra
        except OSError:
            return False

    def write(self, op: _Op, points: int = 1, ids: Sequence[Any] | None = None) -> None:
        """Apply `op`, which writes or deletes about `points` points (those of `ids` when
        given: the swap after a build then copies them rather than replaying `op`).
        Refused (DISK_FULL) while less than min_free_mb is free."""
        with self.write_lock, self.lock.shared():
            self._check_open()
            require_free(self.folder, self.reserve, "the vector store (min_free_mb)")
            try:
                with full_disk_is_exhausted(self.folder, "the vector store"):
                    op(self.shard)
            except Exception as e:
                raise _edge_error(self.name, e) from e
            if self.journal is not None:
                if ids is None:
                    self.journal.append(op)
                else:
                    self.touched.update(_point_key(i) for i in ids)
            self.last_write = time.monotonic()
            self.churn += max(points, 0)
            self.unflushed += 1

    def maybe_flush(self) -> None:
        """Flush once writes have settled (or at least every FLUSH_INTERVAL_S): the
        write-ahead log only drops what a flush has made durable in the segments."""
        if self.closed or not self.unflushed:
            return
        now = time.monotonic()
        settled = now - self.last_write >= self.options["index_settle_s"]
        if not settled and now - self.last_flush < FLUSH_INTERVAL_S:
            return
        if not self.has_room():  # the write-ahead log keeps the writes meanwhile
            return
        with self.write_lock, self.lock.shared():
            if self.closed:
                return
            pending = self.unflushed
            self.shard.flush()
            self.unflushed -= pending
            self.last_flush = time.monotonic()

    def _check_open(self) -> None:
        if self.closed:
            raise NotFound(f"collection {self.name!r} was deleted", reason="COLLECTION_NOT_FOUND")

    def stats(self) -> CollectionStats:
        info = self.read(lambda s: s.info())
        building = self.build is not None and self.build.is_alive()
        return CollectionStats(
            points=int(info.points_count),
            indexed_points=int(info.indexed_vectors_count),
            dimension=self.dimension,
            distance=self.distance,
            index_building=building,
            keywords=self.keywords,
        )

    # -- background index builds --------------------------------------------------------

    def maybe_build(self) -> None:
        if not self.options["background_index"] or self.closed:
            return
        if self.build is not None and self.build.is_alive():
            return
        now = time.monotonic()
        threshold = self.options["index_after_points"]
        settled = now - self.last_write >= self.options["index_settle_s"]
        # Writes that never pause must not grow the shard forever: past this much churn,
        # build without waiting for them to settle.
        if now < self.retry_at or not (
            settled or self.churn >= max(1, CHURN_UNSETTLED * threshold)
        ):
            return
        info = self.read(lambda s: s.info())
        unindexed = info.points_count - info.indexed_vectors_count
        if max(unindexed, self.churn) < threshold:
            return
        # A build works on a copy of the shard.
        if not self.has_room(_tree_bytes(self.folder / self.generation)):
            return
        self.build = threading.Thread(
            target=self._build, name=f"rustaid-index-{self.name}", daemon=True
        )
        self.build.start()

    def _next_generation(self) -> str:
        return f"g{int(self.generation[1:]) + 1:06d}"

    def _build(self) -> None:
        new = self._next_generation()
        staging = self.folder / f"{new}.building"
        t0 = time.monotonic()
        try:
            with self.write_lock:
                with self.lock.shared():
                    self._check_open()
                    self.shard.flush()
                shutil.rmtree(staging, ignore_errors=True)
                shutil.copytree(self.folder / self.generation, staging, copy_function=_copy_sparse)
                self.journal = []
                self.touched = set()
                churn_copied = self.churn
            self.child = subprocess.Popen(
                [sys.executable, "-m", "rustaid.builtin.qdrant_edge", "build", str(staging)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
            _, err = self.child.communicate()
            if self.child.returncode != 0:
                raise RuntimeError(
                    f"index build exited with {self.child.returncode}: "
                    f"{err.decode(errors='replace').strip()[-500:]}"
                )
            replayed = (len(self.journal or ()), len(self.touched))
            _fsync_tree(staging)  # the bulk, before writes are held off for the swap
            self._swap(staging, new, churn_copied)
            log.info(
                "collection %s: vector index built in %.1f s (then %d operations and %d points "
                "written meanwhile were carried over)",
                self.name,
                time.monotonic() - t0,
                *replayed,
            )
        except Exception as e:
            if not self.closed:
                log.warning("collection %s: index build failed: %s", self.name, e)
                self.retry_at = time.monotonic() + BUILD_RETRY_S
            self.journal = None
            self.touched = set()
            shutil.rmtree(staging, ignore_errors=True)
        finally:
            self.child = None

    def _swap(self, staging: Path, new: str, churn_copied: int) -> None:
        import qdrant_edge as qe

        with self.write_lock:
            self._check_open()
            # Replaying writes into the new generation maps its files too.
            require_free(self.folder, self.reserve, "the vector store (min_free_mb)")
            target = self.folder / new
            staging.rename(target)
            shard = qe.EdgeShard.load(str(target))
            try:
                for op in self.journal or []:
                    op(shard)
                self._copy_touched(shard)
                shard.flush()
                _fsync_tree(target)  # what the replay wrote
            except BaseException:
                shard.close()
                raise
            _write_atomic(self.folder / CURRENT, new + "\n")
            with self.lock.exclusive():
                old, old_generation = self.shard, self.generation
                self.shard, self.generation = shard, new
                self.journal = None
                self.touched = set()
                # What the build optimised is done; writes replayed from the journal are not.
                self.churn = max(0, self.churn - churn_copied)
                self.indexed_fields = set(shard.info().payload_schema)
        old.close()
        shutil.rmtree(self.folder / old_generation, ignore_errors=True)
        release_freed_memory()  # the heap freed by the old generation

    def _copy_touched(self, shard: qdrant_edge.EdgeShard) -> None:
        """Make the points written or deleted during the build the same in `shard` as in
        the live shard (writes are held off by the caller, so it does not change).

        Run after the deletes by filter were replayed: a point such a delete wrongly
        removes from `shard` (its version there is older) was written, so it comes back."""
        import qdrant_edge as qe

        touched: list[int | uuid.UUID | str] = list(self.touched)
        for start in range(0, len(touched), SYNC_BATCH):
            batch = touched[start : start + SYNC_BATCH]
            with self.lock.shared():
                records = self.shard.retrieve(batch, with_payload=True, with_vector=True)
            points = [qe.Point(r.id, r.vector, r.payload) for r in records if r.vector is not None]
            kept = {_point_key(p.id) for p in points}
            gone = [i for i in batch if _point_key(i) not in kept]
            if points:
                shard.update(qe.UpdateOperation.upsert_points(points))
            if gone:
                shard.update(qe.UpdateOperation.delete_points(gone))

    def close(self) -> None:
        self.closed = True
        child = self.child
        if child is not None and child.poll() is None:
            child.kill()
        if self.build is not None:
            self.build.join(timeout=30)
        with self.lock.exclusive():
            with contextlib.suppress(Exception):
                self.shard.flush()
            self.shard.close()


def _edge_vector(p: VectorPoint, keywords: bool) -> Any:
    """The point's vectors as the shard stores them: the dense one unnamed, plus the
    keyword vector in collections that hold them."""
    import qdrant_edge as qe

    if not keywords:
        return list(p.vector)
    sparse = p.keywords or SparseVector((), ())
    keyword_vector = qe.SparseVector(list(sparse.indices), list(sparse.values))
    return {"": list(p.vector), KEYWORDS: keyword_vector}


class EdgeStoreClient(VectorStoreClient):
    supports_keywords = True

    def __init__(self, root: Path, options: dict[str, Any]) -> None:
        self.root = root
        self.options = options
        self._collections: dict[str, _Collection] = {}
        self._lock = threading.Lock()
        root.mkdir(parents=True, exist_ok=True)
        for child in root.iterdir():  # a create that did not finish
            if child.is_dir() and not (child / CURRENT).is_file():
                log.info("removing unfinished collection folder %s", child)
                shutil.rmtree(child, ignore_errors=True)

    def _folder(self, name: str) -> Path:
        if not name or "/" in name or name.startswith(".") or name != Path(name).name:
            raise InvalidArgument(f"bad collection name {name!r}", field="name")
        return self.root / name

    def _get(self, name: str) -> _Collection:
        with self._lock:
            collection = self._collections.get(name)
            if collection is None:
                folder = self._folder(name)
                if not (folder / CURRENT).is_file():
                    raise NotFound(
                        f"collection {name!r} does not exist in the qdrant-edge store",
                        reason="COLLECTION_NOT_FOUND",
                    )
                collection = _Collection(folder, self.options)
                self._collections[name] = collection
            return collection

    def create_collection(
        self, name: str, dimension: int, distance: Distance, keywords: bool = False
    ) -> None:
        folder = self._folder(name)
        with self._lock:
            if (folder / CURRENT).is_file():
                raise AlreadyExists(
                    f"collection {name!r} already exists", reason="COLLECTION_EXISTS"
                )
            shutil.rmtree(folder, ignore_errors=True)
            # A new shard maps files of its own (see min_free_mb).
            reserve = int(self.options["min_free_mb"]) * MIB
            require_free(self.root, reserve, "the vector store (min_free_mb)")
            try:
                with full_disk_is_exhausted(self.root, "the vector store"):
                    _Collection.create(folder, dimension, distance, self.options, keywords)
            except BaseException:
                shutil.rmtree(folder, ignore_errors=True)
                raise

    def delete_collection(self, name: str) -> bool:
        folder = self._folder(name)
        with self._lock:
            collection = self._collections.pop(name, None)
            if collection is not None:
                collection.close()
            if not folder.exists():
                return False
            # Unlink `current` first: a half-deleted folder is then ignored and cleaned up.
            with contextlib.suppress(FileNotFoundError):
                (folder / CURRENT).unlink()
            shutil.rmtree(folder, ignore_errors=True)
            return True

    def list_collections(self) -> list[str]:
        return sorted(p.name for p in self.root.iterdir() if (p / CURRENT).is_file())

    def stats(self, name: str) -> CollectionStats:
        return self._get(name).stats()

    def create_payload_index(self, name: str, key: str, field_type: PayloadType) -> None:
        import qdrant_edge as qe

        collection = self._get(name)
        if key in collection.indexed_fields:
            return
        schema = _schema(field_type)
        field = key
        if field_type is PayloadType.BOOL:
            field, schema = f"{BOOL_MIRROR}.{key}", _schema(PayloadType.INTEGER)
        collection.write(lambda s: s.update(qe.UpdateOperation.create_field_index(field, schema)))
        collection.indexed_fields.add(key)

    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        import qdrant_edge as qe

        collection = self._get(name)
        for p in points:
            if len(p.vector) != collection.dimension:
                raise InvalidArgument(
                    f"collection {name!r} holds {collection.dimension}-dimensional vectors, "
                    f"not {len(p.vector)}",
                    reason="DIMENSION_MISMATCH",
                )
        edge_points = [
            qe.Point(p.id, _edge_vector(p, collection.keywords), stored_payload(p.payload))
            for p in points
        ]
        operation = qe.UpdateOperation.upsert_points(edge_points)
        collection.write(lambda s: s.update(operation), len(edge_points), [p.id for p in points])

    def delete(self, name: str, ids: Sequence[str] = (), filter: Filter | None = None) -> None:
        import qdrant_edge as qe

        collection = self._get(name)
        if ids:
            by_id = qe.UpdateOperation.delete_points(list(ids))
            collection.write(lambda s: s.update(by_id), len(ids), ids)
        if filter is not None and not filter.empty:
            edge = edge_filter(filter)
            # How many points it deletes (they stay in the segments until vacuumed).
            matched = int(
                collection.read(lambda s: s.count(qe.CountRequest(exact=True, filter=edge)))
            )
            by_filter = qe.UpdateOperation.delete_points_by_filter(edge)
            collection.write(lambda s: s.update(by_filter), matched)

    def count(self, name: str, filter: Filter | None = None) -> int:
        import qdrant_edge as qe

        request = qe.CountRequest(exact=True, filter=edge_filter(filter))
        return int(self._get(name).read(lambda s: s.count(request)))

    def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredPoint]:
        import qdrant_edge as qe

        collection = self._get(name)
        if len(vector) != collection.dimension:
            raise InvalidArgument(
                f"collection {name!r} holds {collection.dimension}-dimensional vectors; the "
                f"query has {len(vector)}",
                reason="DIMENSION_MISMATCH",
            )
        request = qe.QueryRequest(
            limit=limit,
            query=qe.Query.Nearest(list(vector)),
            filter=edge_filter(filter),
            score_threshold=score_threshold,
            with_payload=True,
        )
        hits = collection.read(lambda s: s.query(request))
        return [ScoredPoint(str(h.id), float(h.score), read_payload(h.payload)) for h in hits]

    def search_keywords(
        self,
        name: str,
        keywords: SparseVector,
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        vector: Sequence[float] | None = None,
        candidates: int = 0,
    ) -> list[ScoredPoint]:
        import qdrant_edge as qe

        collection = self._get(name)
        if not collection.keywords:
            raise PreconditionFailed(
                f"collection {name!r} holds no keyword vectors", reason="NO_KEYWORDS"
            )
        if vector is not None and len(vector) != collection.dimension:
            raise InvalidArgument(
                f"collection {name!r} holds {collection.dimension}-dimensional vectors; the "
                f"query has {len(vector)}",
                reason="DIMENSION_MISMATCH",
            )
        edge = edge_filter(filter)
        sparse = qe.Query.Nearest(
            qe.SparseVector(list(keywords.indices), list(keywords.values)), using=KEYWORDS
        )
        if vector is None:
            request = qe.QueryRequest(
                limit=limit,
                query=sparse,
                filter=edge,
                score_threshold=score_threshold,
                with_payload=True,
            )
        else:
            n = max(candidates, limit)
            request = qe.QueryRequest(
                limit=limit,
                prefetches=[
                    qe.Prefetch(
                        limit=n,
                        query=qe.Query.Nearest(list(vector)),
                        filter=edge,
                        score_threshold=score_threshold,
                    ),
                    qe.Prefetch(limit=n, query=sparse, filter=edge),
                ],
                query=qe.Fusion.Rrf(k=RRF_K),  # type: ignore[arg-type]  # stub lists Fusion only
                with_payload=True,
            )
        hits = collection.read(lambda s: s.query(request))
        return [ScoredPoint(str(h.id), float(h.score), read_payload(h.payload)) for h in hits]

    def scroll(
        self, name: str, filter: Filter | None = None, limit: int = 100, offset: str | None = None
    ) -> tuple[list[ScoredPoint], str | None]:
        import qdrant_edge as qe

        request = qe.ScrollRequest(
            offset=offset, limit=limit, filter=edge_filter(filter), with_payload=True
        )
        records, next_offset = self._get(name).read(lambda s: s.scroll(request))
        points = [ScoredPoint(str(r.id), 0.0, read_payload(r.payload)) for r in records]
        return points, None if next_offset is None else str(next_offset)

    def maintain(self) -> None:
        with self._lock:
            collections = list(self._collections.values())
        for collection in collections:
            try:
                collection.maybe_flush()
                collection.maybe_build()
            except Exception as e:
                log.warning("collection %s: %s", collection.name, e)

    def close(self) -> None:
        with self._lock:
            collections = list(self._collections.values())
            self._collections.clear()
        for collection in collections:
            collection.close()


class QdrantEdgeStore(VectorStore):
    name = "qdrant-edge"
    embedded = True

    def open(self, state_dir: Path, options: Mapping[str, Any]) -> VectorStoreClient:
        return EdgeStoreClient(state_dir, _options(options))


@hookimpl
def register_vector_stores(register: Any) -> None:
    register(QdrantEdgeStore())


# --- the index builder (child process) -------------------------------------------------


def _die_with_parent() -> None:
    """Linux: get SIGKILL when the daemon dies, so no orphan keeps writing."""
    with contextlib.suppress(Exception):
        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() == 1:  # the daemon died before prctl took effect
        raise SystemExit(1)


def build_index(path: str) -> None:
    """Open the shard copy at `path`, build its vector index, flush and close it."""
    import qdrant_edge as qe

    shard = qe.EdgeShard.load(path)
    shard.optimize()
    shard.flush()
    shard.close()


def main(argv: Sequence[str]) -> int:
    if len(argv) != 2 or argv[0] != "build":
        print("usage: python -m rustaid.builtin.qdrant_edge build SHARD_FOLDER", file=sys.stderr)
        return 2
    _die_with_parent()
    with contextlib.suppress(OSError):
        os.nice(10)  # background work: interactive requests come first
    build_index(argv[1])
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
