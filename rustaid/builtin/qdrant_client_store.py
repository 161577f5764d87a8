"""Built-in plugin: the `qdrant` vector store, a Qdrant server or cluster through
qdrant-client, for collections that outgrow one device.

Options ([rag.stores.qdrant] in rustaid.toml):

    url = "http://qdrant.lan:6333"     # the server (or a cluster's load balancer)
    api_key_env = "QDRANT_API_KEY"     # environment variable holding the API key
    collection_prefix = "rustaid_"     # keeps this daemon's collections apart
    timeout_s = 10
    prefer_grpc = false

`path = "qdrant-local"` instead of `url` runs qdrant-client's local mode in the store's
state folder (a pure-Python stand-in for a server, fine up to ~20,000 points; payload
indexes do not apply there). qdrant_client is imported when the store is opened.
"""

from __future__ import annotations

import logging
import os
import re
import threading
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any, TypeVar

from rustaid.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
    RustaidError,
    Unauthenticated,
    Unavailable,
)
from rustaid.hookspecs import hookimpl
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

PLUGIN = PluginInfo(
    name="qdrant",
    version="0.1.0",
    description="Vector store on a Qdrant server or cluster (qdrant-client).",
    requirements=ResourceRequirements(min_memory_bytes=32 << 20, cores=1, thermal_impact=5),
)

log = logging.getLogger(__name__)
T = TypeVar("T")

# Name of the keyword (sparse) vector beside the unnamed dense one.
KEYWORDS = "keywords"
# Reciprocal rank fusion: a point's fused score is the sum of 1 / (RRF_K + rank).
RRF_K = 10
_OPTIONS = ("url", "api_key_env", "collection_prefix", "timeout_s", "prefer_grpc", "path")
_PREFIX = re.compile(r"^[A-Za-z0-9_-]{0,32}$")


def _string(options: Mapping[str, Any], key: str, default: str = "") -> str:
    value = options.get(key, default)
    if not isinstance(value, str):
        raise InvalidArgument(
            f"[rag.stores.qdrant] {key} must be a string (got {value!r})",
            field=f"rag.stores.qdrant.{key}",
        )
    return value


def _sparse(v: SparseVector) -> Any:
    from qdrant_client import models

    return models.SparseVector(indices=list(v.indices), values=list(v.values))


