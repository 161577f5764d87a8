"""The model pool: which models are loaded, and their lifecycle. It loads a model
through its engine plugin (sharing one load between concurrent requests, capping its
context, batch, GPU layers and parallel sequences to the device and the memory budget,
evicting idle models to make room), keeps it for its keep-alive, and unloads it when
asked, when idle, when its file or engine goes away, or at shutdown.

Every model runs its engine calls on a thread of its own; the pool tracks those calls
so that shutdown can wait for them. Taking turns on a loaded model and running
requests on it is the model runner's part (core/model_runner.py).
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

import psutil

from rustaid.config import Settings
from rustaid.core.admission import RecentDuration
from rustaid.core.cache import LoadedSlot, MemoryBudget, estimate_bytes, mb
from rustaid.core.events import EventBus, UnloadReason
from rustaid.core.generation_types import Activity, InferencePolicy
from rustaid.core.parallel import choose_parallel
from rustaid.core.registry import ModelEntry, ModelEventType, ModelKind, ModelRegistry, ModelState
from rustaid.core.request_checks import grammar_limits
from rustaid.core.scheduler import ModelQueue, Priority
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed, RustaidError, Unavailable
from rustaid.memory import release_freed_memory
from rustaid.providers import LLMProvider, LoadOptions, ModelSpec

log = logging.getLogger(__name__)
T = TypeVar("T")

# llama.cpp's own batch size when a model names none.
DEFAULT_BATCH = 512


class ModelPool:
    """The loaded models (LoadedSlots) and their loads, keep-alive and unloads."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        registry: ModelRegistry,
        providers: Callable[[], dict[str, LLMProvider]],
        policy: Callable[[], InferencePolicy | None],
    ) -> None:
        # Read at every decision, so a reloaded configuration (SIGHUP) applies at once.
        self._settings = settings
        self.registry = registry
        self._providers = providers
        # The device-aware policy, once the daemon has set one on the engine.
        self._policy = policy
        self._slots: dict[str, LoadedSlot] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._budget_lock = asyncio.Lock()
        self._reserved = 0  # bytes of models being loaded right now
        self.budget = MemoryBudget(settings)
        # Engine calls still running in worker threads (shutdown waits for them).
        self._running: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self.activity: EventBus[Activity] = EventBus()
        # How long a turn takes on each model lately (for retry delays of a full queue).
        self._turns: dict[str, RecentDuration] = {}

    @property
    def settings(self) -> Settings:
        return self._settings()

    @property
    def policy(self) -> InferencePolicy | None:
        return self._policy()

    @property
    def stopping(self) -> bool:
        """The daemon is shutting down: no model loads any more."""
        return self._stopping

    def slots(self) -> dict[str, LoadedSlot]:
        """The loaded models by id (a copy: the pool changes its own as models come and go)."""
        return dict(self._slots)

    def is_busy(self, model_id: str) -> bool:
        """A request is generating on, or waiting for, this model."""
        slot = self._slots.get(model_id)
        return slot is not None and not slot.idle

    def is_remote(self, entry: ModelEntry) -> bool:
        provider = self._providers().get(entry.provider)
        return bool(provider and provider.remote) or entry.path is None

    def _provider(self, entry: ModelEntry) -> LLMProvider:
        provider = self._providers().get(entry.provider)
        if provider is None:
            raise PreconditionFailed(
                f"model {entry.id!r} needs the {entry.provider or 'missing'} engine, "
                "which no active plugin provides",
                reason="PROVIDER_MISSING",
            )
        return provider

    def submit(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> asyncio.Future[T]:
        """Run an engine call in a worker thread; shutdown waits for it (stop)."""
        # The worker sees the request's context (request id and caller in its log lines).
        ctx = contextvars.copy_context()
        fut = asyncio.get_running_loop().run_in_executor(executor, ctx.run, fn)
        self._running.add(fut)
        fut.add_done_callback(self._running.discard)
        return fut

    def _free(self, slot: LoadedSlot) -> asyncio.Future[None]:
        """Close a model on its own thread, then retire that thread."""

        def close() -> None:
            slot.model.close()
            release_freed_memory()

        fut = self.submit(slot.executor, close)
        fut.add_done_callback(lambda _: slot.executor.shutdown(wait=False))
        if slot.requests is not None:
            slot.requests.shutdown(wait=False)
        return fut

    def loaded(self) -> list[ModelEntry]:
        return [s.entry for s in self._slots.values()]

    def running(self) -> int:
        """Requests that hold their model's turn (generating, tokenizing) right now."""
        return sum(q.running for s in self._slots.values() for q in _queues(s))

    def queue_length(self) -> int:
        """Requests waiting for their model's turn."""
        return sum(q.waiting for s in self._slots.values() for q in _queues(s))

    def _queue_changed(self) -> None:
        self.activity.publish(Activity(self.running(), self.queue_length()))

    def _capped(self, model_id: str, ctx: int, batch: int, gpu_layers: int) -> tuple[int, int, int]:
        """The device's caps on a model about to load (its profile, memory, heat)."""
        assert self.policy is not None
        caps = self.policy.load_caps()
        base = batch or DEFAULT_BATCH
        new_ctx = min(ctx, caps.context_length) if caps.context_length else ctx
        new_batch = min(base, caps.batch_size) if caps.batch_size else batch
        new_gpu = gpu_layers if caps.use_gpu else 0
        if new_ctx < ctx or 0 < caps.batch_size < base or new_gpu < gpu_layers:
            log.info(
                "loading %s with context %d, batch %d, %d GPU layers: %s",
                model_id, new_ctx, new_batch, new_gpu, caps.why,
            )  # fmt: skip
        return new_ctx, new_batch, new_gpu

    def _context_for(self, entry: ModelEntry, requested: int) -> int:
        want = requested or entry.config.context_length or entry.metadata.context_length
        return min(want or self.settings.max_context_length, self.settings.max_context_length)

    def _parallel_for(self, entry: ModelEntry, ctx: int) -> int:
        """Requests the model will serve at once: models.toml's `parallel`, else the
        setting, else from the cores; as many as the budget holds the KV of, and what
        the device allows now (fewer on battery or heat)."""
        weights = estimate_bytes(entry, 0)
        kv = estimate_bytes(entry, ctx) - weights
        slots = self._slots.values()
        loaded = sum(s.estimate_bytes for s in slots)
        # What the models that cannot give way (busy, pinned) and loads under way leave.
        kept = sum(s.estimate_bytes for s in slots if not s.idle or s.entry.pinned)
        budget = self.budget.total_bytes(loaded) - kept - self._reserved
        cores = psutil.cpu_count(logical=False) or 1
        configured = entry.config.parallel or self.settings.parallel
        if self.policy is not None and (cap := self.policy.load_caps().parallel):
            configured = min(configured or cap, cap)
        return choose_parallel(configured, cores, weights, kv, budget)

    def fits(self, entry: ModelEntry) -> str:
        """Why `entry` cannot be loaded here now ("" when it can): for the router."""
        if entry.path is None:
            return ""
        need = estimate_bytes(entry, self._context_for(entry, 0))
        loaded = sum(s.estimate_bytes for s in self._slots.values())
        total = self.budget.total_bytes(loaded)
        if need > total:
            return f"needs about {mb(need)}, more than the {mb(total)} memory budget"
        if entry.constraints.min_memory_bytes > total:
            return (
                f"requires {mb(entry.constraints.min_memory_bytes)} of memory; budget {mb(total)}"
            )
        return ""

    async def load(
        self, model_id: str, *, context_length: int = 0, threads: int = 0, pin: bool = False
    ) -> tuple[ModelEntry, float]:
        """Load a model if needed; returns its entry and the load time in ms (0 if loaded).
        A loaded model asked for another context length or thread count is reloaded."""
        slot = self._slots.get(model_id)
        if slot is not None and (
            (context_length and context_length != slot.model.context_length)
            or (threads and threads != slot.model.threads)
        ):
            await self.unload(model_id)
        slot, load_ms = await self.ensure_loaded(model_id, context_length, threads)
        if pin and not slot.entry.pinned:
            slot.entry = self.registry.update(model_id, ModelEventType.CHANGED, pinned=True)
        self.release_idle(slot)
        return slot.entry, load_ms

    async def ensure_loaded(
        self, model_id: str, context_length: int = 0, threads: int = 0
    ) -> tuple[LoadedSlot, float]:
        if self._stopping:
            raise Unavailable("the daemon is shutting down", retry_after_s=5.0)
        lock = self._load_locks.setdefault(model_id, asyncio.Lock())
        async with lock:  # concurrent requests for one model share one load
            slot = self._slots.get(model_id)
            if slot is not None and not slot.closed:
                self._cancel_timer(slot)
                return slot, 0.0
            entry = self.registry.get(model_id)
            if entry.kind is not ModelKind.LLM:
                raise InvalidArgument(
                    f"model {model_id!r} is an {entry.kind.value} model, not a language model",
                    field="model_id",
                )
            if entry.state is ModelState.ERROR:
                raise PreconditionFailed(
                    f"model {model_id!r} cannot be used: {entry.error}", reason="MODEL_BROKEN"
                )
            provider = self._provider(entry)
            ctx = self._context_for(entry, context_length)
            batch, gpu_layers = entry.config.batch_size, entry.config.gpu_layers
            if self.policy is not None and not provider.remote:
                ctx, batch, gpu_layers = self._capped(model_id, ctx, batch, gpu_layers)
            parallel = 1 if provider.remote else self._parallel_for(entry, ctx)
            need = 0 if provider.remote else estimate_bytes(entry, ctx * parallel)
            async with self._budget_lock:
                victims = self.budget.plan_eviction(
                    entry, need, list(self._slots.values()), self._reserved
                )
                for victim in victims:
                    log.info(
                        "evicting %s (least recently used) to load %s", victim.entry.id, model_id
                    )
                    await self._close(victim, ModelEventType.UNLOADED, UnloadReason.EVICTED)
                self._reserved += need
            options = LoadOptions(
                context_length=ctx,
                threads=threads or entry.config.threads or self.settings.threads,
                batch_size=batch,
                gpu_layers=gpu_layers,
                chat_format=entry.config.chat_format,
                grammar_limits=grammar_limits(self.settings),
                parallel=parallel,
            )
            spec = ModelSpec(id=entry.id, path=entry.path, url=entry.url, options=entry.options)
            self.registry.update(model_id, state=ModelState.LOADING)
            # Every engine call of a model runs on one thread of its own: llama.cpp's
            # OpenMP keeps a worker team per calling thread, and two teams on a small
            # machine make generation 2.5x slower.
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rustaid-{model_id}")
            t0 = time.perf_counter()
            try:
                model = await self.submit(executor, lambda: provider.load(spec, options))
            except Exception as e:
                executor.shutdown(wait=False)
                self.registry.update(model_id, ModelEventType.FAILED, state=ModelState.AVAILABLE)
                if isinstance(e, RustaidError):
                    raise
                raise PreconditionFailed(
                    f"model {model_id!r} failed to load: {e}", reason="MODEL_LOAD_FAILED"
                ) from e
            finally:
                self._reserved -= need
            load_ms = (time.perf_counter() - t0) * 1000
            entry = self.registry.update(
                model_id,
                ModelEventType.LOADED,
                state=ModelState.LOADED,
                context_length=model.context_length,
                threads=model.threads,
                parallel=model.parallel,
                memory_bytes=need,
                last_used=time.time(),
            )
            keep_alive = entry.config.keep_alive_s
            slot = LoadedSlot(
                entry,
                model,
                ModelQueue(
                    model_id,
                    self.settings.max_queue_per_model,
                    self._queue_changed,
                    self._turns.setdefault(model_id, RecentDuration()),
                    slots=model.parallel,
                ),
                estimate_bytes=need,
                keep_alive_s=self.settings.keep_alive_s if keep_alive is None else keep_alive,
                executor=executor,
                # A paused request keeps its thread: room for as many again.
                requests=ThreadPoolExecutor(
                    max_workers=2 * model.parallel, thread_name_prefix=f"rustaid-{model_id}-req"
                )
                if model.parallel > 1
                else None,
                calls=ModelQueue(model_id, self.settings.max_queue_per_model, self._queue_changed)
                if model.parallel > 1
                else None,
            )
            self._slots[model_id] = slot
            return slot, load_ms

    def _detach(
        self, slot: LoadedSlot, event: ModelEventType | None, reason: UnloadReason | None = None
    ) -> bool:
        """Take an idle slot out of service now; True if its model still needs freeing."""
        if self._slots.get(slot.entry.id) is slot:
            del self._slots[slot.entry.id]
        slot.closed = True
        self._cancel_timer(slot)
        if event is not None:
            with contextlib.suppress(NotFound):  # its file may be gone already
                current = self.registry.get(slot.entry.id)
                state = ModelState.ERROR if current.error else ModelState.AVAILABLE
                self.registry.update(
                    slot.entry.id,
                    event,
                    reason=reason or "",
                    state=state,
                    memory_bytes=0,
                    pinned=False,
                    context_length=0,
                    threads=0,
                    parallel=0,
                )
        if slot.freed:
            return False
        slot.freed = True
        return True

    async def _close(
        self, slot: LoadedSlot, event: ModelEventType | None, reason: UnloadReason | None = None
    ) -> None:
        """Take an idle slot out of service and free its model (in a worker thread)."""
        if self._detach(slot, event, reason):
            await self._free(slot)

    def _cancel_timer(self, slot: LoadedSlot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def release_idle(self, slot: LoadedSlot, keep_alive_s: float | None = None) -> None:
        """After a use: free a closed slot once idle, else (re)arm its keep-alive timer."""
        slot.last_used = time.monotonic()
        if not slot.idle:
            return
        if slot.closed:
            if not slot.freed:
                slot.freed = True
                self._free(slot)  # its file went away or it was unloaded while in use
            return
        self._cancel_timer(slot)
        keep = slot.keep_alive_s if keep_alive_s is None else keep_alive_s
        if keep < 0 or slot.entry.pinned:
            return
        if keep == 0:
            self._expire(slot)
            return
        loop = asyncio.get_running_loop()
        slot.timer = loop.call_later(keep, lambda: self._expire(slot))

    def _expire(self, slot: LoadedSlot) -> None:
        slot.timer = None
        if slot.idle and not slot.closed and not slot.entry.pinned:
            log.info("unloading %s: idle for its keep-alive", slot.entry.id)
            if self._detach(slot, ModelEventType.UNLOADED, UnloadReason.IDLE):
                self._free(slot)

    async def unload(
        self, model_id: str, reason: UnloadReason = UnloadReason.REQUESTED
    ) -> ModelEntry:
        """Unload after the running request (if any) finishes; waiting ones reload it."""
        entry = self.registry.get(model_id)
        slot = self._slots.get(model_id)
        if slot is None:
            return entry
        ticket = slot.queue.join(Priority.INTERACTIVE - 1, exclusive=True)  # next in line
        try:
            await ticket.granted
            slot.closed = True
            if self._slots.get(model_id) is slot:
                del self._slots[model_id]
        finally:
            slot.queue.leave(ticket)
        if slot.idle:
            await self._close(slot, ModelEventType.UNLOADED, reason)
        else:  # waiters took their turn: the last one frees it
            self.registry.update(
                model_id, ModelEventType.UNLOADED, reason=reason, state=ModelState.AVAILABLE
            )
        log.info("unloaded %s", model_id)
        return self.registry.get(model_id)

    async def unload_orphans(self) -> None:
        """Unload models whose engine plugin went away (after running requests finish)."""
        providers = self._providers()
        for model_id, slot in list(self._slots.items()):
            if slot.entry.provider not in providers:
                log.info("unloading %s: its engine %s is gone", model_id, slot.entry.provider)
                await self.unload(model_id, UnloadReason.ENGINE_GONE)

    def forget(self, model_id: str) -> None:
        """Stop serving a model whose file changed or disappeared: running requests
        finish on it, new ones load the new file."""
        slot = self._slots.pop(model_id, None)
        if slot is not None:
            slot.closed = True
            self.release_idle(slot)

    def cap_parallel(self, cap: int) -> None:
        """Serve at most `cap` requests at once per model (0: each model's own count).
        Running ones finish; no new one starts until they are below the cap (the model
        keeps its sequences' memory)."""
        for slot in self._slots.values():
            slot.queue.resize(min(slot.model.parallel, cap or slot.model.parallel))

    async def stop(self) -> None:
        """Refuse new loads, wait for the threads still working, free every model."""
        self._stopping = True
        if self._running:
            await asyncio.wait(list(self._running), timeout=30)
        for slot in list(self._slots.values()):
            await self._close(slot, ModelEventType.UNLOADED, UnloadReason.STOPPING)


def _queues(slot: LoadedSlot) -> tuple[ModelQueue, ...]:
    return (slot.queue,) if slot.calls is None else (slot.queue, slot.calls)
