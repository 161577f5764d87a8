"""The inference engine: loads models through their provider plugins and runs
generations, one at a time per model, streaming text back to asyncio.

Blocking engine calls run in worker threads; text reaches the event loop through
`call_soon_threadsafe`, and a CancelToken stops a generation within one token when
its client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import logging
import math
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Generic, Protocol, TypeVar

from rustaid.config import Settings
from rustaid.core.admission import Admission, RecentDuration, check_prompt_size
from rustaid.core.cache import MIB, LoadedSlot, MemoryBudget, estimate_bytes, mb
from rustaid.core.events import EventBus
from rustaid.core.registry import ModelEntry, ModelEventType, ModelKind, ModelRegistry, ModelState
from rustaid.core.router import Selection, SelectionCriteria, select_model
from rustaid.core.scheduler import ModelQueue, Priority, Ticket
from rustaid.core.sessions import SessionStore
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed, RustaidError, Unavailable
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    CompletionStats,
    GenerationParams,
    LLMProvider,
    LoadedLLM,
    LoadOptions,
    ModelSpec,
    Role,
)

log = logging.getLogger(__name__)
T = TypeVar("T")

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256
# A waiting request re-checks its position at least this often (it is also woken on
# every change of its model's queue).
QUEUE_REPORT_INTERVAL_S = 5.0


@dataclass(frozen=True)
class GenerationRequest:
    model_id: str = ""
    prompt: str = ""
    # Chat when messages are given, plain completion of `prompt` otherwise.
    messages: tuple[ChatMessage, ...] = ()
    params: GenerationParams = field(default_factory=GenerationParams)
    selection: SelectionCriteria = field(default_factory=SelectionCriteria)
    priority: Priority = Priority.INTERACTIVE
    # Seconds the model stays loaded after this request (None: the model's default).
    keep_alive_s: float | None = None
    # Chat only: the daemon keeps the conversation; messages are this turn's new ones.
    session_id: str = ""


@dataclass(frozen=True)
class Timings:
    queue_ms: float = 0.0
    load_ms: float = 0.0
    prompt_eval_ms: float = 0.0
    generation_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    tokens_per_second: float = 0.0
    total_ms: float = 0.0


@dataclass(frozen=True)
class Queued:
    position: int
    model_id: str


@dataclass(frozen=True)
class Called(Generic[T]):
    """The result of a call on a model (Engine.call_on_model)."""

    value: T


@dataclass(frozen=True)
class Text:
    text: str
    index: int


@dataclass(frozen=True)
class Done:
    model_id: str
    stats: CompletionStats
    timings: Timings
    # What the device-aware policy changed in the request, and why.
    adjustments: tuple[str, ...] = ()


class InferencePolicy(Protocol):
    """Device-aware adjustment of requests (rustaid.power.policy implements it)."""

    async def adjust(
        self, params: GenerationParams, priority: Priority, threads: int = 0
    ) -> Any:  # has .params, .prefer_remote, .caching, .messages
        ...

    async def wait_for_background_allowed(self) -> float: ...

    def generating(
        self, *, interactive: bool = True, max_tokens: int = 0
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


class MetricsSink(Protocol):
    def record(self, model_id: str, stats: CompletionStats, timings: Timings) -> None: ...

    def record_error(self, model_id: str = "") -> None: ...


@dataclass
class Speed:
    """A model's measured speed on this device (moving averages of recent requests)."""

    tokens_per_second: float = 0.0
    time_to_first_token_ms: float = 0.0
    samples: int = 0

    def add(self, tps: float, ttft_ms: float) -> None:
        a = 0.3 if self.samples else 1.0
        if tps > 0:
            self.tokens_per_second += a * (tps - self.tokens_per_second)
        self.time_to_first_token_ms += a * (ttft_ms - self.time_to_first_token_ms)
        self.samples += 1


GenerationEvent = Queued | Text | Done


