"""A drop-in plugin package: its tool lives in a submodule (relative import)."""

from __future__ import annotations

from collections.abc import Callable

from rustaid.hookspecs import hookimpl
from rustaid.providers import PluginInfo, Tool

from .tools import UpperTool

PLUGIN = PluginInfo(name="pkg", version="0.1", description="Package fixture")


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    register(UpperTool())
