"""Function calling: how tools are shown to a model, how its reply is constrained and
how the reply is read back.

**The reply.** Every model turn that may use tools is constrained by a GBNF grammar made
from one JSON Schema: a `oneOf` with one branch per tool,

    {"tool": "NAME", "arguments": {... that tool's parameters schema ...}}

and, unless a call is required, one for the final answer, `{"answer": "TEXT"}`. The
grammar comes from llama-cpp-python's JSON-Schema converter (see `schema.py` for what
is tightened: bounded strings, small integer ranges enumerated, no exponents), so even
a model with random weights can only produce a call of an offered tool with arguments
its schema accepts.

**What the model sees.** A model whose chat template takes a `tools` variable gets the
tool definitions through its template (OpenAI-style `{"type": "function", "function":
{...}}` entries) and its earlier calls and their results as `tool_calls` and `tool`
messages. Any other model gets the *generic format*: a system message listing each
tool with its description and parameters schema, the reply format above, earlier calls
as assistant messages holding that JSON, and results as user messages
"Result of NAME (call ID): JSON". Both get the reply-format instructions.
"""

from __future__ import annotations

import asyncio
import json
import re
import secrets
from collections.abc import AsyncIterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from rustaid.core.engine import Done, Engine, GenerationRequest, Queued, Text
from rustaid.errors import InvalidArgument
from rustaid.providers import ChatMessage, GenerationParams, Role, Tool
from rustaid.tools import schema as schemas

# Longest final answer the grammar allows (characters).
ANSWER_MAX_CHARS = 4000
MAX_TOOLS = 128


class ChoiceMode(StrEnum):
    AUTO = "auto"
    NONE = "none"
    REQUIRED = "required"


@dataclass(frozen=True)
class ToolChoice:
    mode: ChoiceMode = ChoiceMode.AUTO
    # Forces this tool when set.
    name: str = ""


@dataclass(frozen=True)
class ToolSpec:
    """A tool as the model sees it."""

    name: str
    description: str
    parameters: Mapping[str, Any]

    @classmethod
    def of(cls, tool: Tool) -> ToolSpec:
        return cls(tool.name, tool.description, tool.parameters_schema)


@dataclass(frozen=True)
class ToolCall:
    id: str
    name: str
    arguments: Mapping[str, Any]

    @property
    def arguments_json(self) -> str:
        return json.dumps(self.arguments, ensure_ascii=False, separators=(",", ":"))


@dataclass(frozen=True)
class Message:
    """A chat message that may carry tool calls (assistant) or a tool result (tool)."""

    role: Role
    content: str = ""
    name: str = ""
    tool_calls: tuple[ToolCall, ...] = ()
    tool_call_id: str = ""


def new_call_id() -> str:
    return "call_" + secrets.token_hex(6)


def validate_specs(specs: Sequence[ToolSpec], field_name: str = "tools") -> None:
    """InvalidArgument for a bad tool list (names, duplicates, schemas)."""
    if len(specs) > MAX_TOOLS:
        raise InvalidArgument(f"{field_name}: at most {MAX_TOOLS} tools", field=field_name)
    seen: set[str] = set()
    for i, spec in enumerate(specs):
        schemas.check_name(spec.name, f"{field_name}[{i}].name")
        if spec.name in seen:
            raise InvalidArgument(
                f"{field_name}[{i}].name: {spec.name!r} is given twice",
                field=f"{field_name}[{i}].name",
            )
        seen.add(spec.name)
        problem = schemas.schema_problem(spec.parameters, object_only=True)
        if problem:
            raise InvalidArgument(
                f"{field_name}[{i}].parameters_schema ({spec.name}): {problem}",
                field=f"{field_name}[{i}].parameters_schema",
            )


