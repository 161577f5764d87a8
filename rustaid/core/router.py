"""Picks a model for a request that names none, and explains the choice."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Protocol

from rustaid.core.registry import ModelEntry, ModelKind, ModelState
from rustaid.errors import PreconditionFailed


@dataclass(frozen=True)
class SelectionCriteria:
    prefer_local: bool = False
    prefer_speed: bool = False
    prefer_quality: bool = False
    battery_sensitive: bool = False
    max_latency_ms: int = 0
    required_tags: tuple[str, ...] = ()
    # Set by the power policy (low battery), not by clients.
    prefer_remote: bool = False


@dataclass
class Candidate:
    model_id: str
    score: float = 0.0
    reasons: list[str] = field(default_factory=list)
    excluded: bool = False


@dataclass(frozen=True)
class Selection:
    model_id: str
    candidates: list[Candidate]


class _Speed(Protocol):
    tokens_per_second: float
    time_to_first_token_ms: float
    samples: int


def select_model(
    entries: list[ModelEntry],
    criteria: SelectionCriteria,
    kind: ModelKind = ModelKind.LLM,
    *,
    speed: Mapping[str, _Speed] | None = None,
    fits: Callable[[ModelEntry], str] = lambda e: "",
    remote: Callable[[ModelEntry], bool] = lambda e: e.path is None,
) -> Selection:
    """Filter by hard requirements, then score:
    priority; +50 local when prefer_local (+50 remote when prefer_remote); battery
    efficiency (0..10) when battery_sensitive; measured speed (10 per decade of
    tokens/s) when prefer_speed; quality (0..20) when prefer_quality; +10 per required tag; +5 when
    already loaded (no load wait). Raises PreconditionFailed if no model fits."""
    speed = speed or {}
    candidates: list[Candidate] = []
    for e in entries:
        if e.kind is not kind:
            continue
        c = Candidate(e.id)
        candidates.append(c)
        is_remote = remote(e)
        measured = speed.get(e.id)
        why_not = ""
        if e.state is ModelState.ERROR:
            why_not = f"unusable: {e.error}"
        elif missing := [t for t in criteria.required_tags if t not in e.tags]:
            why_not = f"missing required tags: {', '.join(missing)}"
        elif why := fits(e):
            why_not = why
        elif (
            criteria.max_latency_ms
            and measured is not None
            and measured.samples
            and measured.time_to_first_token_ms > criteria.max_latency_ms
        ):
            why_not = (
                f"measured time to first token {measured.time_to_first_token_ms:.0f} ms "
                f"exceeds max_latency_ms {criteria.max_latency_ms}"
            )
        if why_not:
            c.excluded = True
            c.reasons.append(why_not)
            continue

        def add(points: float, why: str, c: Candidate = c) -> None:
            c.score += points
            c.reasons.append(f"{points:+.1f} {why}")

        if e.priority:
            add(e.priority, "priority")
        if e.state is ModelState.LOADED:
            add(5, "already loaded")
        if criteria.prefer_local and not is_remote:
            add(50, "local")
        if criteria.prefer_remote and is_remote:
            add(50, "remote (power policy)")
        if criteria.battery_sensitive:
            if is_remote:
                add(10, "runs remotely: no local battery draw")
            else:
                draw_w = (e.constraints.max_battery_draw_mw or 0) / 1000
                size_gb = e.size_bytes / 1e9
                # Declared draw when known, else smaller weights mean less work per token.
                efficiency = 10 / (1 + draw_w / 2) if draw_w else 10 / (1 + size_gb * 2)
                add(efficiency, f"battery efficiency ({'declared draw' if draw_w else 'size'})")
        if criteria.prefer_speed:
            if measured is not None and measured.tokens_per_second > 0:
                tps = measured.tokens_per_second
                add(10 * math.log10(1 + tps), f"measured {tps:.0f} tokens/s")
            elif not is_remote:
                guess = min(10.0, 0.2 / (0.02 + e.size_bytes / 1e9))
                add(guess, "speed not measured yet: estimated from size")
        if criteria.prefer_quality:
            if e.quality:
                add(2 * e.quality, f"quality {e.quality:g}/10")
            elif e.metadata.parameter_count:
                billions = e.metadata.parameter_count / 1e9
                add(min(20.0, 4 * math.log2(1 + billions * 4)), f"{billions:.2f}B parameters")
        matched = [t for t in criteria.required_tags if t in e.tags]
        if matched:
            add(10 * len(matched), f"tags {', '.join(matched)}")
    usable = [c for c in candidates if not c.excluded]
    # Highest score wins; ties go to the most recently used, then the id for stability.
    last_used = {e.id: e.last_used for e in entries}
    usable.sort(key=lambda c: (-c.score, -last_used.get(c.model_id, 0.0), c.model_id))
    if not usable:
        why = "; ".join(f"{c.model_id}: {c.reasons[0]}" for c in candidates) or (
            f"no {kind.value} models; drop a .gguf file into the models folder"
        )
        raise PreconditionFailed(f"no model fits the request ({why})", reason="NO_MODEL")
    ordered = usable + [c for c in candidates if c.excluded]
    return Selection(usable[0].model_id, ordered)
