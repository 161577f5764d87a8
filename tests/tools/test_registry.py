"""The executor: validation, timeouts, crashes, bad or huge results, limits, metrics.

The registry runs here in-process over real tools (the built-in ones, and small tools
defined below that hang, crash or misbehave on purpose).
"""

from __future__ import annotations

import asyncio
import json
import textwrap
import threading
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import pytest

from rustaid.config import Settings, load_settings
from rustaid.errors import InvalidArgument, NotFound, PreconditionFailed, ResourceExhausted
from rustaid.providers import Tool, ToolError, tool_context
from rustaid.tools.calculator import Calculator
from rustaid.tools.registry import ToolCallStatus, ToolRegistry, serialize
from rustaid.tools.units import UnitConvert


class Sleepy(Tool):
    name = "sleepy"
    description = "Sleeps until released (or 30 s)."
    parameters_schema: Mapping[str, Any] = {"type": "object"}
    timeout_s = 0.3

    def __init__(self) -> None:
        self.release = threading.Event()
        self.finished = threading.Event()

    def run(self, arguments: Mapping[str, Any]) -> Any:
        self.release.wait(30)
        self.finished.set()
        return {"slept": True}


class Returns(Tool):
    """Returns whatever `make()` builds."""

    parameters_schema: Mapping[str, Any] = {"type": "object"}
    description = "test tool"

    def __init__(self, name: str, make: Callable[[], Any], result_schema: Any = None) -> None:
        self.name = name
        self.make = make
        self.result_schema = result_schema

    def run(self, arguments: Mapping[str, Any]) -> Any:
        return self.make()


class Crashes(Tool):
    name = "crashes"
    description = "Raises."
    parameters_schema: Mapping[str, Any] = {"type": "object"}

    def run(self, arguments: Mapping[str, Any]) -> Any:
        raise RuntimeError("boom")


class Refuses(Tool):
    name = "refuses"
    description = "Reports an error the way tools should."
    parameters_schema: Mapping[str, Any] = {"type": "object"}

    def run(self, arguments: Mapping[str, Any]) -> Any:
        raise ToolError("the moon is not in the right phase")


class ReadsSettings(Tool):
    name = "reads_settings"
    description = "Returns its settings table and the time it has left."
    parameters_schema: Mapping[str, Any] = {"type": "object"}

    def run(self, arguments: Mapping[str, Any]) -> Any:
        context = tool_context()
        return {"settings": dict(context.settings), "remaining": context.remaining}


class Broken(Tool):
    name = "broken"
    description = "Has an invalid schema."
    parameters_schema: Mapping[str, Any] = {"type": "object", "properties": {"a": {"type": 5}}}

    def run(self, arguments: Mapping[str, Any]) -> Any:
        return {}


class BuggyCheck(Tool):
    name = "buggy_check"
    description = "Its availability check has a bug."
    parameters_schema: Mapping[str, Any] = {"type": "object"}

    def check_available(self) -> None:
        raise KeyError("oops")

    def run(self, arguments: Mapping[str, Any]) -> Any:
        return {}


class OffByDefault(Tool):
    name = "off"
    description = "Disabled unless enabled."
    parameters_schema: Mapping[str, Any] = {"type": "object"}
    enabled_by_default = False

    def run(self, arguments: Mapping[str, Any]) -> Any:
        return "on"


def settings_with(tmp_path: Path, toml: str = "") -> Settings:
    (tmp_path / "config").mkdir(parents=True, exist_ok=True)
    if toml:
        (tmp_path / "config" / "rustaid.toml").write_text(textwrap.dedent(toml))
    return load_settings(data_dir=tmp_path, system=False, environ={})


def registry_of(tmp_path: Path, *tools: Tool, toml: str = "") -> ToolRegistry:
    settings = settings_with(tmp_path, toml)
    table = {t.name: t for t in tools}
    return ToolRegistry(settings=lambda: settings, plugin_tools=lambda: table)


@pytest.fixture
def registry(tmp_path: Path) -> ToolRegistry:
    return registry_of(
        tmp_path,
        Calculator(),
        UnitConvert(),
        Sleepy(),
        Crashes(),
        Refuses(),
        ReadsSettings(),
        Broken(),
        OffByDefault(),
        BuggyCheck(),
        Returns("a_set", lambda: {1, 2}),
        Returns("nan", lambda: float("nan")),
        Returns("huge", lambda: "x" * (100 << 20)),
        Returns("many", lambda: ["0123456789"] * 200_000),
        Returns(
            "wrong_shape",
            lambda: {"n": "one"},
            {"type": "object", "properties": {"n": {"type": "integer"}}},
        ),
        toml="""
        [tools.reads_settings]
        colour = "blue"
        """,
    )


