"""The [tools] section of rustaid.toml.

[tools]
enable = ["http_get"]        # tools that are off by default
disable = ["calculator"]     # tools to turn off
max_timeout_s = 300          # longest timeout a caller may ask for
max_result_bytes = 1048576   # larger results are refused
max_concurrent = 16          # tool calls running at once

[tools.http_get]             # one table per tool: its own settings
allow_hosts = ["example.org"]

[tools.wasm]                 # limits of WebAssembly tools
memory_mb = 64
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from rustaid.config import Settings
from rustaid.errors import InvalidArgument

SECTION = "tools"


def _bad(key: str, why: str, value: object) -> InvalidArgument:
    return InvalidArgument(
        f"rustaid.toml [{SECTION}] {key}: {why} (got {value!r})", field=f"{SECTION}.{key}"
    )


def number(table: Mapping[str, Any], key: str, default: float, *, where: str = "") -> float:
    """A positive finite number from `table` (`default` when absent)."""
    value = table.get(key, default)
    name = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise _bad(name, "expected a number", value)
    if not math.isfinite(value) or value <= 0:
        raise _bad(name, "must be a positive number", value)
    return float(value)


def integer(table: Mapping[str, Any], key: str, default: int, *, where: str = "") -> int:
    """A positive integer from `table` (`default` when absent)."""
    value = table.get(key, default)
    name = f"{where}.{key}" if where else key
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise _bad(name, "expected a positive integer", value)
    return value


def strings(table: Mapping[str, Any], key: str, *, where: str = "") -> tuple[str, ...]:
    value = table.get(key, [])
    name = f"{where}.{key}" if where else key
    if not isinstance(value, list) or not all(isinstance(v, str) and v for v in value):
        raise _bad(name, "expected a list of non-empty strings", value)
    return tuple(value)


@dataclass(frozen=True)
class WasmLimits:
    """Sandbox limits of each WebAssembly tool call."""

    memory_bytes: int = 64 << 20
    # Roughly one unit per WebAssembly instruction.
    fuel: int = 2_000_000_000
    # Wall-clock limit when the caller gives none (epoch interruption).
    timeout_s: float = 5.0
    # Longest accepted module file.
    max_module_bytes: int = 16 << 20


@dataclass(frozen=True)
class ToolsConfig:
    enable: tuple[str, ...] = ()
    disable: tuple[str, ...] = ()
    max_timeout_s: float = 300.0
    max_result_bytes: int = 1 << 20
    max_concurrent: int = 16
    wasm: WasmLimits = field(default_factory=WasmLimits)
    # [tools.NAME] tables, by tool name.
    tables: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    def table(self, tool: str) -> Mapping[str, Any]:
        return self.tables.get(tool, {})

    @classmethod
    def from_settings(cls, settings: Settings) -> ToolsConfig:
        """Read and check [tools]; InvalidArgument names the key to fix."""
        raw = settings.extra.get(SECTION, {})
        if not isinstance(raw, dict):
            raise _bad("", "expected a table", raw)
        known = {"enable", "disable", "max_timeout_s", "max_result_bytes", "max_concurrent"}
        tables: dict[str, Mapping[str, Any]] = {}
        for key, value in raw.items():
            if isinstance(value, dict):
                tables[key] = value
            elif key not in known:
                raise _bad(key, f"unknown setting; known: {', '.join(sorted(known))}", value)
        wasm_table = tables.get("wasm", {})
        wasm = WasmLimits(
            memory_bytes=integer(wasm_table, "memory_mb", 64, where="wasm") << 20,
            fuel=integer(wasm_table, "fuel", WasmLimits.fuel, where="wasm"),
            timeout_s=number(wasm_table, "timeout_s", WasmLimits.timeout_s, where="wasm"),
            max_module_bytes=integer(wasm_table, "max_module_mb", 16, where="wasm") << 20,
        )
        return cls(
            enable=strings(raw, "enable"),
            disable=strings(raw, "disable"),
            max_timeout_s=number(raw, "max_timeout_s", cls.max_timeout_s),
            max_result_bytes=integer(raw, "max_result_bytes", cls.max_result_bytes),
            max_concurrent=integer(raw, "max_concurrent", cls.max_concurrent),
            wasm=wasm,
            tables=tables,
        )
