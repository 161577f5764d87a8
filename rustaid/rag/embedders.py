"""Loaded embedding models: an LRU of a few, loaded on first use through the embedding
provider plugin that handles the model's files, one call at a time per model."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from concurrent.futures import Executor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import TypeVar

from rustaid.core.registry import ModelEntry, ModelEventType, ModelKind, ModelRegistry, ModelState
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed, Unavailable
from rustaid.providers import EmbeddingOptions, EmbeddingProvider, LoadedEmbedder

log = logging.getLogger(__name__)
T = TypeVar("T")


@dataclass
class _Slot:
    model_id: str
    # What the model was loaded from and with: a change reloads it.
    signature: tuple[Path, int, float, str, EmbeddingOptions]
    embedder: LoadedEmbedder
    # Serialises calls: one batch at a time uses all the model's threads.
    lock: threading.Lock = field(default_factory=threading.Lock)
    users: int = 0
    evicted: bool = False


@dataclass(frozen=True)
class EmbedderInfo:
    model_id: str
    dimension: int
    max_tokens: int
    special_tokens: int


class EmbedderCache:
    def __init__(
        self,
        registry: ModelRegistry,
        providers: Callable[[], dict[str, EmbeddingProvider]],
        options: Callable[[], tuple[EmbeddingOptions, int]],
        executor: Executor,
    ) -> None:
        self.registry = registry
        self._providers = providers
        # (load options, how many models to keep), read at each load (settings reload).
        self._options = options
        self._executor = executor
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

    async def run(self, model_id: str, fn: Callable[[LoadedEmbedder], T]) -> T:
        """Run `fn` on the loaded model, in a worker thread, one call at a time."""
        slot = await self._get(model_id)
        slot.users += 1
        try:

            def call() -> T:
                with slot.lock:
                    return fn(slot.embedder)

            return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        finally:
            slot.users -= 1
            if slot.evicted and not slot.users:
                self._close(slot)

    async def info(self, model_id: str) -> EmbedderInfo:
        slot = await self._get(model_id)
        e = slot.embedder
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
            slot = _Slot(model_id, signature, embedder)
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

    def loaded(self) -> list[str]:
        return list(self._slots)

    def stop(self) -> None:
        self._stopping = True
        for model_id in list(self._slots):
            self._evict(model_id)