async def test_runs_a_tool_and_returns_json(registry: ToolRegistry) -> None:
    out = await registry.execute("calculator", '{"expression": "6 * 7"}')
    assert out.status is ToolCallStatus.OK
    assert json.loads(out.output_json) == {"result": 42}
    assert out.error == "" and out.duration_s > 0


async def test_unknown_tool_lists_the_known_ones(registry: ToolRegistry) -> None:
    with pytest.raises(NotFound, match=r"no tool named 'nope'; known tools: .*calculator") as info:
        await registry.execute("nope", "{}")
    assert info.value.reason == "TOOL_NOT_FOUND"


async def test_every_schema_violation_is_listed(registry: ToolRegistry) -> None:
    with pytest.raises(InvalidArgument) as info:
        await registry.execute("unit_convert", '{"value": "ten", "from": "parsec", "extra": 1}')
    message = info.value.message
    assert "(4 problems)" in message
    for part in (
        "'to' is a required property",
        "Additional properties are not allowed ('extra' was unexpected)",
        "$.value: 'ten' is not of type 'number'",
        "$.from: 'parsec' is not one of",
    ):
        assert part in message
    assert info.value.field == "arguments_json"
    assert info.value.reason == "TOOL_ARGUMENTS_INVALID"


@pytest.mark.parametrize(
    ("arguments", "message"),
    [("{", "arguments_json is not valid JSON"), ("[1]", "must be a JSON object")],
)
async def test_arguments_must_be_a_json_object(
    registry: ToolRegistry, arguments: str, message: str
) -> None:
    with pytest.raises(InvalidArgument, match=message):
        await registry.execute("calculator", arguments)


async def test_a_hanging_tool_times_out_without_blocking_others(registry: ToolRegistry) -> None:
    sleepy = registry.get("sleepy")
    assert isinstance(sleepy, Sleepy)
    t0 = time.monotonic()
    hanging = asyncio.ensure_future(registry.execute("sleepy", "{}"))
    await asyncio.sleep(0.05)
    quick = await registry.execute("calculator", '{"expression": "1+1"}')  # not blocked
    assert quick.ok and time.monotonic() - t0 < 0.3
    out = await hanging
    assert out.status is ToolCallStatus.TIMEOUT
    assert out.error == "tool 'sleepy' did not finish within 0.3 s"
    assert 0.3 <= time.monotonic() - t0 < 2
    sleepy.release.set()
    assert sleepy.finished.wait(5)  # the abandoned thread still ends


async def test_the_caller_may_shorten_the_timeout_within_the_limit(registry: ToolRegistry) -> None:
    sleepy = registry.get("sleepy")
    assert isinstance(sleepy, Sleepy)
    out = await registry.execute("sleepy", "{}", timeout_s=0.1)
    assert out.status is ToolCallStatus.TIMEOUT and "0.1 s" in out.error
    with pytest.raises(InvalidArgument, match="timeout must be between 0 and 300 s"):
        await registry.execute("sleepy", "{}", timeout_s=301)
    sleepy.release.set()


async def test_a_crash_is_an_error_outcome(registry: ToolRegistry) -> None:
    out = await registry.execute("crashes", "{}")
    assert out.status is ToolCallStatus.ERROR
    assert out.error == "tool 'crashes' failed: RuntimeError: boom"
    out = await registry.execute("refuses", "{}")
    assert out.error == "tool 'refuses' failed: the moon is not in the right phase"


@pytest.mark.parametrize(
    ("name", "message"),
    [
        ("a_set", "not JSON: Object of type set is not JSON serializable"),
        ("nan", "not JSON: Out of range float values are not JSON compliant"),
        ("wrong_shape", "violates its result schema: $.n: 'one' is not of type 'integer'"),
    ],
)
async def test_bad_results_are_refused(registry: ToolRegistry, name: str, message: str) -> None:
    out = await registry.execute(name, "{}")
    assert out.status is ToolCallStatus.INVALID_OUTPUT
    assert message in out.error
    assert out.output_json == ""


