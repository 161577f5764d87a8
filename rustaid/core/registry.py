"""The model registry: what lives in the models folder, read without loading weights."""

from __future__ import annotations

import logging
import os
import re
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field, replace
from enum import StrEnum
from pathlib import Path

from rustaid.core.events import EventBus
from rustaid.core.gguf import GGUFError, read_gguf
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
    vocab_size: int = 0


@dataclass(frozen=True)
class ModelEntry:
    id: str
    kind: ModelKind
    path: Path
    size_bytes: int
    mtime: float
    provider: str = ""
    metadata: ModelMetadata = field(default_factory=ModelMetadata)
    state: ModelState = ModelState.AVAILABLE
    error: str = ""
    tags: tuple[str, ...] = ()
    priority: int = 0
    last_used: float = 0.0
    memory_bytes: int = 0
    pinned: bool = False
    context_length: int = 0
    threads: int = 0


@dataclass(frozen=True)
class ModelEvent:
    type: ModelEventType
    model: ModelEntry
    time: float


_ID_CHARS = re.compile(r"[^a-z0-9._/-]+")


def model_id_for(rel: Path) -> str:
    """Stable id from the path under models/: 'Qwen2.5-0.5B-Q8_0.gguf' -> 'qwen2.5-0.5b-q8_0'."""
    stem = rel.with_suffix("") if rel.suffix else rel
    return _ID_CHARS.sub("-", stem.as_posix().lower()).strip("-")


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


class ModelRegistry:
    """Knows every model and its state; publishes ModelEvents on changes."""

    def __init__(self, models_dir: Path, provider_for: Callable[[Path], str]) -> None:
        self.models_dir = models_dir
        self._provider_for = provider_for
        self._entries: dict[str, ModelEntry] = {}
        self.events: EventBus[ModelEvent] = EventBus()

    def _publish(self, type_: ModelEventType, entry: ModelEntry) -> None:
        self.events.publish(ModelEvent(type_, entry, time.time()))

    def scan(self) -> list[ModelEvent]:
        """Rescan the models folder; returns (and publishes) what changed."""
        seen: dict[str, ModelEntry] = {}
        for path, kind in _candidates(self.models_dir):
            rel = path.relative_to(self.models_dir)
            model_id = model_id_for(rel)
            if model_id in seen:
                log.warning("%s: id %r already used by %s; skipped", path, model_id,
                            seen[model_id].path)  # fmt: skip
                continue
            try:
                st = path.stat()
            except OSError:
                continue  # removed while scanning
            old = self._entries.get(model_id)
            if (
                old
                and old.path == path
                and old.mtime == st.st_mtime
                and old.size_bytes == st.st_size
                and old.provider == self._provider_for(path)
            ):
                seen[model_id] = old
                continue
            seen[model_id] = self._describe(model_id, path, kind, st)
        events: list[ModelEvent] = []
        now = time.time()
        for model_id, entry in seen.items():
            old = self._entries.get(model_id)
            if old is None:
                events.append(ModelEvent(ModelEventType.ADDED, entry, now))
            elif old is not entry:
                # Keep runtime state (loaded, pinned) of a model whose file was replaced.
                entry = replace(entry, last_used=old.last_used, pinned=old.pinned)
                seen[model_id] = entry
                events.append(ModelEvent(ModelEventType.CHANGED, entry, now))
        for model_id, old in self._entries.items():
            if model_id not in seen:
                events.append(ModelEvent(ModelEventType.REMOVED, old, now))
        self._entries = seen
        for event in events:
            log.info("model %s: %s%s", event.type.value, event.model.id,
                     f" ({event.model.error})" if event.model.error else "")  # fmt: skip
            self.events.publish(event)
        return events

    def _describe(
        self, model_id: str, path: Path, kind: ModelKind, st: os.stat_result
    ) -> ModelEntry:
        entry = ModelEntry(
            id=model_id, kind=kind, path=path, size_bytes=st.st_size, mtime=st.st_mtime
        )
        if kind is ModelKind.LLM:
            metadata, error = _describe_gguf(path)
            provider = self._provider_for(path)
            if not error and not provider:
                error = "no loaded plugin provides an engine for this file"
            return replace(
                entry,
                metadata=metadata,
                provider=provider,
                error=error,
                state=ModelState.ERROR if error else ModelState.AVAILABLE,
            )
        # Embedding and NLU models are served by the embeddings plugins (not yet built in).
        return replace(entry, provider=self._provider_for(path))

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
        self, model_id: str, event: ModelEventType | None = None, **changes: object
    ) -> ModelEntry:
        """Change a model's runtime state (loaded, last used...) and publish `event`."""
        entry = replace(self.get(model_id), **changes)  # type: ignore[arg-type]
        self._entries[model_id] = entry
        if event is not None:
            self._publish(event, entry)
        return entry
