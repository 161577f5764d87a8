"""From JSON request fields to the core's generation request, for both route families.

Only the shapes differ between OpenAI, Ollama and gRPC clients: the checks (empty
messages, parameter ranges, prompt size, schemas, tools) are the core's own, done by
the engine and rustaid.tools.calling when the request runs."""

from __future__ import annotations

import json
import re
from collections.abc import AsyncIterator, Sequence
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING, Any, TypeVar

from rustaid.core.engine import Done, GenerationRequest, Text
from rustaid.core.request_checks import chat_messages
from rustaid.core.router import SelectionCriteria
from rustaid.core.scheduler import Priority
from rustaid.errors import InvalidArgument, Unavailable
from rustaid.http.body import Body
from rustaid.providers import ChatMessage, FinishReason, Role
from rustaid.tools import schema as schemas
from rustaid.tools.calling import (
    CallMade,
    ChoiceMode,
    Message,
    ToolCall,
    ToolChoice,
    ToolSpec,
    generate_with_tools,
)

if TYPE_CHECKING:
    from rustaid.core.engine import Engine
    from rustaid.core.generation_types import GenerationEvent
    from rustaid.power.manager import ResourceManager

T = TypeVar("T")

_ROLES = {
    "system": Role.SYSTEM,
    "developer": Role.SYSTEM,  # OpenAI's newer name for system instructions
    "user": Role.USER,
    "assistant": Role.ASSISTANT,
    "tool": Role.TOOL,
}
# Arguments of a function given without a parameters schema: none.
NO_ARGUMENTS: dict[str, Any] = {"type": "object", "properties": {}, "additionalProperties": False}
_DURATION = re.compile(r"(-?\d+(?:\.\d+)?)(ms|s|m|h)?")
_UNIT_S = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, None: 1.0}


@dataclass(frozen=True)
class Calling:
    """The function-calling part of a chat request (None when it has none)."""

    specs: list[ToolSpec]
    choice: ToolChoice
    messages: tuple[Message, ...] | None


@dataclass(frozen=True)
class Parsed:
    request: GenerationRequest
    calling: Calling | None = None
    stream: bool = False
    include_usage: bool = False
    extra: dict[str, Any] = field(default_factory=dict)


def message_content(body: Body, key: str = "content") -> str:
    """A message's text: a string, or OpenAI's array of content parts (text only)."""
    value = body.raw(key)
    if value is None or isinstance(value, str):
        return value or ""
    if isinstance(value, list):
        texts = []
        for i, part in enumerate(value):
            where = f"{body.where(key)}[{i}]"
            if not isinstance(part, dict) or part.get("type") != "text":
                kind = part.get("type") if isinstance(part, dict) else type(part).__name__
                raise InvalidArgument(
                    f"{where} is a {kind!r} part: only text parts are supported",
                    field=where,
                )
            text = part.get("text")
            if not isinstance(text, str):
                raise InvalidArgument(f"{where}.text must be a string", field=f"{where}.text")
            texts.append(text)
        return "".join(texts)
    raise body.bad(key, "must be a string or an array of content parts")


def role_of(body: Body) -> Role:
    name = body.text("role")
    role = _ROLES.get(name)
    if role is None:
        raise body.bad("role", f"must be one of {', '.join(_ROLES)} (got {name!r})")
    return role


def arguments_of(value: Any, where: str) -> dict[str, Any]:
    """Tool call arguments: a JSON object, or (OpenAI) a string holding one."""
    if isinstance(value, str):
        return schemas.load_json_object(value or "{}", where, "the arguments")
    if isinstance(value, dict):
        return value
    if value is None:
        return {}
    raise InvalidArgument(f"{where} must be a JSON object or a string holding one", field=where)


def tool_calls_of(body: Body) -> tuple[ToolCall, ...]:
    calls = []
    for c in body.objects("tool_calls"):
        function = c.object("function")
        if function is None:
            raise c.bad("function", "is missing: give its name and arguments")
        name = function.text("name")
        if not name:
            raise function.bad("name", "is empty")
        args = arguments_of(function.raw("arguments"), function.where("arguments"))
        calls.append(ToolCall(c.text("id"), name, args))
    return tuple(calls)


def tool_specs(body: Body) -> list[ToolSpec]:
    """OpenAI's and Ollama's `tools`: [{"type": "function", "function": {...}}]."""
    specs = []
    for t in body.objects("tools"):
        kind = t.text("type", "function")
        if kind != "function":
            raise t.bad("type", f"must be 'function' (got {kind!r})")
        function = t.object("function")
        if function is None:
            raise t.bad("function", "is missing: give name, description and parameters")
        parameters = function.object("parameters")
        specs.append(
            ToolSpec(
                function.text("name"),
                function.text("description"),
                dict(parameters.data) if parameters is not None else dict(NO_ARGUMENTS),
            )
        )
    return specs


def tool_choice(body: Body) -> ToolChoice:
    value = body.raw("tool_choice")
    if value is None:
        return ToolChoice()
    if isinstance(value, str):
        try:
            return ToolChoice(ChoiceMode(value))
        except ValueError:
            raise body.bad("tool_choice", "must be auto, none, required or a function") from None
    choice = body.object("tool_choice")
    function = choice.object("function") if choice is not None else None
    if function is None or not function.text("name"):
        raise body.bad("tool_choice", 'must be {"type": "function", "function": {"name": ...}}')
    return ToolChoice(ChoiceMode.REQUIRED, function.text("name"))