@dataclass(frozen=True)
class Activity:
    """Published on Engine.activity when a request joins or leaves a model's queue."""

    running: int  # requests generating (or tokenizing) right now
    waiting: int  # requests waiting for their model's turn


class Engine:
    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        providers: Callable[[], dict[str, LLMProvider]],
    ) -> None:
        self.settings = settings
        self.registry = registry
        self._providers = providers
        self._slots: dict[str, LoadedSlot] = {}
        self._load_locks: dict[str, asyncio.Lock] = {}
        self._budget_lock = asyncio.Lock()
        self._reserved = 0  # bytes of models being loaded right now
        self.budget = MemoryBudget(settings)
        self.sessions = SessionStore()
        self.speed: dict[str, Speed] = {}
        self._active: set[CancelToken] = set()
        self._running: set[asyncio.Future[Any]] = set()
        self._stopping = False
        self.activity: EventBus[Activity] = EventBus()
        # Per-client limits; read at every request, so a reload applies at once.
        self.admission = Admission(lambda: self.settings.max_requests_per_client)
        # How long a turn takes on each model lately (for retry delays of a full queue).
        self._turns: dict[str, RecentDuration] = {}
        # Set by the daemon when the device-awareness subsystem runs.
        self.policy: InferencePolicy | None = None
        self.metrics: MetricsSink | None = None

    def is_busy(self, model_id: str) -> bool:
        """A request is generating on, or waiting for, this model."""
        slot = self._slots.get(model_id)
        return slot is not None and not slot.idle

    # -- models ---------------------------------------------------------------------------

    def provider_for(self, path: Path) -> str:
        return next((n for n, p in self._providers().items() if p.handles(path)), "")

    def provider_names(self) -> list[str]:
        return list(self._providers())

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

    def _submit(self, executor: ThreadPoolExecutor, fn: Callable[[], T]) -> asyncio.Future[T]:
        # The worker sees the request's context (request id and caller in its log lines).
        ctx = contextvars.copy_context()
        fut = asyncio.get_running_loop().run_in_executor(executor, ctx.run, fn)
        self._running.add(fut)
        fut.add_done_callback(self._running.discard)
        return fut

    def _free(self, slot: LoadedSlot) -> asyncio.Future[None]:
        """Close a model on its own thread, then retire that thread."""
        fut = self._submit(slot.executor, slot.model.close)
        fut.add_done_callback(lambda _: slot.executor.shutdown(wait=False))
        return fut

    def loaded(self) -> list[ModelEntry]:
        return [s.entry for s in self._slots.values()]

    def running(self) -> int:
        """Requests that hold their model's turn (generating, tokenizing) right now."""
        return sum(1 for s in self._slots.values() if s.queue.busy)

    def queue_length(self) -> int:
        """Requests waiting for their model's turn."""
        return sum(s.queue.waiting for s in self._slots.values())

    def _queue_changed(self) -> None:
        self.activity.publish(Activity(self.running(), self.queue_length()))

    def _context_for(self, entry: ModelEntry, requested: int) -> int:
        want = requested or entry.config.context_length or entry.metadata.context_length
        return min(want or self.settings.max_context_length, self.settings.max_context_length)

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
        slot, load_ms = await self._ensure_loaded(model_id, context_length, threads)
        if pin and not slot.entry.pinned:
            slot.entry = self.registry.update(model_id, ModelEventType.CHANGED, pinned=True)
        self._release_idle(slot)
        return slot.entry, load_ms

    async def _ensure_loaded(
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
            need = 0 if provider.remote else estimate_bytes(entry, ctx)
            async with self._budget_lock:
                victims = self.budget.plan_eviction(
                    entry, need, list(self._slots.values()), self._reserved
                )
                for victim in victims:
                    log.info(
                        "evicting %s (least recently used) to load %s", victim.entry.id, model_id
                    )
                    await self._close(victim, ModelEventType.UNLOADED)
                self._reserved += need
            options = LoadOptions(
                context_length=ctx,
                threads=threads or entry.config.threads or self.settings.threads,
                batch_size=entry.config.batch_size,
                gpu_layers=entry.config.gpu_layers,
                chat_format=entry.config.chat_format,
            )
            spec = ModelSpec(id=entry.id, path=entry.path, url=entry.url, options=entry.options)
            self.registry.update(model_id, state=ModelState.LOADING)
            # Every engine call of a model runs on one thread of its own: llama.cpp's
            # OpenMP keeps a worker team per calling thread, and two teams on a small
            # machine make generation 2.5x slower.
            executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"rustaid-{model_id}")
            t0 = time.perf_counter()
            try:
                model = await self._submit(executor, lambda: provider.load(spec, options))
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
                ),
                estimate_bytes=need,
                keep_alive_s=self.settings.keep_alive_s if keep_alive is None else keep_alive,
                executor=executor,
            )
            self._slots[model_id] = slot
            return slot, load_ms

    def _detach(self, slot: LoadedSlot, event: ModelEventType | None) -> bool:
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
                    slot.entry.id, event, state=state, memory_bytes=0, pinned=False
                )
        if slot.freed:
            return False
        slot.freed = True
        return True

    async def _close(self, slot: LoadedSlot, event: ModelEventType | None) -> None:
        """Take an idle slot out of service and free its model (in a worker thread)."""
        if self._detach(slot, event):
            await self._free(slot)

    def _cancel_timer(self, slot: LoadedSlot) -> None:
        if slot.timer is not None:
            slot.timer.cancel()
            slot.timer = None

    def _release_idle(self, slot: LoadedSlot, keep_alive_s: float | None = None) -> None:
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
            if self._detach(slot, ModelEventType.UNLOADED):
                self._free(slot)

    async def unload(self, model_id: str) -> ModelEntry:
        """Unload after the running request (if any) finishes; waiting ones reload it."""
        entry = self.registry.get(model_id)
        slot = self._slots.get(model_id)
        if slot is None:
            return entry
        ticket = slot.queue.join(Priority.INTERACTIVE - 1)  # next in line
        try:
            await ticket.granted
            slot.closed = True
            if self._slots.get(model_id) is slot:
                del self._slots[model_id]
        finally:
            slot.queue.leave(ticket)
        if slot.idle:
            await self._close(slot, ModelEventType.UNLOADED)
        else:  # waiters took their turn: the last one frees it
            self.registry.update(model_id, ModelEventType.UNLOADED, state=ModelState.AVAILABLE)
        log.info("unloaded %s", model_id)
        return self.registry.get(model_id)

    async def unload_orphans(self) -> None:
        """Unload models whose engine plugin went away (after running requests finish)."""
        providers = self._providers()
        for model_id, slot in list(self._slots.items()):
            if slot.entry.provider not in providers:
                log.info("unloading %s: its engine %s is gone", model_id, slot.entry.provider)
                await self.unload(model_id)

    def forget(self, model_id: str) -> None:
        """Stop serving a model whose file changed or disappeared: running requests
        finish on it, new ones load the new file."""
        slot = self._slots.pop(model_id, None)
        if slot is not None:
            slot.closed = True
            self._release_idle(slot)

    # -- requests -----------------------------------------------------------------------

    def resolve(self, model_id: str, criteria: SelectionCriteria) -> str:
        if model_id:
            self.registry.get(model_id)  # NotFound with the list of known ids
            return model_id
        return self.select(criteria).model_id

    def select(self, criteria: SelectionCriteria, kind: ModelKind = ModelKind.LLM) -> Selection:
        return select_model(
            self.registry.list(), criteria, kind,
            speed=self.speed, fits=self.fits, remote=self.is_remote,
        )  # fmt: skip

    def validate(self, request: GenerationRequest) -> None:
        if request.messages:
            for i, m in enumerate(request.messages):
                if not m.content and m.role.value != "assistant":
                    raise InvalidArgument(
                        f"messages[{i}].content is empty", field=f"messages[{i}].content"
                    )
        elif not request.prompt:
            raise InvalidArgument("prompt is empty: give the text to continue", field="prompt")
        # Bytes before tokens: a huge prompt is refused before anything tokenizes it.
        if request.messages:
            texts = [m.content for m in request.messages]
            check_prompt_size(texts, self.settings.max_prompt_bytes, "messages")
        else:
            check_prompt_size([request.prompt], self.settings.max_prompt_bytes, "prompt")
        validate_params(request.params, self.settings.max_tokens_limit)

    async def generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        """Yield Queued while waiting, Text as it is produced, then one Done.

        Without a model id the router picks one; if that model is unreachable before it
        produced anything (a remote endpoint down), the next candidate serves instead.
        The request counts against its caller's max_requests_per_client until it ends."""
        self.validate(request)
        with self.admission.admit("generate"):
            async for event in self._generate(request):
                yield event

    async def _generate(self, request: GenerationRequest) -> AsyncIterator[GenerationEvent]:
        if request.params.max_tokens is None:
            request = replace(
                request, params=replace(request.params, max_tokens=self.settings.default_max_tokens)
            )
        adjustments: tuple[str, ...] = ()
        caching = True
        if self.policy is not None:
            adjusted = await self.policy.adjust(
                request.params, request.priority, self.settings.threads
            )
            if request.priority is Priority.BACKGROUND:
                await self.policy.wait_for_background_allowed()
            adjustments, caching = adjusted.messages, adjusted.caching
            selection = request.selection
            if adjusted.prefer_remote and not selection.prefer_remote:
                selection = replace(selection, prefer_remote=True)
            request = replace(request, params=adjusted.params, selection=selection)
        history: tuple[ChatMessage, ...] = ()
        if request.session_id:
            history = self.sessions.history(request.session_id)
        candidates = (
            [request.model_id]
            if request.model_id
            else [c.model_id for c in self.select(request.selection).candidates if not c.excluded]
        )
        if request.model_id:
            self.registry.get(request.model_id)
        reply: list[str] = []
        for i, model_id in enumerate(candidates):
            produced = False
            try:
                async with self._generating(request):
                    async for event in self._generate_on(model_id, request, history, caching):
                        produced = True
                        if isinstance(event, Text):
                            reply.append(event.text)
                        elif isinstance(event, Done):
                            event = replace(event, adjustments=adjustments)
                            if self.metrics is not None:
                                self.metrics.record(model_id, event.stats, event.timings)
                            if request.session_id:
                                answer = ChatMessage(Role.ASSISTANT, "".join(reply))
                                self.sessions.append(
                                    request.session_id, (*request.messages, answer)
                                )
                        yield event
                return
            except Unavailable as e:
                if produced or i == len(candidates) - 1 or self._stopping:
                    self._record_error(model_id)
                    raise
                log.warning(
                    "%s unavailable (%s); falling back to %s", model_id, e, candidates[i + 1]
                )
            except (InvalidArgument, NotFound, asyncio.CancelledError, GeneratorExit):
                raise  # the client's doing, not the daemon's failure
            except Exception:
                self._record_error(model_id)
                raise

    def _record_error(self, model_id: str) -> None:
        if self.metrics is not None:
            self.metrics.record_error(model_id)

    def _generating(
        self, request: GenerationRequest
    ) -> contextlib.AbstractAsyncContextManager[None]:
        if self.policy is None:
            return contextlib.nullcontext()
        return self.policy.generating(
            interactive=request.priority is not Priority.BACKGROUND,
            max_tokens=request.params.max_tokens or 0,
        )

    async def generate_text(self, request: GenerationRequest) -> tuple[str, Done]:
        """The whole text of a generation and its Done (for unary APIs)."""
        parts: list[str] = []
        async for event in self.generate(request):
            if isinstance(event, Text):
                parts.append(event.text)
            elif isinstance(event, Done):
                return "".join(parts), event
        raise AssertionError("generation ended without Done")

    async def _generate_on(
        self,
        model_id: str,
        request: GenerationRequest,
        history: tuple[ChatMessage, ...],
        caching: bool = True,
    ) -> AsyncIterator[GenerationEvent]:
        t_start = time.perf_counter()
        params = request.params
        if params.max_tokens is None:
            params = replace(params, max_tokens=self.settings.default_max_tokens)
        messages = (*history, *request.messages)
        load_ms = 0.0
        while True:  # retried if the model is unloaded while this request waits
            slot, took = await self._ensure_loaded(model_id)
            load_ms += took
            ticket = slot.queue.join(request.priority)
            try:
                slot.model.validate_params(params)
                if not ticket.granted.done():
                    async for position in self._wait_turn(slot.queue, ticket):
                        yield Queued(position, model_id)
            except BaseException:
                slot.queue.leave(ticket)
                self._release_idle(slot)
                raise
            if slot.closed:  # unloaded or replaced while we waited: give the turn back
                slot.queue.leave(ticket)
                self._release_idle(slot)
                continue
            break
        if request.session_id and caching:
            slot.model.enable_prompt_cache(self.settings.prompt_cache_mb * MIB)
        t_turn = time.perf_counter()
        async for event in self._run(slot, ticket, request, params, messages):
            if isinstance(event, Done):
                s = event.stats
                gen_s = s.generation_ms / 1000
                tps = (
                    (s.completion_tokens - 1) / gen_s
                    if gen_s > 0 and s.completion_tokens > 1
                    else 0.0
                )
                ttft = (t_turn - t_start) * 1000 + s.prompt_eval_ms
                self.speed.setdefault(model_id, Speed()).add(tps, s.prompt_eval_ms)
                event = Done(
                    model_id,
                    s,
                    Timings(
                        queue_ms=max(0.0, (t_turn - t_start) * 1000 - load_ms),
                        load_ms=load_ms,
                        prompt_eval_ms=s.prompt_eval_ms,
                        generation_ms=s.generation_ms,
                        time_to_first_token_ms=ttft,
                        tokens_per_second=tps,
                        total_ms=(time.perf_counter() - t_start) * 1000,
                    ),
                )
            yield event

    async def _wait_turn(self, queue: ModelQueue, ticket: Ticket) -> AsyncIterator[int]:
        """Yield the position at once, then after every change, until the turn comes."""
        last = -1
        while not ticket.granted.done():
            position = queue.position(ticket)
            if position != last:
                last = position
                yield position
            await asyncio.wait(
                [ticket.granted, queue.moved()],
                timeout=QUEUE_REPORT_INTERVAL_S,
                return_when=asyncio.FIRST_COMPLETED,
            )

    async def _run(
        self,
        slot: LoadedSlot,
        ticket: Ticket,
        request: GenerationRequest,
        params: GenerationParams,
        messages: tuple[ChatMessage, ...],
    ) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[str | BaseException | CompletionStats] = asyncio.Queue()
        cancel = CancelToken()
        self._active.add(cancel)

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(out.put_nowait, text)

        def work() -> CompletionStats:
            if messages:
                return slot.model.chat(messages, params, emit, cancel)
            return slot.model.complete(request.prompt, params, emit, cancel)

        def finished(fut: asyncio.Future[CompletionStats]) -> None:
            # Runs on the loop once the worker thread is done: only now is the model free.
            self._active.discard(cancel)
            slot.queue.leave(ticket)
            if not slot.closed:
                with contextlib.suppress(NotFound):
                    slot.entry = self.registry.update(slot.entry.id, last_used=time.time())
            self._release_idle(slot, request.keep_alive_s)
            if fut.cancelled():
                out.put_nowait(Unavailable("generation was cancelled"))
            elif (exc := fut.exception()) is not None:
                out.put_nowait(exc)
            else:
                out.put_nowait(fut.result())

        fut = loop.run_in_executor(slot.executor, contextvars.copy_context().run, work)
        self._running.add(fut)
        fut.add_done_callback(self._running.discard)
        fut.add_done_callback(finished)
        index = 0
        try:
            while True:
                item = await out.get()
                if isinstance(item, str):
                    yield Text(item, index)
                    index += 1
                elif isinstance(item, CompletionStats):
                    yield Done(slot.entry.id, item, Timings())
                    return
                else:
                    raise item
        finally:
            cancel.cancel()  # no-op when finished; stops the thread when the client left

    async def run_on_model(self, model_id: str, fn: Callable[[LoadedLLM], T]) -> T:
        """Run a quick call (tokenize, count) on a loaded model, in its turn."""
        async with contextlib.aclosing(self.call_on_model(model_id, fn)) as events:
            async for event in events:
                if isinstance(event, Called):
                    return event.value
        raise AssertionError("model call ended without a result")

    async def call_on_model(
        self, model_id: str, fn: Callable[[LoadedLLM], T]
    ) -> AsyncGenerator[Queued | Called[T], None]:
        """run_on_model for streams: Queued while the call waits for its model's turn
        (as a generation reports it), then one Called with the result."""
        with self.admission.admit("model_call"):
            slot, _ = await self._ensure_loaded(model_id)
            ticket = slot.queue.join(Priority.INTERACTIVE)
            try:
                async for position in self._wait_turn(slot.queue, ticket):
                    yield Queued(position, model_id)
                value = await self._submit(slot.executor, lambda: fn(slot.model))
            finally:
                slot.queue.leave(ticket)
                self._release_idle(slot)
        yield Called(value)  # the turn and the caller's place are given back already

    async def stop(self) -> None:
        """Cancel what still runs, wait for the threads, free every model."""
        self._stopping = True
        for token in list(self._active):
            token.cancel()
        if self._running:
            await asyncio.wait(list(self._running), timeout=30)
        for slot in list(self._slots.values()):
            await self._close(slot, ModelEventType.UNLOADED)


