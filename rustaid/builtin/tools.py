"""Built-in plugin: the tools that ship with rustaid.

calculator, datetime, unit_convert, device_status and rag_search are on; http_get and
code_exec are off until enabled in [tools] of rustaid.toml (see docs/tools.md).
"""

from __future__ import annotations

from collections.abc import Callable

from rustaid.hookspecs import hookimpl
from rustaid.providers import PluginInfo, ResourceRequirements, Tool
from rustaid.tools.calculator import Calculator
from rustaid.tools.clock import DateTime
from rustaid.tools.device import DeviceStatus
from rustaid.tools.rag import RagSearch
from rustaid.tools.subprocess import CodeExec
from rustaid.tools.units import UnitConvert
from rustaid.tools.web import HttpGet

PLUGIN = PluginInfo(
    name="builtin-tools",
    version="0.1.0",
    description="Calculator, date/time, unit conversion, device status, document search, "
    "HTTP GET and sandboxed Python.",
    requirements=ResourceRequirements(min_memory_bytes=1 << 20, thermal_impact=1),
)


@hookimpl
def register_tools(register: Callable[[Tool], None]) -> None:
    for tool in (
        Calculator(),
        DateTime(),
        UnitConvert(),
        DeviceStatus(),
        RagSearch(),
        HttpGet(),
        CodeExec(),
    ):
        register(tool)
