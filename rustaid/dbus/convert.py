"""Core dataclasses -> D-Bus values (`a{sv}` dictionaries of Variants).

The D-Bus edge's own conversion layer: the core never sees dbus-next types.
"""

from __future__ import annotations

import dataclasses
import enum
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dbus_next.signature import Variant

from rustaid.core.engine import Done
from rustaid.core.registry import ModelEntry

if TYPE_CHECKING:
    from rustaid.power.snapshot import ResourceSnapshot
    from rustaid.rag.ask import Hit
    from rustaid.updates.journal import UpdateRecord
    from rustaid.updates.manager import AvailableUpdate

VariantDict = dict[str, Variant]


def safe_text(text: str) -> str:
    """D-Bus strings cannot hold U+0000 (a bus drops the connection that sends one), but
    a model can generate it (byte tokens): it becomes U+FFFD."""
    return text.replace("\x00", "\ufffd") if "\x00" in text else text


def safe_body(value: Any) -> Any:
    """`safe_text` applied to every string of a message body (lists, dicts, Variants)."""
    if isinstance(value, str):
        return safe_text(value)
    if isinstance(value, list):
        return [safe_body(v) for v in value]
    if isinstance(value, dict):
        return {safe_body(k): safe_body(v) for k, v in value.items()}
    if isinstance(value, Variant):
        return Variant(value.signature, safe_body(value.value))
    return value


def model_to_dbus(e: ModelEntry) -> VariantDict:
    m = e.metadata
    return {
        "id": Variant("s", e.id),
        "kind": Variant("s", e.kind.value),
        "state": Variant("s", e.state.value),
        "error": Variant("s", e.error),
        "provider": Variant("s", e.provider),
        "path": Variant("s", str(e.path)),
        "size_bytes": Variant("t", e.size_bytes),
        "architecture": Variant("s", m.architecture),
        "name": Variant("s", m.name),
        "parameter_count": Variant("t", m.parameter_count),
        "quantization": Variant("s", m.quantization),
        # The model's own context length (file header) and the loaded one (0: not loaded).
        "model_context_length": Variant("u", m.context_length),
        "context_length": Variant("u", e.context_length),
        "threads": Variant("u", e.threads),
        "parallel": Variant("u", e.parallel),
        "memory_bytes": Variant("t", e.memory_bytes),
        "pinned": Variant("b", e.pinned),
        "tags": Variant("as", list(e.tags)),
        "priority": Variant("i", e.priority),
        "modified_time": Variant("d", e.mtime),
        "last_used_time": Variant("d", e.last_used),
    }


def done_to_dbus(done: Done) -> VariantDict:
    s, t = done.stats, done.timings
    return {
        "model_id": Variant("s", done.model_id),
        "finish_reason": Variant("s", s.finish_reason.value),
        "prompt_tokens": Variant("u", s.prompt_tokens),
        "completion_tokens": Variant("u", s.completion_tokens),
        "queue_ms": Variant("d", t.queue_ms),
        "load_ms": Variant("d", t.load_ms),
        "prompt_eval_ms": Variant("d", t.prompt_eval_ms),
        "generation_ms": Variant("d", t.generation_ms),
        "time_to_first_token_ms": Variant("d", t.time_to_first_token_ms),
        "tokens_per_second": Variant("d", t.tokens_per_second),
        "total_ms": Variant("d", t.total_ms),
    }


def hit_to_dbus(h: Hit, number: int = 0) -> VariantDict:
    """A retrieved passage (Search hits, Ask sources); `number` is the [n] an answer
    cites it by (Ask only)."""
    out = {
        "document_id": Variant("s", safe_text(h.document_id)),
        "chunk_id": Variant("s", h.chunk_id),
        "text": Variant("s", safe_text(h.text)),
        "score": Variant("d", float(h.score)),
        "metadata": Variant("a{sv}", mapping_to_dbus(h.metadata)),
        "source": Variant("s", safe_text(h.source)),
        "title": Variant("s", safe_text(h.title)),
        "page": Variant("u", max(0, h.page)),
        "heading_path": Variant("as", [safe_text(x) for x in h.heading_path]),
        "chunk_index": Variant("u", max(0, h.chunk_index)),
    }
    if number:
        out["number"] = Variant("u", number)
    return out


