from rustaid.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class NluBackend(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    NLU_BACKEND_UNSPECIFIED: _ClassVar[NluBackend]
    NLU_BACKEND_ONNX: _ClassVar[NluBackend]
    NLU_BACKEND_LLM: _ClassVar[NluBackend]
NLU_BACKEND_UNSPECIFIED: NluBackend
NLU_BACKEND_ONNX: NluBackend
NLU_BACKEND_LLM: NluBackend

class ClassifyIntentRequest(_message.Message):
    __slots__ = ("text", "model_id", "labels", "selection")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    LABELS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    text: str
    model_id: str
    labels: _containers.RepeatedScalarFieldContainer[str]
    selection: _common_pb2.SelectionCriteria
    def __init__(self, text: _Optional[str] = ..., model_id: _Optional[str] = ..., labels: _Optional[_Iterable[str]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ...) -> None: ...

class IntentScore(_message.Message):
    __slots__ = ("label", "score")
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    label: str
    score: float
    def __init__(self, label: _Optional[str] = ..., score: _Optional[float] = ...) -> None: ...

class ClassifyIntentResponse(_message.Message):
    __slots__ = ("intent", "confidence", "scores", "model_id", "backend")
    INTENT_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    intent: str
    confidence: float
    scores: _containers.RepeatedCompositeFieldContainer[IntentScore]
    model_id: str
    backend: NluBackend
    def __init__(self, intent: _Optional[str] = ..., confidence: _Optional[float] = ..., scores: _Optional[_Iterable[_Union[IntentScore, _Mapping]]] = ..., model_id: _Optional[str] = ..., backend: _Optional[_Union[NluBackend, str]] = ...) -> None: ...

class EntityType(_message.Message):
    __slots__ = ("name", "description")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ...) -> None: ...

class ExtractEntitiesRequest(_message.Message):
    __slots__ = ("text", "model_id", "entity_types", "selection")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    ENTITY_TYPES_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    text: str
    model_id: str
    entity_types: _containers.RepeatedCompositeFieldContainer[EntityType]
    selection: _common_pb2.SelectionCriteria
    def __init__(self, text: _Optional[str] = ..., model_id: _Optional[str] = ..., entity_types: _Optional[_Iterable[_Union[EntityType, _Mapping]]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ...) -> None: ...

class Entity(_message.Message):
    __slots__ = ("type", "text", "start", "end", "confidence")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    START_FIELD_NUMBER: _ClassVar[int]
    END_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    type: str
    text: str
    start: int
    end: int
    confidence: float
    def __init__(self, type: _Optional[str] = ..., text: _Optional[str] = ..., start: _Optional[int] = ..., end: _Optional[int] = ..., confidence: _Optional[float] = ...) -> None: ...

class ExtractEntitiesResponse(_message.Message):
    __slots__ = ("entities", "model_id", "backend")
    ENTITIES_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    BACKEND_FIELD_NUMBER: _ClassVar[int]
    entities: _containers.RepeatedCompositeFieldContainer[Entity]
    model_id: str
    backend: NluBackend
    def __init__(self, entities: _Optional[_Iterable[_Union[Entity, _Mapping]]] = ..., model_id: _Optional[str] = ..., backend: _Optional[_Union[NluBackend, str]] = ...) -> None: ...
