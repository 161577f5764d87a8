"""The RAG subsystem the daemon owns: collections, indexing, search and grounded answers.

Blocking work (embedding, parsing, vector store calls) runs in a small thread pool of its
own, searches and query embeddings in a second one (indexing never holds them up);
embedding models load on first use and stay in an LRU (`[rag] loaded_embedding_models`),
each taking interactive work before indexing (turns.py). Vector stores open on first
use; while any is open, a maintenance task lets them start background work (index
builds) when they are idle.
"""

from __future__ import annotations

import array
import asyncio
import contextlib
import functools
import json
import logging
import math
import re
import sys
import time
from collections.abc import AsyncIterator, Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, TypeVar

from rustaid.config import Settings
from rustaid.core.engine import Engine, GenerationRequest
from rustaid.core.generation_types import Called, GenerationEvent
from rustaid.core.registry import ModelRegistry
from rustaid.core.request_checks import validate_params
from rustaid.core.router import SelectionCriteria
from rustaid.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PreconditionFailed,
    RustaidError,
)
from rustaid.plugins import PluginManager
from rustaid.providers import (
    ChatMessage,
    CollectionStats,
    Condition,
    Distance,
    EmbeddingOptions,
    FieldAnyOf,
    FieldMatch,
    FieldRange,
    Filter,
    GenerationParams,
    LoadedLLM,
    PayloadType,
    ScoredPoint,
    SearchMode,
    VectorStoreClient,
)
from rustaid.rag import ask as prompts
from rustaid.rag.ask import Hit
from rustaid.rag.catalogue import Catalogue, CollectionRecord, check_name
from rustaid.rag.config import RagConfig, parse_rag_config
from rustaid.rag.documents import read_allowed_file
from rustaid.rag.embedders import EmbedderCache, EmbedderInfo, unpack
from rustaid.rag.keywords import KeywordEncoders
from rustaid.rag.pipeline import (
    Chunking,
    DocumentInput,
    Indexer,
    IndexResult,
    StreamSummary,
    check_document_id,
)
from rustaid.rag.rerank import Rerankers, rerank

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_EMBED_TEXTS = 1024
MAX_TEXT_CHARS = 1 << 20
MAX_TOP_K = 1000
MAX_ASK_TOP_K = 100
DEFAULT_TOP_K = 5
MAX_CONDITIONS = 64
MAX_METADATA_BYTES = 64 << 10
MIN_CHUNK_SIZE = 8
MAINTENANCE_INTERVAL_S = 2.0
# Hybrid search fuses this many candidates of each kind (at least top_k). Short lists and
# a small RRF k (the stores' RRF_K, 10) favour what either kind ranks near the top: on the
# Debian manual pages benchmark (tests/bench/retrieval.py) 10 candidates and k 10 gave
# recall@5 0.81 against 0.73 with 50 and k 60 (dense alone 0.70).
HYBRID_CANDIDATES = 10
# Power profiles (rustaid.power) in which embedding threads do not spin-wait.
SAVING_PROFILES = ("power_saver", "ultra_saver")

# Fields every chunk has, and their types.
CHUNK_FIELDS: dict[str, PayloadType] = {
    "document_id": PayloadType.KEYWORD,
    "content_hash": PayloadType.KEYWORD,
    "source": PayloadType.KEYWORD,
    "title": PayloadType.KEYWORD,
    "parser": PayloadType.KEYWORD,
    "heading": PayloadType.KEYWORD,
    "page": PayloadType.INTEGER,
    "chunk_index": PayloadType.INTEGER,
    "chunk_count": PayloadType.INTEGER,
    "indexed_at": PayloadType.FLOAT,
}
# Indexed when a collection is created: replacing a document filters on them.
ALWAYS_INDEXED = ("document_id", "content_hash")
_FIELD_KEY = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")


@dataclass(frozen=True)
class ChunkingRequest:
    size: int = 0  # 0: the default
    overlap: int | None = None  # None: the default


@dataclass(frozen=True)
class CollectionView:
    record: CollectionRecord
    stats: CollectionStats | None
    error: str = ""


