"""RunAgent against a real daemon and a random-weight model: streamed steps, schema-valid
calls, the allow-list, the step limit, tools that hang, and bad requests."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import grpc
import jsonschema
import pytest

from rustaid.api.v1 import common_pb2, tools_pb2
from rustaid.testing.daemon import run_daemon
from rustaid.tools.calculator import Calculator
from rustaid.tools.units import UnitConvert
from tests.services.test_generate import error_of, field_violations
from tests.tools.conftest import ToolStubs, make_data_dir

SCHEMAS = {t.name: t.parameters_schema for t in (Calculator(), UnitConvert())}

HANGING_PLUGIN = '''\
"""A drop-in with a tool that never answers in time."""

import time

from rustaid.hookspecs import hookimpl
from rustaid.providers import Tool


class Hang(Tool):
    name = "hang"
    description = "Takes forever."
    parameters_schema = {"type": "object", "properties": {}, "additionalProperties": False}
    timeout_s = 0.5

    def run(self, arguments):
        time.sleep(20)
        return {}


@hookimpl
def register_tools(register):
    register(Hang())
'''


def grammar_for(reply: dict[str, Any]) -> str:
    """A grammar that only allows `reply` (the agent's expert override)."""
    literal = json.dumps(json.dumps(reply))
    return f"root ::= {literal}"


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory, tool_model: Path) -> Iterator[ToolStubs]:
    data = make_data_dir(tmp_path_factory.mktemp("agent"), tool_model)
    plugin = data / "plugins" / "hanging.py"
    plugin.write_text(HANGING_PLUGIN)
    plugin.chmod(0o644)
    with run_daemon(data) as daemon:
        s = ToolStubs(daemon)
        yield s
        s.close()


def agent(prompt: str = "what is 2 + 2?", **kw: Any) -> tools_pb2.RunAgentRequest:
    kw.setdefault("model_id", "tiny")
    kw.setdefault("tools", ["calculator", "unit_convert"])
    return tools_pb2.RunAgentRequest(prompt=prompt, **kw)


def run(stubs: ToolStubs, request: tools_pb2.RunAgentRequest) -> list[tools_pb2.RunAgentResponse]:
    return list(stubs.tools.RunAgent(request, timeout=120))


def test_random_model_steps_are_well_formed(stubs: ToolStubs) -> None:
    calls = 0
    for seed in range(12):
        params = common_pb2.GenerationParams(seed=seed, temperature=1.0, max_tokens=150)
        events = run(stubs, agent(max_steps=4, params=params))
        kinds = [e.WhichOneof("step") for e in events]
        assert kinds[-1] == "done" and kinds.count("done") == 1
        done = events[-1].done
        pending: dict[str, str] = {}
        for e in events[:-1]:
            if e.HasField("tool_call"):
                call = e.tool_call
                jsonschema.validate(json.loads(call.arguments_json), SCHEMAS[call.name])
                pending[call.id] = call.name
                calls += 1
            elif e.HasField("tool_result"):
                result = e.tool_result
                assert pending.pop(result.call_id) == result.name  # a result per call, in order
                assert result.status in (
                    tools_pb2.TOOL_CALL_STATUS_OK, tools_pb2.TOOL_CALL_STATUS_ERROR,
                )  # fmt: skip
        assert not pending
        assert [e.turn for e in events] == sorted(e.turn for e in events)
        assert 1 <= done.steps <= 4 and events[-1].turn == done.steps
        if done.stop_reason == tools_pb2.AGENT_STOP_REASON_ANSWER:
            chunks = "".join(e.chunk.text for e in events if e.HasField("chunk"))
            assert chunks == done.answer
        else:
            assert done.stop_reason in (
                tools_pb2.AGENT_STOP_REASON_LENGTH, tools_pb2.AGENT_STOP_REASON_MAX_STEPS,
            )  # fmt: skip
        assert done.generation.usage.completion_tokens > 0
        assert done.generation.model_id == "tiny"
    assert calls  # the random model does call tools


def test_tools_run_and_results_are_fed_back(stubs: ToolStubs) -> None:
    call = {"tool": "calculator", "arguments": {"expression": "6 * 7"}}
    events = run(stubs, agent(max_steps=3, params=common_pb2.GenerationParams(
        grammar=grammar_for(call), max_tokens=100)))  # fmt: skip
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert [json.loads(r.output_json) for r in results] == [{"result": 42}] * 3
    assert all(r.status == tools_pb2.TOOL_CALL_STATUS_OK and r.name == "calculator"
               for r in results)  # fmt: skip
    done = events[-1].done
    assert done.stop_reason == tools_pb2.AGENT_STOP_REASON_MAX_STEPS
    assert (done.steps, done.answer) == (3, "")
    # Each turn saw the earlier results: the prompts grow.
    assert done.generation.usage.prompt_tokens > 3 * 600


def test_a_repeated_failing_call_ends_the_run(stubs: ToolStubs) -> None:
    """The same failing call a third time stops the agent, with its own stop reason,
    instead of using up every step."""
    call = {"tool": "calculator", "arguments": {"expression": "1/0"}}
    events = run(stubs, agent(max_steps=8, params=common_pb2.GenerationParams(
        grammar=grammar_for(call), max_tokens=100)))  # fmt: skip
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert [r.status for r in results] == [tools_pb2.TOOL_CALL_STATUS_ERROR] * 3
    done = events[-1].done
    assert done.stop_reason == tools_pb2.AGENT_STOP_REASON_REPEATED_FAILURE
    assert (done.steps, done.answer) == (3, "")


