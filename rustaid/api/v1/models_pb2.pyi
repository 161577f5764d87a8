import datetime

from google.protobuf import timestamp_pb2 as _timestamp_pb2
from rustaid.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ModelState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_STATE_UNSPECIFIED: _ClassVar[ModelState]
    MODEL_STATE_AVAILABLE: _ClassVar[ModelState]
    MODEL_STATE_LOADING: _ClassVar[ModelState]
    MODEL_STATE_LOADED: _ClassVar[ModelState]
    MODEL_STATE_ERROR: _ClassVar[ModelState]

class ModelEventType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    MODEL_EVENT_TYPE_UNSPECIFIED: _ClassVar[ModelEventType]
    MODEL_EVENT_TYPE_ADDED: _ClassVar[ModelEventType]
    MODEL_EVENT_TYPE_CHANGED: _ClassVar[ModelEventType]
    MODEL_EVENT_TYPE_REMOVED: _ClassVar[ModelEventType]
    MODEL_EVENT_TYPE_LOADED: _ClassVar[ModelEventType]
    MODEL_EVENT_TYPE_UNLOADED: _ClassVar[ModelEventType]
    MODEL_EVENT_TYPE_FAILED: _ClassVar[ModelEventType]

class PullStage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PULL_STAGE_UNSPECIFIED: _ClassVar[PullStage]
    PULL_STAGE_RESOLVING: _ClassVar[PullStage]
    PULL_STAGE_DOWNLOADING: _ClassVar[PullStage]
    PULL_STAGE_VERIFYING: _ClassVar[PullStage]
    PULL_STAGE_UNPACKING: _ClassVar[PullStage]
    PULL_STAGE_DONE: _ClassVar[PullStage]
MODEL_STATE_UNSPECIFIED: ModelState
MODEL_STATE_AVAILABLE: ModelState
MODEL_STATE_LOADING: ModelState
MODEL_STATE_LOADED: ModelState
MODEL_STATE_ERROR: ModelState
MODEL_EVENT_TYPE_UNSPECIFIED: ModelEventType
MODEL_EVENT_TYPE_ADDED: ModelEventType
MODEL_EVENT_TYPE_CHANGED: ModelEventType
MODEL_EVENT_TYPE_REMOVED: ModelEventType
MODEL_EVENT_TYPE_LOADED: ModelEventType
MODEL_EVENT_TYPE_UNLOADED: ModelEventType
MODEL_EVENT_TYPE_FAILED: ModelEventType
PULL_STAGE_UNSPECIFIED: PullStage
PULL_STAGE_RESOLVING: PullStage
PULL_STAGE_DOWNLOADING: PullStage
PULL_STAGE_VERIFYING: PullStage
PULL_STAGE_UNPACKING: PullStage
PULL_STAGE_DONE: PullStage

class ModelMetadata(_message.Message):
    __slots__ = ("architecture", "name", "context_length", "parameter_count", "quantization", "chat_template", "embedding_length", "block_count", "vocab_size")
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    PARAMETER_COUNT_FIELD_NUMBER: _ClassVar[int]
    QUANTIZATION_FIELD_NUMBER: _ClassVar[int]
    CHAT_TEMPLATE_FIELD_NUMBER: _ClassVar[int]
    EMBEDDING_LENGTH_FIELD_NUMBER: _ClassVar[int]
    BLOCK_COUNT_FIELD_NUMBER: _ClassVar[int]
    VOCAB_SIZE_FIELD_NUMBER: _ClassVar[int]
    architecture: str
    name: str
    context_length: int
    parameter_count: int
    quantization: str
    chat_template: str
    embedding_length: int
    block_count: int
    vocab_size: int
    def __init__(self, architecture: _Optional[str] = ..., name: _Optional[str] = ..., context_length: _Optional[int] = ..., parameter_count: _Optional[int] = ..., quantization: _Optional[str] = ..., chat_template: _Optional[str] = ..., embedding_length: _Optional[int] = ..., block_count: _Optional[int] = ..., vocab_size: _Optional[int] = ...) -> None: ...

