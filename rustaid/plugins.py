"""Plugin manager: built-ins, entry points (group "rustaid") and the drop-in folder.

Built-in plugins are registered exactly like third-party ones (as simonw/llm's
`llm/plugins.py` does): every plugin is a module with `@hookimpl` functions and an
optional module-level `PLUGIN = rustaid.providers.PluginInfo(...)`.

Lifecycle of each plugin::

    DISCOVERED -> VALIDATED -> LOADED -> ACTIVE -> UNLOADED
                                          (FAILED from any step)

- DISCOVERED: found in the built-in list, an entry point or the drop-in folder.
- VALIDATED: safety checks passed (drop-ins: folder and files not writable by others).
- LOADED: imported and its hook implementations registered with pluggy.
- ACTIVE: its register_* hooks ran (capabilities registered) and `startup` ran.
- UNLOADED: `shutdown` ran, hooks unregistered, capabilities dropped.
- FAILED: raised while importing, registering or starting; `error` says why. The
  daemon keeps going without it.

The register_* hooks are called once per plugin (not broadcast) so every registered
object is attributed to the plugin that registered it; the manager's registries are
the union of the capabilities of ACTIVE plugins.
"""

from __future__ import annotations

import builtins
import importlib
import importlib.abc
import importlib.machinery
import importlib.metadata
import importlib.util
import itertools
import logging
import os
import re
import stat
import sys
import threading
import types
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from enum import StrEnum
from pathlib import Path
from typing import Any, NamedTuple

import pluggy

from rustaid import hookspecs
from rustaid.config import Settings
from rustaid.errors import (
    AlreadyExists,
    InvalidArgument,
    NotFound,
    PermissionDenied,
    PreconditionFailed,
)
from rustaid.providers import (
    DocumentParser,
    EmbeddingProvider,
    LLMProvider,
    PluginInfo,
    ResourceMonitor,
    ResourceRequirements,
    Tool,
    VectorStore,
)

__all__ = [
    "BUILTIN_PLUGINS",
    "CAPABILITY_KINDS",
    "DROP_IN_MODULE_PREFIX",
    "ENTRY_POINT_GROUP",
    "PluginConflict",
    "PluginManager",
    "PluginRecord",
    "PluginSource",
    "PluginState",
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
    "rustaid.builtin.qdrant_edge",
    "rustaid.builtin.qdrant_client_store",
    "rustaid.builtin.parsers",
    "rustaid.builtin.tools",
)

ENTRY_POINT_GROUP = hookspecs.PROJECT_NAME

# Drop-ins are imported under private module names so that `<plugins>/json.py` does not
# shadow (or get shadowed by) an installed module.
DROP_IN_MODULE_PREFIX = "rustaid_dropin_"


class PluginState(StrEnum):
    DISCOVERED = "discovered"
    VALIDATED = "validated"
    LOADED = "loaded"
    ACTIVE = "active"
    INACTIVE = "inactive"
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


class PluginConflict(PreconditionFailed):
    """Two plugins claim the same id, or the same provider name, at start-up."""

    def __init__(self, message: str) -> None:
        super().__init__(message, reason="PLUGIN_CONFLICT")


class _Kind(NamedTuple):
    kind: str  # capability prefix
    hook: str  # hookspec name
    contract: type[Any]  # the ABC registered objects must implement


_KINDS: tuple[_Kind, ...] = (
    _Kind("llm", "register_llm_providers", LLMProvider),
    _Kind("embedding", "register_embedding_providers", EmbeddingProvider),
    _Kind("vector_store", "register_vector_stores", VectorStore),
    _Kind("document_parser", "register_document_parsers", DocumentParser),
    _Kind("tool", "register_tools", Tool),
    _Kind("resource_monitor", "register_resource_monitors", ResourceMonitor),
)

# Capability prefix -> hook that registers it, e.g. {"llm": "register_llm_providers"}.
CAPABILITY_KINDS: dict[str, str] = {k.kind: k.hook for k in _KINDS}

_HOOK_NAMES: tuple[str, ...] = (*(k.hook for k in _KINDS), "startup", "shutdown")

# What a plugin may raise without taking the daemon down (a stray sys.exit() included).
_PLUGIN_ERRORS: tuple[type[BaseException], ...] = (Exception, SystemExit)