def test_the_answer_is_streamed(stubs: ToolStubs) -> None:
    answer = {"answer": 'It is 42 - "exactly" 42.'}
    events = run(stubs, agent(params=common_pb2.GenerationParams(
        grammar=grammar_for(answer), max_tokens=100)))  # fmt: skip
    chunks = [e.chunk for e in events if e.HasField("chunk")]
    assert len(chunks) > 1 and [c.index for c in chunks] == list(range(len(chunks)))
    assert "".join(c.text for c in chunks) == answer["answer"]
    done = events[-1].done
    assert done.answer == answer["answer"] and done.steps == 1
    assert done.stop_reason == tools_pb2.AGENT_STOP_REASON_ANSWER


def test_a_tool_outside_the_allow_list_is_refused(stubs: ToolStubs) -> None:
    call = {"tool": "datetime", "arguments": {}}
    events = run(stubs, agent(tools=["calculator"], max_steps=1, params=common_pb2.GenerationParams(
        grammar=grammar_for(call), max_tokens=60)))  # fmt: skip
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.status == tools_pb2.TOOL_CALL_STATUS_NOT_ALLOWED
    assert result.error == "tool 'datetime' is not allowed here; allowed: calculator"
    assert result.output_json == ""


def test_arguments_that_violate_the_schema_are_refused(stubs: ToolStubs) -> None:
    call = {"tool": "calculator", "arguments": {"expr": "1"}}
    events = run(stubs, agent(max_steps=1, params=common_pb2.GenerationParams(
        grammar=grammar_for(call), max_tokens=60)))  # fmt: skip
    result = next(e.tool_result for e in events if e.HasField("tool_result"))
    assert result.status == tools_pb2.TOOL_CALL_STATUS_INVALID_ARGUMENTS
    assert "'expression' is a required property" in result.error


def test_a_hanging_tool_times_out_and_blocks_nothing(stubs: ToolStubs) -> None:
    call = {"tool": "hang", "arguments": {}}
    request = agent(tools=["hang"], max_steps=2, params=common_pb2.GenerationParams(
        grammar=grammar_for(call), max_tokens=60))  # fmt: skip
    events: list[tools_pb2.RunAgentResponse] = []
    worker = threading.Thread(target=lambda: events.extend(run(stubs, request)))
    t0 = time.monotonic()
    worker.start()
    time.sleep(0.2)
    quick = stubs.tools.ExecuteTool(
        tools_pb2.ExecuteToolRequest(name="calculator", arguments_json='{"expression": "1+1"}')
    )
    assert quick.status == tools_pb2.TOOL_CALL_STATUS_OK and time.monotonic() - t0 < 1
    worker.join(30)
    results = [e.tool_result for e in events if e.HasField("tool_result")]
    assert [r.status for r in results] == [tools_pb2.TOOL_CALL_STATUS_TIMEOUT] * 2
    assert results[0].error == "tool 'hang' did not finish within 0.5 s"
    assert events[-1].done.stop_reason == tools_pb2.AGENT_STOP_REASON_MAX_STEPS
    assert time.monotonic() - t0 < 10


@pytest.mark.parametrize(
    ("request_", "code", "field", "message"),
    [
        (agent(tools=["teleport"]), grpc.StatusCode.NOT_FOUND, "",
         "no tool named 'teleport'; known tools: calculator"),
        (agent(tools=["code_exec"]), grpc.StatusCode.FAILED_PRECONDITION, "", "off by default"),
        (agent(tools=[""]), grpc.StatusCode.INVALID_ARGUMENT, "tools[0]", "tools[0] is empty"),
        (agent(max_steps=33), grpc.StatusCode.INVALID_ARGUMENT, "max_steps",
         "max_steps must be between 1 and 32"),
        (agent(prompt=" "), grpc.StatusCode.INVALID_ARGUMENT, "prompt", "prompt is empty"),
        (agent(params=common_pb2.GenerationParams(json_schema="{}")),
         grpc.StatusCode.INVALID_ARGUMENT, "params.json_schema", "cannot be used with an agent"),
        (agent(params=common_pb2.GenerationParams(top_p=2)), grpc.StatusCode.INVALID_ARGUMENT,
         "params.top_p", "params.top_p must be in (0, 1]"),
        (agent(model_id="nope"), grpc.StatusCode.NOT_FOUND, "", "no model"),
    ],
)  # fmt: skip
def test_bad_agent_requests(
    stubs: ToolStubs,
    request_: tools_pb2.RunAgentRequest,
    code: grpc.StatusCode,
    field: str,
    message: str,
) -> None:
    err = error_of(lambda: run(stubs, request_))
    assert err.code() == code
    assert message in err.details()
    if field:
        assert field_violations(err) == [field]


def test_an_agent_ends_when_its_client_goes_away(stubs: ToolStubs) -> None:
    call = {"tool": "hang", "arguments": {}}
    stream = stubs.tools.RunAgent(agent(tools=["hang"], max_steps=32,
                                        params=common_pb2.GenerationParams(
                                            grammar=grammar_for(call), max_tokens=60)))  # fmt: skip
    first = next(iter(stream))
    assert first.HasField("tool_call")
    stream.cancel()
    # The daemon still answers everything else at once.
    quick = stubs.tools.ExecuteTool(
        tools_pb2.ExecuteToolRequest(name="calculator", arguments_json='{"expression": "2"}')
    )
    assert quick.status == tools_pb2.TOOL_CALL_STATUS_OK

    def hang_calls() -> int:
        listed = stubs.tools.ListTools(tools_pb2.ListToolsRequest()).tools
        return int(next(t for t in listed if t.name == "hang").metrics.calls)

    time.sleep(1)  # the call running when the client left ends at its timeout
    settled = hang_calls()
    time.sleep(1.5)  # a still-running agent would have made two more calls by now
    assert hang_calls() == settled
