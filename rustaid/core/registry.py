"""The model registry: the models folder and models.toml, read without loading weights.

A file is registered only once it is complete: its GGUF header and tensor table readable
and all tensor data inside the file (ONNX models: not written to for SETTLE_S), and its
NAME.sha256 sidecar, when there is one, matching. A file failing these checks within
GIVE_UP_S of its last write is taken to be still copying and is not listed; after that
it is listed with its error. A half-copied file is never loaded.
"""

from __future__ import annotations

import hashlib
import logging
import re
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path
from typing import Any

from rustaid.core.events import EventBus
from rustaid.core.gguf import GGUFError, read_gguf
from rustaid.core.models_toml import Constraints, ModelConfig, load_models_toml
from rustaid.errors import InvalidArgument, NotFound

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
class ModelMetadata:
    architecture: str = ""
    name: str = ""
    context_length: int = 0
    parameter_count: int = 0
    quantization: str = ""
    chat_template: str = ""
    embedding_length: int = 0
    block_count: int = 0
    head_count: int = 0
    head_count_kv: int = 0
    vocab_size: int = 0


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

    @property
    def location(self) -> str:
        return str(self.path) if self.path else self.url


@dataclass(frozen=True)
class ModelEvent:
    type: ModelEventType
    model: ModelEntry
    time: float


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


def _describe_gguf(path: Path) -> tuple[ModelMetadata, str]:
    try:
        info = read_gguf(path)
    except (GGUFError, OSError) as e:
        return ModelMetadata(), f"unreadable GGUF file: {e}"
    return (
        ModelMetadata(
            architecture=info.architecture,
            name=info.name,
            context_length=info.context_length,
            parameter_count=info.parameter_count,
            quantization=info.quantization,
            chat_template=info.chat_template,
            embedding_length=info.embedding_length,
            block_count=info.block_count,
            head_count=info.head_count,
            head_count_kv=info.head_count_kv,
            vocab_size=info.vocab_size,
        ),
        "",
    )


def _candidates(models_dir: Path) -> Iterable[tuple[Path, ModelKind]]:
    """*.gguf anywhere (LLMs) except in embeddings/ and nlu/; ONNX models in those two:
    a NAME.onnx file or a NAME/ folder holding model.onnx."""
    if not models_dir.is_dir():
        return
    for path in sorted(models_dir.rglob("*.gguf")):
        top = path.relative_to(models_dir).parts[0]
        if top not in ("embeddings", "nlu") and not path.name.startswith("."):
            yield path, ModelKind.LLM
    for sub, kind in (("embeddings", ModelKind.EMBEDDING), ("nlu", ModelKind.NLU)):
        folder = models_dir / sub
        if not folder.is_dir():
            continue
        for child in sorted(folder.iterdir()):
            if child.name.startswith("."):
                continue
            if (child.is_file() and child.suffix == ".onnx") or (
                child.is_dir() and (child / "model.onnx").is_file()
            ):
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
        provider_for: Callable[[Path], str],
        *,
        models_toml: Path | None = None,
        providers: Callable[[], Iterable[str]] = lambda: (),
    ) -> None:
        self.models_dir = models_dir
        self.models_toml = models_toml
        self._provider_for = provider_for
        self._providers = providers
        self._entries: dict[str, ModelEntry] = {}
        # Descriptions of files by (path, size, mtime, provider): unchanged files are not re-read.
        self._described: dict[tuple[Path, int, float, str], ModelEntry] = {}
        self.events: EventBus[ModelEvent] = EventBus()

    def _publish(self, type_: ModelEventType, entry: ModelEntry) -> None:
        self.events.publish(ModelEvent(type_, entry, time.time()))

    # -- scanning -----------------------------------------------------------------------

    def _describe(
        self, model_id: str, path: Path, kind: ModelKind, size: int, mtime: float
    ) -> ModelEntry:
        provider = self._provider_for(path)
        key = (path, size, mtime, provider)
        if key in self._described:
            return replace(self._described[key], id=model_id)
        entry = ModelEntry(id=model_id, kind=kind, path=path, size_bytes=size, mtime=mtime)
        error = ""
        if kind is ModelKind.LLM:
            metadata, error = _describe_gguf(path)
            entry = replace(entry, metadata=metadata)
            if not error and not provider:
                error = "no loaded plugin provides an engine for this file"
        if not error and path.is_file() and (sidecar := _sidecar(path)):
            error = _check_sha256(path, sidecar)
        entry = replace(
            entry, provider=provider, error=error,
            state=ModelState.ERROR if error else ModelState.AVAILABLE,
        )  # fmt: skip
        self._described[key] = entry
        return entry

    def scan(self) -> tuple[dict[str, ModelEntry], float | None, list[str]]:
        """Read the folder and models.toml (blocking I/O). Returns the entries as they
        should be now, when to look again for files still being written, and problems."""
        now = time.time()
        recheck: float | None = None
        problems: list[str] = []
        found: dict[str, ModelEntry] = {}
        by_path: dict[Path, str] = {}
        for path, kind in _candidates(self.models_dir):
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
            # GGUF files prove their own completeness (tensor data must reach the end);
            # other formats are trusted once nothing has written to them for SETTLE_S.
            young = kind is not ModelKind.LLM and now - mtime < SETTLE_S
            entry = None if young else self._describe(model_id, path, kind, size, mtime)
            if entry is None or (
                entry.error and now - mtime < GIVE_UP_S and self._may_still_grow(entry)
            ):
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

    @staticmethod
    def _may_still_grow(entry: ModelEntry) -> bool:
        return "truncated" in entry.error or "too small" in entry.error or "SHA-256" in entry.error

    def _merge_toml(
        self, found: dict[str, ModelEntry], by_path: dict[Path, str], problems: list[str]
    ) -> None:
        if self.models_toml is None:
            return
        entries, toml_problems = load_models_toml(
            self.models_toml, self.models_dir, self._providers()
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
            known = ", ".join(sorted(self._entries)) or "none (the models folder is empty)"
            raise NotFound(
                f"no model with id {model_id!r}; known models: {known}", reason="MODEL_NOT_FOUND"
            )
        return entry

    def update(
        self, model_id: str, event: ModelEventType | None = None, **changes: Any
    ) -> ModelEntry:
        """Change a model's runtime state (loaded, last used...) and publish `event`."""
        entry = replace(self.get(model_id), **changes)
        self._entries[model_id] = entry
        if event is not None:
            self._publish(event, entry)
        return entry


def _definition(e: ModelEntry) -> tuple[object, ...]:
    """What makes two entries the same model (runtime state excluded)."""
    options = tuple(sorted(e.options.items()))
    return (e.kind, e.path, e.url, e.size_bytes, e.mtime, e.provider, e.error, e.tags,
            e.priority, e.quality, e.config, e.constraints, options)  # fmt: skip
