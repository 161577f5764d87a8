"""Picks a model for a request that names none, and explains the choice."""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Protocol

from rustaid.core.registry import ModelEntry, ModelKind, ModelState, empty_folder_hint
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
    joules_per_token: float


def select_model(
    entries: list[ModelEntry],
    criteria: SelectionCriteria,
    kind: ModelKind = ModelKind.LLM,
    *,
    speed: Mapping[str, _Speed] | None = None,
    fits: Callable[[ModelEntry], str] = lambda e: "",
    remote: Callable[[ModelEntry], bool] = lambda e: e.path is None,
    models_dir: Path | None = None,
    prefer_small: str = "",
) -> Selection:
    """Filter by hard requirements, then score:
    priority; +50 local when prefer_local (+50 remote when prefer_remote); battery
    efficiency (0..10) when battery_sensitive; measured speed (10 per decade of
    tokens/s) when prefer_speed; quality (0..20) when prefer_quality; +10 per required tag; +5 when
    already loaded (no load wait); when the device asks for less work (`prefer_small`
    names why: a saving profile, heat, memory pressure), up to +20 for the local model
    that spends the least energy per token, in proportion: by the measured estimate once
    every local model has one, by file size until then. Raises PreconditionFailed if no
    model fits."""
    speed = speed or {}
    local = [
        e
        for e in entries
        if e.kind is kind and e.size_bytes and not remote(e) and e.state is not ModelState.ERROR
    ]
    thrift = _thrift(local, speed)
    candidates: list[Candidate] = []
    for e in entries:
        if e.kind is not kind:
            continue
        c = Candidate(e.id)
        candidates.append(c)
        measured = speed.get(e.id)
        why_not = _why_excluded(e, criteria, fits, measured)
        if why_not:
            c.excluded = True
            c.reasons.append(why_not)
            continue
        for points, why in _points(e, criteria, remote(e), measured, prefer_small, thrift):
            c.score += points
            c.reasons.append(f"{points:+.1f} {why}")
    usable = [c for c in candidates if not c.excluded]
    # Highest score wins; ties go to the most recently used, then the id for stability.
    last_used = {e.id: e.last_used for e in entries}
    usable.sort(key=lambda c: (-c.score, -last_used.get(c.model_id, 0.0), c.model_id))
    if not usable:
        why = "; ".join(f"{c.model_id}: {c.reasons[0]}" for c in candidates) or (
            f"no {kind.value} models; {empty_folder_hint(models_dir)}"
        )
        raise PreconditionFailed(f"no model fits the request ({why})", reason="NO_MODEL")
    ordered = usable + [c for c in candidates if c.excluded]
    return Selection(usable[0].model_id, ordered)


def _why_excluded(
    e: ModelEntry,
    criteria: SelectionCriteria,
    fits: Callable[[ModelEntry], str],
    measured: _Speed | None,
) -> str:
    """The hard requirement the model fails ("" when it may serve the request)."""
    if e.state is ModelState.ERROR:
        return f"unusable: {e.error}"
    if missing := [t for t in criteria.required_tags if t not in e.tags]:
        return f"missing required tags: {', '.join(missing)}"
    if why := fits(e):
        return why
    if (
        criteria.max_latency_ms
        and measured is not None
        and measured.samples
        and measured.time_to_first_token_ms > criteria.max_latency_ms
    ):
        return (
            f"measured time to first token {measured.time_to_first_token_ms:.0f} ms "
            f"exceeds max_latency_ms {criteria.max_latency_ms}"
        )
    return ""


Points = list[tuple[float, str]]
# A local model's cost per token for the "less work" preference: (cost, what it is).
Thrift = dict[str, tuple[float, str]]


def _thrift(local: list[ModelEntry], speed: Mapping[str, _Speed]) -> Thrift:
    """Each local model's measured energy per token when every one has been measured
    (a fair comparison), else its file size (what it reads from memory per token)."""
    energies = {e.id: s.joules_per_token for e in local if (s := speed.get(e.id)) is not None}
    if local and all(energies.get(e.id, 0) > 0 for e in local):
        return {e.id: (energies[e.id], f"{energies[e.id]:.3g} J per token measured") for e in local}
    return {e.id: (float(e.size_bytes), "smaller model") for e in local}


def _points(
    e: ModelEntry,
    criteria: SelectionCriteria,
    is_remote: bool,
    measured: _Speed | None,
    prefer_small: str,
    thrift: Thrift,
) -> Points:
    """What a usable model scores, and why, in the order the reasons are shown."""
    points: Points = []
    if e.priority:
        points.append((e.priority, "priority"))
    if e.state is ModelState.LOADED:
        points.append((5, "already loaded"))
    if prefer_small and e.id in thrift:
        cost, what = thrift[e.id]
        cheapest = min(c for c, _ in thrift.values())
        points.append((20 * cheapest / cost, f"{what} preferred: {prefer_small}"))
    if criteria.prefer_local and not is_remote:
        points.append((50, "local"))
    if criteria.prefer_remote and is_remote:
        points.append((50, "remote (power policy)"))
    if criteria.battery_sensitive:
        points.append(_battery_points(e, is_remote))
    if criteria.prefer_speed:
        points += _speed_points(e, is_remote, measured)
    if criteria.prefer_quality:
        points += _quality_points(e)
    matched = [t for t in criteria.required_tags if t in e.tags]
    if matched:
        points.append((10 * len(matched), f"tags {', '.join(matched)}"))
    return points


def _battery_points(e: ModelEntry, is_remote: bool) -> tuple[float, str]:
    if is_remote:
        return 10, "runs remotely: no local battery draw"
    draw_w = (e.constraints.max_battery_draw_mw or 0) / 1000
    size_gb = e.size_bytes / 1e9
    # Declared draw when known, else smaller weights mean less work per token.
    efficiency = 10 / (1 + draw_w / 2) if draw_w else 10 / (1 + size_gb * 2)
    return efficiency, f"battery efficiency ({'declared draw' if draw_w else 'size'})"


def _speed_points(e: ModelEntry, is_remote: bool, measured: _Speed | None) -> Points:
    if measured is not None and measured.tokens_per_second > 0:
        tps = measured.tokens_per_second
        return [(10 * math.log10(1 + tps), f"measured {tps:.0f} tokens/s")]
    if not is_remote:
        guess = min(10.0, 0.2 / (0.02 + e.size_bytes / 1e9))
        return [(guess, "speed not measured yet: estimated from size")]
    return []


def _quality_points(e: ModelEntry) -> Points:
    if e.quality:
        return [(2 * e.quality, f"quality {e.quality:g}/10")]
    if e.metadata.parameter_count:
        billions = e.metadata.parameter_count / 1e9
        return [(min(20.0, 4 * math.log2(1 + billions * 4)), f"{billions:.2f}B parameters")]
    return []
