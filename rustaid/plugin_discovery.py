"""Finding plugins: the built-in list, entry points (group "rustaid") and the drop-in
folder, each found plugin with the record the daemon shows for it.

Discovery only finds; importing, registering and the lifecycle are the plugin
manager's (rustaid.plugins), the safety checks of drop-ins rustaid.plugin_dropin's.
"""

from __future__ import annotations

import importlib.metadata
import itertools
import logging
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum
from pathlib import Path

from rustaid import hookspecs
from rustaid.config import Settings
from rustaid.errors import InvalidArgument, NotFound
from rustaid.providers import ResourceRequirements

__all__ = [
    "BUILTIN_PLUGINS",
    "DROP_IN_MODULE_PREFIX",
    "ENTRY_POINT_GROUP",
    "PluginEntry",
    "PluginRecord",
    "PluginSource",
    "PluginState",
    "discover",
    "drop_in_entry",
    "resolve_drop_in",
]

log = logging.getLogger(__name__)

# Module names of the plugins that ship with rustaid. They are registered exactly like
# third-party plugins; a missing or broken one is marked FAILED, never fatal.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "rustaid.builtin.llama_cpp",
    "rustaid.builtin.openai_compat",
    "rustaid.builtin.anthropic",
    "rustaid.builtin.onnx_embeddings",
    "rustaid.builtin.llama_cpp_embeddings",
    "rustaid.builtin.onnx_reranker",
    "rustaid.builtin.qdrant_edge",
    "rustaid.builtin.qdrant_client_store",
    "rustaid.builtin.parsers",
    "rustaid.builtin.tools",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

# Drop-ins are imported under private module names so that `<plugins>/json.py` does not
# shadow (or get shadowed by) an installed module.
DROP_IN_MODULE_PREFIX = "rustaid_dropin_"

WASM_SUFFIX = ".wasm"
# Longest file name (bytes) Linux file systems take; a longer name is ENAMETOOLONG.
_NAME_MAX = 255


class PluginState(StrEnum):
    DISCOVERED = "discovered"
    VALIDATED = "validated"
    LOADED = "loaded"
    ACTIVE = "active"
    UNLOADED = "unloaded"
    FAILED = "failed"


class PluginSource(StrEnum):
    BUILTIN = "builtin"
    ENTRY_POINT = "entry_point"
    DROP_IN = "drop_in"


@dataclass
class PluginRecord:
    """What the daemon (and PluginsService) knows about one plugin."""

    id: str
    name: str
    version: str
    description: str
    source: PluginSource
    state: PluginState
    # "<kind>:<registered object's .name>", e.g. "llm:llama.cpp", "tool:calculator".
    capabilities: list[str]
    requirements: ResourceRequirements
    # "" unless FAILED: "ExceptionType: message".
    error: str
    # Drop-ins: the .py file or package folder; others: the module's __file__ if known.
    path: str
    # When the plugin last became ACTIVE; None while it is not active.
    loaded_at: datetime | None


@dataclass(eq=False)
class PluginEntry:
    """The plugin manager's bookkeeping for one plugin; `record` is what callers see
    (as a copy)."""

    record: PluginRecord
    # Id used when the plugin declares no PLUGIN (module / entry-point / file name).
    default_id: str
    # Module imported: the built-in module, the entry point's module, or the drop-in's
    # private module name.
    module_name: str
    file: Path | None = None
    entry_point: importlib.metadata.EntryPoint | None = None
    dist_version: str = ""
    dist_summary: str = ""
    # The object registered with pluggy (normally the module).
    plugin: object | None = None
    # kind -> name -> registered object, while LOADED or ACTIVE.
    objects: dict[str, dict[str, object]] = field(default_factory=dict)
    # Activation order, for stopping in reverse.
    seq: int = 0

    def where(self) -> str:
        source = self.record.source
        if source is PluginSource.DROP_IN:
            return f"drop-in {self.file}"
        if source is PluginSource.ENTRY_POINT and self.entry_point is not None:
            ep = self.entry_point
            dist = ep.dist.name if ep.dist is not None else "unknown distribution"
            return f"entry point {ep.name} = {ep.value} ({dist} {self.dist_version})".rstrip()
        return f"built-in module {self.module_name}"


def discover(settings: Settings, builtins: Sequence[str]) -> list[PluginEntry]:
    """Every plugin to load at start-up, in load order: built-ins, entry points by
    name, drop-ins by file name (entry points and drop-ins only when the settings
    allow them)."""
    entries = [module_entry(name) for name in builtins]
    if settings.entry_point_plugins:
        eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
        entries.extend(entry_point_entry(ep) for ep in sorted(eps, key=lambda e: e.name))
    if settings.drop_in_plugins:
        for path in drop_in_candidates(settings.plugins_dir):
            entries.append(drop_in_entry(path, taken=entries))
    return entries


