"""Picks a model for a request that names none, and explains the choice."""

from __future__ import annotations

from dataclasses import dataclass, field

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


def select_model(
    entries: list[ModelEntry], criteria: SelectionCriteria, kind: ModelKind = ModelKind.LLM
) -> Selection:
    """Filter by hard requirements, then score. Raises PreconditionFailed if none fits."""
    candidates: list[Candidate] = []
    for e in entries:
        if e.kind is not kind:
            continue
        c = Candidate(e.id)
        candidates.append(c)
        if e.state is ModelState.ERROR:
            c.excluded = True
            c.reasons.append(f"unusable: {e.error}")
            continue
        missing = [t for t in criteria.required_tags if t not in e.tags]
        if missing:
            c.excluded = True
            c.reasons.append(f"missing required tags: {', '.join(missing)}")
            continue
        c.score += e.priority
        if e.priority:
            c.reasons.append(f"priority {e.priority:+d}")
        if e.state is ModelState.LOADED:
            c.score += 20
            c.reasons.append("+20 already loaded")
        if criteria.prefer_local:
            c.score += 50
            c.reasons.append("+50 local")
        if criteria.prefer_speed or criteria.battery_sensitive:
            # Smaller files generate faster and draw less power: up to +10.
            bonus = 10.0 / (1.0 + e.size_bytes / 1e9)
            c.score += bonus
            c.reasons.append(f"+{bonus:.1f} size {e.size_bytes / 1e6:.0f} MB")
        if criteria.prefer_quality:
            bonus = min(10.0, e.metadata.parameter_count / 1e9)
            c.score += bonus
            c.reasons.append(f"+{bonus:.1f} {e.metadata.parameter_count / 1e6:.0f}M parameters")
        matched = [t for t in criteria.required_tags if t in e.tags]
        if matched:
            c.score += 10 * len(matched)
            c.reasons.append(f"+{10 * len(matched)} tags {', '.join(matched)}")
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
