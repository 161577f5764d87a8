"""Per-model inference metrics: requests, tokens, speed, time to first token, energy.

Fed by the engine's request records (`observe()`, a listener on `Engine.requests`):
`record()` for a finished generation, `record_error()` for a failed one. Speed is kept
two ways: totals (tokens over generation time, for GetMetrics)
and a recent average (for cost estimates, which should follow the device's current
speed rather than its history).

Energy is measured only where the device tells: while it runs on battery, the
battery's discharge rate (UPower EnergyRate or sysfs power_now) times the generation's
duration. That is the whole system's draw, not rustaid's alone. On AC power it is not
measurable and not counted.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

# Weight of the newest generation in the recent-speed average.
RECENT_WEIGHT = 0.3


class _Stats(Protocol):
    @property
    def prompt_tokens(self) -> int: ...
    @property
    def completion_tokens(self) -> int: ...
    @property
    def prompt_eval_ms(self) -> float: ...
    @property
    def generation_ms(self) -> float: ...


class _Timings(Protocol):
    @property
    def time_to_first_token_ms(self) -> float: ...
    @property
    def tokens_per_second(self) -> float: ...
    @property
    def load_ms(self) -> float: ...


class _Record(Protocol):
    @property
    def model_id(self) -> str: ...
    @property
    def stats(self) -> _Stats | None: ...
    @property
    def timings(self) -> _Timings | None: ...
    @property
    def failed(self) -> bool: ...


@dataclass(frozen=True)
class ModelMetrics:
    model_id: str
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    # Completion tokens over generation time, all requests.
    tokens_per_second: float = 0.0
    # Prompt tokens over prompt evaluation time, all requests.
    prompt_tokens_per_second: float = 0.0
    # Mean time to first token.
    time_to_first_token_ms: float = 0.0
    # Joules measured on battery, and the tokens generated while measuring.
    energy_joules: float = 0.0
    measured_tokens: int = 0
    # Recent averages (exponentially weighted).
    recent_tokens_per_second: float = 0.0
    recent_prompt_tokens_per_second: float = 0.0
    # How long its last load took (0: not loaded by a generation yet).
    last_load_ms: float = 0.0

    @property
    def joules_per_token(self) -> float:
        return self.energy_joules / self.measured_tokens if self.measured_tokens else 0.0


@dataclass
class _Totals:
    requests: int = 0
    errors: int = 0
    prompt_tokens: int = 0
    completion_tokens: int = 0
    prompt_s: float = 0.0
    generation_s: float = 0.0
    ttft_ms_sum: float = 0.0
    ttft_count: int = 0
    energy_j: float = 0.0
    measured_tokens: int = 0
    recent_tps: float = 0.0
    recent_prompt_tps: float = 0.0
    last_load_ms: float = 0.0


def _ewma(old: float, new: float) -> float:
    return new if old <= 0 else old + RECENT_WEIGHT * (new - old)


class Metrics:
    """Thread-safe; `power_draw_w` says the device's current draw in watts while on
    battery (None when unknown or on AC power)."""

    def __init__(self, power_draw_w: Callable[[], float | None] | None = None) -> None:
        self._power_draw_w = power_draw_w or (lambda: None)
        self._lock = threading.Lock()
        self._models: dict[str, _Totals] = {}
        self.requests = 0
        self.errors = 0
        self.since = time.time()

    def observe(self, record: _Record) -> None:
        """A request record from the engine (`Engine.requests.listen(metrics.observe)`)."""
        if record.failed:
            self.record_error(record.model_id)
        elif record.stats is not None and record.timings is not None:
            self.record(record.model_id, record.stats, record.timings)

    def record(self, model_id: str, stats: _Stats, timings: _Timings) -> None:
        """A finished generation (also one cancelled midway: its tokens were made)."""
        draw = self._power_draw_w()
        seconds = (stats.prompt_eval_ms + stats.generation_ms) / 1000
        with self._lock:
            self.requests += 1
            t = self._models.setdefault(model_id, _Totals())
            t.requests += 1
            t.prompt_tokens += stats.prompt_tokens
            t.completion_tokens += stats.completion_tokens
            t.prompt_s += stats.prompt_eval_ms / 1000
            t.generation_s += stats.generation_ms / 1000
            if timings.time_to_first_token_ms > 0:
                t.ttft_ms_sum += timings.time_to_first_token_ms
                t.ttft_count += 1
            tps = timings.tokens_per_second
            if tps <= 0 and stats.generation_ms > 0:
                tps = stats.completion_tokens / (stats.generation_ms / 1000)
            if tps > 0:
                t.recent_tps = _ewma(t.recent_tps, tps)
            if stats.prompt_eval_ms > 0 and stats.prompt_tokens > 0:
                t.recent_prompt_tps = _ewma(
                    t.recent_prompt_tps, stats.prompt_tokens / (stats.prompt_eval_ms / 1000)
                )
            if timings.load_ms > 0:
                t.last_load_ms = timings.load_ms
            if draw is not None and draw > 0 and seconds > 0:
                t.energy_j += draw * seconds
                t.measured_tokens += stats.completion_tokens

    def record_error(self, model_id: str = "") -> None:
        """A request that failed (bad input excluded: count only the daemon's failures)."""
        with self._lock:
            self.requests += 1
            self.errors += 1
            if model_id:
                t = self._models.setdefault(model_id, _Totals())
                t.requests += 1
                t.errors += 1

    def model(self, model_id: str) -> ModelMetrics | None:
        with self._lock:
            t = self._models.get(model_id)
            return _view(model_id, t) if t is not None else None

    def models(self) -> list[ModelMetrics]:
        with self._lock:
            return [_view(m, t) for m, t in sorted(self._models.items())]

    def reset(self) -> None:
        with self._lock:
            self._models.clear()
            self.requests = 0
            self.errors = 0
            self.since = time.time()


def _view(model_id: str, t: _Totals) -> ModelMetrics:
    return ModelMetrics(
        model_id=model_id,
        requests=t.requests,
        errors=t.errors,
        prompt_tokens=t.prompt_tokens,
        completion_tokens=t.completion_tokens,
        tokens_per_second=t.completion_tokens / t.generation_s if t.generation_s > 0 else 0.0,
        prompt_tokens_per_second=t.prompt_tokens / t.prompt_s if t.prompt_s > 0 else 0.0,
        time_to_first_token_ms=t.ttft_ms_sum / t.ttft_count if t.ttft_count else 0.0,
        energy_joules=t.energy_j,
        measured_tokens=t.measured_tokens,
        recent_tokens_per_second=t.recent_tps,
        recent_prompt_tokens_per_second=t.recent_prompt_tps,
        last_load_ms=t.last_load_ms,
    )