def validate_params(p: GenerationParams, max_tokens_limit: int) -> None:
    """Range checks shared by every engine; the message names the field to fix."""

    def bad(name: str, why: str) -> InvalidArgument:
        return InvalidArgument(f"params.{name} {why}", field=f"params.{name}")

    def finite(name: str, value: float | None) -> None:
        if value is not None and not math.isfinite(value):
            raise bad(name, f"must be a finite number (got {value})")

    for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
        finite(name, getattr(p, name))
    if p.max_tokens is not None and not 1 <= p.max_tokens <= max_tokens_limit:
        raise bad("max_tokens", f"must be between 1 and {max_tokens_limit} (got {p.max_tokens})")
    if p.temperature is not None and p.temperature < 0:
        raise bad("temperature", f"must be >= 0 (got {p.temperature})")
    if p.top_p is not None and not 0 < p.top_p <= 1:
        raise bad("top_p", f"must be in (0, 1] (got {p.top_p})")
    if p.min_p is not None and not 0 <= p.min_p <= 1:
        raise bad("min_p", f"must be in [0, 1] (got {p.min_p})")
    if p.top_k is not None and p.top_k < 0:
        raise bad("top_k", f"must be >= 0 (got {p.top_k})")
    if p.repeat_penalty is not None and p.repeat_penalty <= 0:
        raise bad("repeat_penalty", f"must be > 0 (got {p.repeat_penalty})")
    if len(p.stop) > MAX_STOP_SEQUENCES:
        raise bad("stop", f"has {len(p.stop)} sequences; at most {MAX_STOP_SEQUENCES} allowed")
    for s in p.stop:
        if not s or len(s) > MAX_STOP_LENGTH:
            raise bad("stop", f"sequences must be 1..{MAX_STOP_LENGTH} characters")
    if p.grammar and p.json_schema:
        raise bad("grammar", "and params.json_schema are exclusive: give one of them")


def chat_messages(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    if not messages:
        raise InvalidArgument("messages is empty: give at least one message", field="messages")
    return tuple(messages)
