"""A well-behaved plugin: one tool, one LLM provider, startup/shutdown recorded on
the daemon object (tests pass one with an `events` list)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from rustaid.errors import PreconditionFailed
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    LLMProvider,
    LoadedLLM,
    LoadOptions,
    PluginInfo,
    ResourceRequirements,
    Tool,
)

PLUGIN = PluginInfo(
    name="good",
    version="1.2.3",
    description="Fixture plugin for the plugin manager tests",
    requirements=ResourceRequirements(min_memory_bytes=1024, thermal_impact=5),
)


class EchoTool(Tool):
    name = "echo"
    description = "Returns its arguments"
    parameters_schema: Mapping[str, Any] = {"type": "object"}

    def run(self, arguments: Mapping[str, Any]) -> Any:
        return dict(arguments)


class NullLLMProvider(LLMProvider):
    name = "null-llm"

    def handles(self, path: Path) -> bool:
        return path.suffix == ".null"

    def load(self, path: Path, options: LoadOptions) -> LoadedLLM:
        raise PreconditionFailed("the null provider loads nothing")


def _record(daemon: object, event: str) -> None:
    events = getattr(daemon, "events", None)
    if isinstance(events, list):
        events.append(event)


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    register(EchoTool())


@hookimpl
def register_llm_providers(register: Callable[[LLMProvider], None]) -> None:
    register(NullLLMProvider())


@hookimpl
def startup(daemon: object) -> None:
    _record(daemon, "startup:good")


@hookimpl
def shutdown(daemon: object) -> None:
    _record(daemon, "shutdown:good")
