"""ToolsService over gRPC on a real daemon: listing, executing, the daemon-backed
built-ins (device_status, rag_search), settings, and bad requests."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import jsonschema
import pytest
from google.protobuf.duration_pb2 import Duration
from google.rpc import error_details_pb2, status_pb2

from rustaid.api.v1 import tools_pb2
from rustaid.testing.daemon import run_daemon
from tests.services.test_generate import error_of, field_violations
from tests.tools.conftest import StartDaemon, ToolStubs, make_data_dir


@pytest.fixture(scope="module")
def stubs(tmp_path_factory: pytest.TempPathFactory, tool_model: Path) -> Iterator[ToolStubs]:
    data = make_data_dir(
        tmp_path_factory.mktemp("service"),
        tool_model,
        """
        [tools]
        enable = ["code_exec"]

        [tools.code_exec]
        cpu_s = 1
        wall_s = 30
        nice = 0
        """,
    )
    with run_daemon(data) as daemon:
        s = ToolStubs(daemon)
        yield s
        s.close()


def execute(
    stubs: ToolStubs, name: str, args: object = None, **kw: object
) -> tools_pb2.ExecuteToolResponse:
    text = args if isinstance(args, str) else json.dumps(args or {})
    return stubs.tools.ExecuteTool(
        tools_pb2.ExecuteToolRequest(name=name, arguments_json=text, **kw)
    )  # type: ignore[arg-type]


def reason_of(err: grpc.RpcError) -> str:
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            for detail in status_pb2.Status.FromString(value).details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return str(info.reason)
    return ""


def test_list_tools_shows_schemas_state_and_metrics(stubs: ToolStubs) -> None:
    execute(stubs, "calculator", {"expression": "1+1"})
    listed = stubs.tools.ListTools(tools_pb2.ListToolsRequest())
    tools = {t.name: t for t in listed.tools}
    assert {"calculator", "datetime", "unit_convert", "device_status", "rag_search",
            "http_get", "code_exec"} <= set(tools)  # fmt: skip
    calc = tools["calculator"]
    assert calc.plugin == "builtin-tools" and calc.enabled and not calc.disabled_reason
    schema = json.loads(calc.parameters_schema)
    jsonschema.Draft202012Validator.check_schema(schema)
    assert schema["required"] == ["expression"]
    assert json.loads(calc.result_schema)["required"] == ["result"]
    assert calc.timeout.ToMilliseconds() == 2000
    assert calc.metrics.calls >= 1 and calc.metrics.ok >= 1
    assert calc.metrics.last_call_time.seconds > 0
    assert tools["code_exec"].enabled  # enabled in rustaid.toml
    http = tools["http_get"]
    assert not http.enabled and 'enable = ["http_get"]' in http.disabled_reason
    assert list(listed.wasm_modules) == []


def test_execute_returns_output_status_and_duration(stubs: ToolStubs) -> None:
    r = execute(stubs, "unit_convert", {"value": 5, "from": "km", "to": "mi"})
    assert r.status == tools_pb2.TOOL_CALL_STATUS_OK and not r.error
    assert json.loads(r.output_json) == {
        "value": 3.10685596119,
        "unit": "mi",
        "dimension": "length",
    }
    assert r.duration.ToNanoseconds() > 0
    r = execute(stubs, "calculator", {"expression": "2 ^ 4096"})
    assert r.status == tools_pb2.TOOL_CALL_STATUS_ERROR and r.output_json == ""
    assert r.error == "tool 'calculator' failed: the result is too large"


def test_a_sandbox_limit_is_a_status(stubs: ToolStubs) -> None:
    r = execute(stubs, "code_exec", {"code": "while True: pass"})
    assert r.status == tools_pb2.TOOL_CALL_STATUS_LIMIT_EXCEEDED
    timeout = Duration(nanos=300_000_000)
    r = execute(stubs, "code_exec", {"code": "import time; time.sleep(9)"}, timeout=timeout)
    assert r.status == tools_pb2.TOOL_CALL_STATUS_TIMEOUT


def test_device_status_reads_the_resource_manager(stubs: ToolStubs) -> None:
    r = execute(stubs, "device_status")
    status = json.loads(r.output_json)
    assert status["source"] == "resources"
    assert status["memory"]["total_bytes"] > 0
    assert status["models"]["known"] >= 1 and "tiny" not in status["models"]["broken"]
    assert "builtin-tools" in status["plugins"]["active"]


def test_rag_search_uses_the_rag_subsystem(stubs: ToolStubs) -> None:
    r = execute(stubs, "rag_search", {"collection": "nothing-here", "query": "hello"})
    # The daemon has RAG, so the tool runs; the collection does not exist.
    assert r.status == tools_pb2.TOOL_CALL_STATUS_ERROR
    assert "nothing-here" in r.error


@pytest.mark.parametrize(
    ("name", "args", "kw", "code", "reason", "field", "message"),
    [
        ("", {}, {}, grpc.StatusCode.INVALID_ARGUMENT, "", "name", "name is empty"),
        ("warp", {}, {}, grpc.StatusCode.NOT_FOUND, "TOOL_NOT_FOUND", "",
         "no tool named 'warp'; known tools: calculator"),
        ("calculator", {"expression": 1, "x": 2}, {}, grpc.StatusCode.INVALID_ARGUMENT,
         "TOOL_ARGUMENTS_INVALID", "arguments_json",
         "(2 problems): $: Additional properties are not allowed ('x' was unexpected); "
         "$.expression: 1 is not of type 'string'"),
        ("calculator", "[]", {}, grpc.StatusCode.INVALID_ARGUMENT, "", "arguments_json",
         "must be a JSON object"),
        ("calculator", {"expression": "1"}, {"timeout": Duration(seconds=-1)},
         grpc.StatusCode.INVALID_ARGUMENT, "", "timeout", "must not be negative"),
        ("calculator", {"expression": "1"}, {"timeout": Duration(seconds=301)},
         grpc.StatusCode.INVALID_ARGUMENT, "", "timeout", "between 0 and 300 s"),
        ("http_get", {"url": "http://example.org/"}, {}, grpc.StatusCode.FAILED_PRECONDITION,
         "TOOL_DISABLED", "", "off by default"),
    ],
)  # fmt: skip
def test_bad_execute_requests(
    stubs: ToolStubs,
    name: str,
    args: object,
    kw: dict[str, object],
    code: grpc.StatusCode,
    reason: str,
    field: str,
    message: str,
) -> None:
    err = error_of(lambda: execute(stubs, name, args, **kw))
    assert err.code() == code
    assert message in err.details()
    assert reason_of(err) == reason
    if field:
        assert field_violations(err) == [field]


def test_a_bad_tools_section_stops_start_up(start_daemon: StartDaemon, tmp_path: Path) -> None:
    data = make_data_dir(tmp_path / "bad", None, "[tools]\nmax_concurrent = 0\n")
    with (
        pytest.raises(RuntimeError, match=r"\[tools\] max_concurrent: expected a positive integer"),
        run_daemon(data),
    ):
        pass