def available_update_to_dbus(u: AvailableUpdate) -> VariantDict:
    a = u.artifact
    return {
        "artifact_id": Variant("s", a.id),
        "kind": Variant("s", a.kind.value),
        "current_version": Variant("s", u.current_version),
        "available_version": Variant("s", a.version),
        "size_bytes": Variant("t", a.size),
        "sha256": Variant("s", a.sha256),
        "channel": Variant("s", u.channel),
        "in_rollout": Variant("b", u.in_rollout),
        "automatic": Variant("b", u.automatic),
        "blocked": Variant("b", u.blocked),
        "note": Variant("s", safe_text(u.note)),
    }


def update_record_to_dbus(r: UpdateRecord) -> VariantDict:
    return {
        "update_id": Variant("s", r.update_id),
        "artifact_id": Variant("s", r.artifact_id),
        "kind": Variant("s", r.kind),
        "from_version": Variant("s", r.from_version),
        "to_version": Variant("s", r.to_version),
        "outcome": Variant("s", r.outcome),
        "message": Variant("s", safe_text(r.message)),
        "started_time": Variant("d", r.started),
        "finished_time": Variant("d", r.finished),
    }


@dataclass(frozen=True)
class ResourceState:
    """What the D-Bus API tells about the device (properties, ResourceStateChanged)."""

    # performance, balanced, power-saver, ultra-saver, custom
    power_profile: str
    # power-profiles-daemon, battery, override, default
    profile_source: str
    # nominal, fair, serious, critical
    thermal_state: str
    on_battery: bool
    # Critically hot: health reports GenerateService NOT_SERVING, requests run at the
    # minimum (one thread, few tokens) until it cools down.
    critical: bool
    # normal, warning, critical
    memory_pressure: str


def _name(value: str) -> str:
    return value.replace("_", "-")


def resource_state(snapshot: ResourceSnapshot, generate_serving: bool) -> ResourceState:
    return ResourceState(
        power_profile=_name(snapshot.power_profile.value),
        profile_source=_name(snapshot.profile_source.value),
        thermal_state=snapshot.thermal.state.name.lower(),
        on_battery=snapshot.power.on_battery,
        critical=not generate_serving,
        memory_pressure=snapshot.memory.pressure.name.lower(),
    )


def to_variant(value: Any) -> Variant | None:
    """A plain value as a Variant: bool b, int x, float d, str/enum/path s, a sequence of
    strings as, a mapping or dataclass a{sv}, other sequences av. None: leave out."""
    if value is None:
        return None
    if isinstance(value, Variant):
        return value
    if isinstance(value, bool):
        return Variant("b", value)
    if isinstance(value, enum.Enum):
        return Variant("s", str(value.value))
    if isinstance(value, int):
        return Variant("x", value)
    if isinstance(value, float):
        return Variant("d", value)
    if isinstance(value, str | Path):
        return Variant("s", safe_text(str(value)))
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return Variant("a{sv}", record_to_dbus(value))
    if isinstance(value, Mapping):
        return Variant("a{sv}", mapping_to_dbus(value))
    if isinstance(value, Iterable) and not isinstance(value, bytes | bytearray):
        items = list(value)
        if all(isinstance(i, str) for i in items):
            return Variant("as", [safe_text(i) for i in items])
        return Variant("av", [v for v in map(to_variant, items) if v is not None])
    raise TypeError(f"no D-Bus representation for {type(value).__name__}")


def mapping_to_dbus(values: Mapping[str, Any]) -> VariantDict:
    out: VariantDict = {}
    for key, value in values.items():
        variant = to_variant(value)
        if variant is not None:
            out[str(key)] = variant
    return out


def record_to_dbus(record: Any) -> VariantDict:
    """Any dataclass of the core as a{sv}, field by field (see to_variant)."""
    return mapping_to_dbus({f.name: getattr(record, f.name) for f in dataclasses.fields(record)})


def records_to_dbus(records: Iterable[Any]) -> list[VariantDict]:
    return [record_to_dbus(r) for r in records]