@dataclass(frozen=True)
class Embedded:
    model_id: str
    # Little-endian float32 values, `count` rows of `dimension` (LoadedEmbedder.embed_packed).
    packed: bytes
    count: int
    dimension: int
    max_tokens: int
    truncated: list[int]

    def vectors(self) -> list[list[float]]:
        values = array.array("f", self.packed)
        if sys.byteorder == "big":
            values.byteswap()
        d = self.dimension
        return [values[i * d : (i + 1) * d].tolist() for i in range(self.count)]


@dataclass(frozen=True)
class SearchResult:
    hits: list[Hit]
    search_ms: float
    embed_ms: float
    mode: SearchMode = SearchMode.DENSE
    rerank_ms: float = 0.0


@dataclass(frozen=True)
class AskInput:
    collection: str
    question: str
    top_k: int = 0
    filter: Filter = field(default_factory=Filter)
    model_id: str = ""
    params: GenerationParams = field(default_factory=GenerationParams)
    selection: SelectionCriteria = field(default_factory=SelectionCriteria)
    score_threshold: float | None = None
    # None: hybrid when the collection has keyword vectors, else dense.
    mode: SearchMode | None = None


@dataclass(frozen=True)
class CitedHits:
    """First event of an answer: the passages the model is given."""

    hits: list[Hit]
    dropped: int


AskEvent = CitedHits | GenerationEvent


def _type_for(condition: Condition) -> PayloadType:
    """The index type a condition needs. Metadata numbers get a float index: it answers
    ranges and integer matches alike, and (unlike an integer index) also holds values
    that are not whole."""
    if isinstance(condition, FieldMatch):
        if isinstance(condition.value, bool):
            return PayloadType.BOOL
        if isinstance(condition.value, int):
            return PayloadType.FLOAT
        return PayloadType.KEYWORD
    if isinstance(condition, FieldAnyOf):
        return PayloadType.KEYWORD
    return PayloadType.FLOAT


def _condition_kind(condition: Condition) -> str:
    if isinstance(condition, FieldRange):
        return "a range"
    if isinstance(condition, FieldAnyOf):
        return "an any-of match of texts"
    if isinstance(condition.value, bool):
        return "a boolean match"
    if isinstance(condition.value, int):
        return "an integer match"
    return "a text match"


_NUMERIC = (PayloadType.INTEGER, PayloadType.FLOAT)


def _compatible(have: PayloadType, want: PayloadType) -> bool:
    return have == want or (have in _NUMERIC and want in _NUMERIC)


def _describe(t: PayloadType) -> str:
    return {
        PayloadType.KEYWORD: "text (match a value or any of several)",
        PayloadType.INTEGER: "integers (match one, or a range)",
        PayloadType.FLOAT: "numbers (match an integer, or a range)",
        PayloadType.BOOL: "booleans (match true or false)",
    }[t]