def chat(body: Body, key: str = "messages") -> tuple[tuple[Message, ...], bool]:
    """The messages, and whether any carries tool calls or a tool result."""
    items = body.array(key)
    if items is None:
        raise body.bad(key, "is missing: give the conversation as an array of messages")
    out = []
    with_tools = False
    for m in body.objects(key):
        calls = tool_calls_of(m)
        call_id = m.text("tool_call_id")
        with_tools = with_tools or bool(calls) or bool(call_id)
        out.append(Message(role_of(m), message_content(m), m.text("name"), calls, call_id))
    return tuple(out), with_tools


def plain(messages: Sequence[Message]) -> tuple[ChatMessage, ...]:
    return tuple(ChatMessage(m.role, m.content, m.name) for m in messages)


def chat_request(base: GenerationRequest, body: Body, key: str = "messages") -> Parsed:
    """A chat: messages, and tools when offered or used earlier in the conversation."""
    messages, with_tools = chat(body, key)
    specs = tool_specs(body)
    if not base.session_id:
        chat_messages(plain(messages))  # a stateless chat needs at least one message
    elif not messages:
        raise InvalidArgument("messages is empty: give this turn's message", field=key)
    request = replace(base, messages=plain(messages))
    if not specs and not with_tools:
        return Parsed(request)
    return Parsed(request, Calling(specs, tool_choice(body), messages))


def json_schema_text(schema: Any, where: str) -> str:
    """A client's JSON Schema, checked (InvalidArgument when it is not one)."""
    if not isinstance(schema, dict):
        raise InvalidArgument(f"{where} must be a JSON Schema object", field=where)
    problem = schemas.schema_problem(schema, object_only=False)
    if problem:
        raise InvalidArgument(f"{where} is not a valid JSON Schema: {problem}", field=where)
    return json.dumps(schema)


def keep_alive_s(value: Any, where: str) -> float | None:
    """Seconds from a number or a duration ("5m", "30s", "1h", "-1"); negative: forever."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise InvalidArgument(f"{where} must be seconds or a duration like '5m'", field=where)
    if isinstance(value, int | float):
        seconds = float(value)
    elif isinstance(value, str) and (m := _DURATION.fullmatch(value.strip())):
        seconds = float(m.group(1)) * _UNIT_S[m.group(2)]
    else:
        raise InvalidArgument(
            f"{where} must be seconds or a duration like '5m', '30s', '1h' (got {value!r}); "
            "a negative value keeps the model loaded",
            field=where,
        )
    if seconds != seconds or seconds in (float("inf"), float("-inf")):
        raise InvalidArgument(f"{where} must be finite", field=where)
    return -1.0 if seconds < 0 else seconds


def selection(body: Body, key: str = "selection") -> SelectionCriteria:
    s = body.object(key)
    if s is None:
        return SelectionCriteria()
    latency = s.integer("max_latency_ms") or 0
    if latency < 0:
        raise s.bad("max_latency_ms", "must be >= 0")
    return SelectionCriteria(
        prefer_local=s.flag("prefer_local"),
        prefer_speed=s.flag("prefer_speed"),
        prefer_quality=s.flag("prefer_quality"),
        battery_sensitive=s.flag("battery_sensitive"),
        max_latency_ms=latency,
        required_tags=s.strings("required_tags"),
    )


def priority(body: Body) -> Priority:
    name = body.text("priority", "interactive")
    if name not in ("interactive", "background"):
        raise body.bad("priority", f"must be 'interactive' or 'background' (got {name!r})")
    return Priority.INTERACTIVE if name == "interactive" else Priority.BACKGROUND


def check_serving(resources: ResourceManager) -> None:
    """While the device is critically hot, generation is refused with a retry delay:
    the same state in which gRPC health reports GenerateService NOT_SERVING."""
    if not resources.generate_serving:
        raise Unavailable(
            "the device is critically hot and does not take generation requests now: "
            "retry once it has cooled down",
            retry_after_s=30.0,
            reason="THERMAL_CRITICAL",
        )


def events(engine: Engine, parsed: Parsed) -> AsyncIterator[GenerationEvent | CallMade]:
    """The request's events, through function calling when it has tools."""
    if parsed.calling is None:
        return engine.generate(parsed.request)
    c = parsed.calling
    return generate_with_tools(engine, parsed.request, c.specs, c.choice, c.messages)


async def started(source: AsyncIterator[T]) -> AsyncIterator[T]:
    """`source` with its first event already produced, so that a request the core
    refuses (bad input, unknown model, a full queue) gets an error status instead of a
    stream that fails after it began."""
    try:
        first = await anext(source)
    except StopAsyncIteration:
        first = None

    async def rest() -> AsyncIterator[T]:
        if first is not None:
            yield first
        async for event in source:
            yield event

    return rest()


def finished(done: Done) -> Done:
    """`done`, or Unavailable when the generation was cut short for a client that is
    still there: only the daemon stopping does that (a client that left hears nothing)."""
    if done.stats.finish_reason is FinishReason.CANCELLED:
        raise Unavailable(
            "the daemon is shutting down and stopped this generation: retry in a moment",
            retry_after_s=5.0,
            reason="SHUTTING_DOWN",
        )
    return done


async def collect(events: AsyncIterator[Any]) -> tuple[list[str], list[ToolCall], Done]:
    """The text pieces, tool calls and Done of a whole generation (unary replies)."""
    text: list[str] = []
    calls: list[ToolCall] = []
    async for event in events:
        if isinstance(event, Text):
            text.append(event.text)
        elif isinstance(event, CallMade):
            calls.append(event.call)
        elif isinstance(event, Done):
            return text, calls, finished(event)
    raise AssertionError("a generation ends with Done")