def check_schemas_size(specs: Sequence[ToolSpec], limit: int, field_name: str = "tools") -> None:
    """The tools' schemas together become one grammar: refuse them beyond the grammar
    size limit (max_grammar_bytes) before anything converts them."""
    size = sum(len(json.dumps(s.parameters)) for s in specs)
    if size > limit:
        raise InvalidArgument(
            f"{field_name}: the parameter schemas are {size} bytes together, more than the "
            f"{limit} bytes the daemon turns into a grammar (an eighth of max_grammar_bytes, "
            "as the grammar is about eight times larger): give fewer or smaller tools",
            field=field_name,
            reason="GRAMMAR_TOO_LARGE",
        )


def check_choice(choice: ToolChoice, specs: Sequence[ToolSpec]) -> None:
    if choice.name and choice.name not in {s.name for s in specs}:
        raise InvalidArgument(
            f"tool_choice.name {choice.name!r} is not one of the tools: "
            f"{', '.join(s.name for s in specs) or 'none given'}",
            field="tool_choice.name",
        )
    if choice.mode is ChoiceMode.REQUIRED and not specs:
        raise InvalidArgument(
            "tool_choice requires a call but no tools are given", field="tool_choice"
        )


# -- the reply grammar ------------------------------------------------------------------


def reply_schema(
    specs: Sequence[ToolSpec], choice: ToolChoice, *, allow_answer: bool = True
) -> dict[str, Any]:
    """The JSON Schema of a reply: one branch per callable tool, plus the answer."""
    callable_specs = [s for s in specs if not choice.name or s.name == choice.name]
    branches: list[dict[str, Any]] = []
    defs: dict[str, Any] = {}
    for i, spec in enumerate(callable_specs):
        body, spec_defs = schemas.relocate(spec.parameters, f"t{i}-")
        defs.update(spec_defs)
        branches.append(
            {
                "type": "object",
                "properties": {"tool": {"const": spec.name}, "arguments": body},
                "required": ["tool", "arguments"],
                "additionalProperties": False,
            }
        )
    if allow_answer and not choice.name and choice.mode is not ChoiceMode.REQUIRED:
        branches.append(
            {
                "type": "object",
                "properties": {"answer": {"type": "string", "maxLength": ANSWER_MAX_CHARS}},
                "required": ["answer"],
                "additionalProperties": False,
            }
        )
    if not branches:
        raise InvalidArgument("no tool can be called and no answer is allowed")
    out: dict[str, Any] = {"oneOf": branches} if len(branches) > 1 else dict(branches[0])
    if defs:
        out["$defs"] = defs
    return out


def reply_grammar(
    specs: Sequence[ToolSpec], choice: ToolChoice, *, allow_answer: bool = True
) -> str:
    try:
        return schemas.schema_to_gbnf(reply_schema(specs, choice, allow_answer=allow_answer))
    except InvalidArgument as e:
        raise InvalidArgument(f"tools: {e.message}", field="tools") from e


@dataclass(frozen=True)
class Reply:
    """A model turn read back: a call, an answer, or neither (cut off, not JSON)."""

    call: ToolCall | None = None
    answer: str | None = None
    error: str = ""


def parse_reply(text: str) -> Reply:
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as e:  # cut off, or nested past the recursion limit
        return Reply(error=f"the reply is not complete JSON ({e})")
    if isinstance(value, dict):
        if set(value) == {"tool", "arguments"} and isinstance(value["tool"], str):
            args = value["arguments"]
            if isinstance(args, dict):
                return Reply(call=ToolCall(new_call_id(), value["tool"], args))
        if set(value) == {"answer"} and isinstance(value["answer"], str):
            return Reply(answer=value["answer"])
    return Reply(error='the reply is neither {"tool", "arguments"} nor {"answer"}')


