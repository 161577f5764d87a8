import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from google.protobuf import timestamp_pb2 as _timestamp_pb2
from rustaid.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ToolCallStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_CALL_STATUS_UNSPECIFIED: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_OK: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_ERROR: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_TIMEOUT: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_LIMIT_EXCEEDED: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_INVALID_OUTPUT: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_OUTPUT_TOO_LARGE: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_NOT_ALLOWED: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_INVALID_ARGUMENTS: _ClassVar[ToolCallStatus]
    TOOL_CALL_STATUS_UNAVAILABLE: _ClassVar[ToolCallStatus]

class ToolChoiceMode(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    TOOL_CHOICE_MODE_UNSPECIFIED: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_AUTO: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_NONE: _ClassVar[ToolChoiceMode]
    TOOL_CHOICE_MODE_REQUIRED: _ClassVar[ToolChoiceMode]

class AgentStopReason(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    AGENT_STOP_REASON_UNSPECIFIED: _ClassVar[AgentStopReason]
    AGENT_STOP_REASON_ANSWER: _ClassVar[AgentStopReason]
    AGENT_STOP_REASON_MAX_STEPS: _ClassVar[AgentStopReason]
    AGENT_STOP_REASON_LENGTH: _ClassVar[AgentStopReason]
    AGENT_STOP_REASON_REPEATED_FAILURE: _ClassVar[AgentStopReason]
TOOL_CALL_STATUS_UNSPECIFIED: ToolCallStatus
TOOL_CALL_STATUS_OK: ToolCallStatus
TOOL_CALL_STATUS_ERROR: ToolCallStatus
TOOL_CALL_STATUS_TIMEOUT: ToolCallStatus
TOOL_CALL_STATUS_LIMIT_EXCEEDED: ToolCallStatus
TOOL_CALL_STATUS_INVALID_OUTPUT: ToolCallStatus
TOOL_CALL_STATUS_OUTPUT_TOO_LARGE: ToolCallStatus
TOOL_CALL_STATUS_NOT_ALLOWED: ToolCallStatus
TOOL_CALL_STATUS_INVALID_ARGUMENTS: ToolCallStatus
TOOL_CALL_STATUS_UNAVAILABLE: ToolCallStatus
TOOL_CHOICE_MODE_UNSPECIFIED: ToolChoiceMode
TOOL_CHOICE_MODE_AUTO: ToolChoiceMode
TOOL_CHOICE_MODE_NONE: ToolChoiceMode
TOOL_CHOICE_MODE_REQUIRED: ToolChoiceMode
AGENT_STOP_REASON_UNSPECIFIED: AgentStopReason
AGENT_STOP_REASON_ANSWER: AgentStopReason
AGENT_STOP_REASON_MAX_STEPS: AgentStopReason
AGENT_STOP_REASON_LENGTH: AgentStopReason
AGENT_STOP_REASON_REPEATED_FAILURE: AgentStopReason

class ToolMetrics(_message.Message):
    __slots__ = ("calls", "ok", "failures", "timeouts", "total_duration", "max_duration", "last_error", "last_call_time")
    CALLS_FIELD_NUMBER: _ClassVar[int]
    OK_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    TIMEOUTS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_DURATION_FIELD_NUMBER: _ClassVar[int]
    MAX_DURATION_FIELD_NUMBER: _ClassVar[int]
    LAST_ERROR_FIELD_NUMBER: _ClassVar[int]
    LAST_CALL_TIME_FIELD_NUMBER: _ClassVar[int]
    calls: int
    ok: int
    failures: int
    timeouts: int
    total_duration: _duration_pb2.Duration
    max_duration: _duration_pb2.Duration
    last_error: str
    last_call_time: _timestamp_pb2.Timestamp
    def __init__(self, calls: _Optional[int] = ..., ok: _Optional[int] = ..., failures: _Optional[int] = ..., timeouts: _Optional[int] = ..., total_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., max_duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., last_error: _Optional[str] = ..., last_call_time: _Optional[_Union[datetime.datetime, _timestamp_pb2.Timestamp, _Mapping]] = ...) -> None: ...

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters_schema", "result_schema", "plugin", "enabled", "disabled_reason", "timeout", "metrics")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESULT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    METRICS_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_schema: str
    result_schema: str
    plugin: str
    enabled: bool
    disabled_reason: str
    timeout: _duration_pb2.Duration
    metrics: ToolMetrics
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_schema: _Optional[str] = ..., result_schema: _Optional[str] = ..., plugin: _Optional[str] = ..., enabled: _Optional[bool] = ..., disabled_reason: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., metrics: _Optional[_Union[ToolMetrics, _Mapping]] = ...) -> None: ...

class WasmModule(_message.Message):
    __slots__ = ("path", "tools", "error", "sha256")
    PATH_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    path: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    error: str
    sha256: str
    def __init__(self, path: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., error: _Optional[str] = ..., sha256: _Optional[str] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ("page_size", "page_token")
    PAGE_SIZE_FIELD_NUMBER: _ClassVar[int]
    PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    page_size: int
    page_token: str
    def __init__(self, page_size: _Optional[int] = ..., page_token: _Optional[str] = ...) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools", "wasm_modules", "next_page_token")
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    WASM_MODULES_FIELD_NUMBER: _ClassVar[int]
    NEXT_PAGE_TOKEN_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    wasm_modules: _containers.RepeatedCompositeFieldContainer[WasmModule]
    next_page_token: str
    def __init__(self, tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ..., wasm_modules: _Optional[_Iterable[_Union[WasmModule, _Mapping]]] = ..., next_page_token: _Optional[str] = ...) -> None: ...

class ExecuteToolRequest(_message.Message):
    __slots__ = ("name", "arguments_json", "timeout")
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    TIMEOUT_FIELD_NUMBER: _ClassVar[int]
    name: str
    arguments_json: str
    timeout: _duration_pb2.Duration
    def __init__(self, name: _Optional[str] = ..., arguments_json: _Optional[str] = ..., timeout: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class ExecuteToolResponse(_message.Message):
    __slots__ = ("output_json", "error", "duration", "status")
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    output_json: str
    error: str
    duration: _duration_pb2.Duration
    status: ToolCallStatus
    def __init__(self, output_json: _Optional[str] = ..., error: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ..., status: _Optional[_Union[ToolCallStatus, str]] = ...) -> None: ...

class RunAgentRequest(_message.Message):
    __slots__ = ("prompt", "tools", "model_id", "max_steps", "params", "selection", "system_prompt")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    SYSTEM_PROMPT_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    model_id: str
    max_steps: int
    params: _common_pb2.GenerationParams
    selection: _common_pb2.SelectionCriteria
    system_prompt: str
    def __init__(self, prompt: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., model_id: _Optional[str] = ..., max_steps: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ..., system_prompt: _Optional[str] = ...) -> None: ...

class ToolChoice(_message.Message):
    __slots__ = ("mode", "name")
    MODE_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    mode: ToolChoiceMode
    name: str
    def __init__(self, mode: _Optional[_Union[ToolChoiceMode, str]] = ..., name: _Optional[str] = ...) -> None: ...

class ToolCall(_message.Message):
    __slots__ = ("id", "name", "arguments_json")
    ID_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    ARGUMENTS_JSON_FIELD_NUMBER: _ClassVar[int]
    id: str
    name: str
    arguments_json: str
    def __init__(self, id: _Optional[str] = ..., name: _Optional[str] = ..., arguments_json: _Optional[str] = ...) -> None: ...

class ToolResult(_message.Message):
    __slots__ = ("call_id", "output_json", "error", "status", "name", "duration")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    NAME_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    output_json: str
    error: str
    status: ToolCallStatus
    name: str
    duration: _duration_pb2.Duration
    def __init__(self, call_id: _Optional[str] = ..., output_json: _Optional[str] = ..., error: _Optional[str] = ..., status: _Optional[_Union[ToolCallStatus, str]] = ..., name: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class AgentDone(_message.Message):
    __slots__ = ("answer", "steps", "generation", "stop_reason")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    STOP_REASON_FIELD_NUMBER: _ClassVar[int]
    answer: str
    steps: int
    generation: _common_pb2.GenerationDone
    stop_reason: AgentStopReason
    def __init__(self, answer: _Optional[str] = ..., steps: _Optional[int] = ..., generation: _Optional[_Union[_common_pb2.GenerationDone, _Mapping]] = ..., stop_reason: _Optional[_Union[AgentStopReason, str]] = ...) -> None: ...

class RunAgentResponse(_message.Message):
    __slots__ = ("tool_call", "tool_result", "chunk", "done", "queued", "turn")
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    QUEUED_FIELD_NUMBER: _ClassVar[int]
    TURN_FIELD_NUMBER: _ClassVar[int]
    tool_call: ToolCall
    tool_result: ToolResult
    chunk: _common_pb2.TokenChunk
    done: AgentDone
    queued: _common_pb2.QueueStatus
    turn: int
    def __init__(self, tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., done: _Optional[_Union[AgentDone, _Mapping]] = ..., queued: _Optional[_Union[_common_pb2.QueueStatus, _Mapping]] = ..., turn: _Optional[int] = ...) -> None: ...
