"""The `device_status` tool: what the daemon knows about the device and itself.

Device readings come from the daemon's resource manager (`daemon.resources`, the
ResourcesService data: memory pressure, thermal state, battery, power profile) when it
has one, otherwise straight from psutil; `source` in the result says which. Models and
plugins come from the daemon's registry and plugin manager.
"""

from __future__ import annotations

import dataclasses
import enum
import inspect
import math
import os
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

import psutil

from rustaid.providers import Tool, tool_context

MAX_DEPTH = 8


def jsonable(value: Any, depth: int = 0) -> Any:
    """Plain JSON data from dataclasses, enums, mappings, sequences, paths and times."""
    if depth > MAX_DEPTH:
        return None
    if isinstance(value, enum.Enum):  # IntEnum levels read better by name
        return value.name.lower() if isinstance(value.value, int) else str(value.value)
    if value is None or isinstance(value, bool | int | str):
        return value
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {
            f.name: jsonable(getattr(value, f.name), depth + 1) for f in dataclasses.fields(value)
        }
    if isinstance(value, Mapping):
        return {str(k): jsonable(v, depth + 1) for k, v in value.items()}
    if isinstance(value, list | tuple | set | frozenset):
        return [jsonable(v, depth + 1) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, Path):
        return str(value)
    return str(value)


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


def _resources(daemon: Any) -> dict[str, Any] | None:
    resources = getattr(daemon, "resources", None)
    value = getattr(resources, "snapshot", None)  # the latest snapshot (or a method)
    if value is None:
        return None
    if callable(value):
        value = value()
    if inspect.isawaitable(value):
        value = tool_context().call_async(value)  # type: ignore[arg-type]
    data = jsonable(value)
    return data if isinstance(data, dict) else {"snapshot": data}


def _daemon_state(daemon: Any) -> dict[str, Any]:
    out: dict[str, Any] = {}
    registry = getattr(daemon, "registry", None)
    if registry is not None:
        models = list(registry.list())
        out["models"] = {
            "known": len(models),
            "loaded": sorted(
                m.id for m in models if str(getattr(m.state, "value", m.state)) == "loaded"
            ),
            "broken": sorted(
                m.id for m in models if str(getattr(m.state, "value", m.state)) == "error"
            ),
        }
    plugins = getattr(daemon, "plugins", None)
    if plugins is not None:
        records = list(plugins.list())
        out["plugins"] = {
            "active": sorted(r.id for r in records if str(r.state) == "active"),
            "failed": sorted(r.id for r in records if str(r.state) == "failed"),
        }
    return out


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
        daemon = tool_context().daemon
        readings = _resources(daemon)
        result: dict[str, Any]
        if readings is not None:
            result = {"source": "resources", **readings}
        else:
            result = {"source": "psutil", **_psutil_readings()}
        result.update(_daemon_state(daemon))
        return result
