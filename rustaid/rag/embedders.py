"""Loaded embedding models: an LRU of a few, loaded on first use through the embedding
provider plugin that handles the model's files. Each model runs one batch at a time;
its turns (turns.py) put interactive work before indexing."""

from __future__ import annotations

import array
import asyncio
import contextlib
import logging
import sys
import time
from collections import OrderedDict
from collections.abc import AsyncIterator, Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TypeVar

from rustaid.core.registry import ModelEntry, ModelEventType, ModelKind, ModelRegistry, ModelState
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed, Unavailable
from rustaid.memory import release_freed_memory
from rustaid.providers import EmbeddingOptions, EmbeddingProvider, LoadedEmbedder
from rustaid.rag.turns import ModelTurns, Priority

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Slot:
    model_id: str
    # What the model was loaded from and with: a change reloads it.
    signature: tuple[Path, int, float, str, EmbeddingOptions]
    embedder: LoadedEmbedder
    # One batch at a time uses all the model's threads: interactive work first.
    turns: ModelTurns
    users: int = 0
    evicted: bool = False


@dataclass(frozen=True)
class EmbedderInfo:
    model_id: str
    dimension: int
    max_tokens: int
    special_tokens: int


def unpack(row: bytes) -> list[float]:
    """One packed little-endian float32 row as floats."""
    values = array.array("f", row)
    if sys.byteorder == "big":
        values.byteswap()
    return values.tolist()


