"""Intent classification and entity extraction.

**ONNX models** live in `models/nlu/NAME/` (model id `nlu/NAME`):

    model.onnx       inputs: input_ids (and optionally attention_mask, token_type_ids),
                     int64 [batch, sequence]; first output: logits
                     [batch, labels] for an intent classifier,
                     [batch, sequence, labels] for an entity tagger
    tokenizer.json   a Hugging Face `tokenizers` file
    labels.json      ["greet", "weather", ...]                 an intent classifier, or
                     {"task": "intent" | "entities", "labels": [...], "max_length": 128}
                     entity taggers use BIO labels: "O", "B-city", "I-city", ...

**Without one**, a language model answers, its output restricted by a grammar: to one
of the given labels for an intent; to `{"entities": [{"type": ONE_OF_THE_TYPES,
"text": "..."}]}` for entities, keeping only entities whose text occurs in the input.

onnxruntime, numpy and tokenizers are imported when the first ONNX model is used.
"""

from __future__ import annotations

import asyncio
import json
import threading
from collections.abc import Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

from rustaid.config import CurrentSettings
from rustaid.core.engine import Done, Engine, GenerationRequest, Text
from rustaid.core.router import SelectionCriteria
from rustaid.errors import InvalidArgument, PreconditionFailed
from rustaid.providers import ChatMessage, FinishReason, GenerationParams, Role
from rustaid.tools import schema as schemas

MAX_TEXT = 10_000
MODEL_FILES = ("model.onnx", "tokenizer.json", "labels.json")
MAX_LABELS = 256
MAX_LABEL_CHARS = 64
LLM_MAX_ENTITIES = 10
LLM_MAX_ENTITY_CHARS = 48


class NluBackend(StrEnum):
    ONNX = "onnx"
    LLM = "llm"


class Task(StrEnum):
    INTENT = "intent"
    ENTITIES = "entities"


@dataclass(frozen=True)
class IntentResult:
    intent: str
    confidence: float
    # (label, probability), best first; empty with a language model.
    scores: tuple[tuple[str, float], ...]
    model_id: str
    backend: NluBackend


@dataclass(frozen=True)
class EntityType:
    name: str
    description: str = ""


@dataclass(frozen=True)
class Entity:
    type: str
    text: str
    start: int
    end: int
    confidence: float = 0.0


@dataclass(frozen=True)
class EntitiesResult:
    entities: tuple[Entity, ...]
    model_id: str
    backend: NluBackend


@dataclass(frozen=True)
class Labels:
    task: Task
    labels: tuple[str, ...]
    max_length: int = 128

    @classmethod
    def read(cls, folder: Path) -> Labels:
        path = folder / "labels.json"
        try:
            raw = json.loads(path.read_text(encoding="utf-8"))
        except FileNotFoundError:
            raise PreconditionFailed(
                f"NLU model {folder.name!r} has no labels.json", reason="NLU_MODEL_BROKEN"
            ) from None
        except (OSError, ValueError) as e:
            raise PreconditionFailed(
                f"NLU model {folder.name!r}: labels.json is unreadable: {e}",
                reason="NLU_MODEL_BROKEN",
            ) from None
        if isinstance(raw, list):
            raw = {"task": "intent", "labels": raw}
        labels = raw.get("labels") if isinstance(raw, dict) else None
        task = raw.get("task", "intent") if isinstance(raw, dict) else None
        if (
            task not in ("intent", "entities")
            or not isinstance(labels, list)
            or not labels
            or not all(isinstance(label, str) and label for label in labels)
        ):
            raise PreconditionFailed(
                f"NLU model {folder.name!r}: labels.json must be a list of labels or "
                '{"task": "intent" | "entities", "labels": [...]}',
                reason="NLU_MODEL_BROKEN",
            )
        max_length = raw.get("max_length", 128)
        if not isinstance(max_length, int) or max_length < 1:
            max_length = 128
        return cls(Task(task), tuple(labels), max_length)


def _softmax(values: Sequence[float]) -> list[float]:
    import numpy as np

    x = np.asarray(values, dtype=np.float64)
    e = np.exp(x - x.max())
    return [float(v) for v in e / e.sum()]


