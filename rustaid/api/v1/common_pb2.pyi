import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Priority(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRIORITY_UNSPECIFIED: _ClassVar[Priority]
    PRIORITY_INTERACTIVE: _ClassVar[Priority]
    PRIORITY_BACKGROUND: _ClassVar[Priority]

class ModelKind(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_KIND_UNSPECIFIED: _ClassVar[ModelKind]
    MODEL_KIND_LLM: _ClassVar[ModelKind]
    MODEL_KIND_EMBEDDING: _ClassVar[ModelKind]
    MODEL_KIND_NLU: _ClassVar[ModelKind]

class PowerProfile(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    POWER_PROFILE_UNSPECIFIED: _ClassVar[PowerProfile]
    POWER_PROFILE_PERFORMANCE: _ClassVar[PowerProfile]
    POWER_PROFILE_BALANCED: _ClassVar[PowerProfile]
    POWER_PROFILE_POWER_SAVER: _ClassVar[PowerProfile]
    POWER_PROFILE_ULTRA_SAVER: _ClassVar[PowerProfile]
    POWER_PROFILE_CUSTOM: _ClassVar[PowerProfile]

class FinishReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FINISH_REASON_UNSPECIFIED: _ClassVar[FinishReason]
    FINISH_REASON_STOP: _ClassVar[FinishReason]
    FINISH_REASON_LENGTH: _ClassVar[FinishReason]
    FINISH_REASON_STOP_SEQUENCE: _ClassVar[FinishReason]
    FINISH_REASON_CANCELLED: _ClassVar[FinishReason]
PRIORITY_UNSPECIFIED: Priority
PRIORITY_INTERACTIVE: Priority
PRIORITY_BACKGROUND: Priority
MODEL_KIND_UNSPECIFIED: ModelKind
MODEL_KIND_LLM: ModelKind
MODEL_KIND_EMBEDDING: ModelKind
MODEL_KIND_NLU: ModelKind
POWER_PROFILE_UNSPECIFIED: PowerProfile
POWER_PROFILE_PERFORMANCE: PowerProfile
POWER_PROFILE_BALANCED: PowerProfile
POWER_PROFILE_POWER_SAVER: PowerProfile
POWER_PROFILE_ULTRA_SAVER: PowerProfile
POWER_PROFILE_CUSTOM: PowerProfile
FINISH_REASON_UNSPECIFIED: FinishReason
FINISH_REASON_STOP: FinishReason
FINISH_REASON_LENGTH: FinishReason
FINISH_REASON_STOP_SEQUENCE: FinishReason
FINISH_REASON_CANCELLED: FinishReason

class SelectionCriteria(_message.Message):
    __slots__ = ("prefer_local", "prefer_speed", "prefer_quality", "battery_sensitive", "max_latency_ms", "required_tags")
    PREFER_LOCAL_FIELD_NUMBER: _ClassVar[int]
    PREFER_SPEED_FIELD_NUMBER: _ClassVar[int]
    PREFER_QUALITY_FIELD_NUMBER: _ClassVar[int]
    BATTERY_SENSITIVE_FIELD_NUMBER: _ClassVar[int]
    MAX_LATENCY_MS_FIELD_NUMBER: _ClassVar[int]
    REQUIRED_TAGS_FIELD_NUMBER: _ClassVar[int]
    prefer_local: bool
    prefer_speed: bool
    prefer_quality: bool
    battery_sensitive: bool
    max_latency_ms: int
    required_tags: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, prefer_local: _Optional[bool] = ..., prefer_speed: _Optional[bool] = ..., prefer_quality: _Optional[bool] = ..., battery_sensitive: _Optional[bool] = ..., max_latency_ms: _Optional[int] = ..., required_tags: _Optional[_Iterable[str]] = ...) -> None: ...

class GenerationParams(_message.Message):
    __slots__ = ("max_tokens", "temperature", "top_p", "top_k", "min_p", "repeat_penalty", "seed", "stop", "grammar", "json_schema")
    MAX_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TEMPERATURE_FIELD_NUMBER: _ClassVar[int]
    TOP_P_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    MIN_P_FIELD_NUMBER: _ClassVar[int]
    REPEAT_PENALTY_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    STOP_FIELD_NUMBER: _ClassVar[int]
    GRAMMAR_FIELD_NUMBER: _ClassVar[int]
    JSON_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    max_tokens: int
    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int
    stop: _containers.RepeatedScalarFieldContainer[str]
    grammar: str
    json_schema: str
    def __init__(self, max_tokens: _Optional[int] = ..., temperature: _Optional[float] = ..., top_p: _Optional[float] = ..., top_k: _Optional[int] = ..., min_p: _Optional[float] = ..., repeat_penalty: _Optional[float] = ..., seed: _Optional[int] = ..., stop: _Optional[_Iterable[str]] = ..., grammar: _Optional[str] = ..., json_schema: _Optional[str] = ...) -> None: ...

class Usage(_message.Message):
    __slots__ = ("prompt_tokens", "completion_tokens", "total_tokens")
    PROMPT_TOKENS_FIELD_NUMBER: _ClassVar[int]
    COMPLETION_TOKENS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_TOKENS_FIELD_NUMBER: _ClassVar[int]
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int
    def __init__(self, prompt_tokens: _Optional[int] = ..., completion_tokens: _Optional[int] = ..., total_tokens: _Optional[int] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("queue_ms", "load_ms", "prompt_eval_ms", "generation_ms", "time_to_first_token_ms", "tokens_per_second", "total_ms")
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    PROMPT_EVAL_MS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_MS_FIELD_NUMBER: _ClassVar[int]
    TIME_TO_FIRST_TOKEN_MS_FIELD_NUMBER: _ClassVar[int]
    TOKENS_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    queue_ms: float
    load_ms: float
    prompt_eval_ms: float
    generation_ms: float
    time_to_first_token_ms: float
    tokens_per_second: float
    total_ms: float
    def __init__(self, queue_ms: _Optional[float] = ..., load_ms: _Optional[float] = ..., prompt_eval_ms: _Optional[float] = ..., generation_ms: _Optional[float] = ..., time_to_first_token_ms: _Optional[float] = ..., tokens_per_second: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class TokenChunk(_message.Message):
    __slots__ = ("text", "index")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    text: str
    index: int
    def __init__(self, text: _Optional[str] = ..., index: _Optional[int] = ...) -> None: ...

class GenerationDone(_message.Message):
    __slots__ = ("model_id", "finish_reason", "usage", "timings", "adjustments", "energy")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENTS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    finish_reason: FinishReason
    usage: Usage
    timings: Timings
    adjustments: _containers.RepeatedScalarFieldContainer[str]
    energy: EnergyEstimate
    def __init__(self, model_id: _Optional[str] = ..., finish_reason: _Optional[_Union[FinishReason, str]] = ..., usage: _Optional[_Union[Usage, _Mapping]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., adjustments: _Optional[_Iterable[str]] = ..., energy: _Optional[_Union[EnergyEstimate, _Mapping]] = ...) -> None: ...

class EnergyEstimate(_message.Message):
    __slots__ = ("joules", "basis")
    JOULES_FIELD_NUMBER: _ClassVar[int]
    BASIS_FIELD_NUMBER: _ClassVar[int]
    joules: float
    basis: str
    def __init__(self, joules: _Optional[float] = ..., basis: _Optional[str] = ...) -> None: ...

class QueueStatus(_message.Message):
    __slots__ = ("position", "model_id")
    POSITION_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    position: int
    model_id: str
    def __init__(self, position: _Optional[int] = ..., model_id: _Optional[str] = ...) -> None: ...

class ResourceRequirements(_message.Message):
    __slots__ = ("min_memory_bytes", "recommended_memory_bytes", "cores", "gpu", "battery_draw_mw", "thermal_impact", "background_capable")
    MIN_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RECOMMENDED_MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    CORES_FIELD_NUMBER: _ClassVar[int]
    GPU_FIELD_NUMBER: _ClassVar[int]
    BATTERY_DRAW_MW_FIELD_NUMBER: _ClassVar[int]
    THERMAL_IMPACT_FIELD_NUMBER: _ClassVar[int]
    BACKGROUND_CAPABLE_FIELD_NUMBER: _ClassVar[int]
    min_memory_bytes: int
    recommended_memory_bytes: int
    cores: int
    gpu: bool
    battery_draw_mw: int
    thermal_impact: int
    background_capable: bool
    def __init__(self, min_memory_bytes: _Optional[int] = ..., recommended_memory_bytes: _Optional[int] = ..., cores: _Optional[int] = ..., gpu: _Optional[bool] = ..., battery_draw_mw: _Optional[int] = ..., thermal_impact: _Optional[int] = ..., background_capable: _Optional[bool] = ...) -> None: ...

class KeepAlive(_message.Message):
    __slots__ = ("duration", "forever")
    DURATION_FIELD_NUMBER: _ClassVar[int]
    FOREVER_FIELD_NUMBER: _ClassVar[int]
    duration: _duration_pb2.Duration
    forever: bool
    def __init__(self, duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., forever: _Optional[bool] = ...) -> None: ...
