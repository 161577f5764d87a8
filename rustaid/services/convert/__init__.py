"""The one conversion layer between protobuf messages and the core's dataclasses.

Shared, generation, models and plugins messages convert here; each further service has
its own module beside this one (convert/rag.py for rag.proto, ...).

Naming rule (checked by tests/services/test_convert.py): a message `FooBar` converts
with `foo_bar_to_pb` and/or `foo_bar_from_pb`.
"""

from __future__ import annotations

from collections.abc import Iterable

from google.protobuf.timestamp_pb2 import Timestamp

from rustaid.api.v1 import common_pb2, generate_pb2, models_pb2, plugins_pb2
from rustaid.core.engine import Done, Energy, Queued, Timings
from rustaid.core.registry import ModelEntry, ModelEvent, ModelEventType, ModelKind, ModelMetadata
from rustaid.core.registry import ModelState as DomainModelState
from rustaid.core.router import Candidate, Selection, SelectionCriteria
from rustaid.core.scheduler import Priority
from rustaid.errors import InvalidArgument
from rustaid.plugins import PluginRecord, PluginSource, PluginState
from rustaid.providers import (
    ChatMessage,
    CompletionStats,
    FinishReason,
    GenerationParams,
    ResourceRequirements,
    Role,
)

# -- enums --------------------------------------------------------------------------------

_KIND = {
    ModelKind.LLM: common_pb2.MODEL_KIND_LLM,
    ModelKind.EMBEDDING: common_pb2.MODEL_KIND_EMBEDDING,
    ModelKind.NLU: common_pb2.MODEL_KIND_NLU,
}
_KIND_FROM = {v: k for k, v in _KIND.items()}
_MODEL_STATE = {
    DomainModelState.AVAILABLE: models_pb2.MODEL_STATE_AVAILABLE,
    DomainModelState.LOADING: models_pb2.MODEL_STATE_LOADING,
    DomainModelState.LOADED: models_pb2.MODEL_STATE_LOADED,
    DomainModelState.ERROR: models_pb2.MODEL_STATE_ERROR,
}
_EVENT = {
    ModelEventType.ADDED: models_pb2.MODEL_EVENT_TYPE_ADDED,
    ModelEventType.CHANGED: models_pb2.MODEL_EVENT_TYPE_CHANGED,
    ModelEventType.REMOVED: models_pb2.MODEL_EVENT_TYPE_REMOVED,
    ModelEventType.LOADED: models_pb2.MODEL_EVENT_TYPE_LOADED,
    ModelEventType.UNLOADED: models_pb2.MODEL_EVENT_TYPE_UNLOADED,
    ModelEventType.FAILED: models_pb2.MODEL_EVENT_TYPE_FAILED,
}
_FINISH = {
    FinishReason.STOP: common_pb2.FINISH_REASON_STOP,
    FinishReason.LENGTH: common_pb2.FINISH_REASON_LENGTH,
    FinishReason.STOP_SEQUENCE: common_pb2.FINISH_REASON_STOP_SEQUENCE,
    FinishReason.CANCELLED: common_pb2.FINISH_REASON_CANCELLED,
}
_ROLE = {
    generate_pb2.ROLE_SYSTEM: Role.SYSTEM,
    generate_pb2.ROLE_USER: Role.USER,
    generate_pb2.ROLE_ASSISTANT: Role.ASSISTANT,
    generate_pb2.ROLE_TOOL: Role.TOOL,
}
_PLUGIN_STATE = {
    PluginState.DISCOVERED: plugins_pb2.PLUGIN_STATE_DISCOVERED,
    PluginState.VALIDATED: plugins_pb2.PLUGIN_STATE_VALIDATED,
    PluginState.LOADED: plugins_pb2.PLUGIN_STATE_LOADED,
    PluginState.ACTIVE: plugins_pb2.PLUGIN_STATE_ACTIVE,
    PluginState.UNLOADED: plugins_pb2.PLUGIN_STATE_UNLOADED,
    PluginState.FAILED: plugins_pb2.PLUGIN_STATE_FAILED,
}
_PLUGIN_SOURCE = {
    PluginSource.BUILTIN: plugins_pb2.PLUGIN_SOURCE_BUILTIN,
    PluginSource.ENTRY_POINT: plugins_pb2.PLUGIN_SOURCE_ENTRY_POINT,
    PluginSource.DROP_IN: plugins_pb2.PLUGIN_SOURCE_DROP_IN,
}