class EmbedderCache:
    def __init__(
        self,
        registry: ModelRegistry,
        providers: Callable[[], dict[str, EmbeddingProvider]],
        options: Callable[[], tuple[EmbeddingOptions, int]],
        executor: Executor,
        interactive: Executor | None = None,
    ) -> None:
        self.registry = registry
        self._providers = providers
        # (load options, how many models to keep), read at each load (settings reload).
        self._options = options
        self._executor = executor
        # Threads for interactive runs (the background ones use `executor`).
        self._interactive = interactive or executor
        self._slots: OrderedDict[str, _Slot] = OrderedDict()
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._stopping = False

    # -- model choice -------------------------------------------------------------------

    def provider_for(self, path: Path) -> str:
        return next((n for n, p in self._providers().items() if p.handles(path)), "")

    def default_model(self, configured: str) -> str:
        if configured:
            return configured
        usable = sorted(
            e.id
            for e in self.registry.list(ModelKind.EMBEDDING)
            if e.path is not None and not e.error and self.provider_for(e.path)
        )
        if not usable:
            raise PreconditionFailed(
                "no embedding model is available: put one in models/embeddings/NAME/ "
                "(model.onnx + tokenizer.json), or name one in [rag] embedding_model",
                reason="NO_EMBEDDING_MODEL",
            )
        return usable[0]

    def _resolve(self, model_id: str) -> tuple[ModelEntry, EmbeddingProvider]:
        entry = self.registry.get(model_id)
        if entry.kind is ModelKind.NLU:
            raise InvalidArgument(
                f"model {model_id!r} is an NLU model, not an embedding model", field="model_id"
            )
        if entry.path is None:
            raise InvalidArgument(
                f"model {model_id!r} is remote; embeddings need a local model file",
                field="model_id",
            )
        if entry.error and entry.kind is ModelKind.EMBEDDING:
            raise PreconditionFailed(
                f"model {model_id!r} cannot be used: {entry.error}", reason="MODEL_BROKEN"
            )
        providers = self._providers()
        name = self.provider_for(entry.path)
        if not name:
            raise PreconditionFailed(
                f"no embedding plugin can load model {model_id!r} ({entry.path}); ONNX "
                "models need a folder with model.onnx and tokenizer.json",
                reason="PROVIDER_MISSING",
            )
        return entry, providers[name]

    # -- use ----------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def _using(self, model_id: str) -> AsyncIterator[_Slot]:
        """The loaded model, kept open (even if evicted meanwhile) until the block ends."""
        slot = await self._get(model_id)
        slot.users += 1
        try:
            yield slot
        finally:
            slot.users -= 1
            if slot.evicted and not slot.users:
                self._close(slot)

    async def run(
        self,
        model_id: str,
        fn: Callable[[LoadedEmbedder], T],
        priority: Priority = Priority.INTERACTIVE,
    ) -> T:
        """Run `fn` on the loaded model in a worker thread, when its turn comes."""
        async with self._using(model_id) as slot:
            return await slot.turns.call(fn, priority)

    async def embed(
        self, model_id: str, texts: Sequence[str]
    ) -> tuple[bytes, list[int], EmbedderInfo]:
        """Interactive embedding: packed float32 rows, the indexes of truncated texts and
        the model's shape. Calls waiting together share one run."""
        async with self._using(model_id) as slot:
            packed, truncated = await slot.turns.embed(texts, Priority.INTERACTIVE)
            return packed, truncated, self._info(model_id, slot.embedder)

    async def embed_background(
        self,
        model_id: str,
        texts: Sequence[str],
        progress: Callable[[int], None] | None = None,
    ) -> list[list[float]]:
        """Background embedding (indexing), in slices interactive work can pass between;
        `progress` hears how many texts are done after each slice."""
        async with self._using(model_id) as slot:
            rows = await slot.turns.embed_background(texts, progress)
        return [unpack(row) for row in rows]

    async def tokenize(self, model_id: str, fn: Callable[[LoadedEmbedder], T]) -> T:
        """Background work that only counts tokens (chunking). Providers whose counting
        may run beside their embedding (LoadedEmbedder.concurrent_token_offsets) do it
        without taking a turn: a long document must not hold up a search."""
        async with self._using(model_id) as slot:
            if not slot.embedder.concurrent_token_offsets:
                return await slot.turns.call(fn, Priority.BACKGROUND)
            embedder = slot.embedder
            return await asyncio.get_running_loop().run_in_executor(
                self._executor, lambda: fn(embedder)
            )

    async def info(self, model_id: str) -> EmbedderInfo:
        slot = await self._get(model_id)
        return self._info(model_id, slot.embedder)

    @staticmethod
    def _info(model_id: str, e: LoadedEmbedder) -> EmbedderInfo:
        return EmbedderInfo(model_id, e.dimension, e.max_tokens, e.special_tokens)

    async def _get(self, model_id: str) -> _Slot:
        if self._stopping:
            raise Unavailable("the daemon is shutting down")
        entry, provider = self._resolve(model_id)
        assert entry.path is not None
        options, capacity = self._options()
        signature = (entry.path, entry.size_bytes, entry.mtime, provider.name, options)
        lock = self._load_locks.setdefault(model_id, asyncio.Lock())
        async with lock:
            slot = self._slots.get(model_id)
            if slot is not None and slot.signature == signature:
                self._slots.move_to_end(model_id)
                self._touch(model_id)
                return slot
            if slot is not None:
                # The file changed, another plugin handles it now, or the power profile
                # allows another number of threads: load it again.
                self._evict(model_id)
            path = entry.path
            t0 = time.perf_counter()
            try:
                embedder = await asyncio.get_running_loop().run_in_executor(
                    self._executor, lambda: provider.load(path, options)
                )
            except PreconditionFailed:
                raise
            except Exception as e:
                raise PreconditionFailed(
                    f"embedding model {model_id!r} failed to load: {e}",
                    reason="MODEL_LOAD_FAILED",
                ) from e
            turns = ModelTurns(
                embedder, self._executor, options.batch_size, interactive=self._interactive
            )
            slot = _Slot(model_id, signature, embedder, turns)
            self._slots[model_id] = slot
            log.info(
                "loaded embedding model %s (%s, %d dimensions) in %.0f ms",
                model_id,
                provider.name,
                embedder.dimension,
                (time.perf_counter() - t0) * 1000,
            )
            self._mark_loaded(entry, embedder)
            while len(self._slots) > capacity:
                oldest = next(iter(self._slots))
                self._evict(oldest)
            return slot

    # -- registry state -----------------------------------------------------------------

    def _mark_loaded(self, entry: ModelEntry, embedder: LoadedEmbedder) -> None:
        if entry.kind is not ModelKind.EMBEDDING:
            return  # a language model's state belongs to the engine
        with contextlib.suppress(NotFound):
            self.registry.update(
                entry.id,
                ModelEventType.LOADED,
                state=ModelState.LOADED,
                memory_bytes=embedder.memory_bytes(),
                threads=embedder.threads,
                context_length=embedder.max_tokens,
                last_used=time.time(),
                metadata=replace(
                    entry.metadata,
                    embedding_length=embedder.dimension,
                    context_length=embedder.max_tokens,
                ),
            )

    def _touch(self, model_id: str) -> None:
        try:
            if self.registry.get(model_id).kind is ModelKind.EMBEDDING:
                self.registry.update(model_id, last_used=time.time())
        except NotFound:
            pass

    def _evict(self, model_id: str) -> None:
        slot = self._slots.pop(model_id, None)
        if slot is None:
            return
        slot.evicted = True
        if not slot.users:
            self._close(slot)
        try:
            if self.registry.get(model_id).kind is ModelKind.EMBEDDING:
                self.registry.update(
                    model_id, ModelEventType.UNLOADED, state=ModelState.AVAILABLE, memory_bytes=0
                )
        except NotFound:
            pass
        log.info("unloaded embedding model %s", model_id)

    @staticmethod
    def _close(slot: _Slot) -> None:
        try:
            slot.embedder.close()
        except Exception:
            log.exception("closing embedding model %s failed", slot.model_id)
        release_freed_memory()

    async def unload(self, model_id: str) -> None:
        """Unload a model (once the call running on it, if any, returns) and give its
        memory back; the next use loads it again."""
        async with self._load_locks.setdefault(model_id, asyncio.Lock()):
            self._evict(model_id)

    def loaded(self) -> list[str]:
        return list(self._slots)

    def stop(self) -> None:
        self._stopping = True
        for model_id in list(self._slots):
            self._evict(model_id)
