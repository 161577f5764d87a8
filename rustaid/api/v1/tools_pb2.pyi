import datetime

from google.protobuf import duration_pb2 as _duration_pb2
from rustaid.api.v1 import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Tool(_message.Message):
    __slots__ = ("name", "description", "parameters_schema", "result_schema", "plugin", "enabled")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    RESULT_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    PLUGIN_FIELD_NUMBER: _ClassVar[int]
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    name: str
    description: str
    parameters_schema: str
    result_schema: str
    plugin: str
    enabled: bool
    def __init__(self, name: _Optional[str] = ..., description: _Optional[str] = ..., parameters_schema: _Optional[str] = ..., result_schema: _Optional[str] = ..., plugin: _Optional[str] = ..., enabled: _Optional[bool] = ...) -> None: ...

class ListToolsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListToolsResponse(_message.Message):
    __slots__ = ("tools",)
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    tools: _containers.RepeatedCompositeFieldContainer[Tool]
    def __init__(self, tools: _Optional[_Iterable[_Union[Tool, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("output_json", "error", "duration")
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    DURATION_FIELD_NUMBER: _ClassVar[int]
    output_json: str
    error: str
    duration: _duration_pb2.Duration
    def __init__(self, output_json: _Optional[str] = ..., error: _Optional[str] = ..., duration: _Optional[_Union[datetime.timedelta, _duration_pb2.Duration, _Mapping]] = ...) -> None: ...

class RunAgentRequest(_message.Message):
    __slots__ = ("prompt", "tools", "model_id", "max_steps", "params", "selection")
    PROMPT_FIELD_NUMBER: _ClassVar[int]
    TOOLS_FIELD_NUMBER: _ClassVar[int]
    MODEL_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_STEPS_FIELD_NUMBER: _ClassVar[int]
    PARAMS_FIELD_NUMBER: _ClassVar[int]
    SELECTION_FIELD_NUMBER: _ClassVar[int]
    prompt: str
    tools: _containers.RepeatedScalarFieldContainer[str]
    model_id: str
    max_steps: int
    params: _common_pb2.GenerationParams
    selection: _common_pb2.SelectionCriteria
    def __init__(self, prompt: _Optional[str] = ..., tools: _Optional[_Iterable[str]] = ..., model_id: _Optional[str] = ..., max_steps: _Optional[int] = ..., params: _Optional[_Union[_common_pb2.GenerationParams, _Mapping]] = ..., selection: _Optional[_Union[_common_pb2.SelectionCriteria, _Mapping]] = ...) -> None: ...

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
    __slots__ = ("call_id", "output_json", "error")
    CALL_ID_FIELD_NUMBER: _ClassVar[int]
    OUTPUT_JSON_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    call_id: str
    output_json: str
    error: str
    def __init__(self, call_id: _Optional[str] = ..., output_json: _Optional[str] = ..., error: _Optional[str] = ...) -> None: ...

class AgentDone(_message.Message):
    __slots__ = ("answer", "steps", "generation")
    ANSWER_FIELD_NUMBER: _ClassVar[int]
    STEPS_FIELD_NUMBER: _ClassVar[int]
    GENERATION_FIELD_NUMBER: _ClassVar[int]
    answer: str
    steps: int
    generation: _common_pb2.GenerationDone
    def __init__(self, answer: _Optional[str] = ..., steps: _Optional[int] = ..., generation: _Optional[_Union[_common_pb2.GenerationDone, _Mapping]] = ...) -> None: ...

class RunAgentResponse(_message.Message):
    __slots__ = ("tool_call", "tool_result", "chunk", "done")
    TOOL_CALL_FIELD_NUMBER: _ClassVar[int]
    TOOL_RESULT_FIELD_NUMBER: _ClassVar[int]
    CHUNK_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    tool_call: ToolCall
    tool_result: ToolResult
    chunk: _common_pb2.TokenChunk
    done: AgentDone
    def __init__(self, tool_call: _Optional[_Union[ToolCall, _Mapping]] = ..., tool_result: _Optional[_Union[ToolResult, _Mapping]] = ..., chunk: _Optional[_Union[_common_pb2.TokenChunk, _Mapping]] = ..., done: _Optional[_Union[AgentDone, _Mapping]] = ...) -> None: ...
