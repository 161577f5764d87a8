"""GenerateService with tool definitions (OpenAI-style): the model's calls come back
parsed and are never run. A random-weight model still only makes schema-valid calls:
the grammar guarantees it, and this checks it over many seeds."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from rustaid.api.v1 import common_pb2, generate_pb2, tools_pb2
from rustaid.testing.daemon import run_daemon
from rustaid.testing.synthetic import write_llama_gguf
from tests.services.test_generate import error_of, field_violations
from tests.tools.conftest import TOOL_MODEL, ToolStubs, make_data_dir
from tests.tools.test_calling import ADD, TOOL_TEMPLATE, WEATHER

SPECS = {s.name: s for s in (WEATHER, ADD)}
TOOLS = [
    tools_pb2.Tool(
        name=s.name, description=s.description, parameters_schema=json.dumps(s.parameters)
    )
    for s in SPECS.values()
]
REQUIRED = tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_REQUIRED)
USER = generate_pb2.ROLE_USER


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory, tool_model: Path) -> Iterator[ToolStubs]:
    data = make_data_dir(tmp_path_factory.mktemp("gen-tools"), tool_model)
    write_llama_gguf(
        data / "models" / "tooly.gguf", TOOL_MODEL, seed=5, chat_template=TOOL_TEMPLATE
    )
    with run_daemon(data) as daemon:
        s = ToolStubs(daemon)
        yield s
        s.close()


def chat(text: str = "what is the weather in Paris?", **kw: Any) -> generate_pb2.ChatRequest:
    kw.setdefault("model_id", "tiny")
    kw.setdefault("tools", TOOLS)
    return generate_pb2.ChatRequest(
        messages=[generate_pb2.ChatMessage(role=USER, content=text)], **kw
    )


def params(seed: int, max_tokens: int = 800) -> common_pb2.GenerationParams:
    return common_pb2.GenerationParams(seed=seed, temperature=1.0, max_tokens=max_tokens)


def assert_valid(call: tools_pb2.ToolCall) -> dict[str, Any]:
    assert call.name in SPECS
    assert call.id.startswith("call_")
    args: dict[str, Any] = json.loads(call.arguments_json)
    jsonschema.validate(args, SPECS[call.name].parameters)
    return args


@pytest.mark.parametrize("model", ["tiny", "tooly"])
def test_random_weights_only_make_schema_valid_calls(stubs: ToolStubs, model: str) -> None:
    names = set()
    for seed in range(40):
        r = stubs.generate.Chat(chat(model_id=model, tool_choice=REQUIRED, params=params(seed)))
        assert r.finish_reason == common_pb2.FINISH_REASON_STOP, seed
        assert r.message.content == ""
        assert len(r.message.tool_calls) == 1
        assert_valid(r.message.tool_calls[0])
        names.add(r.message.tool_calls[0].name)
    assert names == set(SPECS)  # both tools get called: the grammar allows each


def test_auto_replies_are_a_call_or_an_answer(stubs: ToolStubs) -> None:
    # Random answers run long: they are cut at max_tokens (their text is still returned).
    # A call cut at max_tokens is no call: nothing to run, and LENGTH says why.
    answers = calls = 0
    for seed in range(20):
        r = stubs.generate.Chat(chat(params=params(seed, 120)))
        if r.message.tool_calls:
            assert r.message.content == ""
            assert r.finish_reason == common_pb2.FINISH_REASON_STOP
            assert_valid(r.message.tool_calls[0])
            calls += 1
        elif r.message.content:
            answers += 1
        else:
            assert r.finish_reason == common_pb2.FINISH_REASON_LENGTH
    assert calls and answers


def test_a_named_tool_is_forced(stubs: ToolStubs) -> None:
    for seed in range(5):
        choice = tools_pb2.ToolChoice(name="add")
        r = stubs.generate.Chat(chat(tool_choice=choice, params=params(seed)))
        assert [c.name for c in r.message.tool_calls] == ["add"]
        assert_valid(r.message.tool_calls[0])


def test_tool_choice_none_generates_text(stubs: ToolStubs) -> None:
    none = tools_pb2.ToolChoice(mode=tools_pb2.TOOL_CHOICE_MODE_NONE)
    r = stubs.generate.Chat(chat(tool_choice=none, params=params(1, 20)))
    assert not r.message.tool_calls and r.message.content


def test_streams_send_the_call_before_done(stubs: ToolStubs) -> None:
    events = list(stubs.generate.ChatStream(
        generate_pb2.ChatStreamRequest(
            model_id="tooly", messages=[generate_pb2.ChatMessage(role=USER, content="hi")],
            tools=TOOLS, tool_choice=REQUIRED, params=params(3),
        )
    ))  # fmt: skip
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[-2:] == ["tool_call", "done"] and "chunk" not in kinds
    assert_valid(events[-2].tool_call)
    events = list(stubs.generate.GenerateStream(
        generate_pb2.GenerateStreamRequest(
            model_id="tiny", prompt="weather?", tools=TOOLS,
            tool_choice=tools_pb2.ToolChoice(name="get_weather"), params=params(4),
        )
    ))  # fmt: skip
    assert [e.WhichOneof("event") for e in events][-2:] == ["tool_call", "done"]
    assert events[-2].tool_call.name == "get_weather"


def test_generate_with_a_plain_prompt(stubs: ToolStubs) -> None:
    r = stubs.generate.Generate(
        generate_pb2.GenerateRequest(
            model_id="tiny", prompt="add 2 and 3", tools=TOOLS, tool_choice=REQUIRED,
            params=params(9),
        )
    )  # fmt: skip
    assert r.text == "" and len(r.tool_calls) == 1
    assert_valid(r.tool_calls[0])


def test_the_conversation_can_carry_calls_and_results(stubs: ToolStubs) -> None:
    call = tools_pb2.ToolCall(id="call_1", name="add", arguments_json='{"a": 1, "b": 2}')
    history = [
        generate_pb2.ChatMessage(role=USER, content="1 + 2?"),
        generate_pb2.ChatMessage(role=generate_pb2.ROLE_ASSISTANT, tool_calls=[call]),
        generate_pb2.ChatMessage(role=generate_pb2.ROLE_TOOL, content="3", tool_call_id="call_1"),
    ]
    for model in ("tiny", "tooly"):
        r = stubs.generate.Chat(
            generate_pb2.ChatRequest(
                model_id=model, messages=history, tools=TOOLS, tool_choice=REQUIRED,
                params=params(2),
            )
        )  # fmt: skip
        assert_valid(r.message.tool_calls[0])
        # The history is in the prompt: longer than the same request without it.
        short = stubs.generate.Chat(
            chat(model_id=model, text="1 + 2?", tool_choice=REQUIRED, params=params(2))
        )
        assert r.usage.prompt_tokens > short.usage.prompt_tokens + 20


def test_the_tool_format_of_the_template_is_used(stubs: ToolStubs) -> None:
    def prompt_tokens(model: str) -> int:
        return int(stubs.generate.Chat(chat(model_id=model, tool_choice=REQUIRED,
                                            params=params(1))).usage.prompt_tokens)  # fmt: skip

    def count(model: str) -> int:
        message = generate_pb2.ChatMessage(role=USER, content="what is the weather in Paris?")
        r = stubs.generate.CountTokens(
            generate_pb2.CountTokensRequest(model_id=model, messages=[message])
        )
        return int(r.count)

    # Both models see the tools, in different formats: the prompts differ in length
    # by more than the templates' own difference.
    assert prompt_tokens("tiny") - count("tiny") != prompt_tokens("tooly") - count("tooly")


@pytest.mark.parametrize(
    ("request_", "code", "field", "message"),
    [
        (chat(tools=[tools_pb2.Tool(name="x", parameters_schema="{")]),
         grpc.StatusCode.INVALID_ARGUMENT, "tools[0].parameters_schema", "is not valid JSON"),
        (chat(tools=[tools_pb2.Tool(name="x", parameters_schema='{"type": "array"}')]),
         grpc.StatusCode.INVALID_ARGUMENT, "tools[0].parameters_schema", "must describe an object"),
        (chat(tools=[tools_pb2.Tool(name="x y")]),
         grpc.StatusCode.INVALID_ARGUMENT, "tools[0].name", "not a valid tool name"),
        (chat(tools=[TOOLS[1], TOOLS[1]]),
         grpc.StatusCode.INVALID_ARGUMENT, "tools[1].name", "given twice"),
        (chat(tool_choice=tools_pb2.ToolChoice(name="fly")),
         grpc.StatusCode.INVALID_ARGUMENT, "tool_choice.name", "'fly' is not one of the tools"),
        (chat(tool_choice=tools_pb2.ToolChoice(mode=7)),
         grpc.StatusCode.INVALID_ARGUMENT, "tool_choice.mode", "not a known ToolChoiceMode"),
        (chat(tools=[], tool_choice=REQUIRED), grpc.StatusCode.INVALID_ARGUMENT,
         "tool_choice", "tool_choice requires a call but no tools are given"),
        (chat(params=common_pb2.GenerationParams(grammar='root ::= "x"')),
         grpc.StatusCode.INVALID_ARGUMENT, "params.grammar", "cannot be combined with tools"),
        (chat(session_id="s1"), grpc.StatusCode.INVALID_ARGUMENT, "session_id",
         "tools cannot be combined with session_id"),
        (chat(model_id="nope"), grpc.StatusCode.NOT_FOUND, "", "no model"),
        (generate_pb2.ChatRequest(model_id="tiny", messages=[
            generate_pb2.ChatMessage(role=generate_pb2.ROLE_ASSISTANT, tool_calls=[
                tools_pb2.ToolCall(id="c", name="add", arguments_json="[")])]),
         grpc.StatusCode.INVALID_ARGUMENT, "messages[0].tool_calls[0].arguments_json",
         "is not valid JSON"),
    ],
)  # fmt: skip
def test_bad_tool_requests(
    stubs: ToolStubs,
    request_: generate_pb2.ChatRequest,
    code: grpc.StatusCode,
    field: str,
    message: str,
) -> None:
    err = error_of(lambda: stubs.generate.Chat(request_))
    assert err.code() == code
    assert message in err.details()
    if field:
        assert field_violations(err) == [field]
