"""The daemon's `ToolHost` (rustaid.providers): what tools see of the running daemon,
built by the composition root from the parts it exposes and handed to every tool call
as `tool_context().host`. Daemon data reaches tools as JSON, so the classes behind it
can change without changing the tools' API."""

from __future__ import annotations

import dataclasses
import enum
import math
from collections.abc import Awaitable, Callable, Iterable, Mapping
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING

from rustaid.config import Settings
from rustaid.daemon_api import API_VERSION
from rustaid.providers import JSONObject, JSONValue

if TYPE_CHECKING:
    from rustaid.core.registry import ModelEntry
    from rustaid.plugin_discovery import PluginRecord
    from rustaid.power.snapshot import ResourceSnapshot
    from rustaid.rag.manager import SearchResult

MAX_DEPTH = 8


def jsonable(value: object, depth: int = 0) -> JSONValue:
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


def json_object(value: object) -> JSONObject:
    data = jsonable(value)
    return data if isinstance(data, dict) else {"value": data}


def hidden_paths(settings: Settings) -> list[Path]:
    """The daemon's data folder and the folders of its Unix sockets."""
    paths = [Path(settings.data_dir)]
    for address in settings.listen:
        if address.startswith("unix:"):
            paths.append(Path(address.removeprefix("unix://").removeprefix("unix:")).parent)
    return paths


class DaemonToolHost:
    """The `ToolHost` of a running daemon. The parts are read through callables, so
    tools always see the current settings, snapshot, models and plugins."""

    def __init__(
        self,
        *,
        settings: Callable[[], Settings],
        snapshot: Callable[[], ResourceSnapshot],
        models: Callable[[], Iterable[ModelEntry]],
        plugins: Callable[[], Iterable[PluginRecord]],
        search: Callable[[str, str, int], Awaitable[SearchResult]],
    ) -> None:
        self._settings = settings
        self._snapshot = snapshot
        self._models = models
        self._plugins = plugins
        self._search = search

    @property
    def api_version(self) -> int:
        return API_VERSION

    @property
    def settings(self) -> Settings:
        return self._settings()

    def hidden_paths(self) -> list[Path]:
        return hidden_paths(self._settings())

    def resources(self) -> JSONObject:
        return json_object(self._snapshot())

    def models(self) -> dict[str, str]:
        return {m.id: str(m.state) for m in self._models()}

    def plugins(self) -> dict[str, str]:
        return {r.id: str(r.state) for r in self._plugins()}

    async def rag_search(self, collection: str, query: str, top_k: int) -> list[JSONObject]:
        result = await self._search(collection, query, top_k)
        return [json_object(hit) for hit in result.hits]