class QdrantStoreClient(VectorStoreClient):
    supports_keywords = True

    def __init__(self, state_dir: Path, options: Mapping[str, Any]) -> None:
        unknown = set(options) - set(_OPTIONS)
        if unknown:
            raise InvalidArgument(
                f"[rag.stores.qdrant]: unknown option(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(_OPTIONS)}",
                field="rag.stores.qdrant",
            )
        url = _string(options, "url")
        path = _string(options, "path")
        if bool(url) == bool(path):
            raise InvalidArgument(
                '[rag.stores.qdrant] needs url = "http://HOST:6333" (a Qdrant server), or '
                'path = "FOLDER" for qdrant-client\'s local mode, not both',
                field="rag.stores.qdrant.url",
            )
        self.prefix = _string(options, "collection_prefix", "rustaid_")
        if not _PREFIX.match(self.prefix):
            raise InvalidArgument(
                "[rag.stores.qdrant] collection_prefix may hold up to 32 letters, digits, "
                "'_' and '-'",
                field="rag.stores.qdrant.collection_prefix",
            )
        timeout = options.get("timeout_s", 10)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or timeout <= 0:
            raise InvalidArgument(
                f"[rag.stores.qdrant] timeout_s must be a number > 0 (got {timeout!r})",
                field="rag.stores.qdrant.timeout_s",
            )
        api_key: str | None = None
        if key_env := _string(options, "api_key_env"):
            api_key = os.environ.get(key_env)
            if not api_key:
                raise InvalidArgument(
                    f"[rag.stores.qdrant] api_key_env names {key_env}, which is not set",
                    field="rag.stores.qdrant.api_key_env",
                )
        from qdrant_client import QdrantClient

        self.local = bool(path)
        if path:
            folder = Path(path) if Path(path).is_absolute() else state_dir / path
            folder.mkdir(parents=True, exist_ok=True)
            self.client = QdrantClient(path=str(folder), force_disable_check_same_thread=True)
            self.where = str(folder)
        else:
            self.client = QdrantClient(
                url=url,
                api_key=api_key,
                timeout=int(timeout),
                prefer_grpc=bool(options.get("prefer_grpc", False)),
                check_compatibility=False,
            )
            self.where = url
        # Local mode is not thread-safe; a server is, but ordering per store is simpler.
        self._lock = threading.Lock()

    # -- plumbing -----------------------------------------------------------------------

    def _name(self, name: str) -> str:
        return self.prefix + name

    def _call(self, name: str, fn: Callable[[], T]) -> T:
        with self._lock:
            try:
                return fn()
            except RustaidError:
                raise
            except Exception as e:
                raise self._error(name, e) from e

    def _error(self, name: str, e: Exception) -> RustaidError:
        from qdrant_client.http.exceptions import ResponseHandlingException, UnexpectedResponse

        if isinstance(e, UnexpectedResponse):
            status = e.status_code
            detail = e.content.decode(errors="replace")[:300] if e.content else ""
            if status == 404:
                return NotFound(
                    f"collection {name!r} does not exist on {self.where}",
                    reason="COLLECTION_NOT_FOUND",
                )
            if status == 401:
                return Unauthenticated(f"the Qdrant server at {self.where} refused the API key")
            if status == 403:
                return PermissionDenied(f"the Qdrant server at {self.where} forbids this: {detail}")
            if status == 400:
                return InvalidArgument(f"Qdrant refused the request: {detail}")
            return Unavailable(f"the Qdrant server at {self.where} answered {status}: {detail}")
        if isinstance(e, ResponseHandlingException | ConnectionError | TimeoutError | OSError):
            return Unavailable(
                f"cannot reach the Qdrant server at {self.where}: {e}", retry_after_s=5.0
            )
        message = str(e)
        if isinstance(e, ValueError) and "not found" in message.lower():
            return NotFound(
                f"collection {name!r} does not exist in {self.where}",
                reason="COLLECTION_NOT_FOUND",
            )
        if isinstance(e, ValueError | AssertionError):
            return InvalidArgument(f"collection {name!r}: {message}")
        raise e

    def _condition(self, c: Condition) -> Any:
        from qdrant_client import models

        if isinstance(c, FieldMatch):
            return models.FieldCondition(key=c.key, match=models.MatchValue(value=c.value))
        if isinstance(c, FieldAnyOf):
            return models.FieldCondition(key=c.key, match=models.MatchAny(any=list(c.values)))
        return models.FieldCondition(
            key=c.key, range=models.Range(gt=c.gt, gte=c.gte, lt=c.lt, lte=c.lte)
        )

    def _filter(self, f: Filter | None) -> Any:
        if f is None or f.empty:
            return None
        from qdrant_client import models

        return models.Filter(
            must=[self._condition(c) for c in f.must] or None,
            must_not=[self._condition(c) for c in f.must_not] or None,
            should=[self._condition(c) for c in f.should] or None,
        )

    def _require(self, name: str) -> None:
        if not self.client.collection_exists(self._name(name)):
            raise NotFound(
                f"collection {name!r} does not exist in {self.where}",
                reason="COLLECTION_NOT_FOUND",
            )

    # -- VectorStoreClient --------------------------------------------------------------

    def create_collection(
        self, name: str, dimension: int, distance: Distance, keywords: bool = False
    ) -> None:
        from qdrant_client import models

        qdistance = {
            Distance.COSINE: models.Distance.COSINE,
            Distance.DOT: models.Distance.DOT,
            Distance.EUCLID: models.Distance.EUCLID,
        }[distance]

        def create() -> None:
            if self.client.collection_exists(self._name(name)):
                raise AlreadyExists(
                    f"collection {name!r} already exists in {self.where}",
                    reason="COLLECTION_EXISTS",
                )
            # Keyword weights are term frequencies; the IDF modifier weighs terms by how
            # rare they are in the collection at search time (BM25).
            sparse = {KEYWORDS: models.SparseVectorParams(modifier=models.Modifier.IDF)}
            self.client.create_collection(
                self._name(name),
                vectors_config=models.VectorParams(size=dimension, distance=qdistance),
                sparse_vectors_config=sparse if keywords else None,
            )

        self._call(name, create)

    def delete_collection(self, name: str) -> bool:
        def delete() -> bool:
            if not self.client.collection_exists(self._name(name)):
                return False
            return bool(self.client.delete_collection(self._name(name)))

        return self._call(name, delete)

    def list_collections(self) -> list[str]:
        described = self._call("", lambda: self.client.get_collections().collections)
        return sorted(
            c.name[len(self.prefix) :] for c in described if c.name.startswith(self.prefix)
        )

    def stats(self, name: str) -> CollectionStats:
        from qdrant_client import models

        def stats() -> CollectionStats:
            self._require(name)
            info = self.client.get_collection(self._name(name))
            params = info.config.params.vectors
            if not isinstance(params, models.VectorParams):
                raise InvalidArgument(
                    f"collection {name!r} uses named vectors, which rustaid does not manage"
                )
            distance = {
                models.Distance.COSINE: Distance.COSINE,
                models.Distance.DOT: Distance.DOT,
                models.Distance.EUCLID: Distance.EUCLID,
            }.get(params.distance, Distance.COSINE)
            return CollectionStats(
                points=int(info.points_count or 0),
                indexed_points=int(info.indexed_vectors_count or 0),
                dimension=int(params.size),
                distance=distance,
                index_building=info.status == models.CollectionStatus.YELLOW,
                keywords=KEYWORDS in (info.config.params.sparse_vectors or {}),
            )

        return self._call(name, stats)

    def create_payload_index(self, name: str, key: str, field_type: PayloadType) -> None:
        if self.local:
            return  # local mode has no payload indexes (and warns when asked for one)
        from qdrant_client import models

        schema = {
            PayloadType.KEYWORD: models.PayloadSchemaType.KEYWORD,
            PayloadType.INTEGER: models.PayloadSchemaType.INTEGER,
            PayloadType.FLOAT: models.PayloadSchemaType.FLOAT,
            PayloadType.BOOL: models.PayloadSchemaType.BOOL,
        }[field_type]
        self._call(
            name,
            lambda: self.client.create_payload_index(
                self._name(name), key, field_schema=schema, wait=True
            ),
        )

    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        from qdrant_client import models

        def vector(p: VectorPoint) -> Any:
            if p.keywords is None:
                return list(p.vector)
            return {"": list(p.vector), KEYWORDS: _sparse(p.keywords)}

        structs = [
            models.PointStruct(id=p.id, vector=vector(p), payload=dict(p.payload)) for p in points
        ]

        def upsert() -> None:
            self.client.upsert(self._name(name), points=structs, wait=True)

        self._call(name, upsert)

    def delete(self, name: str, ids: Sequence[str] = (), filter: Filter | None = None) -> None:
        from qdrant_client import models

        def delete() -> None:
            if ids:
                selector = models.PointIdsList(points=list(ids))
                self.client.delete(self._name(name), points_selector=selector, wait=True)
            if filter is not None and not filter.empty:
                by_filter = models.FilterSelector(filter=self._filter(filter))
                self.client.delete(self._name(name), points_selector=by_filter, wait=True)

        self._call(name, delete)

    def count(self, name: str, filter: Filter | None = None) -> int:
        def count() -> int:
            result = self.client.count(
                self._name(name), count_filter=self._filter(filter), exact=True
            )
            return int(result.count)

        return self._call(name, count)

    def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredPoint]:
        def search() -> list[ScoredPoint]:
            response = self.client.query_points(
                self._name(name),
                query=list(vector),
                limit=limit,
                query_filter=self._filter(filter),
                score_threshold=score_threshold,
                with_payload=True,
            )
            return [
                ScoredPoint(str(p.id), float(p.score), p.payload or {}) for p in response.points
            ]

        return self._call(name, search)

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
        from qdrant_client import models

        qfilter = self._filter(filter)

        def search() -> list[ScoredPoint]:
            if vector is None:
                response = self.client.query_points(
                    self._name(name),
                    query=_sparse(keywords),
                    using=KEYWORDS,
                    limit=limit,
                    query_filter=qfilter,
                    score_threshold=score_threshold,
                    with_payload=True,
                )
            else:
                n = max(candidates, limit)
                response = self.client.query_points(
                    self._name(name),
                    prefetch=[
                        models.Prefetch(
                            query=list(vector),
                            limit=n,
                            filter=qfilter,
                            score_threshold=score_threshold,
                        ),
                        models.Prefetch(
                            query=_sparse(keywords), using=KEYWORDS, limit=n, filter=qfilter
                        ),
                    ],
                    query=models.RrfQuery(rrf=models.Rrf(k=RRF_K)),
                    limit=limit,
                    with_payload=True,
                )
            return [
                ScoredPoint(str(p.id), float(p.score), p.payload or {}) for p in response.points
            ]

        try:
            return self._call(name, search)
        except (NotFound, InvalidArgument):
            # A collection without the keyword vector: say so rather than "not found".
            if not self.stats(name).keywords:
                raise PreconditionFailed(
                    f"collection {name!r} holds no keyword vectors", reason="NO_KEYWORDS"
                ) from None
            raise

    def scroll(
        self, name: str, filter: Filter | None = None, limit: int = 100, offset: str | None = None
    ) -> tuple[list[ScoredPoint], str | None]:
        def scroll() -> tuple[list[ScoredPoint], str | None]:
            records, next_offset = self.client.scroll(
                self._name(name),
                scroll_filter=self._filter(filter),
                limit=limit,
                offset=offset,
                with_payload=True,
            )
            points = [ScoredPoint(str(r.id), 0.0, r.payload or {}) for r in records]
            return points, None if next_offset is None else str(next_offset)

        return self._call(name, scroll)

    def close(self) -> None:
        with self._lock:
            self.client.close()


class QdrantServerStore(VectorStore):
    name = "qdrant"
    embedded = False

    def open(self, state_dir: Path, options: Mapping[str, Any]) -> VectorStoreClient:
        return QdrantStoreClient(state_dir, options)


@hookimpl
def register_vector_stores(register: Any) -> None:
    register(QdrantServerStore())