class AnswerStream:
    """Decodes the text of `{"answer": "..."}` while the model writes it, so the answer
    can be streamed; other replies (tool calls) yield nothing."""

    _PREFIX = re.compile(r'\s*\{\s*"answer"\s*:\s*"')

    def __init__(self) -> None:
        self.raw = ""
        self._start: int | None = None
        self._sent = 0
        self.text = ""

    def feed(self, chunk: str) -> str:
        self.raw += chunk
        if self._start is None:
            m = self._PREFIX.match(self.raw)
            if m is None:
                return ""
            self._start = m.end()
        body = self.raw[self._start :]
        end = _safe_prefix(body)
        try:
            decoded = json.loads('"' + body[:end] + '"')
        except ValueError:
            return ""
        delta = decoded[self._sent :]
        self._sent = len(decoded)
        self.text = decoded
        return str(delta)


def _safe_prefix(body: str) -> int:
    """Length of the longest prefix of a JSON string body that decodes on its own."""
    i = safe = 0
    n = len(body)
    while i < n:
        c = body[i]
        if c == '"':
            break
        if c != "\\":
            i += 1
            safe = i
            continue
        if i + 1 >= n:
            break
        if body[i + 1] != "u":
            i += 2
            safe = i
            continue
        if i + 6 > n:
            break
        code = (
            int(body[i + 2 : i + 6], 16)
            if re.fullmatch(r"[0-9a-fA-F]{4}", body[i + 2 : i + 6])
            else 0
        )
        if 0xD800 <= code < 0xDC00:  # a surrogate pair needs its second half
            if i + 12 > n:
                break
            i += 12
        else:
            i += 6
        safe = i
    return safe


# -- prompts ----------------------------------------------------------------------------


def format_instructions(specs: Sequence[ToolSpec], choice: ToolChoice) -> str:
    callable_specs = [s for s in specs if not choice.name or s.name == choice.name]
    lines = ["Reply with exactly one JSON object and nothing else:"]
    lines.append('- {"tool": "NAME", "arguments": {...}} to call a tool; its result comes back '
                 "in the next message;")  # fmt: skip
    if choice.name:
        lines.append(f"You must call the tool {choice.name}.")
    elif choice.mode is ChoiceMode.REQUIRED:
        lines.append("You must call one of the tools: "
                     + ", ".join(s.name for s in callable_specs) + ".")  # fmt: skip
    else:
        lines.append('- {"answer": "TEXT"} to answer when you need no (more) tools.')
    return "\n".join(lines)


def generic_tool_block(specs: Sequence[ToolSpec], choice: ToolChoice) -> str:
    parts = ["You can call these tools. Each one takes arguments matching its JSON Schema."]
    for spec in specs:
        params = json.dumps(spec.parameters, ensure_ascii=False, separators=(",", ":"))
        parts.append(f"- {spec.name}: {spec.description}\n  arguments: {params}")
    parts.append(format_instructions(specs, choice))
    return "\n\n".join(parts)


def call_json(call: ToolCall) -> str:
    return json.dumps({"tool": call.name, "arguments": call.arguments}, ensure_ascii=False)


def result_text(name: str, call_id: str, content: str) -> str:
    return f"Result of {name} (call {call_id}): {content}"


def generic_messages(
    messages: Sequence[Message], specs: Sequence[ToolSpec], choice: ToolChoice, system: str = ""
) -> tuple[ChatMessage, ...]:
    """The conversation in the generic format, as plain chat messages."""
    names = {c.id: c.name for m in messages for c in m.tool_calls}
    head = generic_tool_block(specs, choice) if specs and choice.mode is not ChoiceMode.NONE else ""
    out: list[ChatMessage] = []
    system_parts = [p for p in (system, head) if p]
    rest = list(messages)
    if rest and rest[0].role is Role.SYSTEM:
        system_parts.insert(0, rest.pop(0).content)
    if system_parts:
        out.append(ChatMessage(Role.SYSTEM, "\n\n".join(system_parts)))
    for m in rest:
        if m.role is Role.ASSISTANT and m.tool_calls:
            text = "\n".join(call_json(c) for c in m.tool_calls)
            out.append(ChatMessage(Role.ASSISTANT, text))
        elif m.role is Role.TOOL:
            name = m.name or names.get(m.tool_call_id, "tool")
            out.append(ChatMessage(Role.USER, result_text(name, m.tool_call_id or "?", m.content)))
        else:
            out.append(ChatMessage(m.role, m.content, m.name))
    return tuple(out)