@dataclass
class OnnxModel:
    """An ONNX classifier or tagger with its tokenizer, loaded on first use."""

    folder: Path
    labels: Labels
    session: Any = None
    tokenizer: Any = None
    lock: threading.Lock = field(default_factory=threading.Lock)

    @classmethod
    def load(cls, folder: Path) -> OnnxModel:
        labels = Labels.read(folder)
        for name in MODEL_FILES:
            if not (folder / name).is_file():
                raise PreconditionFailed(
                    f"NLU model {folder.name!r} has no {name} (it needs model.onnx, "
                    "tokenizer.json and labels.json)",
                    reason="NLU_MODEL_BROKEN",
                )
        import onnxruntime
        from tokenizers import Tokenizer

        options = onnxruntime.SessionOptions()
        options.intra_op_num_threads = 1
        options.inter_op_num_threads = 1
        try:
            session = onnxruntime.InferenceSession(
                str(folder / "model.onnx"), options, providers=["CPUExecutionProvider"]
            )
            tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json"))
        except Exception as e:
            raise PreconditionFailed(
                f"NLU model {folder.name!r} failed to load: {e}", reason="NLU_MODEL_BROKEN"
            ) from None
        known = {"input_ids", "attention_mask", "token_type_ids"}
        names = [i.name for i in session.get_inputs()]
        if "input_ids" not in names or set(names) - known:
            raise PreconditionFailed(
                f"NLU model {folder.name!r} has inputs {names}; expected input_ids and "
                "optionally attention_mask and token_type_ids",
                reason="NLU_MODEL_BROKEN",
            )
        return cls(folder, labels, session, tokenizer)

    def _logits(self, text: str) -> tuple[Any, Any]:
        import numpy as np

        encoding = self.tokenizer.encode(text)
        ids = encoding.ids[: self.labels.max_length] or [0]
        feeds: dict[str, Any] = {}
        for inp in self.session.get_inputs():
            dtype = np.int32 if "int32" in inp.type else np.int64
            if inp.name == "input_ids":
                feeds[inp.name] = np.asarray([ids], dtype=dtype)
            elif inp.name == "attention_mask":
                feeds[inp.name] = np.ones((1, len(ids)), dtype=dtype)
            else:
                feeds[inp.name] = np.zeros((1, len(ids)), dtype=dtype)
        with self.lock:
            output = self.session.run(None, feeds)[0]
        n = len(self.labels.labels)
        if output.shape[-1] != n:
            raise PreconditionFailed(
                f"NLU model {self.folder.name!r} outputs {output.shape[-1]} scores but "
                f"labels.json has {n} labels",
                reason="NLU_MODEL_BROKEN",
            )
        return output, encoding.offsets[: len(ids)]

    def classify(self, text: str, allowed: Sequence[str]) -> list[tuple[str, float]]:
        output, _ = self._logits(text)
        logits = output.reshape(-1)
        names = self.labels.labels
        keep = [i for i, name in enumerate(names) if not allowed or name in allowed]
        probs = _softmax([float(logits[i]) for i in keep])
        return sorted(
            ((names[i], p) for i, p in zip(keep, probs, strict=True)), key=lambda x: -x[1]
        )

    def tag(self, text: str, allowed: Sequence[str]) -> list[Entity]:
        output, offsets = self._logits(text)
        rows = output.reshape(-1, output.shape[-1])
        names = self.labels.labels
        found: list[Entity] = []
        current: tuple[str, int, int, list[float]] | None = None

        def close() -> None:
            if current is not None:
                kind, start, end, probs = current
                if not allowed or kind in allowed:
                    found.append(Entity(kind, text[start:end], start, end, sum(probs) / len(probs)))

        for (start, end), row in zip(offsets, rows, strict=False):
            if start == end:  # special tokens
                continue
            probs = _softmax(row.tolist())
            best = max(range(len(probs)), key=probs.__getitem__)
            label = names[best]
            prefix, _, kind = label.partition("-")
            if prefix == "I" and current is not None and current[0] == kind:
                current = (kind, current[1], end, [*current[3], probs[best]])
                continue
            close()
            current = (kind, start, end, [probs[best]]) if prefix in ("B", "I") and kind else None
        close()
        return found


