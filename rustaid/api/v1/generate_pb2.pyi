from rustaid.api.v1 import common_pb2 as _common_pb2
from rustaid.api.v1 import tools_pb2 as _tools_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Role(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ROLE_UNSPECIFIED: _ClassVar[Role]
    ROLE_SYSTEM: _ClassVar[Role]
    ROLE_USER: _ClassVar[Role]
    ROLE_ASSISTANT: _ClassVar[Role]
    ROLE_TOOL: _ClassVar[Role]
ROLE_UNSPECIFIED: Role
ROLE_SYSTEM: Role
ROLE_USER: Role
ROLE_ASSISTANT: Role
ROLE_TOOL: Role

class GenerateRequest(_message.Message):
    __slots__ = ("model_id", "prompt", "params", "selection", "priority", "keep_alive", "tools", "tool_choice")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    prompt: str
    params: _common_pb2.GenerationParams
    selection: _common_pb2.SelectionCriteria
    priority: _common_pb2.Priority
    keep_alive: _common_pb2.KeepAlive
    tools: _containers.RepeatedCompositeFieldContainer[_tools_pb2.Tool]
    tool_choice: _tools_pb2.ToolChoice
    def __init__(self, model_id: _Optional[str] = ..., prompt: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., keep_alive: _Optional[_Union[_common_pb2.KeepAlive, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[_tools_pb2.Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[_tools_pb2.ToolChoice, _Mapping]] = ...) -> None: ...

class GenerateResponse(_message.Message):
    __slots__ = ("text", "model_id", "finish_reason", "usage", "timings", "tool_calls", "adjustments", "energy")
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENTS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    text: str
    model_id: str
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    timings: _common_pb2.Timings
    tool_calls: _containers.RepeatedCompositeFieldContainer[_tools_pb2.ToolCall]
    adjustments: _containers.RepeatedScalarFieldContainer[str]
    energy: _common_pb2.EnergyEstimate
    def __init__(self, text: _Optional[str] = ..., model_id: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., tool_calls: _Optional[_Iterable[_Union[_tools_pb2.ToolCall, _Mapping]]] = ..., adjustments: _Optional[_Iterable[str]] = ..., energy: _Optional[_Union[_common_pb2.EnergyEstimate, _Mapping]] = ...) -> None: ...

class GenerateStreamRequest(_message.Message):
    __slots__ = ("model_id", "prompt", "params", "selection", "priority", "keep_alive", "tools", "tool_choice")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    prompt: str
    params: _common_pb2.GenerationParams
    selection: _common_pb2.SelectionCriteria
    priority: _common_pb2.Priority
    keep_alive: _common_pb2.KeepAlive
    tools: _containers.RepeatedCompositeFieldContainer[_tools_pb2.Tool]
    tool_choice: _tools_pb2.ToolChoice
    def __init__(self, model_id: _Optional[str] = ..., prompt: _Optional[str] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., keep_alive: _Optional[_Union[_common_pb2.KeepAlive, _Mapping]] = ..., tools: _Optional[_Iterable[_Union[_tools_pb2.Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[_tools_pb2.ToolChoice, _Mapping]] = ...) -> None: ...

class GenerateStreamResponse(_message.Message):
    __slots__ = ("chunk", "done", "queued", "tool_call")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.TokenChunk
    done: _common_pb2.GenerationDone
    queued: _common_pb2.QueueStatus
    tool_call: _tools_pb2.ToolCall
    def __init__(self, chunk: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., done: _Optional[_Union[_common_pb2.GenerationDone, _Mapping]] = ..., queued: _Optional[_Union[_common_pb2.QueueStatus, _Mapping]] = ..., tool_call: _Optional[_Union[_tools_pb2.ToolCall, _Mapping]] = ...) -> None: ...

class ChatMessage(_message.Message):
    __slots__ = ("role", "content", "name", "tool_calls", "tool_call_id")
    ROLE_FIELD_NUMBER: _ClassVar[int]
    CONTENT_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_ID_FIELD_NUMBER: _ClassVar[int]
    role: Role
    content: str
    name: str
    tool_calls: _containers.RepeatedCompositeFieldContainer[_tools_pb2.ToolCall]
    tool_call_id: str
    def __init__(self, role: _Optional[_Union[Role, str]] = ..., content: _Optional[str] = ..., name: _Optional[str] = ..., tool_calls: _Optional[_Iterable[_Union[_tools_pb2.ToolCall, _Mapping]]] = ..., tool_call_id: _Optional[str] = ...) -> None: ...

class ChatRequest(_message.Message):
    __slots__ = ("model_id", "messages", "params", "selection", "priority", "keep_alive", "session_id", "tools", "tool_choice")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    params: _common_pb2.GenerationParams
    selection: _common_pb2.SelectionCriteria
    priority: _common_pb2.Priority
    keep_alive: _common_pb2.KeepAlive
    session_id: str
    tools: _containers.RepeatedCompositeFieldContainer[_tools_pb2.Tool]
    tool_choice: _tools_pb2.ToolChoice
    def __init__(self, model_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., keep_alive: _Optional[_Union[_common_pb2.KeepAlive, _Mapping]] = ..., session_id: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[_tools_pb2.Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[_tools_pb2.ToolChoice, _Mapping]] = ...) -> None: ...

class ChatResponse(_message.Message):
    __slots__ = ("message", "model_id", "finish_reason", "usage", "timings", "adjustments", "energy")
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    FINISH_REASON_FIELD_NUMBER: _ClassVar[int]
    USAGE_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ADJUSTMENTS_FIELD_NUMBER: _ClassVar[int]
    ENERGY_FIELD_NUMBER: _ClassVar[int]
    message: ChatMessage
    model_id: str
    finish_reason: _common_pb2.FinishReason
    usage: _common_pb2.Usage
    timings: _common_pb2.Timings
    adjustments: _containers.RepeatedScalarFieldContainer[str]
    energy: _common_pb2.EnergyEstimate
    def __init__(self, message: _Optional[_Union[ChatMessage, _Mapping]] = ..., model_id: _Optional[str] = ..., finish_reason: _Optional[_Union[_common_pb2.FinishReason, str]] = ..., usage: _Optional[_Union[_common_pb2.Usage, _Mapping]] = ..., timings: _Optional[_Union[_common_pb2.Timings, _Mapping]] = ..., adjustments: _Optional[_Iterable[str]] = ..., energy: _Optional[_Union[_common_pb2.EnergyEstimate, _Mapping]] = ...) -> None: ...

class ChatStreamRequest(_message.Message):
    __slots__ = ("model_id", "messages", "params", "selection", "priority", "keep_alive", "session_id", "tools", "tool_choice")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    KEEP_ALIVE_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    TOOL_CHOICE_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    params: _common_pb2.GenerationParams
    selection: _common_pb2.SelectionCriteria
    priority: _common_pb2.Priority
    keep_alive: _common_pb2.KeepAlive
    session_id: str
    tools: _containers.RepeatedCompositeFieldContainer[_tools_pb2.Tool]
    tool_choice: _tools_pb2.ToolChoice
    def __init__(self, model_id: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ..., priority: _Optional[_Union[_common_pb2.Priority, str]] = ..., keep_alive: _Optional[_Union[_common_pb2.KeepAlive, _Mapping]] = ..., session_id: _Optional[str] = ..., tools: _Optional[_Iterable[_Union[_tools_pb2.Tool, _Mapping]]] = ..., tool_choice: _Optional[_Union[_tools_pb2.ToolChoice, _Mapping]] = ...) -> None: ...

class ChatStreamResponse(_message.Message):
    __slots__ = ("chunk", "done", "queued", "tool_call")
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    chunk: _common_pb2.TokenChunk
    done: _common_pb2.GenerationDone
    queued: _common_pb2.QueueStatus
    tool_call: _tools_pb2.ToolCall
    def __init__(self, chunk: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., done: _Optional[_Union[_common_pb2.GenerationDone, _Mapping]] = ..., queued: _Optional[_Union[_common_pb2.QueueStatus, _Mapping]] = ..., tool_call: _Optional[_Union[_tools_pb2.ToolCall, _Mapping]] = ...) -> None: ...

class TokenizeRequest(_message.Message):
    __slots__ = ("model_id", "text", "add_special")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    ADD_SPECIAL_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    text: str
    add_special: bool
    def __init__(self, model_id: _Optional[str] = ..., text: _Optional[str] = ..., add_special: _Optional[bool] = ...) -> None: ...

class TokenizeResponse(_message.Message):
    __slots__ = ("token_ids", "pieces")
    TOKEN_IDS_FIELD_NUMBER: _ClassVar[int]
    PIECES_FIELD_NUMBER: _ClassVar[int]
    token_ids: _containers.RepeatedScalarFieldContainer[int]
    pieces: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, token_ids: _Optional[_Iterable[int]] = ..., pieces: _Optional[_Iterable[str]] = ...) -> None: ...

class CountTokensRequest(_message.Message):
    __slots__ = ("model_id", "text", "messages")
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    TEXT_FIELD_NUMBER: _ClassVar[int]
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    model_id: str
    text: str
    messages: _containers.RepeatedCompositeFieldContainer[ChatMessage]
    def __init__(self, model_id: _Optional[str] = ..., text: _Optional[str] = ..., messages: _Optional[_Iterable[_Union[ChatMessage, _Mapping]]] = ...) -> None: ...

class CountTokensResponse(_message.Message):
    __slots__ = ("count", "context_length")
    COUNT_FIELD_NUMBER: _ClassVar[int]
    CONTEXT_LENGTH_FIELD_NUMBER: _ClassVar[int]
    count: int
    context_length: int
    def __init__(self, count: _Optional[int] = ..., context_length: _Optional[int] = ...) -> None: ...
