"""Function-calling formats: the reply grammar, reading replies back, streaming the
answer, and the prompts in the generic and the chat-template format."""

from __future__ import annotations

import json
import random

import pytest

from rustaid.errors import InvalidArgument
from rustaid.providers import Role
from rustaid.testing.synthetic import DEFAULT_CHAT_TEMPLATE
from rustaid.tools.calling import (
    AnswerStream,
    ChoiceMode,
    Message,
    ToolCall,
    ToolChoice,
    ToolSpec,
    generic_messages,
    parse_reply,
    reply_grammar,
    reply_schema,
    template_prompt,
    template_takes_tools,
    validate_specs,
)
from rustaid.tools.schema import schema_to_gbnf

POINT = {
    "type": "object",
    "properties": {"lat": {"type": "number"}, "lon": {"type": "number"}},
    "required": ["lat", "lon"],
    "additionalProperties": False,
}
WEATHER = ToolSpec(
    "get_weather",
    "Weather forecast for a place.",
    {
        "type": "object",
        "properties": {
            "city": {"type": "string", "minLength": 1, "maxLength": 24},
            "unit": {"enum": ["celsius", "fahrenheit"]},
            "days": {"type": "integer", "minimum": 1, "maximum": 7},
            "detailed": {"type": "boolean"},
            "where": {"$ref": "#/$defs/point"},
            "tags": {"type": "array", "items": {"type": "string", "maxLength": 8}, "maxItems": 3},
        },
        "required": ["city", "unit", "days"],
        "additionalProperties": False,
        "$defs": {"point": POINT},
    },
)
ADD = ToolSpec(
    "add",
    "Adds two integers.",
    {
        "type": "object",
        "properties": {"a": {"type": "integer"}, "b": {"type": "integer"}},
        "required": ["a", "b"],
        "additionalProperties": False,
    },
)

# A chat template with its own tool format (shaped like Qwen2.5's / Hermes').
TOOL_TEMPLATE = """\
{%- if tools %}<|im_start|>system
{% if messages[0]['role'] == 'system' %}{{ messages[0]['content'] }}
{% endif %}# Tools
<tools>
{% for tool in tools %}{{ tool | tojson }}
{% endfor %}</tools><|im_end|>
{% endif %}
{%- for message in messages %}
{%- if message.role == 'system' and tools %}
{%- elif message.role == 'assistant' and message.tool_calls %}<|im_start|>assistant
{% for call in message.tool_calls %}<tool_call>
{"name": "{{ call.function.name }}", "arguments": {{ call.function.arguments | tojson }}}
</tool_call>
{% endfor %}<|im_end|>
{% elif message.role == 'tool' %}<|im_start|>user
<tool_response>
{{ message.content }}
</tool_response><|im_end|>
{% else %}<|im_start|>{{ message.role }}
{{ message.content }}<|im_end|>
{% endif %}
{%- endfor %}
{%- if add_generation_prompt %}<|im_start|>assistant
{% endif %}"""


def test_reply_grammar_is_valid_gbnf() -> None:
    from llama_cpp.llama_grammar import LlamaGrammar

    for choice in (ToolChoice(), ToolChoice(ChoiceMode.REQUIRED), ToolChoice(name="add")):
        grammar = reply_grammar([WEATHER, ADD], choice)
        LlamaGrammar.from_string(grammar, verbose=False)  # parses
        assert "root ::=" in grammar
    schema = reply_schema([WEATHER, ADD], ToolChoice(name="add"))
    assert schema["properties"]["tool"] == {"const": "add"}  # only the forced tool
    assert len(reply_schema([WEATHER, ADD], ToolChoice())["oneOf"]) == 3
    assert len(reply_schema([WEATHER, ADD], ToolChoice(ChoiceMode.REQUIRED))["oneOf"]) == 2


def test_grammar_tightens_what_the_converter_leaves_open() -> None:
    grammar = schema_to_gbnf(
        {
            "type": "object",
            "properties": {
                "free": {"type": "string"},
                "k": {"type": "integer", "minimum": 1, "maximum": 3},
                "x": {"type": "number"},
            },
        }
    )
    assert 'k ::= "1" | "2" | "3"' in grammar
    assert "char{0,2000}" in grammar  # free text is bounded
    assert "[eE]" not in grammar  # no exponents: no 1e999 -> inf
    assert r"\x00-\x1F" in grammar  # no raw control characters: strict JSON