def template_takes_tools(template: str) -> bool:
    """True if a chat template renders a `tools` variable (its own tool format)."""
    if not template or "tools" not in template:
        return False
    try:
        import jinja2
        from jinja2 import meta

        return "tools" in meta.find_undeclared_variables(jinja2.Environment().parse(template))
    except Exception:
        return False


def template_prompt(
    template: str,
    messages: Sequence[Message],
    specs: Sequence[ToolSpec],
    choice: ToolChoice,
    system: str = "",
) -> str:
    """The prompt text the model's own template renders with `tools`; the reply-format
    instructions are added to the system message. Raises InvalidArgument if the
    template fails."""
    from llama_cpp.llama_chat_format import Jinja2ChatFormatter

    instructions = format_instructions(specs, choice)
    rest = list(messages)
    system_parts = [p for p in (system, instructions) if p]
    if rest and rest[0].role is Role.SYSTEM:
        system_parts.insert(0, rest.pop(0).content)
    rendered: list[dict[str, Any]] = [{"role": "system", "content": "\n\n".join(system_parts)}]
    for m in rest:
        entry: dict[str, Any] = {"role": m.role.value, "content": m.content}
        if m.tool_calls:
            entry["tool_calls"] = [
                {
                    "id": c.id,
                    "type": "function",
                    "function": {"name": c.name, "arguments": dict(c.arguments)},
                }
                for c in m.tool_calls
            ]
        if m.role is Role.TOOL:
            entry["tool_call_id"] = m.tool_call_id
        if m.name:
            entry["name"] = m.name
        rendered.append(entry)
    tools = [
        {
            "type": "function",
            "function": {
                "name": s.name,
                "description": s.description,
                "parameters": dict(s.parameters),
            },
        }
        for s in specs
    ]
    try:
        # bos "": the engine adds the model's BOS token itself.
        formatter = Jinja2ChatFormatter(template=template, eos_token="", bos_token="")
        return str(formatter(messages=rendered, tools=tools).prompt)  # type: ignore[arg-type]
    except Exception as e:
        raise InvalidArgument(
            f"messages cannot be rendered with the model's chat template: {e}", field="messages"
        ) from e


# -- one model turn ---------------------------------------------------------------------


@dataclass(frozen=True)
class AnswerText:
    """A piece of the final answer, decoded as the model writes it."""

    text: str


@dataclass(frozen=True)
class TurnDone:
    reply: Reply
    done: Done
    # The raw model output (JSON).
    raw: str


def _chat_template(engine: Engine, model_id: str) -> str:
    try:
        entry = engine.registry.get(model_id)
    except Exception:
        return ""
    metadata = getattr(entry, "metadata", None)
    return str(getattr(metadata, "chat_template", "") or "")


def build_request(
    engine: Engine,
    base: GenerationRequest,
    model_id: str,
    specs: Sequence[ToolSpec],
    choice: ToolChoice,
    *,
    messages: Sequence[Message] | None = None,
    system: str = "",
    grammar: str | None = None,
    allow_answer: bool = True,
) -> GenerationRequest:
    """The engine request of one turn: the conversation in the model's tool format
    (or the generic one) and the reply grammar."""
    if grammar is None:
        grammar = reply_grammar(specs, choice, allow_answer=allow_answer)
    params = replace(base.params, grammar=grammar, json_schema="")
    if messages is None:  # a plain completion: the tools go before the prompt
        prompt = generic_tool_block(specs, choice) + "\n\n" + base.prompt + "\n"
        return replace(base, model_id=model_id, prompt=prompt, messages=(), params=params)
    template = _chat_template(engine, model_id)
    if template_takes_tools(template):
        try:
            prompt = template_prompt(template, messages, specs, choice, system)
        except InvalidArgument:
            pass  # the generic format below works with any template
        else:
            return replace(base, model_id=model_id, prompt=prompt, messages=(), params=params)
    chat = generic_messages(messages, specs, choice, system)
    return replace(base, model_id=model_id, prompt="", messages=chat, params=params)