class Nlu:
    """ClassifyIntent and ExtractEntities for the daemon."""

    def __init__(self, engine: Engine, settings: CurrentSettings) -> None:
        self.engine = engine
        self.settings = settings
        self._models: dict[Path, tuple[float, OnnxModel]] = {}
        self._lock = threading.Lock()

    # -- models ---------------------------------------------------------------------------

    def _onnx(self, folder: Path) -> OnnxModel:
        try:
            mtime = max(p.stat().st_mtime for p in folder.iterdir())
        except (OSError, ValueError):
            mtime = 0.0
        with self._lock:
            cached = self._models.get(folder)
            if cached is not None and cached[0] == mtime:
                return cached[1]
            model = OnnxModel.load(folder)
            self._models[folder] = (mtime, model)
            return model

    def _pick(self, model_id: str, task: Task) -> tuple[str, Path | None]:
        """(model id, folder of an ONNX model or None for a language model)."""
        from rustaid.core.registry import ModelKind

        registry = self.engine.registry
        if model_id:
            entry = registry.get(model_id)
            if entry.kind is ModelKind.NLU:
                folder = entry.path
                if folder is None or not folder.is_dir():  # NLU models are files: never None
                    raise PreconditionFailed(
                        f"NLU model {model_id!r} is a bare .onnx file: put it in a folder "
                        "as model.onnx with tokenizer.json and labels.json",
                        reason="NLU_MODEL_BROKEN",
                    )
                labels = Labels.read(folder)
                if labels.task is not task:
                    raise InvalidArgument(
                        f"model {model_id!r} is an {labels.task.value} model, not an "
                        f"{task.value} model",
                        field="model_id",
                    )
                return model_id, folder
            if entry.kind is not ModelKind.LLM:
                raise InvalidArgument(
                    f"model {model_id!r} is an {entry.kind.value} model; give an NLU or a "
                    "language model",
                    field="model_id",
                )
            return model_id, None
        for entry in sorted(registry.list(ModelKind.NLU), key=lambda e: e.id):
            path = entry.path
            if path is not None and all((path / name).is_file() for name in MODEL_FILES):
                try:
                    if Labels.read(path).task is task:
                        return entry.id, path
                except PreconditionFailed:
                    continue
        return "", None

    # -- requests -------------------------------------------------------------------------

    async def classify(
        self,
        text: str,
        *,
        model_id: str = "",
        labels: Sequence[str] = (),
        selection: SelectionCriteria | None = None,
    ) -> IntentResult:
        _check_text(text)
        _check_labels(labels, "labels")
        model_id, folder = self._pick(model_id, Task.INTENT)
        if folder is not None:
            model = await asyncio.to_thread(self._onnx, folder)
            unknown = [label for label in labels if label not in model.labels.labels]
            if unknown:
                raise InvalidArgument(
                    f"labels {unknown} are not labels of {model_id!r}; it knows: "
                    f"{', '.join(model.labels.labels)}",
                    field="labels",
                )
            scores = await asyncio.to_thread(model.classify, text, labels)
            intent, confidence = scores[0]
            return IntentResult(intent, confidence, tuple(scores), model_id, NluBackend.ONNX)
        if not labels:
            raise InvalidArgument(
                "labels is empty: without an ONNX intent classifier in models/nlu/, a "
                "language model chooses among the labels you give",
                field="labels",
            )
        grammar = schemas.schema_to_gbnf({"enum": list(labels)})
        system = (
            "Classify the intent of the user's message. Answer with exactly one of these "
            "intents, as a JSON string: " + ", ".join(json.dumps(label) for label in labels)
        )
        longest = max(len(label.encode()) for label in labels)
        raw, done = await self._generate(
            model_id, selection, system, text, grammar, max_tokens=longest + 8
        )
        intent = json.loads(raw)
        return IntentResult(str(intent), 0.0, (), done.model_id, NluBackend.LLM)

    async def extract(
        self,
        text: str,
        *,
        model_id: str = "",
        types: Sequence[EntityType] = (),
        selection: SelectionCriteria | None = None,
    ) -> EntitiesResult:
        _check_text(text)
        names = [t.name for t in types]
        _check_labels(names, "entity_types")
        model_id, folder = self._pick(model_id, Task.ENTITIES)
        if folder is not None:
            model = await asyncio.to_thread(self._onnx, folder)
            known = {label.partition("-")[2] for label in model.labels.labels} - {""}
            unknown = [n for n in names if n not in known]
            if unknown:
                raise InvalidArgument(
                    f"entity types {unknown} are not types of {model_id!r}; it knows: "
                    f"{', '.join(sorted(known))}",
                    field="entity_types",
                )
            entities = await asyncio.to_thread(model.tag, text, names)
            return EntitiesResult(tuple(entities), model_id, NluBackend.ONNX)
        if not types:
            raise InvalidArgument(
                "entity_types is empty: without an ONNX entity tagger in models/nlu/, a "
                "language model looks for the types you give",
                field="entity_types",
            )
        max_chars = max(1, min(len(text), LLM_MAX_ENTITY_CHARS))
        schema = {
            "type": "object",
            "properties": {
                "entities": {
                    "type": "array",
                    "maxItems": LLM_MAX_ENTITIES,
                    "items": {
                        "type": "object",
                        "properties": {
                            "type": {"enum": names},
                            "text": {"type": "string", "minLength": 1, "maxLength": max_chars},
                        },
                        "required": ["type", "text"],
                        "additionalProperties": False,
                    },
                }
            },
            "required": ["entities"],
            "additionalProperties": False,
        }
        described = "\n".join(
            f"- {t.name}: {t.description}" if t.description else f"- {t.name}" for t in types
        )
        system = (
            "Find the entities of these types in the user's message:\n"
            f"{described}\n"
            'Answer with JSON {"entities": [{"type": TYPE, "text": TEXT}, ...]}, copying '
            "each entity's text exactly as it appears in the message; an empty list if "
            "there are none."
        )
        longest = max(len(n.encode()) for n in names)
        budget = 16 + LLM_MAX_ENTITIES * (4 * max_chars + longest + 24)
        raw, done = await self._generate(
            model_id, selection, system, text, schemas.schema_to_gbnf(schema), max_tokens=budget
        )
        found = json.loads(raw)["entities"]
        return EntitiesResult(
            tuple(ground(text, [(e["type"], e["text"]) for e in found])),
            done.model_id,
            NluBackend.LLM,
        )

    async def _generate(
        self,
        model_id: str,
        selection: SelectionCriteria | None,
        system: str,
        text: str,
        grammar: str,
        *,
        max_tokens: int,
    ) -> tuple[str, Done]:
        engine = self.engine
        limit = self.settings().max_tokens_limit
        request = GenerationRequest(
            model_id=model_id,
            messages=(ChatMessage(Role.SYSTEM, system), ChatMessage(Role.USER, text)),
            params=GenerationParams(
                grammar=grammar, temperature=0.0, max_tokens=min(max_tokens, limit)
            ),
            selection=selection or SelectionCriteria(),
        )
        parts: list[str] = []
        async for event in engine.generate(request):
            if isinstance(event, Text):
                parts.append(event.text)
            elif isinstance(event, Done):
                raw = "".join(parts)
                try:
                    json.loads(raw)
                except ValueError:
                    why = (
                        "was cut off (max_tokens or the context length)"
                        if event.stats.finish_reason is FinishReason.LENGTH
                        else "is not complete JSON"
                    )
                    raise PreconditionFailed(
                        f"the language model's reply {why}: {raw[:200]!r}",
                        reason="NLU_REPLY_INCOMPLETE",
                    ) from None
                return raw, event
        raise AssertionError("generation ended without Done")


