"""The `device_status` tool: what the daemon knows about the device and itself.

Device readings come from the daemon's resource manager (`ToolHost.resources()`, the
ResourcesService data: memory pressure, thermal state, battery, power profile) in a
daemon, otherwise straight from psutil; `source` in the result says which. Models and
plugins come from the daemon's registry and plugin manager (`ToolHost.models()`,
`ToolHost.plugins()`).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import psutil

from rustaid.providers import Tool, ToolHost, tool_context


def _psutil_readings() -> dict[str, Any]:
    mem = psutil.virtual_memory()
    out: dict[str, Any] = {
        "memory": {
            "total_bytes": mem.total,
            "available_bytes": mem.available,
            "used_percent": mem.percent,
        },
        "cpu": {
            "logical_cores": psutil.cpu_count() or 0,
            "physical_cores": psutil.cpu_count(logical=False) or 0,
            "load_average": [round(x, 2) for x in os.getloadavg()],
        },
    }
    try:
        battery = psutil.sensors_battery()
    except (OSError, AttributeError):
        battery = None
    if battery is not None:
        out["battery"] = {"percent": battery.percent, "on_battery": not battery.power_plugged}
    return out


def _daemon_state(host: ToolHost) -> dict[str, Any]:
    models = host.models()
    plugins = host.plugins()
    return {
        "models": {
            "known": len(models),
            "loaded": sorted(m for m, state in models.items() if state == "loaded"),
            "broken": sorted(m for m, state in models.items() if state == "error"),
        },
        "plugins": {
            "active": sorted(p for p, state in plugins.items() if state == "active"),
            "failed": sorted(p for p, state in plugins.items() if state == "failed"),
        },
    }


class DeviceStatus(Tool):
    name = "device_status"
    description = (
        "The device's state: memory, CPU, battery, temperature and power profile when "
        "known, plus the language models and plugins the daemon has loaded."
    )
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {},
        "additionalProperties": False,
    }
    result_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {"source": {"enum": ["resources", "psutil"]}},
        "required": ["source"],
    }
    timeout_s = 5.0

    def run(self, arguments: Mapping[str, Any]) -> Any:
        host = tool_context().host
        if host is None:  # outside a daemon
            return {"source": "psutil", **_psutil_readings()}
        return {"source": "resources", **host.resources(), **_daemon_state(host)}
