"""The inference engine: the one object the adapters use for generation. It runs a
request through its pipeline (validate, device policy, select and resolve a model,
take the model's turn, run on it, record speed, energy and the request) and leaves
which models are loaded to its ModelPool (core/model_pool.py).

A model serves one request at a time (or `parallel` at a time when it batches them).
Blocking engine calls run in worker threads; text reaches the event loop through
`call_soon_threadsafe`, and a CancelToken stops a generation within one token when
its client goes away.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from dataclasses import replace
from typing import TypeVar

from rustaid.config import Settings
from rustaid.core.admission import Admission
from rustaid.core.events import EventBus, UnloadReason
from rustaid.core.generation_types import (
    Called,
    Done,
    Energy,
    EnergyMeter,
    GenerationEvent,
    GenerationRequest,
    InferencePolicy,
    LoadCaps,
    Queued,
    RequestRecord,
    Speed,
    Text,
    Timings,
)
from rustaid.core.model_pool import ModelPool
from rustaid.core.model_runner import ModelRunner
from rustaid.core.registry import ModelEntry, ModelKind, ModelRegistry
from rustaid.core.request_checks import grammar_limits, validate_request
from rustaid.core.router import Selection, SelectionCriteria, select_model
from rustaid.core.scheduler import Priority
from rustaid.core.sessions import SessionStore
from rustaid.errors import InvalidArgument, NotFound, Unavailable
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    GrammarLimits,
    LLMProvider,
    LoadedLLM,
    Role,
)

# Names many adapters and subsystems import from here (the engine's vocabulary).
__all__ = [
    "Done",
    "Energy",
    "Engine",
    "GenerationRequest",
    "LoadCaps",
    "Queued",
    "Text",
    "Timings",
]

log = logging.getLogger(__name__)
T = TypeVar("T")

# How long a client refused for heat should wait before trying again.
THERMAL_RETRY_S = 30.0


class Engine:
    """Generation for the adapters: the request pipeline, over a ModelPool (which
    models are loaded) and a ModelRunner (turns on a model, runs on its thread)."""

    def __init__(
        self,
        settings: Settings,
        registry: ModelRegistry,
        providers: Callable[[], dict[str, LLMProvider]],
    ) -> None:
        self.settings = settings
        self.registry = registry
        # Set by the daemon when the device-awareness subsystem runs.
        self.policy: InferencePolicy | None = None
        self.energy_meter: EnergyMeter | None = None
        self.pool = ModelPool(lambda: self.settings, registry, providers, lambda: self.policy)
        self.budget = self.pool.budget
        # Published when a request joins or leaves a model's queue.
        self.activity = self.pool.activity
        self.sessions = SessionStore()
        self.speed: dict[str, Speed] = {}
        self.runner = ModelRunner(lambda: self.settings, registry, self.pool)
        # Finished and failed generations, for metrics and anyone else who listens.
        self.requests: EventBus[RequestRecord] = EventBus()
        # Per-client limits; read at every request, so a reload applies at once.
        self.admission = Admission(lambda: self.settings.max_requests_per_client)

    # -- models (the pool's) --------------------------------------------------------------

    def is_busy(self, model_id: str) -> bool:
        """A request is generating on, or waiting for, this model."""
        return self.pool.is_busy(model_id)

    def is_remote(self, entry: ModelEntry) -> bool:
        return self.pool.is_remote(entry)

    def loaded(self) -> list[ModelEntry]:
        return self.pool.loaded()

    def running(self) -> int:
        """Requests that hold their model's turn (generating, tokenizing) right now."""
        return self.pool.running()

    def queue_length(self) -> int:
        """Requests waiting for their model's turn."""
        return self.pool.queue_length()

    def fits(self, entry: ModelEntry) -> str:
        """Why `entry` cannot be loaded here now ("" when it can): for the router."""
        return self.pool.fits(entry)

    async def load(
        self, model_id: str, *, context_length: int = 0, threads: int = 0, pin: bool = False
    ) -> tuple[ModelEntry, float]:
        """Load a model if needed; returns its entry and the load time in ms (0 if loaded).
        A loaded model asked for another context length or thread count is reloaded."""
        return await self.pool.load(
            model_id, context_length=context_length, threads=threads, pin=pin
        )

    async def unload(
        self, model_id: str, reason: UnloadReason = UnloadReason.REQUESTED
    ) -> ModelEntry:
        """Unload after the running request (if any) finishes; waiting ones reload it."""
        return await self.pool.unload(model_id, reason)

    async def unload_orphans(self) -> None:
        """Unload models whose engine plugin went away (after running requests finish)."""
        await self.pool.unload_orphans()

    def forget(self, model_id: str) -> None:
        """Stop serving a model whose file changed or disappeared: running requests
        finish on it, new ones load the new file."""
        self.pool.forget(model_id)

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
            models_dir=self.registry.models_dir,
            prefer_small=self.policy.prefer_small() if self.policy is not None else "",
        )  # fmt: skip

    @property
    def grammar_limits(self) -> GrammarLimits:
        return grammar_limits(self.settings)

    def validate(self, request: GenerationRequest) -> None:
        validate_request(request, self.settings)

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
        threads = 0  # the model's own (as loaded)
        local_refused = ""
        if self.policy is not None:
            adjusted = await self.policy.adjust(
                request.params, request.priority, self.settings.threads
            )
            if request.priority is Priority.BACKGROUND:
                await self.policy.wait_for_background_allowed()
            adjustments, caching = adjusted.messages, adjusted.caching
            threads = adjusted.threads
            local_refused = adjusted.local_refused
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
        if local_refused:
            candidates = [m for m in candidates if self.is_remote(self.registry.get(m))]
            if not candidates:
                raise Unavailable(
                    f"local generation is paused: {local_refused}; retry once the device "
                    "has cooled (or configure a remote model)",
                    retry_after_s=THERMAL_RETRY_S,
                    reason="THERMAL_CRITICAL",
                )
        reply: list[str] = []
        for i, model_id in enumerate(candidates):
            produced = False
            try:
                async with self._generating(request):
                    async for event in self.runner.generate_on(
                        model_id, request, history, caching, threads
                    ):
                        produced = True
                        if isinstance(event, Text):
                            reply.append(event.text)
                        elif isinstance(event, Done):
                            speed = self.speed.setdefault(model_id, Speed())
                            speed.add(event.timings.tokens_per_second, event.stats.prompt_eval_ms)
                            event = replace(
                                event, adjustments=adjustments, energy=self._energy(event)
                            )
                            speed.add_energy(event.energy.joules, event.stats.completion_tokens)
                            self.requests.publish(
                                RequestRecord(model_id, event.stats, event.timings)
                            )
                            if request.session_id:
                                answer = ChatMessage(Role.ASSISTANT, "".join(reply))
                                self.sessions.append(
                                    request.session_id, (*request.messages, answer)
                                )
                        yield event
                return
            except Unavailable as e:
                if produced or i == len(candidates) - 1 or self.pool.stopping:
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

    def _energy(self, done: Done) -> Energy:
        if self.energy_meter is None:
            return Energy()
        seconds = (done.timings.prompt_eval_ms + done.timings.generation_ms) / 1000
        try:
            entry = self.registry.get(done.model_id)
        except NotFound:
            return Energy()
        return self.energy_meter(entry, seconds)

    def device_changed(self) -> None:
        """The device's state changed: running generations take the new thread cap and
        rest between tokens while it is critically hot (applied between tokens)."""
        if self.policy is None:
            return
        self.runner.retune(*self.policy.running_caps(self.settings.threads))
        # Fewer requests at once on battery or heat.
        self.pool.cap_parallel(self.policy.load_caps().parallel)

    def _record_error(self, model_id: str) -> None:
        self.requests.publish(RequestRecord(model_id, failed=True))

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

    async def run_on_model(
        self, model_id: str, fn: Callable[[LoadedLLM], T], cancel: CancelToken | None = None
    ) -> T:
        """Run a quick call (tokenize, count) on a loaded model, in its turn."""
        async with contextlib.aclosing(self.call_on_model(model_id, fn, cancel)) as events:
            async for event in events:
                if isinstance(event, Called):
                    return event.value
        raise AssertionError("model call ended without a result")

    async def call_on_model(
        self, model_id: str, fn: Callable[[LoadedLLM], T], cancel: CancelToken | None = None
    ) -> AsyncGenerator[Queued | Called[T], None]:
        """run_on_model for streams: Queued while the call waits for its model's turn
        (as a generation reports it), then one Called with the result. When the caller
        goes away, `cancel` is set (for `fn` to check) and the model's turn is given
        back once the thread has ended."""
        result: Called[T] | None = None
        with self.admission.admit("model_call"):
            async with contextlib.aclosing(self.runner.call(model_id, fn, cancel)) as events:
                async for event in events:
                    if isinstance(event, Called):
                        result = event
                    else:
                        yield event
        assert result is not None  # the call raised otherwise
        yield result  # the turn and the caller's place are given back already

    async def stop(self) -> None:
        """Cancel what still runs, wait for the threads, free every model."""
        self.runner.cancel_all()
        await self.pool.stop()  # refuses new loads before the cancelled ones come back
        self.runner.close()