_WASM_SUFFIX = ".wasm"
# Longest file name (bytes) Linux file systems take; a longer name is ENAMETOOLONG.
_NAME_MAX = 255


def _describe_error(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


class _SourceOnlyLoader(importlib.machinery.SourceFileLoader):
    """Compiles a drop-in from its source every time.

    Never reads or writes `__pycache__`: a reload must see the file as it is now (a
    cached .pyc is only checked against the source's mtime in whole seconds and its
    size), and bytecode planted next to a checked source must not run.
    """

    def get_code(self, fullname: str) -> types.CodeType:
        path = self.get_filename(fullname)
        source = self.get_data(path)
        code: types.CodeType = compile(source, path, "exec", dont_inherit=True)
        return code


@dataclass(eq=False)
class _Entry:
    """Internal bookkeeping for one plugin; `record` is what callers see (as a copy)."""

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


_EntryList = list[_Entry]


class PluginManager:
    """Discovers, loads, activates, unloads and reloads plugins.

    Thread-safe: every public method holds one re-entrant lock (gRPC handlers call
    from worker threads). `on_change` is called after each operation that changed a
    plugin's state, outside the lock.
    """

    def __init__(
        self,
        settings: Settings,
        *,
        builtins: Sequence[str] = BUILTIN_PLUGINS,
        daemon: object | None = None,
        on_change: Callable[[], None] | None = None,
    ) -> None:
        self._settings = settings
        self._builtins = tuple(builtins)
        self._daemon = daemon
        self._on_change = on_change
        self._lock = threading.RLock()
        self._pm = pluggy.PluginManager(hookspecs.PROJECT_NAME)
        self._pm.add_hookspecs(hookspecs)
        self._entries: _EntryList = []
        self._seq = itertools.count(1)
        self._started = False

    # --- lifecycle of the whole set ----------------------------------------------------

    def start(self) -> None:
        """Discover built-ins, entry points and drop-ins, then load and activate them.

        Plugins that raise are marked FAILED and the rest keep going. Duplicate plugin
        ids or provider names raise PluginConflict (nothing is left active).
        """
        with self._lock:
            if self._started or any(e.record.state is PluginState.ACTIVE for e in self._entries):
                raise PreconditionFailed("the plugin manager is already started; stop() it first")
            entries = self._discover()
            for entry in entries:
                try:
                    self._import(entry, fresh=False)
                except _PLUGIN_ERRORS as exc:
                    self._fail(entry, exc)
                    continue
                self._set_id(entry, self._wanted_id(entry))
            try:
                self._check_unique_ids(entries)
                staged = self._register_all(entries)
            except PluginConflict:
                for entry in entries:
                    self._take_down(entry, call_shutdown=False)
                    self._forget_drop_in(entry)
                raise
            self._entries = entries
            for entry in staged:
                self._start_plugin(entry)
            self._started = True
            active = sum(e.record.state is PluginState.ACTIVE for e in entries)
            failed = [e.record.id for e in entries if e.record.state is PluginState.FAILED]
            log.info(
                "plugins: %d active, %d failed%s",
                active,
                len(failed),
                f" ({', '.join(failed)})" if failed else "",
            )
        self._notify()

    def stop(self) -> None:
        """Run the shutdown hooks of all active plugins in reverse activation order."""
        with self._lock:
            changed = False
            for entry in sorted(self._entries, key=lambda e: e.seq, reverse=True):
                if entry.record.state in (PluginState.ACTIVE, PluginState.INACTIVE):
                    self._take_down(entry, call_shutdown=True)
                    entry.record.state = PluginState.UNLOADED
                    changed = True
            self._started = False
        if changed:
            self._notify()

    # --- queries -----------------------------------------------------------------------

    def list(self) -> builtins.list[PluginRecord]:
        with self._lock:
            return [_snapshot(e.record) for e in self._entries]

    def get(self, plugin_id: str) -> PluginRecord:
        with self._lock:
            return _snapshot(self._entry(plugin_id).record)

    # --- runtime operations ------------------------------------------------------------

    def load(self, name: str) -> PluginRecord:
        """Activate a plugin by id (UNLOADED or FAILED ones), or load a drop-in by its
        file or folder name inside the plugins folder ("x.py", "x" for x.py or x/).

        Returns the record, which is FAILED (with `error`) if the plugin raised.
        """
        with self._lock:
            entry = self._find(name)
            is_new = False
            if entry is None:
                path = self._resolve_drop_in(name)
                entry = next((e for e in self._entries if e.file == path), None)
                if entry is None:
                    entry = self._new_drop_in(path, taken=self._entries)
                    is_new = True
            if entry.record.state is PluginState.ACTIVE:
                raise AlreadyExists(
                    f"plugin {entry.record.id!r} is already active; "
                    "use reload to pick up changes to its code",
                    reason="PLUGIN_ALREADY_ACTIVE",
                )
            fresh = entry.record.state is PluginState.FAILED or entry.plugin is None
            self._bring_up(entry, fresh=fresh, is_new=is_new)
            record = _snapshot(entry.record)
        self._notify()
        return record

    def unload(self, plugin_id: str) -> PluginRecord:
        """Run the plugin's shutdown hook, unregister it and drop its capabilities."""
        with self._lock:
            entry = self._entry(plugin_id)
            if entry.record.state not in (PluginState.ACTIVE, PluginState.INACTIVE):
                raise PreconditionFailed(
                    f"plugin {plugin_id!r} is not active (state: {entry.record.state})",
                    reason="PLUGIN_NOT_ACTIVE",
                )
            self._take_down(entry, call_shutdown=True)
            entry.record.state = PluginState.UNLOADED
            log.info("plugin %s unloaded", plugin_id)
            record = _snapshot(entry.record)
        self._notify()
        return record

    def reload(self, plugin_id: str) -> PluginRecord:
        """Unload (if active), re-import the plugin's code fresh and load it again.

        Drop-ins are re-read from their file; modules go through importlib.reload.
        """
        with self._lock:
            entry = self._entry(plugin_id)
            if entry.record.state in (PluginState.ACTIVE, PluginState.INACTIVE):
                self._take_down(entry, call_shutdown=True)
                entry.record.state = PluginState.UNLOADED
            self._bring_up(entry, fresh=True, is_new=False)
            record = _snapshot(entry.record)
        self._notify()
        return record

    # --- registries of ACTIVE plugins --------------------------------------------------

    def llm_providers(self) -> dict[str, LLMProvider]:
        return {n: o for n, o in self._active_objects("llm") if isinstance(o, LLMProvider)}

    def embedding_providers(self) -> dict[str, EmbeddingProvider]:
        return {
            n: o for n, o in self._active_objects("embedding") if isinstance(o, EmbeddingProvider)
        }

    def vector_stores(self) -> dict[str, VectorStore]:
        return {n: o for n, o in self._active_objects("vector_store") if isinstance(o, VectorStore)}

    def document_parsers(self) -> dict[str, DocumentParser]:
        return {
            n: o
            for n, o in self._active_objects("document_parser")
            if isinstance(o, DocumentParser)
        }

    def tools(self) -> dict[str, Tool]:
        return {n: o for n, o in self._active_objects("tool") if isinstance(o, Tool)}

    def resource_monitors(self) -> dict[str, ResourceMonitor]:
        return {
            n: o
            for n, o in self._active_objects("resource_monitor")
            if isinstance(o, ResourceMonitor)
        }

    def _active_objects(self, kind: str) -> builtins.list[tuple[str, object]]:
        with self._lock:
            return [
                (name, obj)
                for entry in self._entries
                if entry.record.state is PluginState.ACTIVE
                for name, obj in entry.objects.get(kind, {}).items()
            ]

    # --- discovery ---------------------------------------------------------------------

    def _discover(self) -> builtins.list[_Entry]:
        entries = [self._new_module_entry(name) for name in self._builtins]
        if self._settings.entry_point_plugins:
            eps = importlib.metadata.entry_points(group=ENTRY_POINT_GROUP)
            entries.extend(self._new_entry_point(ep) for ep in sorted(eps, key=lambda e: e.name))
        if self._settings.drop_in_plugins:
            for path in self._drop_in_candidates():
                entries.append(self._new_drop_in(path, taken=entries))
        return entries

    def _drop_in_candidates(self) -> Iterator[Path]:
        folder = self._settings.plugins_dir
        if not folder.is_dir():
            log.debug("no drop-in plugin folder at %s", folder)
            return
        for path in sorted(folder.iterdir()):
            if path.name.startswith(("_", ".")) or path.suffix == _WASM_SUFFIX:
                continue
            if path.is_dir():
                if (path / "__init__.py").is_file():
                    yield path
                else:
                    log.warning("ignoring %s: a plugin package folder needs __init__.py", path)
            elif path.suffix == ".py" and path.is_file():
                yield path

    def _new_module_entry(self, module_name: str) -> _Entry:
        return _Entry(
            record=_new_record(module_name, PluginSource.BUILTIN, ""),
            default_id=module_name,
            module_name=module_name,
        )

    def _new_entry_point(self, ep: importlib.metadata.EntryPoint) -> _Entry:
        version, summary = "", ""
        if ep.dist is not None:
            version = ep.dist.version or ""
            metadata = ep.dist.metadata
            summary = str((metadata.get_all("Summary") or [""])[0])
        entry = _Entry(
            record=_new_record(ep.name, PluginSource.ENTRY_POINT, ""),
            default_id=ep.name,
            module_name=ep.module,
            entry_point=ep,
            dist_version=version,
            dist_summary=summary or "",
        )
        entry.record.version = version or "0"
        entry.record.description = entry.dist_summary
        return entry

    def _new_drop_in(self, path: Path, *, taken: Sequence[_Entry]) -> _Entry:
        stem = path.name if path.is_dir() else path.stem
        base = DROP_IN_MODULE_PREFIX + re.sub(r"\W", "_", stem)
        used = {e.module_name for e in taken}
        module_name = base
        for n in itertools.count(2):
            if module_name not in used:
                break
            module_name = f"{base}_{n}"
        return _Entry(
            record=_new_record(stem, PluginSource.DROP_IN, str(path)),
            default_id=stem,
            module_name=module_name,
            file=path,
        )

    def _resolve_drop_in(self, name: str) -> Path:
        folder = self._settings.plugins_dir
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
        if not self._settings.drop_in_plugins:
            raise NotFound(
                f"no plugin with id {name!r} (drop-in plugins are disabled in the settings); "
                f"known plugins: {self._known()}",
                reason="PLUGIN_NOT_FOUND",
            )
        candidates = [folder / name]
        if not name.endswith(".py"):
            candidates.append(folder / f"{name}.py")
        for path in candidates:
            if path.suffix == _WASM_SUFFIX:
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
            f"known plugins: {self._known()}",
            reason="PLUGIN_NOT_FOUND",
        )

    # --- validation and import ---------------------------------------------------------

    def _check_drop_in(self, path: Path) -> None:
        """Refuse drop-ins that another user could have written (DESIGN section 4)."""
        problems = [self._insecure(self._settings.plugins_dir)]
        if path.is_dir():
            problems.append(self._insecure(path))
            for root, dirs, files in os.walk(path):
                problems.extend(self._insecure(Path(root, n)) for n in sorted(dirs + files))
        else:
            problems.append(self._insecure(path))
        found = [p for p in problems if p]
        if found:
            raise PermissionDenied(
                f"refusing to load drop-in plugin {path}: {found[0]}", reason="PLUGIN_INSECURE"
            )

    @staticmethod
    def _insecure(path: Path) -> str:
        st = path.stat()
        mode = stat.S_IMODE(st.st_mode)
        writers = [
            w for bit, w in ((stat.S_IWGRP, "group"), (stat.S_IWOTH, "others")) if mode & bit
        ]
        if writers:
            return (
                f"{path} is writable by {' and '.join(writers)} (mode {mode:o}); "
                f"fix it with: chmod go-w {path}"
            )
        own = os.geteuid()
        if st.st_uid not in (0, own):
            return (
                f"{path} is owned by uid {st.st_uid}, not by root or the daemon's user "
                f"(uid {own}); fix it with: chown {own} {path}"
            )
        return ""

    def _import(self, entry: _Entry, *, fresh: bool) -> None:
        """Validate and import `entry` (DISCOVERED -> VALIDATED), reading its metadata.
        Raises whatever the plugin raised; the id is not changed here."""
        record = entry.record
        record.state = PluginState.DISCOVERED
        record.error = ""
        entry.plugin = None
        if entry.file is not None:
            self._check_drop_in(entry.file)
        record.state = PluginState.VALIDATED
        if fresh:
            importlib.invalidate_caches()
        if entry.file is not None:
            obj: object = self._import_drop_in(entry.module_name, entry.file)
        else:
            if fresh and entry.module_name in sys.modules:
                importlib.reload(sys.modules[entry.module_name])
            obj = importlib.import_module(entry.module_name)
            if entry.entry_point is not None:
                obj = entry.entry_point.load()
        if obj is None:
            raise TypeError(f"{entry.where()} is None, not a plugin module")
        info = getattr(obj, "PLUGIN", None)
        if info is not None and not isinstance(info, PluginInfo):
            raise TypeError(
                f"PLUGIN must be a rustaid.providers.PluginInfo, not {type(info).__name__}"
            )
        if info is not None and (not isinstance(info.name, str) or not info.name.strip()):
            raise ValueError("PLUGIN.name must be a non-empty string")
        entry.plugin = obj
        doc = (getattr(obj, "__doc__", None) or "").strip()
        doc_line = doc.splitlines()[0] if isinstance(obj, types.ModuleType) and doc else ""
        if info is not None and info.version != "0":
            record.version = info.version
        else:
            record.version = entry.dist_version or "0"
        record.description = (info.description if info else "") or entry.dist_summary or doc_line
        record.requirements = info.requirements if info else ResourceRequirements()
        if entry.file is None:
            record.path = str(getattr(obj, "__file__", None) or "")

    @staticmethod
    def _wanted_id(entry: _Entry) -> str:
        info = getattr(entry.plugin, "PLUGIN", None)
        return info.name.strip() if isinstance(info, PluginInfo) else entry.default_id

    @staticmethod
    def _set_id(entry: _Entry, plugin_id: str) -> None:
        entry.record.id = plugin_id
        entry.record.name = plugin_id

    def _import_drop_in(self, module_name: str, path: Path) -> types.ModuleType:
        if path.is_dir():
            init = path / "__init__.py"
            if not init.is_file():
                raise ImportError(f"{path} is a folder without __init__.py")
            spec = importlib.util.spec_from_file_location(
                module_name,
                init,
                loader=_SourceOnlyLoader(module_name, str(init)),
                submodule_search_locations=[str(path)],
            )
        else:
            if not path.is_file():
                raise FileNotFoundError(f"{path} no longer exists")
            spec = importlib.util.spec_from_file_location(
                module_name, path, loader=_SourceOnlyLoader(module_name, str(path))
            )
        if spec is None or spec.loader is None:
            raise ImportError(f"cannot import {path}")
        _forget_module(module_name)
        if path.is_dir():
            _install_source_finders(path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[module_name] = module
        try:
            spec.loader.exec_module(module)
        except BaseException:
            _forget_module(module_name)
            raise
        return module

    def _forget_drop_in(self, entry: _Entry) -> None:
        if entry.file is not None:
            _forget_module(entry.module_name)
            _remove_source_finders(entry.file)
            entry.plugin = None

    # --- registration ------------------------------------------------------------------

    def _register(self, entry: _Entry) -> None:
        """Register with pluggy (-> LOADED) and run the plugin's register_* hooks."""
        plugin = entry.plugin
        assert plugin is not None
        self._pm.register(plugin, name=entry.record.id)
        entry.record.state = PluginState.LOADED
        for caller in self._pm.get_hookcallers(plugin) or []:
            impls = [i for i in caller.get_hookimpls() if i.plugin is plugin]
            if not caller.has_spec() and any(not i.optionalhook for i in impls):
                raise pluggy.PluginValidationError(
                    plugin,
                    f"unknown hook {caller.name!r} in plugin {entry.record.id!r}; "
                    f"rustaid hooks are: {', '.join(_HOOK_NAMES)}",
                )
            if any(i.wrapper or i.hookwrapper for i in impls):
                raise pluggy.PluginValidationError(
                    plugin,
                    f"hook wrappers are not supported (plugin {entry.record.id!r}, "
                    f"hook {caller.name!r})",
                )
        entry.objects = {}
        for kind in _KINDS:
            bucket: dict[str, object] = {}
            register = _Registrar(kind, bucket)
            try:
                self._call(plugin, kind.hook, register=register)
            finally:
                register.close()
            if bucket:
                entry.objects[kind.kind] = bucket

    def _register_all(self, entries: Sequence[_Entry]) -> builtins.list[_Entry]:
        """Start-up: register every imported plugin; a provider-name clash is fatal."""
        staged: builtins.list[_Entry] = []
        for entry in entries:
            if entry.plugin is None or entry.record.state is PluginState.FAILED:
                continue
            try:
                self._register(entry)
            except _PLUGIN_ERRORS as exc:
                self._fail(entry, exc)
                continue
            clash = self._clash(entry, staged)
            if clash:
                raise PluginConflict(clash)
            staged.append(entry)
        return staged

    def _clash(self, entry: _Entry, others: Sequence[_Entry]) -> str:
        for kind, names in entry.objects.items():
            for other in others:
                if other is entry:
                    continue
                for name in names:
                    if name in other.objects.get(kind, {}):
                        return (
                            f"{kind} {name!r} of plugin {entry.record.id!r} ({entry.where()}) "
                            f"is already registered by plugin {other.record.id!r} "
                            f"({other.where()})"
                        )
        return ""

    def _check_unique_ids(self, entries: Sequence[_Entry]) -> None:
        seen: dict[str, _Entry] = {}
        for entry in entries:
            first = seen.setdefault(entry.record.id, entry)
            if first is not entry:
                raise PluginConflict(
                    f"duplicate plugin id {entry.record.id!r}: provided by {first.where()} "
                    f"and by {entry.where()}; remove one or give it another "
                    "PLUGIN = PluginInfo(name=...)"
                )

    def _call(self, plugin: object, hook: str, **kwargs: object) -> None:
        """Call `plugin`'s implementations of `hook` (only this plugin's)."""
        caller: pluggy.HookCaller = getattr(self._pm.hook, hook)
        for impl in reversed(caller.get_hookimpls()):
            if impl.plugin is plugin:
                impl.function(*(kwargs[arg] for arg in impl.argnames))

    def _start_plugin(self, entry: _Entry) -> None:
        """LOADED -> ACTIVE: run startup(daemon); FAILED if it raises."""
        try:
            self._call(entry.plugin, "startup", daemon=self._daemon)
        except _PLUGIN_ERRORS as exc:
            self._fail(entry, exc)
            return
        record = entry.record
        record.state = PluginState.ACTIVE
        record.capabilities = [
            f"{kind}:{name}" for kind, names in entry.objects.items() for name in names
        ]
        record.loaded_at = datetime.now(UTC)
        entry.seq = next(self._seq)
        log.info(
            "plugin %s %s active (%s): %s",
            record.id,
            record.version,
            entry.where(),
            ", ".join(record.capabilities) or "no capabilities",
        )

    def _bring_up(self, entry: _Entry, *, fresh: bool, is_new: bool) -> None:
        """Runtime load: import (if needed), check the id, register and start `entry`.

        Plugin errors end in FAILED; an id already used by another plugin raises
        AlreadyExists for a new drop-in and marks an existing one FAILED.
        """
        failure: BaseException | None = None
        if fresh or entry.plugin is None:
            try:
                self._import(entry, fresh=fresh)
            except _PLUGIN_ERRORS as exc:
                failure = exc
        wanted = self._wanted_id(entry) if failure is None else entry.record.id
        other = next((e for e in self._entries if e is not entry and e.record.id == wanted), None)
        if other is not None:
            message = f"plugin id {wanted!r} is already used by {other.where()}"
            if is_new:
                self._forget_drop_in(entry)
                also = f" (it also failed: {_describe_error(failure)})" if failure else ""
                raise AlreadyExists(
                    f"cannot load {entry.where()}: {message}; "
                    f"give it another PLUGIN = PluginInfo(name=...){also}",
                    reason="PLUGIN_ID_CONFLICT",
                )
            self._fail(entry, PluginConflict(message))
            return
        if is_new:
            self._entries.append(entry)
        if failure is not None:
            self._fail(entry, failure)
            return
        self._set_id(entry, wanted)
        try:
            self._register(entry)
        except _PLUGIN_ERRORS as exc:
            self._fail(entry, exc)
            return
        active = [e for e in self._entries if e.record.state is PluginState.ACTIVE]
        clash = self._clash(entry, active)
        if clash:
            self._fail(entry, PluginConflict(clash))
            return
        self._start_plugin(entry)

    # --- taking down -------------------------------------------------------------------

    def _take_down(self, entry: _Entry, *, call_shutdown: bool) -> None:
        """Run shutdown (errors are logged), unregister from pluggy, drop capabilities."""
        plugin = entry.plugin
        if call_shutdown and plugin is not None and self._pm.is_registered(plugin):
            try:
                self._call(plugin, "shutdown", daemon=self._daemon)
            except _PLUGIN_ERRORS:
                log.exception("plugin %s raised in shutdown", entry.record.id)
        if plugin is not None and self._pm.is_registered(plugin):
            self._pm.unregister(plugin)
        entry.objects = {}
        entry.record.capabilities = []
        entry.record.loaded_at = None

    def _fail(self, entry: _Entry, exc: BaseException) -> None:
        self._take_down(entry, call_shutdown=False)
        self._forget_drop_in(entry)
        entry.plugin = None
        entry.record.state = PluginState.FAILED
        entry.record.error = _describe_error(exc)
        if isinstance(exc, PermissionDenied | PluginConflict):
            log.error("plugin %s (%s) refused: %s", entry.record.id, entry.where(), exc)
        else:
            log.error(
                "plugin %s (%s) failed: %s",
                entry.record.id,
                entry.where(),
                entry.record.error,
                exc_info=exc,
            )

    # --- helpers -----------------------------------------------------------------------

    def _find(self, plugin_id: str) -> _Entry | None:
        return next((e for e in self._entries if e.record.id == plugin_id), None)

    def _entry(self, plugin_id: str) -> _Entry:
        entry = self._find(plugin_id)
        if entry is None:
            raise NotFound(
                f"no plugin with id {plugin_id!r}; known plugins: {self._known()}",
                reason="PLUGIN_NOT_FOUND",
            )
        return entry

    def _known(self) -> str:
        return ", ".join(e.record.id for e in self._entries) or "none"

    def _notify(self) -> None:
        if self._on_change is None:
            return
        try:
            self._on_change()
        except Exception:
            log.exception("plugin on_change callback raised")


class _Registrar:
    """The `register` callable handed to one plugin's register_* hook."""

    def __init__(self, kind: _Kind, bucket: dict[str, object]) -> None:
        self._kind = kind
        self._bucket = bucket
        self._open = True

    def __call__(self, obj: object) -> None:
        kind = self._kind
        if not self._open:
            raise RuntimeError(f"register() of {kind.hook} called after the hook returned")
        if not isinstance(obj, kind.contract):
            raise TypeError(
                f"{kind.hook}: expected a {kind.contract.__module__}."
                f"{kind.contract.__qualname__}, got {type(obj).__qualname__}"
            )
        name = getattr(obj, "name", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"{kind.hook}: {type(obj).__qualname__}.name must be a non-empty str")
        if name in self._bucket:
            raise ValueError(f"{kind.hook}: {kind.kind} {name!r} registered twice")
        self._bucket[name] = obj

    def close(self) -> None:
        self._open = False


def _new_record(plugin_id: str, source: PluginSource, path: str) -> PluginRecord:
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


def _snapshot(record: PluginRecord) -> PluginRecord:
    return replace(record, capabilities=list(record.capabilities))


def _forget_module(module_name: str) -> None:
    """Drop a drop-in's private module and its submodules from sys.modules."""
    prefix = module_name + "."
    for name in [n for n in sys.modules if n == module_name or n.startswith(prefix)]:
        del sys.modules[name]


def _install_source_finders(package: Path) -> None:
    """Make the submodules of a drop-in package load like its __init__.py: from source
    only (see _SourceOnlyLoader), never from bytecode found in __pycache__ or a
    sourceless .pyc, so that a reload re-reads every file of the package."""
    loaders: list[tuple[type[importlib.abc.Loader], list[str]]] = [
        (importlib.machinery.ExtensionFileLoader, importlib.machinery.EXTENSION_SUFFIXES),
        (_SourceOnlyLoader, importlib.machinery.SOURCE_SUFFIXES),
    ]
    _remove_source_finders(package)
    for root, dirs, _files in os.walk(package):
        dirs[:] = [d for d in dirs if d != "__pycache__"]
        sys.path_importer_cache[root] = importlib.machinery.FileFinder(root, *loaders)


def _remove_source_finders(path: Path) -> None:
    prefix = str(path)
    for key in [k for k in sys.path_importer_cache if k == prefix or k.startswith(prefix + os.sep)]:
        del sys.path_importer_cache[key]