def model_kind_from_pb(kind: int) -> ModelKind | None:
    """MODEL_KIND_UNSPECIFIED -> None (all kinds)."""
    if kind == common_pb2.MODEL_KIND_UNSPECIFIED:
        return None
    if kind not in _KIND_FROM:
        raise InvalidArgument(f"kind {kind} is not a known ModelKind", field="kind")
    return _KIND_FROM[kind]  # type: ignore[index]


def keep_alive_from_pb(k: common_pb2.KeepAlive) -> float:
    """Seconds; -1 for forever."""
    if k.forever:
        return -1.0
    d = k.duration
    # The range google.protobuf.Duration defines (ToTimedelta overflows past it).
    if abs(d.seconds) > 315_576_000_000 or abs(d.nanos) > 999_999_999:
        raise InvalidArgument(
            "keep_alive.duration is out of range: seconds must be within 10,000 years and "
            "nanos below one second (use keep_alive.forever to never unload)",
            field="keep_alive.duration",
        )
    seconds = d.seconds + d.nanos / 1e9
    if seconds < 0:
        raise InvalidArgument(
            "keep_alive.duration must be >= 0 (use keep_alive.forever to never unload)",
            field="keep_alive.duration",
        )
    return seconds


def priority_from_pb(priority: int) -> Priority:
    if priority == common_pb2.PRIORITY_BACKGROUND:
        return Priority.BACKGROUND
    if priority in (common_pb2.PRIORITY_UNSPECIFIED, common_pb2.PRIORITY_INTERACTIVE):
        return Priority.INTERACTIVE
    raise InvalidArgument(f"priority {priority} is not a known Priority", field="priority")


def _timestamp(seconds: float) -> Timestamp | None:
    """None (field left unset) for "never"."""
    if not seconds:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


# -- models -------------------------------------------------------------------------------


def model_metadata_to_pb(m: ModelMetadata) -> models_pb2.ModelMetadata:
    return models_pb2.ModelMetadata(
        architecture=m.architecture,
        name=m.name,
        context_length=m.context_length,
        parameter_count=m.parameter_count,
        quantization=m.quantization,
        chat_template=m.chat_template,
        embedding_length=m.embedding_length,
        block_count=m.block_count,
        vocab_size=m.vocab_size,
    )


def model_to_pb(e: ModelEntry) -> models_pb2.Model:
    return models_pb2.Model(
        id=e.id,
        kind=_KIND[e.kind],
        provider=e.provider,
        path=e.location,
        state=_MODEL_STATE[e.state],
        error=e.error,
        size_bytes=e.size_bytes,
        metadata=model_metadata_to_pb(e.metadata),
        tags=list(e.tags),
        priority=e.priority,
        modified_time=_timestamp(e.mtime),
        last_used_time=_timestamp(e.last_used),
        memory_bytes=e.memory_bytes,
        pinned=e.pinned,
        context_length=e.context_length,
        threads=e.threads,
        parallel=e.parallel,
    )


def watch_models_response_to_pb(event: ModelEvent) -> models_pb2.WatchModelsResponse:
    return models_pb2.WatchModelsResponse(
        type=_EVENT[event.type],
        model=model_to_pb(event.model),
        time=_timestamp(event.time),
        reason=event.reason,
    )


def selection_criteria_from_pb(c: common_pb2.SelectionCriteria) -> SelectionCriteria:
    tags = tuple(c.required_tags)
    if any(not t for t in tags):
        raise InvalidArgument("selection.required_tags has an empty tag", field="required_tags")
    return SelectionCriteria(
        prefer_local=c.prefer_local,
        prefer_speed=c.prefer_speed,
        prefer_quality=c.prefer_quality,
        battery_sensitive=c.battery_sensitive,
        max_latency_ms=c.max_latency_ms,
        required_tags=tags,
    )


def model_candidate_to_pb(c: Candidate) -> models_pb2.ModelCandidate:
    return models_pb2.ModelCandidate(
        model_id=c.model_id, score=c.score, reasons=c.reasons, excluded=c.excluded
    )


def select_model_response_to_pb(s: Selection) -> models_pb2.SelectModelResponse:
    return models_pb2.SelectModelResponse(
        model_id=s.model_id, candidates=[model_candidate_to_pb(c) for c in s.candidates]
    )