def ground(text: str, found: Sequence[tuple[str, str]]) -> list[Entity]:
    """Entities whose text occurs in `text`, with their offsets; each occurrence is
    used once, in order, case-insensitively; the rest are dropped."""
    # Offsets must stay those of `text`: use the first case mapping that keeps every
    # length ("ß".casefold() is "ss"; "İ".lower() is two characters), else exact matches.
    fold = next((f for f in (str.casefold, str.lower) if len(f(text)) == len(text)), lambda x: x)
    haystack = fold(text)
    used: list[tuple[int, int]] = []
    out: list[Entity] = []
    for kind, value in found:
        needle = fold(value.strip())
        if not needle:
            continue
        start = haystack.find(needle)
        while start >= 0 and any(s < start + len(needle) and start < e for s, e in used):
            start = haystack.find(needle, start + 1)
        if start < 0:
            continue
        end = start + len(needle)
        used.append((start, end))
        out.append(Entity(kind, text[start:end], start, end))
    return sorted(out, key=lambda e: e.start)


def _check_text(text: str) -> None:
    if not text.strip():
        raise InvalidArgument("text is empty", field="text")
    if len(text) > MAX_TEXT:
        raise InvalidArgument(f"text is {len(text)} characters; at most {MAX_TEXT}", field="text")


def _check_labels(labels: Sequence[str], field_name: str) -> None:
    if len(labels) > MAX_LABELS:
        raise InvalidArgument(f"{field_name}: at most {MAX_LABELS}", field=field_name)
    seen: set[str] = set()
    for i, label in enumerate(labels):
        if not label or len(label) > MAX_LABEL_CHARS or label != label.strip():
            raise InvalidArgument(
                f"{field_name}[{i}] {label!r} must be 1 to {MAX_LABEL_CHARS} characters "
                "without surrounding spaces",
                field=f"{field_name}[{i}]",
            )
        if label in seen:
            raise InvalidArgument(
                f"{field_name}[{i}] {label!r} is given twice", field=f"{field_name}[{i}]"
            )
        seen.add(label)
