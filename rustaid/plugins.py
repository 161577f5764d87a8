"""Plugin manager: loads, activates, unloads and reloads the plugins that discovery
finds (rustaid.plugin_discovery: built-ins, entry points of group "rustaid", the
drop-in folder), drop-ins once they pass rustaid.plugin_dropin's safety checks.

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
import itertools
import logging
import re
import sys
import threading
import types
from collections.abc import Callable, Sequence
from dataclasses import replace
from datetime import UTC, datetime
from typing import Any, NamedTuple

import pluggy

from rustaid import hookspecs
from rustaid.config import Settings
from rustaid.errors import AlreadyExists, NotFound, PermissionDenied, PreconditionFailed
from rustaid.plugin_discovery import (
    BUILTIN_PLUGINS,
    DROP_IN_MODULE_PREFIX,
    ENTRY_POINT_GROUP,
    PluginEntry,
    PluginRecord,
    PluginSource,
    PluginState,
    discover,
    drop_in_entry,
    resolve_drop_in,
)
from rustaid.plugin_dropin import (
    check_drop_in,
    forget_module,
    import_drop_in,
    remove_source_finders,
)
from rustaid.providers import (
    DocumentParser,
    EmbeddingProvider,
    LLMProvider,
    ModelFiles,
    PluginInfo,
    RerankerProvider,
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
    _Kind("reranker", "register_reranker_providers", RerankerProvider),
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


def _describe_error(exc: BaseException) -> str:
    message = str(exc)
    return f"{type(exc).__name__}: {message}" if message else type(exc).__name__


_EntryList = list[PluginEntry]


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
            entries = discover(self._settings, self._builtins)
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
                if entry.record.state is PluginState.ACTIVE:
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
                path = resolve_drop_in(self._settings, name, self._known)
                entry = next((e for e in self._entries if e.file == path), None)
                if entry is None:
                    entry = drop_in_entry(path, taken=self._entries)
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
            if entry.record.state is not PluginState.ACTIVE:
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
            if entry.record.state is PluginState.ACTIVE:
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

    def reranker_providers(self) -> dict[str, RerankerProvider]:
        return {
            n: o for n, o in self._active_objects("reranker") if isinstance(o, RerankerProvider)
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

    # --- validation and import ---------------------------------------------------------

    def _import(self, entry: PluginEntry, *, fresh: bool) -> None:
        """Validate and import `entry` (DISCOVERED -> VALIDATED), reading its metadata.
        Raises whatever the plugin raised; the id is not changed here."""
        record = entry.record
        record.state = PluginState.DISCOVERED
        record.error = ""
        entry.plugin = None
        if entry.file is not None:
            check_drop_in(self._settings.plugins_dir, entry.file)
        record.state = PluginState.VALIDATED
        if fresh:
            importlib.invalidate_caches()
        if entry.file is not None:
            obj: object = import_drop_in(entry.module_name, entry.file)
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
    def _wanted_id(entry: PluginEntry) -> str:
        info = getattr(entry.plugin, "PLUGIN", None)
        return info.name.strip() if isinstance(info, PluginInfo) else entry.default_id

    @staticmethod
    def _set_id(entry: PluginEntry, plugin_id: str) -> None:
        entry.record.id = plugin_id
        entry.record.name = plugin_id

    def _forget_drop_in(self, entry: PluginEntry) -> None:
        if entry.file is not None:
            forget_module(entry.module_name)
            remove_source_finders(entry.file)
            entry.plugin = None

    # --- registration ------------------------------------------------------------------

    def _register(self, entry: PluginEntry) -> None:
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

    def _register_all(self, entries: Sequence[PluginEntry]) -> builtins.list[PluginEntry]:
        """Start-up: register every imported plugin; a provider-name clash is fatal."""
        staged: builtins.list[PluginEntry] = []
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

    def _clash(self, entry: PluginEntry, others: Sequence[PluginEntry]) -> str:
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

    def _check_unique_ids(self, entries: Sequence[PluginEntry]) -> None:
        seen: dict[str, PluginEntry] = {}
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

    def _start_plugin(self, entry: PluginEntry) -> None:
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

    def _bring_up(self, entry: PluginEntry, *, fresh: bool, is_new: bool) -> None:
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

    def _take_down(self, entry: PluginEntry, *, call_shutdown: bool) -> None:
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

    def _fail(self, entry: PluginEntry, exc: BaseException) -> None:
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

    def _find(self, plugin_id: str) -> PluginEntry | None:
        return next((e for e in self._entries if e.record.id == plugin_id), None)

    def _entry(self, plugin_id: str) -> PluginEntry:
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
        if isinstance(obj, ModelFiles):
            _check_formats(kind.hook, obj)
        self._bucket[name] = obj

    def close(self) -> None:
        self._open = False


def _check_formats(hook: str, engine: ModelFiles) -> None:
    """An engine's declared model files: suffixes like ".gguf", markers like "model.onnx"."""
    where = f"{hook}: {type(engine).__qualname__}"
    suffixes, markers = engine.suffixes, engine.folder_markers
    if not isinstance(suffixes, tuple) or not all(
        isinstance(x, str) and re.fullmatch(r"\.[a-z0-9_-]+", x) for x in suffixes
    ):
        raise ValueError(
            f"{where}.suffixes must be a tuple of lower-case suffixes with the dot, like "
            f'(".gguf",); got {suffixes!r}'
        )
    if not isinstance(markers, tuple) or not all(
        isinstance(x, str) and x and "/" not in x and x not in (".", "..") for x in markers
    ):
        raise ValueError(
            f"{where}.folder_markers must be a tuple of file names, like "
            f'("model.onnx",); got {markers!r}'
        )


def _snapshot(record: PluginRecord) -> PluginRecord:
    return replace(record, capabilities=list(record.capabilities))
