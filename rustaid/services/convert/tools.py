"""Conversions of tools.proto messages, and the tool fields of generate.proto requests."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from rustaid.api.v1 import common_pb2, generate_pb2, tools_pb2
from rustaid.errors import InvalidArgument
from rustaid.providers import Role
from rustaid.services import convert
from rustaid.tools.agent import AgentDone, AgentRequest, StopReason
from rustaid.tools.calling import ChoiceMode, Message, ToolCall, ToolChoice, ToolSpec
from rustaid.tools.registry import ToolCallStatus, ToolInfo, ToolMetrics, ToolOutcome
from rustaid.tools.schema import load_json_object
from rustaid.tools.wasm import WasmModuleInfo

_STATUS = {
    ToolCallStatus.OK: tools_pb2.TOOL_CALL_STATUS_OK,
    ToolCallStatus.ERROR: tools_pb2.TOOL_CALL_STATUS_ERROR,
    ToolCallStatus.TIMEOUT: tools_pb2.TOOL_CALL_STATUS_TIMEOUT,
    ToolCallStatus.LIMIT_EXCEEDED: tools_pb2.TOOL_CALL_STATUS_LIMIT_EXCEEDED,
    ToolCallStatus.INVALID_OUTPUT: tools_pb2.TOOL_CALL_STATUS_INVALID_OUTPUT,
    ToolCallStatus.OUTPUT_TOO_LARGE: tools_pb2.TOOL_CALL_STATUS_OUTPUT_TOO_LARGE,
    ToolCallStatus.NOT_ALLOWED: tools_pb2.TOOL_CALL_STATUS_NOT_ALLOWED,
    ToolCallStatus.INVALID_ARGUMENTS: tools_pb2.TOOL_CALL_STATUS_INVALID_ARGUMENTS,
    ToolCallStatus.UNAVAILABLE: tools_pb2.TOOL_CALL_STATUS_UNAVAILABLE,
}
_STOP = {
    StopReason.ANSWER: tools_pb2.AGENT_STOP_REASON_ANSWER,
    StopReason.MAX_STEPS: tools_pb2.AGENT_STOP_REASON_MAX_STEPS,
    StopReason.LENGTH: tools_pb2.AGENT_STOP_REASON_LENGTH,
    StopReason.REPEATED_FAILURE: tools_pb2.AGENT_STOP_REASON_REPEATED_FAILURE,
}
_CHOICE = {
    tools_pb2.TOOL_CHOICE_MODE_UNSPECIFIED: ChoiceMode.AUTO,
    tools_pb2.TOOL_CHOICE_MODE_AUTO: ChoiceMode.AUTO,
    tools_pb2.TOOL_CHOICE_MODE_NONE: ChoiceMode.NONE,
    tools_pb2.TOOL_CHOICE_MODE_REQUIRED: ChoiceMode.REQUIRED,
}
# Arguments of a call with no parameters schema: none at all.
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}


def duration(seconds: float) -> Duration:
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def seconds_from_pb(d: Duration, field: str) -> float | None:
    """None for an unset or zero duration; InvalidArgument for a negative one."""
    value = d.ToNanoseconds() / 1e9
    if value < 0:
        raise InvalidArgument(f"{field} must not be negative (got {value:g} s)", field=field)
    return value or None


def _json(value: Any) -> str:
    return "" if value is None else json.dumps(value, ensure_ascii=False, separators=(",", ":"))


def tool_metrics_to_pb(m: ToolMetrics) -> tools_pb2.ToolMetrics:
    last = None
    if m.last_call:
        last = Timestamp()
        last.FromNanoseconds(int(m.last_call * 1e9))
    return tools_pb2.ToolMetrics(
        calls=m.calls,
        ok=m.ok,
        failures=m.failures,
        timeouts=m.timeouts,
        total_duration=duration(m.total_s),
        max_duration=duration(m.max_s),
        last_error=m.last_error,
        last_call_time=last,
    )


def tool_to_pb(t: ToolInfo) -> tools_pb2.Tool:
    return tools_pb2.Tool(
        name=t.name,
        description=t.description,
        parameters_schema=_json(dict(t.parameters_schema)),
        result_schema=_json(dict(t.result_schema) if t.result_schema is not None else None),
        plugin=t.plugin,
        enabled=t.enabled,
        disabled_reason=t.disabled_reason,
        timeout=duration(t.timeout_s),
        metrics=tool_metrics_to_pb(t.metrics),
    )


def tool_from_pb(t: tools_pb2.Tool, index: int, field: str = "tools") -> ToolSpec:
    """A client's tool definition (GenerateService); only name, description and
    parameters_schema are used."""
    where = f"{field}[{index}]"
    parameters = (
        load_json_object(t.parameters_schema, f"{where}.parameters_schema", "a JSON Schema")
        if t.parameters_schema.strip()
        else dict(NO_ARGUMENTS)
    )
    return ToolSpec(t.name, t.description, parameters)


def wasm_module_to_pb(m: WasmModuleInfo) -> tools_pb2.WasmModule:
    return tools_pb2.WasmModule(
        path=str(m.path), tools=list(m.tools), error=m.error, sha256=m.sha256
    )


def tool_choice_from_pb(c: tools_pb2.ToolChoice) -> ToolChoice:
    mode = _CHOICE.get(c.mode)
    if mode is None:
        raise InvalidArgument(
            f"tool_choice.mode {c.mode} is not a known ToolChoiceMode", field="tool_choice.mode"
        )
    return ToolChoice(mode, c.name)


def tool_call_to_pb(c: ToolCall) -> tools_pb2.ToolCall:
    # A model may write half a surrogate pair ("\\ud800") into its arguments: not UTF-8,
    # so protobuf cannot carry it; it becomes U+FFFD as any invalid text does.
    arguments = c.arguments_json.encode("utf-8", "surrogatepass").decode("utf-8", "replace")
    return tools_pb2.ToolCall(id=c.id, name=c.name, arguments_json=arguments)


def tool_call_from_pb(c: tools_pb2.ToolCall, field: str) -> ToolCall:
    args = load_json_object(c.arguments_json or "{}", f"{field}.arguments_json", "the arguments")
    if not c.name:
        raise InvalidArgument(f"{field}.name is empty", field=f"{field}.name")
    return ToolCall(c.id, c.name, args)


def tool_result_to_pb(call: ToolCall, o: ToolOutcome) -> tools_pb2.ToolResult:
    return tools_pb2.ToolResult(
        call_id=call.id,
        output_json=o.output_json,
        error=o.error,
        status=_STATUS[o.status],
        name=call.name,
        duration=duration(o.duration_s),
    )


def execute_tool_response_to_pb(o: ToolOutcome) -> tools_pb2.ExecuteToolResponse:
    return tools_pb2.ExecuteToolResponse(
        output_json=o.output_json,
        error=o.error,
        duration=duration(o.duration_s),
        status=_STATUS[o.status],
    )


def agent_done_to_pb(d: AgentDone) -> tools_pb2.AgentDone:
    return tools_pb2.AgentDone(
        answer=d.answer,
        steps=d.steps,
        generation=convert.generation_done_to_pb(d.generation),
        stop_reason=_STOP[d.stop_reason],
    )


def run_agent_request_from_pb(r: tools_pb2.RunAgentRequest) -> AgentRequest:
    return AgentRequest(
        prompt=r.prompt,
        tools=tuple(r.tools),
        model_id=r.model_id,
        max_steps=r.max_steps,
        params=convert.generation_params_from_pb(r.params),
        selection=convert.selection_criteria_from_pb(r.selection),
        system_prompt=r.system_prompt,
    )


def tool_messages_from_pb(messages: Sequence[generate_pb2.ChatMessage]) -> tuple[Message, ...]:
    """Chat messages with their tool calls and tool call ids."""
    out = []
    for i, m in enumerate(messages):
        base = convert.chat_message_from_pb(m, i)
        calls = tuple(
            tool_call_from_pb(c, f"messages[{i}].tool_calls[{j}]")
            for j, c in enumerate(m.tool_calls)
        )
        out.append(Message(base.role, base.content, base.name, calls, m.tool_call_id))
    return tuple(out)


def function_calling_from_pb(
    pb: Any,
) -> tuple[list[ToolSpec], ToolChoice, tuple[Message, ...] | None] | None:
    """The tools, tool choice and (chat) messages of a generation request, or None when
    it neither offers tools nor carries tool calls in its history."""
    messages: Sequence[generate_pb2.ChatMessage] | None = getattr(pb, "messages", None)
    history = messages is not None and any(m.tool_calls or m.tool_call_id for m in messages)
    if not pb.tools and not history:
        choice = pb.tool_choice
        if choice.name or choice.mode == tools_pb2.TOOL_CHOICE_MODE_REQUIRED:
            raise InvalidArgument(
                "tool_choice requires a call but no tools are given", field="tool_choice"
            )
        return None
    if getattr(pb, "session_id", ""):
        raise InvalidArgument(
            "tools cannot be combined with session_id: send the whole conversation",
            field="session_id",
        )
    specs = [tool_from_pb(t, i) for i, t in enumerate(pb.tools)]
    choice = tool_choice_from_pb(pb.tool_choice)
    return specs, choice, tool_messages_from_pb(messages) if messages is not None else None


def chat_reply_to_pb(text: str, calls: Sequence[ToolCall]) -> generate_pb2.ChatMessage:
    message = convert.chat_message_to_pb(Role.ASSISTANT, text)
    message.tool_calls.extend(tool_call_to_pb(c) for c in calls)
    return message


def token_chunk(text: str, index: int) -> common_pb2.TokenChunk:
    return common_pb2.TokenChunk(text=text, index=index)
