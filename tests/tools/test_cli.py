"""`rustaictl tools list|run` and `rustaictl agent` against a real daemon, and the
client library's tools and NLU methods."""

from __future__ import annotations

import io
import json
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from rustaid_client.cli import main
from rustaid_client.client import Client, RustaidError

from rustaid.api.v1 import nlu_pb2, tools_pb2
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.tools.conftest import make_data_dir


@pytest.fixture(scope="module")
def daemon(tmp_path_factory: pytest.TempPathFactory, tool_model: Path) -> Iterator[DaemonProcess]:
    data = make_data_dir(tmp_path_factory.mktemp("cli"), tool_model)
    with run_daemon(data) as running:
        yield running


def run(
    capsys: pytest.CaptureFixture[str], daemon: DaemonProcess, *argv: str
) -> tuple[int, str, str]:
    code = main(["--address", daemon.address, *argv])
    out, err = capsys.readouterr()
    return code, out, err


def test_tools_list(capsys: pytest.CaptureFixture[str], daemon: DaemonProcess) -> None:
    code, out, err = run(capsys, daemon, "tools", "list")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["NAME", "PLUGIN", "ENABLED", "CALLS", "FAILED", "DESCRIPTION"]
    table = {r.split()[0]: r.split() for r in rows}
    assert table["calculator"][1:3] == ["builtin-tools", "yes"]
    assert table["http_get"][2] == "no"
    code, out, _ = run(capsys, daemon, "tools", "list", "--json")
    assert {t["name"] for t in json.loads(out)["tools"]} >= {"calculator", "datetime"}


def test_tools_run(
    capsys: pytest.CaptureFixture[str], daemon: DaemonProcess, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, out, err = run(capsys, daemon, "tools", "run", "calculator", '{"expression": "2^8"}')
    assert (code, json.loads(out), err) == (0, {"result": 256}, "")
    monkeypatch.setattr(sys, "stdin", io.StringIO('{"value": 1, "from": "km", "to": "m"}'))
    code, out, _ = run(capsys, daemon, "tools", "run", "unit_convert", "-")
    assert json.loads(out)["value"] == 1000
    code, out, err = run(capsys, daemon, "tools", "run", "calculator", '{"expression": "1/0"}')
    assert code == 1 and out == ""
    assert err == "rustaictl: calculator: error: tool 'calculator' failed: division by zero\n"
    code, out, err = run(capsys, daemon, "tools", "run", "calculator", "{}")
    assert code == 1 and "INVALID_ARGUMENT" in err and "'expression' is a required" in err
    code, _, err = run(capsys, daemon, "tools", "run", "calculator", "{oops")
    assert code == 2 and "not valid JSON" in err
    code, _, err = run(capsys, daemon, "tools", "run", "nope")
    assert code == 1 and "NOT_FOUND" in err


def test_agent(capsys: pytest.CaptureFixture[str], daemon: DaemonProcess) -> None:
    code, out, err = run(capsys, daemon, "agent", "what is 2+2?", "--tool", "calculator",
                         "--model", "tiny", "--max-steps", "2", "--max-tokens", "80",
                         "--seed", "3")  # fmt: skip
    assert code in (0, 1)
    for line in err.splitlines():
        assert line.startswith(("-> calculator {", "<- ", "rustaictl: the agent stopped"))
    if code == 0:
        assert out.strip()
    code, out, _ = run(capsys, daemon, "--json", "agent", "hi", "--tool", "calculator",
                       "--model", "tiny", "--max-steps", "1", "--max-tokens", "40")  # fmt: skip
    events = [json.loads(line) for line in out.splitlines()]
    assert "done" in events[-1] and events[-1]["done"]["steps"] == 1
    code, _, err = run(capsys, daemon, "agent", "hi", "--tool", "nope", "--model", "tiny")
    assert code == 1 and "no tool named 'nope'" in err


def test_client_library(daemon: DaemonProcess) -> None:
    with Client(daemon.address, timeout=60) as client:
        names = {t.name for t in client.list_tools().tools}
        assert "calculator" in names
        out = client.execute_tool("calculator", {"expression": "3*3"}, timeout=5)
        assert out.status == tools_pb2.TOOL_CALL_STATUS_OK
        assert json.loads(out.output_json) == {"result": 9}
        with pytest.raises(RustaidError) as info:
            client.execute_tool("calculator", {"expression": "1"}, timeout=1000)
        assert info.value.field_violations == (("timeout", info.value.message),)
        events = list(client.run_agent("hi", ["calculator"], "tiny", max_steps=1, max_tokens=40))
        assert events[-1].HasField("done")
        intent = client.classify_intent("hello", ["greet", "bye"], model_id="tiny")
        assert intent.intent in ("greet", "bye") and intent.backend == nlu_pb2.NLU_BACKEND_LLM
        entities = client.extract_entities("in Paris", [("city", "a town")], model_id="tiny")
        assert all(e.type == "city" for e in entities.entities)