def _payload_value(value: Any) -> Any:
    """JSON from protobuf Struct: integral numbers become integers (Struct has only
    doubles), so integer filters match them."""
    if isinstance(value, float) and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if isinstance(value, dict):
        return {k: _payload_value(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_payload_value(v) for v in value]
    return value


def normalise_metadata(metadata: Mapping[str, Any], field_name: str) -> dict[str, Any]:
    data = {str(k): _payload_value(v) for k, v in metadata.items()}
    if len(json.dumps(data, default=str)) > MAX_METADATA_BYTES:
        raise InvalidArgument(
            f"{field_name} is larger than {MAX_METADATA_BYTES >> 10} KiB", field=field_name
        )
    return data


def _hit(point: ScoredPoint) -> Hit:
    p = point.payload
    metadata = p.get("metadata")
    return Hit(
        document_id=str(p.get("document_id", "")),
        chunk_id=point.id,
        text=str(p.get("text", "")),
        score=point.score,
        metadata=dict(metadata) if isinstance(metadata, dict) else {},
        source=str(p.get("source", "")),
        page=int(p.get("page", 0) or 0),
        heading_path=tuple(str(h) for h in p.get("heading", []) or []),
        chunk_index=int(p.get("chunk_index", 0) or 0),
        title=str(p.get("title", "")),
    )


class Rag:
    def __init__(
        self,
        settings: Callable[[], Settings],
        registry: ModelRegistry,
        engine: Engine,
        plugins: PluginManager,
        power_profile: Callable[[], Any] = lambda: None,
    ) -> None:
        self._settings = settings
        # The active power profile (rustaid.power): its threads cap the embedding threads,
        # and the power-saving ones stop idle threads from spinning. None: no limits.
        self._power_profile = power_profile
        self._config_source: object = settings().extra.get("rag")
        self._config = parse_rag_config(self._config_source)  # bad settings stop start-up
        self.registry = registry
        self.engine = engine
        self.plugins = plugins
        self._executor = ThreadPoolExecutor(max_workers=4, thread_name_prefix="rustaid-rag")
        # Searches and their query embeddings: never queued behind the threads that
        # several indexing jobs keep busy.
        self._interactive = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rustaid-rag-i")
        self.embedders = EmbedderCache(
            registry,
            plugins.embedding_providers,
            self._embedding_options,
            self._executor,
            self._interactive,
        )
        self.catalogue = Catalogue(self.state_dir / "collections.json")
        self.keywords = KeywordEncoders()
        self.rerankers = Rerankers(
            lambda: self._settings().models_dir,
            plugins.reranker_providers,
            lambda: self._embedding_options()[0],
        )
        self._stores: dict[str, VectorStoreClient] = {}
        self._store_lock = asyncio.Lock()
        self._name_locks: dict[str, asyncio.Lock] = {}
        self._maintenance: asyncio.Task[None] | None = None
        self._stopping = False

    # -- settings -----------------------------------------------------------------------

    @property
    def state_dir(self) -> Path:
        return self._settings().state_dir / "rag"

    @property
    def config(self) -> RagConfig:
        """The [rag] settings; a bad section after a reload keeps the previous one."""
        source = self._settings().extra.get("rag")
        if source is not self._config_source:
            self._config_source = source
            try:
                self._config = parse_rag_config(source)
            except InvalidArgument as e:
                log.error("keeping the previous [rag] settings: %s", e)
        return self._config

    def _embedding_options(self) -> tuple[EmbeddingOptions, int]:
        config = self.config
        threads = config.embedding_threads or self._settings().threads
        allowed, spin = 0, True
        try:
            active = self._power_profile()
            if active is not None:
                allowed = int(active.parameters.threads)
                spin = str(active.profile.value) not in SAVING_PROFILES
        except Exception:  # the power subsystem is optional
            log.debug("no power profile to follow", exc_info=True)
        if allowed:
            threads = min(threads, allowed) if threads else allowed
        options = EmbeddingOptions(
            threads=threads, batch_size=config.embedding_batch_size, spin_wait=spin
        )
        return options, config.loaded_embedding_models

    async def _thread(self, fn: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, fn)

    # -- vector stores ------------------------------------------------------------------

    async def _store(self, name: str) -> VectorStoreClient:
        client = self._stores.get(name)
        if client is not None:
            return client
        async with self._store_lock:
            client = self._stores.get(name)
            if client is not None:
                return client
            store = self.plugins.vector_stores().get(name)
            if store is None:
                known = ", ".join(sorted(self.plugins.vector_stores())) or "none"
                raise PreconditionFailed(
                    f"vector store {name!r} is not provided by any active plugin "
                    f"(available: {known})",
                    reason="STORE_MISSING",
                )
            options = dict(self.config.stores.get(name, {}))
            folder = self.state_dir / name
            client = await self._thread(lambda: store.open(folder, options))
            self._stores[name] = client
            if self._maintenance is None and not self._stopping:
                self._maintenance = asyncio.ensure_future(self._maintain())
            return client

    async def _maintain(self) -> None:
        while True:
            await asyncio.sleep(MAINTENANCE_INTERVAL_S)
            for name, client in list(self._stores.items()):
                try:
                    await self._thread(client.maintain)
                except Exception:
                    log.exception("maintenance of vector store %s failed", name)

    # -- embeddings ---------------------------------------------------------------------

    def default_model(self) -> str:
        return self.embedders.default_model(self.config.embedding_model)

    async def embed(self, model_id: str, texts: Sequence[str]) -> Embedded:
        if not texts:
            raise InvalidArgument("texts is empty: give 1 or more texts", field="texts")
        if len(texts) > MAX_EMBED_TEXTS:
            raise InvalidArgument(
                f"texts has {len(texts)} entries; at most {MAX_EMBED_TEXTS} per request",
                field="texts",
            )
        for i, text in enumerate(texts):
            if not text.strip():
                raise InvalidArgument(f"texts[{i}] is empty", field=f"texts[{i}]")
            if len(text) > MAX_TEXT_CHARS:
                raise InvalidArgument(
                    f"texts[{i}] is {len(text)} characters; at most {MAX_TEXT_CHARS}",
                    field=f"texts[{i}]",
                )
        model_id = model_id or self.default_model()
        items = list(texts)

        packed, truncated, info = await self.embedders.embed(model_id, items)
        return Embedded(model_id, packed, len(items), info.dimension, info.max_tokens, truncated)

    async def _model_for(self, record: CollectionRecord) -> EmbedderInfo:
        try:
            info = await self.embedders.info(record.embedding_model_id)
        except NotFound as e:
            raise PreconditionFailed(
                f"collection {record.name!r} is filled by embedding model "
                f"{record.embedding_model_id!r}, which is no longer available: put it back "
                "in the models folder, or re-create the collection with another model",
                reason="EMBEDDING_MODEL_MISSING",
            ) from e
        if info.dimension != record.dimension:
            raise PreconditionFailed(
                f"collection {record.name!r} holds {record.dimension}-dimensional vectors but "
                f"embedding model {record.embedding_model_id!r} now produces {info.dimension}: "
                "re-create the collection (delete it, create it, index again)",
                reason="DIMENSION_MISMATCH",
            )
        return info

    # -- collections --------------------------------------------------------------------

    def _lock(self, name: str) -> asyncio.Lock:
        return self._name_locks.setdefault(name, asyncio.Lock())

    async def create_collection(
        self, name: str, model_id: str, distance: Distance, store_name: str
    ) -> CollectionView:
        check_name(name)
        async with self._lock(name):
            if self.catalogue.find(name) is not None:
                raise AlreadyExists(
                    f"collection {name!r} already exists", reason="COLLECTION_EXISTS"
                )
            model_id = model_id or self.default_model()
            info = await self.embedders.info(model_id)
            store_name = store_name or self.config.vector_store
            if store_name not in self.plugins.vector_stores():
                known = ", ".join(sorted(self.plugins.vector_stores())) or "none"
                raise InvalidArgument(
                    f"vector_store {store_name!r} is not available; use one of: {known}",
                    field="vector_store",
                )
            store = await self._store(store_name)
            language = self.config.keyword_language if store.supports_keywords else ""

            def create() -> None:
                if language:
                    store.create_collection(name, info.dimension, distance, keywords=True)
                else:  # stores without keyword search need not know the argument
                    store.create_collection(name, info.dimension, distance)

            try:
                await self._thread(create)
            except AlreadyExists:
                # Left by an interrupted create, or made on a shared server: adopt it if
                # it fits this model.
                stats = await self._thread(lambda: store.stats(name))
                if stats.dimension != info.dimension or stats.distance is not distance:
                    raise PreconditionFailed(
                        f"vector store {store_name} already has a collection {name!r} with "
                        f"{stats.dimension}-dimensional {stats.distance.value} vectors; model "
                        f"{model_id!r} needs {info.dimension}-dimensional {distance.value}: "
                        "pick another name",
                        reason="DIMENSION_MISMATCH",
                    ) from None
                log.info("adopting existing collection %s in %s", name, store_name)
                if not stats.keywords:
                    language = ""
            for key in ALWAYS_INDEXED:
                await self._thread(
                    functools.partial(store.create_payload_index, name, key, CHUNK_FIELDS[key])
                )
            record = CollectionRecord(
                name=name,
                embedding_model_id=model_id,
                dimension=info.dimension,
                distance=distance,
                vector_store=store_name,
                created_at=time.time(),
                fields={k: CHUNK_FIELDS[k] for k in ALWAYS_INDEXED},
                keyword_language=language,
            )
            self.catalogue.put(record)
            log.info("created collection %s (%s, %d dimensions)", name, model_id, info.dimension)
        return await self._view(record)

    async def _view(self, record: CollectionRecord) -> CollectionView:
        try:
            store = await self._store(record.vector_store)
            stats = await self._thread(lambda: store.stats(record.name))
        except NotFound:
            return CollectionView(record, None, "the vector store no longer has it")
        except RustaidError as e:
            return CollectionView(record, None, e.message)
        return CollectionView(record, stats)

    async def list_collections(self) -> list[CollectionView]:
        return [await self._view(r) for r in self.catalogue.list()]

    async def get_collection(self, name: str) -> CollectionView:
        return await self._view(self.catalogue.get(name, "name"))

    async def delete_collection(self, name: str) -> None:
        record = self.catalogue.get(name, "name")
        async with self._lock(name):
            store = await self._store(record.vector_store)
            await self._thread(lambda: store.delete_collection(name))
            self.catalogue.remove(name)
        log.info("deleted collection %s", name)

    async def _open(self, name: str) -> tuple[CollectionRecord, VectorStoreClient]:
        record = self.catalogue.get(name)
        return record, await self._store(record.vector_store)

    # -- filters ------------------------------------------------------------------------

    async def _check_filter(
        self, record: CollectionRecord, store: VectorStoreClient, f: Filter, field_name: str
    ) -> None:
        """Reject conditions on unknown fields or of the wrong kind for a field's type;
        create payload indexes for fields filtered on for the first time."""
        conditions = f.conditions()
        if len(conditions) > MAX_CONDITIONS:
            raise InvalidArgument(
                f"{field_name} has {len(conditions)} conditions; at most {MAX_CONDITIONS}",
                field=field_name,
            )
        new: dict[str, PayloadType] = {}
        for c in conditions:
            key = c.key
            if not key:
                raise InvalidArgument(
                    f"{field_name}: a condition has an empty key", field=field_name
                )
            if not _FIELD_KEY.match(key):
                raise InvalidArgument(
                    f"{field_name}: key {key!r} is not a field path (letters, digits, '_', "
                    "'-', separated by dots)",
                    field=field_name,
                )
            if key not in CHUNK_FIELDS and not key.startswith("metadata."):
                raise InvalidArgument(
                    f"{field_name}: unknown field {key!r}; filter on "
                    f"{', '.join(sorted(k for k in CHUNK_FIELDS if k != 'content_hash'))} "
                    "or a document metadata key as metadata.KEY",
                    field=field_name,
                )
            if isinstance(c, FieldAnyOf) and not c.values:
                raise InvalidArgument(
                    f"{field_name}: the any-of condition on {key!r} has no values", field=field_name
                )
            if isinstance(c, FieldRange):
                bounds = (c.gt, c.gte, c.lt, c.lte)
                if all(b is None for b in bounds):
                    raise InvalidArgument(
                        f"{field_name}: the range on {key!r} has no bound (set gt, gte, lt or lte)",
                        field=field_name,
                    )
                if any(b is not None and not math.isfinite(b) for b in bounds):
                    raise InvalidArgument(
                        f"{field_name}: the range on {key!r} has a bound that is not a finite "
                        "number",
                        field=field_name,
                    )
            want = _type_for(c)
            have = CHUNK_FIELDS.get(key) or record.fields.get(key) or new.get(key)
            if have is None:
                new[key] = want
            elif not _compatible(have, want):
                raise InvalidArgument(
                    f"{field_name}: field {key!r} holds {_describe(have)}; "
                    f"{_condition_kind(c)} cannot apply to it",
                    field=field_name,
                    reason="FILTER_TYPE_MISMATCH",
                )
        used = {
            c.key: CHUNK_FIELDS.get(c.key) or record.fields.get(c.key) or new[c.key]
            for c in conditions
        }
        if all(k in record.fields for k in used):
            return
        async with self._lock(record.name):
            # Another request may have typed these fields meanwhile: check against it.
            current = self.catalogue.get(record.name).fields
            for key, field_type in used.items():
                if key in current and not _compatible(current[key], field_type):
                    raise InvalidArgument(
                        f"{field_name}: field {key!r} holds {_describe(current[key])}",
                        field=field_name,
                        reason="FILTER_TYPE_MISMATCH",
                    )
            missing = {k: t for k, t in used.items() if k not in current}
            for key, field_type in missing.items():
                await self._thread(
                    functools.partial(store.create_payload_index, record.name, key, field_type)
                )
            if missing:
                self.catalogue.add_fields(record.name, missing)

    # -- indexing -----------------------------------------------------------------------

    async def _chunking(self, request: ChunkingRequest, info: EmbedderInfo) -> Chunking:
        config = self.config
        limit = info.max_tokens - info.special_tokens
        if request.size:
            if request.size < MIN_CHUNK_SIZE:
                raise InvalidArgument(
                    f"chunking.chunk_size must be at least {MIN_CHUNK_SIZE} tokens (got "
                    f"{request.size})",
                    field="chunking.chunk_size",
                )
            if request.size > limit:
                raise InvalidArgument(
                    f"chunking.chunk_size {request.size} exceeds what embedding model "
                    f"{info.model_id!r} takes: {limit} tokens",
                    field="chunking.chunk_size",
                )
            size = request.size
        else:
            size = min(config.chunk_size, limit)
        if request.overlap is None:
            overlap = min(config.chunk_overlap, (size - 1) // 2)
        else:
            overlap = request.overlap
            if overlap * 2 >= size:
                raise InvalidArgument(
                    f"chunking.chunk_overlap {overlap} must be less than half the chunk size "
                    f"({size} tokens)",
                    field="chunking.chunk_overlap",
                )
        return Chunking(size, overlap)

    async def _indexer(self, collection: str, chunking: ChunkingRequest) -> Indexer:
        record, store = await self._open(collection)
        info = await self._model_for(record)
        return Indexer(
            collection=record.name,
            store=store,
            embedders=self.embedders,
            model_id=record.embedding_model_id,
            chunking=await self._chunking(chunking, info),
            parsers=self.plugins.document_parsers,
            executor=self._executor,
            keywords=self.keywords.get(record.keyword_language, record.keyword_average_words)
            if record.keyword_language
            else None,
        )

    async def index_file(
        self,
        collection: str,
        *,
        path: str = "",
        content: bytes | None = None,
        filename: str = "",
        mime_type: str = "",
        metadata: Mapping[str, Any] | None = None,
        chunking: ChunkingRequest = ChunkingRequest(),
        document_id: str = "",
        progress: Callable[[int, int], None] | None = None,
    ) -> IndexResult:
        """Parse, chunk, embed and store one file; `progress` hears (chunks embedded,
        chunks in all) as the embedding goes."""
        check_document_id(document_id, "document_id")
        meta = normalise_metadata(metadata or {}, "metadata")
        indexer = await self._indexer(collection, chunking)
        config = self.config
        if content is None and not path:
            raise InvalidArgument("give the file's path or its content", field="path")
        if content is not None:
            if len(content) > config.max_file_bytes:
                raise InvalidArgument(
                    f"content is {len(content) >> 20} MiB; the limit is {config.max_file_mb} MiB",
                    field="content",
                    reason="FILE_TOO_LARGE",
                )
            source = filename or "upload"
            doc = DocumentInput(
                id=document_id or filename,
                content=content,
                filename=filename,
                mime_type=mime_type,
                source=source,
                metadata=meta,
            )
        else:
            folders = config.allowed_folders
            resolved, data = await self._thread(
                lambda: read_allowed_file(path, folders, config.max_file_bytes)
            )
            doc = DocumentInput(
                id=document_id or str(resolved),
                content=data,
                filename=filename or resolved.name,
                mime_type=mime_type,
                source=str(resolved),
                metadata=meta,
            )
        return await indexer.index(doc, progress)

    async def index_stream(
        self,
        first: tuple[str, ChunkingRequest],
        documents: AsyncIterator[tuple[int, DocumentInput]],
    ) -> StreamSummary:
        collection, chunking = first
        indexer = await self._indexer(collection, chunking)
        return await indexer.index_stream(documents)

    # -- search -------------------------------------------------------------------------

    async def search(
        self,
        collection: str,
        query: str,
        top_k: int = 0,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        *,
        max_top_k: int = MAX_TOP_K,
        mode: SearchMode | None = None,
    ) -> SearchResult:
        if not query.strip():
            raise InvalidArgument("query is empty: give the text to search for", field="query")
        if len(query) > MAX_TEXT_CHARS:
            raise InvalidArgument(
                f"query is longer than {MAX_TEXT_CHARS} characters", field="query"
            )
        if not 0 <= top_k <= max_top_k:
            raise InvalidArgument(
                f"top_k must be between 1 and {max_top_k} (0 means {DEFAULT_TOP_K}); got {top_k}",
                field="top_k",
            )
        if score_threshold is not None and not math.isfinite(score_threshold):
            raise InvalidArgument(
                "score_threshold must be a finite number", field="score_threshold"
            )
        record, store = await self._open(collection)
        mode = self._search_mode(record, mode, score_threshold)
        f = filter or Filter()
        await self._check_filter(record, store, f, "filter")
        t0 = time.perf_counter()
        vector: list[float] | None = None
        if mode is not SearchMode.KEYWORD:
            await self._model_for(record)
            packed, _, _ = await self.embedders.embed(record.embedding_model_id, [query])
            vector = unpack(packed)
        t1 = time.perf_counter()
        limit = top_k or DEFAULT_TOP_K
        reranker_name = self.config.reranker
        # The reranker reorders more candidates than it keeps.
        fetch = max(limit, self.config.rerank_candidates) if reranker_name else limit
        keywords = None
        if mode is not SearchMode.DENSE:
            encoder = self.keywords.get(record.keyword_language, record.keyword_average_words)
            keywords = encoder.query(query)

        def search() -> list[ScoredPoint]:
            if keywords is None or (vector is not None and not keywords.indices):
                # Dense, or hybrid with no word worth a keyword match (only stop words).
                assert vector is not None
                return store.search(record.name, vector, fetch, f, score_threshold)
            if not keywords.indices:
                return []
            candidates = max(HYBRID_CANDIDATES, fetch)
            return store.search_keywords(
                record.name, keywords, fetch, f, score_threshold, vector, candidates
            )

        def search_and_rerank() -> tuple[list[ScoredPoint], float, float]:
            points = search()
            t2 = time.perf_counter()
            reranker = self.rerankers.get(reranker_name)
            if reranker is not None:
                points = rerank(reranker, query, points, limit)
            return points, t2, time.perf_counter()

        points, t2, t3 = await asyncio.get_running_loop().run_in_executor(
            self._interactive, search_and_rerank
        )
        hits = [_hit(p) for p in points]
        embed_ms = (t1 - t0) * 1000 if vector is not None else 0.0
        rerank_ms = (t3 - t2) * 1000 if reranker_name else 0.0
        return SearchResult(hits, (t2 - t1) * 1000, embed_ms, mode, rerank_ms)

    @staticmethod
    def _search_mode(
        record: CollectionRecord, mode: SearchMode | None, score_threshold: float | None = None
    ) -> SearchMode:
        if mode is None:
            # A score threshold is a similarity: without a mode it asks for dense search,
            # where every hit has passed it (hybrid fuses keyword hits it cannot judge).
            hybrid = record.keyword_language and score_threshold is None
            return SearchMode.HYBRID if hybrid else SearchMode.DENSE
        if mode is not SearchMode.DENSE and not record.keyword_language:
            raise PreconditionFailed(
                f"collection {record.name!r} has no keyword vectors (it was created before "
                "keyword search, or in a store without it), so it cannot be searched with mode "
                f"{mode.value}: search it with mode dense, or re-create it (delete, create, "
                "index again) to get keyword and hybrid search",
                reason="NO_KEYWORDS",
            )
        return mode

    async def delete_documents(
        self, collection: str, document_ids: Sequence[str], filter: Filter | None
    ) -> int:
        f = filter or Filter()
        if not document_ids and f.empty:
            raise InvalidArgument(
                "give document_ids or a filter (both: chunks of those documents matching the "
                "filter); to delete everything, delete the collection",
                field="document_ids",
            )
        for i, doc_id in enumerate(document_ids):
            if not doc_id:
                raise InvalidArgument(f"document_ids[{i}] is empty", field=f"document_ids[{i}]")
            check_document_id(doc_id, f"document_ids[{i}]")
        record, store = await self._open(collection)
        await self._check_filter(record, store, f, "filter")
        if document_ids:
            f = replace(f, must=(*f.must, FieldAnyOf("document_id", tuple(document_ids))))

        def delete() -> int:
            n = store.count(record.name, f)
            if n:
                store.delete(record.name, filter=f)
            return n

        async with self._lock(record.name):
            return await self._thread(delete)

    # -- answers ------------------------------------------------------------------------

    async def ask(self, request: AskInput) -> AsyncIterator[AskEvent]:
        if not request.question.strip():
            raise InvalidArgument("question is empty", field="question")
        if not 0 <= request.top_k <= MAX_ASK_TOP_K:
            raise InvalidArgument(
                f"top_k must be between 1 and {MAX_ASK_TOP_K} (0 means {DEFAULT_TOP_K}); got "
                f"{request.top_k}",
                field="top_k",
            )
        settings = self._settings()
        validate_params(request.params, settings.max_tokens_limit)
        self.catalogue.get(request.collection)
        model_id = self.engine.resolve(request.model_id, request.selection)
        found = await self.search(
            request.collection,
            request.question,
            request.top_k,
            request.filter,
            request.score_threshold,
            max_top_k=MAX_ASK_TOP_K,
            mode=request.mode,
        )
        hits = found.hits
        fixed = [prompts.SYSTEM_PROMPT, prompts.user_message(request.question, [])]
        blocks = [prompts.source_block(i + 1, h) for i, h in enumerate(hits)]

        def fit(model: LoadedLLM) -> tuple[list[Hit], tuple[ChatMessage, ...], int]:
            """Count and fit the passages in one turn of the model."""
            context = model.context_length
            counts = [len(model.tokenize(t, False)) for t in fixed + blocks]
            overhead = counts[0] + counts[1] + prompts.TEMPLATE_MARGIN
            answer = request.params.max_tokens
            if answer is None:
                answer = min(self.config.ask_answer_tokens, max(16, (context - overhead) // 2))
            budget = context - overhead - answer
            if budget < 0:
                if request.params.max_tokens is not None and context - overhead > 0:
                    raise InvalidArgument(
                        f"params.max_tokens {answer} leaves no room for the question and "
                        f"sources in model {model_id!r}'s context of {context} tokens",
                        field="params.max_tokens",
                    )
                raise InvalidArgument(
                    f"the question takes {counts[1]} tokens, too many for model {model_id!r}'s "
                    f"context of {context} tokens",
                    field="question",
                )
            chosen = prompts.fit(hits, counts[2:], budget)
            messages = prompts.messages(request.question, chosen)
            # Check with the chat template itself; drop the weakest passages if it overflows.
            while model.count_chat_tokens(messages) + answer > context and chosen:
                chosen.pop()
                messages = prompts.messages(request.question, chosen)
            return chosen, messages, answer

        # Counting waits for the model like the answer does: the client hears its place.
        fitted: tuple[list[Hit], tuple[ChatMessage, ...], int] | None = None
        async for step in self.engine.call_on_model(model_id, fit):
            if isinstance(step, Called):
                fitted = step.value
            else:
                yield step
        assert fitted is not None
        chosen, messages, answer = fitted
        yield CitedHits(chosen, len(hits) - len(chosen))
        params = replace(request.params, max_tokens=answer)
        async for event in self.engine.generate(
            GenerationRequest(
                model_id=model_id,
                messages=messages,
                params=params,
                selection=request.selection,
            )
        ):
            yield event

    # -- lifetime -----------------------------------------------------------------------

    async def stop(self) -> None:
        self._stopping = True
        if self._maintenance is not None:
            self._maintenance.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._maintenance
            self._maintenance = None
        self.embedders.stop()
        await self._thread(self.rerankers.close)
        stores = list(self._stores.items())
        self._stores.clear()
        for name, client in stores:
            try:
                await self._thread(client.close)
            except Exception:
                log.exception("closing vector store %s failed", name)
        self._executor.shutdown(wait=False, cancel_futures=True)
        self._interactive.shutdown(wait=False, cancel_futures=True)