def test_unsupported_references_are_refused() -> None:
    remote = ToolSpec("r", "", {"type": "object", "properties": {"a": {"$ref": "https://x/y"}}})
    with pytest.raises(InvalidArgument, match="unsupported \\$ref"):
        reply_grammar([remote], ToolChoice())


@pytest.mark.parametrize(
    ("specs", "message"),
    [
        ([ToolSpec("bad name", "", {"type": "object"})], "not a valid tool name"),
        ([ADD, ADD], "'add' is given twice"),
        ([ToolSpec("s", "", {"type": "string"})], "must describe an object"),
        ([ToolSpec("s", "", {"type": "object", "required": "a"})], "invalid JSON Schema"),
    ],
)
def test_tool_definitions_are_checked(specs: list[ToolSpec], message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        validate_specs(specs)


def test_replies_are_read_back() -> None:
    reply = parse_reply('{"tool": "add", "arguments": {"a": 1, "b": 2}}')
    assert reply.call is not None and reply.call.name == "add"
    assert reply.call.arguments == {"a": 1, "b": 2} and reply.call.id.startswith("call_")
    assert parse_reply('{"answer": "four"}').answer == "four"
    assert "not complete JSON" in parse_reply('{"answer": "fo').error
    assert "neither" in parse_reply('{"tool": "add"}').error


def test_the_answer_streams_as_it_is_written() -> None:
    answer = 'héllo "quoted" \\ back\nslash \U0001f600 tab\t end'
    text = json.dumps({"answer": answer})
    rng = random.Random(7)
    for _ in range(50):
        stream = AnswerStream()
        pieces = []
        i = 0
        while i < len(text):
            step = rng.randint(1, 4)
            pieces.append(stream.feed(text[i : i + step]))
            i += step
        assert "".join(pieces) == answer
        assert stream.text == answer
    call = AnswerStream()
    assert call.feed('{"tool": "add", "arguments": {"a": 1') == ""


def test_the_generic_format() -> None:
    call = ToolCall("call_1", "add", {"a": 1, "b": 2})
    messages = [
        Message(Role.USER, "what is 1 + 2?"),
        Message(Role.ASSISTANT, tool_calls=(call,)),
        Message(Role.TOOL, '{"sum": 3}', tool_call_id="call_1"),
    ]
    chat = generic_messages(messages, [ADD], ToolChoice(), system="Be brief.")
    assert [m.role for m in chat] == [Role.SYSTEM, Role.USER, Role.ASSISTANT, Role.USER]
    system = chat[0].content
    assert system.startswith("Be brief.\n\nYou can call these tools.")
    assert '- add: Adds two integers.\n  arguments: {"type":"object"' in system
    assert '{"tool": "NAME", "arguments": {...}}' in system and '{"answer": "TEXT"}' in system
    assert json.loads(chat[2].content) == {"tool": "add", "arguments": {"a": 1, "b": 2}}
    assert chat[3].content == 'Result of add (call call_1): {"sum": 3}'
    required = generic_messages(messages[:1], [ADD], ToolChoice(name="add"))
    assert "You must call the tool add." in required[0].content
    assert '{"answer"' not in required[0].content


def test_a_chat_template_with_a_tool_format_is_used() -> None:
    assert template_takes_tools(TOOL_TEMPLATE)
    assert not template_takes_tools(DEFAULT_CHAT_TEMPLATE)
    assert not template_takes_tools("")
    call = ToolCall("call_1", "add", {"a": 1, "b": 2})
    prompt = template_prompt(
        TOOL_TEMPLATE,
        [
            Message(Role.USER, "what is 1 + 2?"),
            Message(Role.ASSISTANT, tool_calls=(call,)),
            Message(Role.TOOL, '{"sum": 3}', tool_call_id="call_1", name="add"),
        ],
        [ADD],
        ToolChoice(),
    )
    assert "# Tools\n<tools>\n" in prompt
    assert (
        '{"type": "function", "function": {"name": "add", "description": "Adds two integers."'
        in prompt
    )
    assert "Reply with exactly one JSON object" in prompt  # the reply format, in the system part
    assert '<tool_call>\n{"name": "add", "arguments": {"a": 1, "b": 2}}\n</tool_call>' in prompt
    assert '<tool_response>\n{"sum": 3}\n</tool_response>' in prompt
    assert prompt.endswith("<|im_start|>assistant\n")