def drop_in_candidates(folder: Path) -> Iterator[Path]:
    """The .py files and package folders of the plugins folder (not .wasm tools, nor
    names starting with "_" or ".")."""
    if not folder.is_dir():
        log.debug("no drop-in plugin folder at %s", folder)
        return
    for path in sorted(folder.iterdir()):
        if path.name.startswith(("_", ".")) or path.suffix == WASM_SUFFIX:
            continue
        if path.is_dir():
            if (path / "__init__.py").is_file():
                yield path
            else:
                log.warning("ignoring %s: a plugin package folder needs __init__.py", path)
        elif path.suffix == ".py" and path.is_file():
            yield path


def module_entry(module_name: str) -> PluginEntry:
    return PluginEntry(
        record=new_record(module_name, PluginSource.BUILTIN, ""),
        default_id=module_name,
        module_name=module_name,
    )


def entry_point_entry(ep: importlib.metadata.EntryPoint) -> PluginEntry:
    version, summary = "", ""
    if ep.dist is not None:
        version = ep.dist.version or ""
        metadata = ep.dist.metadata
        summary = str((metadata.get_all("Summary") or [""])[0])
    entry = PluginEntry(
        record=new_record(ep.name, PluginSource.ENTRY_POINT, ""),
        default_id=ep.name,
        module_name=ep.module,
        entry_point=ep,
        dist_version=version,
        dist_summary=summary or "",
    )
    entry.record.version = version or "0"
    entry.record.description = entry.dist_summary
    return entry


def drop_in_entry(path: Path, *, taken: Sequence[PluginEntry]) -> PluginEntry:
    """A drop-in, under a private module name no other plugin in `taken` uses."""
    stem = path.name if path.is_dir() else path.stem
    base = DROP_IN_MODULE_PREFIX + re.sub(r"\W", "_", stem)
    used = {e.module_name for e in taken}
    module_name = base
    for n in itertools.count(2):
        if module_name not in used:
            break
        module_name = f"{base}_{n}"
    return PluginEntry(
        record=new_record(stem, PluginSource.DROP_IN, str(path)),
        default_id=stem,
        module_name=module_name,
        file=path,
    )


def resolve_drop_in(settings: Settings, name: str, known: Callable[[], str]) -> Path:
    """The drop-in file or folder a LoadPlugin `name` means ("x.py", or "x" for x.py or
    x/); InvalidArgument or NotFound saying why there is none (`known`: the plugins
    there are, for the message)."""
    folder = settings.plugins_dir
    # The longest file name the file system takes (NAME_MAX), ".py" included.
    size = len(os.fsencode(name if name.endswith(".py") else f"{name}.py"))
    if size > _NAME_MAX:
        raise InvalidArgument(
            f"the plugin id is {len(name)} characters long: no plugin has such an id, and "
            f"a drop-in's file name (with .py) is at most {_NAME_MAX} bytes",
            reason="PLUGIN_PATH_INVALID",
            field="id",
        )
    if (
        not name
        or "\x00" in name
        or "/" in name
        or "\\" in name
        or name in (".", "..")
        or Path(name).is_absolute()
    ):
        raise InvalidArgument(
            f"{name!r} is neither a plugin id nor a file or folder name inside {folder} "
            "(paths are not allowed)",
            reason="PLUGIN_PATH_INVALID",
            field="id",
        )
    if name.startswith(("_", ".")):
        raise InvalidArgument(
            f"{name!r}: drop-in names starting with '_' or '.' are ignored",
            reason="PLUGIN_PATH_INVALID",
            field="id",
        )
    if not settings.drop_in_plugins:
        raise NotFound(
            f"no plugin with id {name!r} (drop-in plugins are disabled in the settings); "
            f"known plugins: {known()}",
            reason="PLUGIN_NOT_FOUND",
        )
    candidates = [folder / name]
    if not name.endswith(".py"):
        candidates.append(folder / f"{name}.py")
    for path in candidates:
        if path.suffix == WASM_SUFFIX:
            raise InvalidArgument(
                f"{name!r}: WebAssembly tool plugins are not plugin-manager plugins: "
                "the tools subsystem loads them from the plugins folder by itself "
                "(see ToolsService.ListTools)",
                reason="PLUGIN_KIND_UNSUPPORTED",
                field="id",
            )
        if path.is_dir():
            if (path / "__init__.py").is_file():
                return path
            raise InvalidArgument(
                f"{path} is not a plugin package: it has no __init__.py",
                reason="PLUGIN_KIND_UNSUPPORTED",
                field="id",
            )
        if path.is_file():
            if path.suffix == ".py":
                return path
            raise InvalidArgument(
                f"{path} is not a plugin: expected a .py file or a package folder",
                reason="PLUGIN_KIND_UNSUPPORTED",
                field="id",
            )
    raise NotFound(
        f"no plugin with id {name!r} and no file or folder {name!r} in {folder}; "
        f"known plugins: {known()}",
        reason="PLUGIN_NOT_FOUND",
    )


def new_record(plugin_id: str, source: PluginSource, path: str) -> PluginRecord:
    return PluginRecord(
        id=plugin_id,
        name=plugin_id,
        version="0",
        description="",
        source=source,
        state=PluginState.DISCOVERED,
        capabilities=[],
        requirements=ResourceRequirements(),
        error="",
        path=path,
        loaded_at=None,
    )