class Model(_message.Message):
    __slots__ = ("id", "kind", "provider", "path", "state", "error", "size_bytes", "metadata", "tags", "priority", "modified_time", "last_used_time", "memory_bytes", "pinned", "context_length", "threads", "parallel")
    ID_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    PATH_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SIZE_BYTES_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    TAGS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    MODIFIED_TIME_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_TIME_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    PINNED_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    PARALLEL_FIELD_NUMBER: _ClassVar[int]
    id: str
    kind: _common_pb2.ModelKind
    provider: str
    path: str
    state: ModelState
    error: str
    size_bytes: int
    metadata: ModelMetadata
    tags: _containers.RepeatedScalarFieldContainer[str]
    priority: int
    modified_time: _timestamp_pb2.Timestamp
    last_used_time: _timestamp_pb2.Timestamp
    memory_bytes: int
    pinned: bool
    context_length: int
    threads: int
    parallel: int
    def __init__(self, id: _Optional[str] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., provider: _Optional[str] = ..., path: _Optional[str] = ..., state: _Optional[_Union[ModelState, str]] = ..., error: _Optional[str] = ..., size_bytes: _Optional[int] = ..., metadata: _Optional[_Union[ModelMetadata, _Mapping]] = ..., tags: _Optional[_Iterable[str]] = ..., priority: _Optional[int] = ..., modified_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., last_used_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., memory_bytes: _Optional[int] = ..., pinned: _Optional[bool] = ..., context_length: _Optional[int] = ..., threads: _Optional[int] = ..., parallel: _Optional[int] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ("kind", "loaded_only", "page_size", "page_token")
    KIND_FIELD_NUMBER: _ClassVar[int]
    LOADED_ONLY_FIELD_NUMBER: _ClassVar[int]
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    kind: _common_pb2.ModelKind
    loaded_only: bool
    page_size: int
    page_token: str
    def __init__(self, kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ..., loaded_only: _Optional[bool] = ..., page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("models", "next_page_token")
    MODELS_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    models: _containers.RepeatedCompositeFieldContainer[Model]
    next_page_token: str
    def __init__(self, models: _Optional[_Iterable[_Union[Model, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class GetModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class GetModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class LoadModelRequest(_message.Message):
    __slots__ = ("id", "context_length", "threads", "keep_alive", "pin")
    ID_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    THREADS_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    PIN_FIELD_NUMBER: _ClassVar[int]
    id: str
    context_length: int
    threads: int
    keep_alive: _common_pb2.KeepAlive
    pin: bool
    def __init__(self, id: _Optional[str] = ..., context_length: _Optional[int] = ..., threads: _Optional[int] = ..., keep_alive: _Optional[_Union[_common_pb2.KeepAlive, _Mapping]] = ..., pin: _Optional[bool] = ...) -> None: ...

class LoadModelResponse(_message.Message):
    __slots__ = ("model", "load_ms")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    LOAD_MS_FIELD_NUMBER: _ClassVar[int]
    model: Model
    load_ms: float
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ..., load_ms: _Optional[float] = ...) -> None: ...

class UnloadModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class UnloadModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class WatchModelsRequest(_message.Message):
    __slots__ = ("include_existing",)
    INCLUDE_EXISTING_FIELD_NUMBER: _ClassVar[int]
    include_existing: bool
    def __init__(self, include_existing: _Optional[bool] = ...) -> None: ...

class WatchModelsResponse(_message.Message):
    __slots__ = ("type", "model", "time", "reason")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TIME_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    type: ModelEventType
    model: Model
    time: _timestamp_pb2.Timestamp
    reason: str
    def __init__(self, type: _Optional[_Union[ModelEventType, str]] = ..., model: _Optional[_Union[Model, _Mapping]] = ..., time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ..., reason: _Optional[str] = ...) -> None: ...

class SelectModelRequest(_message.Message):
    __slots__ = ("criteria", "kind")
    CRITERIA_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    criteria: _common_pb2.SelectionCriteria
    kind: _common_pb2.ModelKind
    def __init__(self, criteria: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ..., kind: _Optional[_Union[_common_pb2.ModelKind, str]] = ...) -> None: ...

class ModelCandidate(_message.Message):
    __slots__ = ("model_id", "score", "reasons", "excluded")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    REASONS_FIELD_NUMBER: _ClassVar[int]
    EXCLUDED_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    score: float
    reasons: _containers.RepeatedScalarFieldContainer[str]
    excluded: bool
    def __init__(self, model_id: _Optional[str] = ..., score: _Optional[float] = ..., reasons: _Optional[_Iterable[str]] = ..., excluded: _Optional[bool] = ...) -> None: ...

class SelectModelResponse(_message.Message):
    __slots__ = ("model_id", "candidates")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    candidates: _containers.RepeatedCompositeFieldContainer[ModelCandidate]
    def __init__(self, model_id: _Optional[str] = ..., candidates: _Optional[_Iterable[_Union[ModelCandidate, _Mapping]]] = ...) -> None: ...

class PullModelRequest(_message.Message):
    __slots__ = ("reference", "name", "revision", "sha256", "force")
    REFERENCE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    REVISION_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    reference: str
    name: str
    revision: str
    sha256: str
    force: bool
    def __init__(self, reference: _Optional[str] = ..., name: _Optional[str] = ..., revision: _Optional[str] = ..., sha256: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class PullModelResponse(_message.Message):
    __slots__ = ("stage", "completed_bytes", "total_bytes", "bytes_per_second", "file_name", "sha256", "model")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    COMPLETED_BYTES_FIELD_NUMBER: _ClassVar[int]
    TOTAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    BYTES_PER_SECOND_FIELD_NUMBER: _ClassVar[int]
    FILE_NAME_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    stage: PullStage
    completed_bytes: int
    total_bytes: int
    bytes_per_second: float
    file_name: str
    sha256: str
    model: Model
    def __init__(self, stage: _Optional[_Union[PullStage, str]] = ..., completed_bytes: _Optional[int] = ..., total_bytes: _Optional[int] = ..., bytes_per_second: _Optional[float] = ..., file_name: _Optional[str] = ..., sha256: _Optional[str] = ..., model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...

class DeleteModelRequest(_message.Message):
    __slots__ = ("id",)
    ID_FIELD_NUMBER: _ClassVar[int]
    id: str
    def __init__(self, id: _Optional[str] = ...) -> None: ...

class DeleteModelResponse(_message.Message):
    __slots__ = ("model",)
    MODEL_FIELD_NUMBER: _ClassVar[int]
    model: Model
    def __init__(self, model: _Optional[_Union[Model, _Mapping]] = ...) -> None: ...