async def run_turn(
    engine: Engine, request: GenerationRequest
) -> AsyncIterator[Queued | AnswerText | TurnDone]:
    """Generate one reply; streams Queued and AnswerText, ends with TurnDone."""
    stream = AnswerStream()
    async for event in engine.generate(request):
        if isinstance(event, Text):
            delta = stream.feed(event.text)
            if delta:
                yield AnswerText(delta)
        elif isinstance(event, Queued):
            yield event
        elif isinstance(event, Done):
            yield TurnDone(parse_reply(stream.raw), event, stream.raw)
            return


def check_params(params: GenerationParams, choice: ToolChoice) -> None:
    if choice.mode is not ChoiceMode.NONE and (params.grammar or params.json_schema):
        name = "params.grammar" if params.grammar else "params.json_schema"
        raise InvalidArgument(
            f"{name} cannot be combined with tools: the engine builds the grammar from the "
            "tools' schemas (use tool_choice NONE to generate with your own)",
            field=name,
        )


def plain_messages(messages: Sequence[Message]) -> tuple[ChatMessage, ...]:
    """Messages for a turn without tools (tool_choice NONE): calls and results as text."""
    return generic_messages(messages, (), ToolChoice(ChoiceMode.NONE))


@dataclass(frozen=True)
class CallMade:
    """The model called a tool (GenerateService: returned, not executed)."""

    call: ToolCall


async def generate_with_tools(
    engine: Engine,
    base: GenerationRequest,
    specs: Sequence[ToolSpec],
    choice: ToolChoice,
    messages: Sequence[Message] | None = None,
) -> AsyncIterator[Queued | Text | CallMade | Done]:
    """OpenAI-style function calling for GenerateService: one constrained turn whose
    answer text streams as Text and whose call (if any) comes as CallMade before Done.

    The client's schemas are checked and turned into the reply grammar in a worker
    thread: their cost grows with their size, and nothing heavy runs on the loop."""
    # The reply grammar is about eight times the size of the schemas it is made from.
    limit = engine.grammar_limits.max_bytes // 8

    def check() -> None:
        check_schemas_size(specs, limit)
        validate_specs(specs)

    await asyncio.to_thread(check)
    check_choice(choice, specs)
    check_params(base.params, choice)
    if choice.mode is ChoiceMode.NONE or not specs:
        request = base if messages is None else replace(base, messages=plain_messages(messages))
        async for event in engine.generate(request):
            yield event
        return
    model_id = engine.resolve(base.model_id, base.selection)
    request = await asyncio.to_thread(
        build_request, engine, base, model_id, specs, choice, messages=messages
    )
    index = 0
    async for step in run_turn(engine, request):
        if isinstance(step, AnswerText):
            yield Text(step.text, index)
            index += 1
        elif isinstance(step, Queued):
            yield step
        else:
            if step.reply.call is not None:
                yield CallMade(step.reply.call)
            yield step.done


async def collect_with_tools(
    engine: Engine,
    base: GenerationRequest,
    specs: Sequence[ToolSpec],
    choice: ToolChoice,
    messages: Sequence[Message] | None = None,
) -> tuple[str, Done, list[ToolCall]]:
    """generate_with_tools, collected: (answer text, Done, calls)."""
    parts: list[str] = []
    calls: list[ToolCall] = []
    async for event in generate_with_tools(engine, base, specs, choice, messages):
        if isinstance(event, Text):
            parts.append(event.text)
        elif isinstance(event, CallMade):
            calls.append(event.call)
        elif isinstance(event, Done):
            return "".join(parts), event, calls
    raise AssertionError("generation ended without Done")