@pytest.mark.parametrize("name", ["huge", "many"])
async def test_a_result_over_the_limit_is_refused(registry: ToolRegistry, name: str) -> None:
    t0 = time.monotonic()
    out = await registry.execute(name, "{}")
    assert out.status is ToolCallStatus.OUTPUT_TOO_LARGE
    assert "larger than 1048576 bytes (max_result_bytes in [tools])" in out.error
    assert time.monotonic() - t0 < 5


def test_serialize_counts_bytes_not_characters() -> None:
    assert serialize({"a": "é"}, 11) == '{"a":"é"}'  # 10 bytes
    with pytest.raises(ToolError, match="result is 10 bytes; the limit is 9"):
        serialize({"a": "é"}, 9)


async def test_disabled_tools_say_how_to_enable_them(tmp_path: Path) -> None:
    registry = registry_of(tmp_path / "a", OffByDefault(), Calculator(),
                           toml='[tools]\ndisable = ["calculator"]\n')  # fmt: skip
    with pytest.raises(PreconditionFailed, match=r'enable = \["off"\]') as info:
        await registry.execute("off", "{}")
    assert info.value.reason == "TOOL_DISABLED"
    with pytest.raises(PreconditionFailed, match="disabled by `disable`"):
        await registry.execute("calculator", '{"expression": "1"}')
    listed = {t.name: t for t in registry.list()}
    assert not listed["off"].enabled and "off by default" in listed["off"].disabled_reason
    enabled = registry_of(tmp_path / "b", OffByDefault(), toml='[tools]\nenable = ["off"]\n')
    assert json.loads((await enabled.execute("off", "{}")).output_json) == "on"


async def test_a_tool_with_a_broken_schema_cannot_run(registry: ToolRegistry) -> None:
    with pytest.raises(PreconditionFailed, match="its schema is broken: invalid JSON Schema"):
        await registry.execute("broken", "{}")
    with pytest.raises(PreconditionFailed, match="availability check failed: KeyError") as info:
        await registry.execute("buggy_check", "{}")
    assert info.value.reason == "TOOL_BROKEN"


async def test_tools_see_their_settings_and_deadline(registry: ToolRegistry) -> None:
    out = await registry.execute("reads_settings", "{}", timeout_s=5)
    result = json.loads(out.output_json)
    assert result["settings"] == {"colour": "blue"}
    assert 4 < result["remaining"] <= 5


async def test_concurrent_calls_are_bounded(tmp_path: Path) -> None:
    sleepy = Sleepy()
    registry = registry_of(tmp_path, sleepy, Calculator(), toml="[tools]\nmax_concurrent = 1\n")
    out = await registry.execute("sleepy", "{}")
    assert out.status is ToolCallStatus.TIMEOUT
    # The abandoned call still holds the only slot.
    with pytest.raises(ResourceExhausted, match="1 tool calls are running") as info:
        await registry.execute("calculator", '{"expression": "1"}')
    assert info.value.reason == "TOOLS_BUSY"
    sleepy.release.set()
    assert sleepy.finished.wait(5)
    for _ in range(100):
        await asyncio.sleep(0.01)
        try:
            assert (await registry.execute("calculator", '{"expression": "1"}')).ok
            break
        except ResourceExhausted:
            continue
    else:
        pytest.fail("the slot was not released")


async def test_executions_are_recorded(registry: ToolRegistry) -> None:
    await registry.execute("calculator", '{"expression": "1"}')
    await registry.execute("calculator", '{"expression": "1/0"}')
    await registry.execute("crashes", "{}")
    metrics = {t.name: t.metrics for t in registry.list()}
    calc = metrics["calculator"]
    assert (calc.calls, calc.ok, calc.failures, calc.timeouts) == (2, 1, 1, 0)
    assert "division by zero" in calc.last_error
    assert calc.total_s >= calc.max_s > 0 and calc.last_call > 0
    assert metrics["crashes"].failures == 1
    assert metrics["unit_convert"].calls == 0


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ("[tools]\nmax_timeout_s = -1\n", r"\[tools\] max_timeout_s: must be a positive number"),
        ('[tools]\nenable = "http_get"\n', r"\[tools\] enable: expected a list"),
        ("[tools]\ncolour = 1\n", r"\[tools\] colour: unknown setting"),
        ("[tools.wasm]\nmemory_mb = 0\n", r"\[tools\] wasm.memory_mb: expected a positive integer"),
    ],
)
async def test_bad_settings_stop_start_up(tmp_path: Path, toml: str, message: str) -> None:
    registry = registry_of(tmp_path, Calculator(), toml=toml)
    with pytest.raises(InvalidArgument, match=message):
        await registry.start()