# -- generation ---------------------------------------------------------------------------


def generation_params_from_pb(p: common_pb2.GenerationParams) -> GenerationParams:
    def opt(name: str) -> float | int | None:
        return getattr(p, name) if p.HasField(name) else None

    return GenerationParams(
        max_tokens=opt("max_tokens"),  # type: ignore[arg-type]
        temperature=opt("temperature"),
        top_p=opt("top_p"),
        top_k=opt("top_k"),  # type: ignore[arg-type]
        min_p=opt("min_p"),
        repeat_penalty=opt("repeat_penalty"),
        seed=opt("seed"),  # type: ignore[arg-type]
        stop=tuple(p.stop),
        grammar=p.grammar,
        json_schema=p.json_schema,
    )


def chat_message_from_pb(m: generate_pb2.ChatMessage, index: int) -> ChatMessage:
    role = _ROLE.get(m.role)
    if role is None:
        raise InvalidArgument(
            f"messages[{index}].role must be ROLE_SYSTEM, ROLE_USER, ROLE_ASSISTANT or ROLE_TOOL",
            field=f"messages[{index}].role",
        )
    return ChatMessage(role=role, content=m.content, name=m.name)


def chat_message_to_pb(role: Role, content: str) -> generate_pb2.ChatMessage:
    reverse = {v: k for k, v in _ROLE.items()}
    return generate_pb2.ChatMessage(role=reverse[role], content=content)


def chat_messages_from_pb(
    messages: Iterable[generate_pb2.ChatMessage],
) -> tuple[ChatMessage, ...]:
    return tuple(chat_message_from_pb(m, i) for i, m in enumerate(messages))


def usage_to_pb(s: CompletionStats) -> common_pb2.Usage:
    return common_pb2.Usage(
        prompt_tokens=s.prompt_tokens,
        completion_tokens=s.completion_tokens,
        total_tokens=s.prompt_tokens + s.completion_tokens,
    )


def timings_to_pb(t: Timings) -> common_pb2.Timings:
    return common_pb2.Timings(
        queue_ms=t.queue_ms,
        load_ms=t.load_ms,
        prompt_eval_ms=t.prompt_eval_ms,
        generation_ms=t.generation_ms,
        time_to_first_token_ms=t.time_to_first_token_ms,
        tokens_per_second=t.tokens_per_second,
        total_ms=t.total_ms,
    )


def finish_reason_to_pb(reason: FinishReason) -> common_pb2.FinishReason:
    return _FINISH[reason]


def generation_done_to_pb(d: Done) -> common_pb2.GenerationDone:
    return common_pb2.GenerationDone(
        model_id=d.model_id,
        finish_reason=_FINISH[d.stats.finish_reason],
        usage=usage_to_pb(d.stats),
        timings=timings_to_pb(d.timings),
        adjustments=d.adjustments,
        energy=energy_estimate_to_pb(d.energy),
    )


def energy_estimate_to_pb(e: Energy) -> common_pb2.EnergyEstimate:
    return common_pb2.EnergyEstimate(joules=e.joules, basis=e.basis)


def queue_status_to_pb(q: Queued) -> common_pb2.QueueStatus:
    """The `queued` event of every stream that can wait for a model."""
    return common_pb2.QueueStatus(position=q.position, model_id=q.model_id)


# -- plugins ------------------------------------------------------------------------------


def resource_requirements_to_pb(r: ResourceRequirements) -> common_pb2.ResourceRequirements:
    return common_pb2.ResourceRequirements(
        min_memory_bytes=r.min_memory_bytes,
        recommended_memory_bytes=r.recommended_memory_bytes,
        cores=r.cores,
        gpu=r.gpu,
        battery_draw_mw=r.battery_draw_mw,
        thermal_impact=r.thermal_impact,
        background_capable=r.background_capable,
    )


def plugin_to_pb(p: PluginRecord) -> plugins_pb2.Plugin:
    return plugins_pb2.Plugin(
        id=p.id,
        name=p.name,
        version=p.version,
        description=p.description,
        state=_PLUGIN_STATE[p.state],
        source=_PLUGIN_SOURCE[p.source],
        capabilities=p.capabilities,
        requirements=resource_requirements_to_pb(p.requirements),
        error=p.error,
        path=p.path,
        loaded_time=_timestamp(p.loaded_at.timestamp() if p.loaded_at else 0),
    )
