"""Running requests on a loaded model, in its turn: a request waits in the model's
queue (reporting its position), the model checks its parameters (a grammar compiles
on a check thread), the generation runs on the model's thread and streams its text to
the event loop, and the turn is given back only once that thread has ended, even when
the client left. The model pool (core/model_pool.py) provides the loaded model.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from typing import Any, TypeVar

from rustaid.config import Settings
from rustaid.core.cache import MIB, LoadedSlot
from rustaid.core.generation_types import (
    Called,
    Done,
    GenerationEvent,
    GenerationRequest,
    Queued,
    Text,
    Timings,
)
from rustaid.core.model_pool import ModelPool
from rustaid.core.registry import ModelRegistry
from rustaid.core.scheduler import ModelQueue, Priority, Ticket
from rustaid.errors import NotFound, Unavailable
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    CompletionStats,
    GenerationParams,
    LoadedLLM,
)

T = TypeVar("T")

# A waiting request re-checks its position at least this often (it is also woken on
# every change of its model's queue).
QUEUE_REPORT_INTERVAL_S = 5.0


class ModelRunner:
    """Takes turns on loaded models and runs generations and quick calls on them."""

    def __init__(
        self, settings: Callable[[], Settings], registry: ModelRegistry, pool: ModelPool
    ) -> None:
        # Read at every request, so a reloaded configuration (SIGHUP) applies at once.
        self._settings = settings
        self.registry = registry
        self._pool = pool
        # The CancelToken of every running generation.
        self._active: set[CancelToken] = set()
        # Grammar checks (compiling a grammar against a model's vocabulary) run here,
        # off the event loop and beside the models' own threads, which may be generating.
        self._checks = ThreadPoolExecutor(max_workers=2, thread_name_prefix="rustaid-check")

    @property
    def settings(self) -> Settings:
        return self._settings()

    async def generate_on(
        self,
        model_id: str,
        request: GenerationRequest,
        history: tuple[ChatMessage, ...],
        caching: bool = True,
        threads: int = 0,
    ) -> AsyncIterator[GenerationEvent]:
        """Run `request` on `model_id` (loaded if needed) after `history`: Queued while
        it waits for the model's turn, Text as it is produced, then Done with its
        timings."""
        t_start = time.perf_counter()
        params = request.params
        if params.max_tokens is None:
            params = replace(params, max_tokens=self.settings.default_max_tokens)
        messages = (*history, *request.messages)
        load_ms = 0.0
        while True:  # retried if the model is unloaded while this request waits
            slot, took = await self._pool.ensure_loaded(model_id)
            load_ms += took
            ticket = slot.queue.join(request.priority)
            check = self._check_params(slot, params)
            try:
                if check is not None:
                    # Shielded: the thread uses the model, so the turn is given back only
                    # once it ended, even when the client left (see _give_back).
                    await asyncio.shield(check)
                if not ticket.granted.done():
                    async for position in self._wait_turn(slot.queue, ticket):
                        yield Queued(position, model_id)
            except BaseException:
                self._give_back(slot, ticket, check)
                raise
            if slot.closed:  # unloaded or replaced while we waited: give the turn back
                slot.queue.leave(ticket)
                self._pool.release_idle(slot)
                continue
            break
        if request.session_id and caching:
            slot.model.enable_prompt_cache(self.settings.prompt_cache_mb * MIB)
        t_turn = time.perf_counter()
        async for event in self._run(slot, ticket, request, params, messages, threads):
            if isinstance(event, Done):
                s = event.stats
                gen_s = s.generation_ms / 1000
                tps = (
                    (s.completion_tokens - 1) / gen_s
                    if gen_s > 0 and s.completion_tokens > 1
                    else 0.0
                )
                ttft = (t_turn - t_start) * 1000 + s.prompt_eval_ms
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

    def _check_params(
        self, slot: LoadedSlot, params: GenerationParams
    ) -> asyncio.Future[None] | None:
        """The model's own checks of `params`: compiling a grammar costs up to a second
        (within the grammar limits), so it runs in a worker thread; the rest is quick
        and runs here (None is returned then)."""
        if not (params.grammar or params.json_schema):
            slot.model.validate_params(params)
            return None
        return self._pool.submit(self._checks, lambda: slot.model.validate_params(params))

    def _give_back(
        self,
        slot: LoadedSlot,
        ticket: Ticket,
        check: asyncio.Future[Any] | None,
        queue: ModelQueue | None = None,
    ) -> None:
        """Leave the queue now, or when the thread working on the model ends if it still
        runs: the model must not be freed (nor the next turn start) under it."""

        def leave(fut: asyncio.Future[Any] | None = None) -> None:
            if fut is not None and not fut.cancelled():
                fut.exception()  # retrieved: the client is gone, nobody else wants it
            (queue or slot.queue).leave(ticket)
            self._pool.release_idle(slot)

        if check is None or check.done():
            leave(check)
        else:
            check.add_done_callback(leave)

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
        threads: int = 0,
    ) -> AsyncIterator[GenerationEvent]:
        loop = asyncio.get_running_loop()
        out: asyncio.Queue[str | BaseException | CompletionStats] = asyncio.Queue()
        cancel = CancelToken()
        self._active.add(cancel)

        def emit(text: str) -> None:
            loop.call_soon_threadsafe(out.put_nowait, text)

        if slot.model.parallel > 1 and request.priority is Priority.BACKGROUND:
            # An interactive request that finds every slot taken may pause this one.
            slot.queue.pausable(ticket, lambda paused: setattr(cancel, "paused", paused))

        def work() -> CompletionStats:
            # The policy's thread cap (fewer on a hot device, a low battery, a saving
            # profile) applies to this request; 0 gives the model its loaded count back.
            slot.model.use_threads(threads)
            if cancel.threads is None:
                cancel.threads = threads  # a batch runs with the strictest of its requests
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
            self._pool.release_idle(slot, request.keep_alive_s)
            if fut.cancelled():
                out.put_nowait(Unavailable("generation was cancelled"))
            elif (exc := fut.exception()) is not None:
                out.put_nowait(exc)
            else:
                out.put_nowait(fut.result())

        fut = self._pool.submit(slot.requests or slot.executor, work)
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

    async def call(
        self, model_id: str, fn: Callable[[LoadedLLM], T], cancel: CancelToken | None = None
    ) -> AsyncGenerator[Queued | Called[T], None]:
        """Queued while a quick call (tokenize, count) waits for its model's turn, then
        one Called with its result. When the caller goes away, `cancel` is set (for `fn`
        to check) and the model's turn is given back once the thread has ended."""
        slot, _ = await self._pool.ensure_loaded(model_id)
        queue = slot.calls or slot.queue
        ticket = queue.join(Priority.INTERACTIVE)
        work: asyncio.Future[T] | None = None
        try:
            async for position in self._wait_turn(queue, ticket):
                yield Queued(position, model_id)
            work = self._pool.submit(slot.executor, lambda: fn(slot.model))
            value = await asyncio.shield(work)
        finally:
            if cancel is not None and not (work is not None and work.done()):
                cancel.cancel()
            self._give_back(slot, ticket, work, queue)
        yield Called(value)  # the turn is given back already

    def retune(self, threads: int, pause_s: float) -> None:
        """Running generations take a new thread cap (0: the model's own) and rest
        `pause_s` after each token (applied between tokens)."""
        for token in self._active:
            token.threads, token.pause_s = threads, pause_s

    def cancel_all(self) -> None:
        """Stop every running generation within one token."""
        for token in list(self._active):
            token.cancel()

    def close(self) -> None:
        self._checks.shutdown(wait=False)
