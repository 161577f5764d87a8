"""The values a generation is made of: the request, what it streams back (Queued,
Text, Done and their timings and energy), what it leaves behind (RequestRecord, Speed,
Activity), and the protocol of the device-aware policy the engine consults.

Plain data, shared by the engine, the model pool and every adapter.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Generic, Protocol, TypeVar

from rustaid.core.registry import ModelEntry
from rustaid.core.router import SelectionCriteria
from rustaid.core.scheduler import Priority
from rustaid.providers import ChatMessage, CompletionStats, GenerationParams

T = TypeVar("T")


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
class Energy:
    """The energy a request used on this device (an estimate, and how it was made)."""

    joules: float = 0.0
    basis: str = ""


@dataclass(frozen=True)
class Done:
    model_id: str
    stats: CompletionStats
    timings: Timings
    # What the device-aware policy changed in the request, and why.
    adjustments: tuple[str, ...] = ()
    energy: Energy = Energy()


# Estimates a request's energy from its model and its seconds of compute.
EnergyMeter = Callable[[ModelEntry, float], Energy]


class Decision(Protocol):
    """What the policy decided for one request; the engine applies every part of it."""

    @property
    def params(self) -> GenerationParams: ...

    @property
    def threads(self) -> int:  # 0: the model's own count
        ...

    @property
    def prefer_remote(self) -> bool: ...

    @property
    def caching(self) -> bool: ...

    @property
    def messages(self) -> tuple[str, ...]: ...

    @property
    def local_refused(self) -> str:  # why no local model may start now ("": they may)
        ...


@dataclass(frozen=True)
class LoadCaps:
    context_length: int  # 0: no cap
    batch_size: int  # 0: no cap
    use_gpu: bool = True
    why: str = ""
    parallel: int = 0  # requests a model serves at once; 0: no cap


class InferencePolicy(Protocol):
    """Device-aware adjustment of requests (rustaid.power.policy implements it)."""

    async def adjust(
        self, params: GenerationParams, priority: Priority, threads: int = 0
    ) -> Decision: ...

    async def wait_for_background_allowed(self) -> float: ...

    def prefer_small(self) -> str:
        """Why the router should prefer smaller local models now ("" when not)."""
        ...

    def running_caps(self, threads: int = 0) -> tuple[int, float]:
        """For running generations: (threads, 0 = the model's own; rest after each token)."""
        ...

    def load_caps(self) -> LoadCaps:
        """What a model loaded now may use (context, batch, GPU) under the device's state."""
        ...

    def generating(
        self, *, interactive: bool = True, max_tokens: int = 0
    ) -> contextlib.AbstractAsyncContextManager[None]: ...


@dataclass(frozen=True)
class RequestRecord:
    """Published on Engine.requests when a generation ends: its figures, or `failed`
    when it failed through the daemon's or the engine's fault (a client's bad request
    or cancellation is not recorded)."""

    model_id: str
    stats: CompletionStats | None = None
    timings: Timings | None = None
    failed: bool = False


@dataclass
class Speed:
    """A model's measured speed on this device (moving averages of recent requests)."""

    tokens_per_second: float = 0.0
    time_to_first_token_ms: float = 0.0
    samples: int = 0
    # The energy estimate of a generated token (0: not measured yet).
    joules_per_token: float = 0.0

    def add(self, tps: float, ttft_ms: float) -> None:
        a = 0.3 if self.samples else 1.0
        if tps > 0:
            self.tokens_per_second += a * (tps - self.tokens_per_second)
        self.time_to_first_token_ms += a * (ttft_ms - self.time_to_first_token_ms)
        self.samples += 1

    def add_energy(self, joules: float, tokens: int) -> None:
        if joules <= 0 or tokens <= 0:
            return
        per_token = joules / tokens
        a = 0.3 if self.joules_per_token else 1.0
        self.joules_per_token += a * (per_token - self.joules_per_token)


GenerationEvent = Queued | Text | Done


@dataclass(frozen=True)
class Activity:
    """Published on Engine.activity when a request joins or leaves a model's queue."""

    running: int  # requests generating (or tokenizing) right now
    waiting: int  # requests waiting for their model's turn
