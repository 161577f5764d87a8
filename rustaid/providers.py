"""Plugin contracts: the small interfaces every engine, store, parser, tool and monitor
implements. Built-in plugins implement them exactly like third-party ones.

Providers see plain dataclasses, never protobuf messages.
"""

from __future__ import annotations

import array
import asyncio
import contextvars
import sys
import threading
import time
from abc import ABC, abstractmethod
from collections.abc import Callable, Coroutine, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime
from datetime import time as dtime
from enum import StrEnum
from pathlib import Path
from typing import Any, Protocol, TypeAlias, TypeVar

from rustaid.config import Settings
from rustaid.errors import InvalidArgument, PreconditionFailed

T = TypeVar("T")

# --- Model files ------------------------------------------------------------------------


@dataclass(frozen=True)
class ModelMetadata:
    """What a model file says about itself, read without loading its weights."""

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


class ModelFileError(Exception):
    """Raised by `ModelFiles.describe()`: the file is not a usable model. The message
    says what is wrong; `incomplete` means the file ends too early, so it may still be
    being copied (the registry waits for it before listing it with the error)."""

    def __init__(self, message: str, *, incomplete: bool = False) -> None:
        super().__init__(message)
        self.incomplete = incomplete


class ModelFiles:
    """The model files an engine serves, as it declares them to the model registry.

    The registry lists a file of the models folder when an engine of its kind claims
    it (language-model engines everywhere but `embeddings/` and `nlu/`, embedding
    engines in those two), and reads its metadata with `describe()`. Built-in engines
    declare their formats this way too; no file type is known to the daemon's core.
    """

    # Suffixes of the model files served, lower case with the dot, e.g. (".gguf",).
    suffixes: tuple[str, ...] = ()
    # A folder is one model when it holds a file with one of these names (ONNX
    # embedding models: ("model.onnx",)); only for `embeddings/` and `nlu/`.
    folder_markers: tuple[str, ...] = ()
    # describe() proves a file complete (it raises ModelFileError(incomplete=True) for
    # a file that ends too early). Otherwise a file is only read once nothing has
    # written to it for a moment.
    checks_completeness: bool = False

    def handles(self, path: Path) -> bool:
        """True if this engine serves the model file or folder at `path`. Called from a
        worker thread during model scans: look at names, do not load. The default
        follows `suffixes` and `folder_markers`."""
        if path.is_dir():
            return any((path / marker).is_file() for marker in self.folder_markers)
        return path.suffix.lower() in self.suffixes

    def describe(self, path: Path) -> ModelMetadata:
        """Read the model's metadata from its file without loading weights (blocking;
        runs in a worker thread during scans). Raise ModelFileError when the file is
        not a usable model. The default knows nothing about the file."""
        return ModelMetadata()


# --- Generation -------------------------------------------------------------------------


@dataclass(frozen=True)
class GenerationParams:
    """Sampling and constraints; None means the model's or profile's default."""

    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None
    min_p: float | None = None
    repeat_penalty: float | None = None
    seed: int | None = None
    stop: tuple[str, ...] = ()
    grammar: str = ""
    json_schema: str = ""


class Role(StrEnum):
    SYSTEM = "system"
    USER = "user"
    ASSISTANT = "assistant"
    TOOL = "tool"


@dataclass(frozen=True)
class ChatMessage:
    role: Role
    content: str
    name: str = ""


class FinishReason(StrEnum):
    STOP = "stop"
    LENGTH = "length"
    STOP_SEQUENCE = "stop_sequence"
    CANCELLED = "cancelled"


@dataclass(frozen=True)
class CompletionStats:
    """What a provider reports when a generation ends."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int
    prompt_eval_ms: float
    generation_ms: float


class CancelToken:
    """Set by the request side when the client goes away; checked by the provider
    between tokens so a generation stops within one token.

    It also carries what the device asks of a running generation (set from the event
    loop when the device heats up or the battery runs low, applied by the provider
    between tokens, in its own thread): `threads` (None: unchanged; 0: the model's own
    count) and `pause_s`, a rest after every token."""

    def __init__(self) -> None:
        self._event = threading.Event()
        self.threads: int | None = None
        self.pause_s = 0.0
        # A batching engine keeps a paused generation's state and resumes it when
        # this turns False again (an interactive request borrowed its place).
        self.paused = False

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()

    def rest(self) -> None:
        """Sleep `pause_s` (at once woken by a cancellation)."""
        if self.pause_s > 0:
            self._event.wait(self.pause_s)


# Receives each piece of text as soon as the engine produces it.
EmitText = Callable[[str], None]


@dataclass(frozen=True)
class ModelSpec:
    """What to load: a local file, or a remote endpoint with its provider options."""

    id: str
    path: Path | None = None
    url: str = ""
    # Provider-specific settings from models.toml (remote_model, api_key_env, timeout_s...).
    options: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class GrammarLimits:
    """Bounds of a constraint grammar (GBNF, or the grammar a JSON Schema turns into):
    compiling one costs time that grows faster than its size."""

    max_bytes: int = 256 << 10
    max_rules: int = 4096


@dataclass(frozen=True)
class LoadOptions:
    context_length: int = 0  # 0: the model's own, capped by settings
    threads: int = 0  # 0: from the power profile / CPU count
    batch_size: int = 0
    gpu_layers: int = 0
    chat_format: str = ""  # "" : the model's own chat template
    grammar_limits: GrammarLimits = field(default_factory=GrammarLimits)
    # Sequences an engine that batches may run at once, each with `context_length`.
    parallel: int = 1
    # llama.cpp's flash attention; None: on when batching (8 sequences decode ~20 %
    # faster), off for one request at a time (llama-cpp-python's own numbers, and a
    # prompt restored from the cache continues exactly as a fresh one).
    flash_attention: bool | None = None


class LoadedLLM(ABC):
    """A language model in memory. The daemon guarantees one call at a time (up to
    `parallel` generations at once when the model batches them)."""

    context_length: int
    threads: int
    # How many complete()/chat() calls may run at once, from different threads: an
    # engine that batches sequences sets it; others serve one call at a time.
    parallel: int = 1

    def validate_params(self, params: GenerationParams) -> None:  # noqa: B027 (optional)
        """Raise errors.InvalidArgument for params this model cannot honour (e.g. a
        grammar it cannot parse). Called in a worker thread of its own after the
        request joined its model's queue; may run while another request generates, so
        it must not touch generation state."""

    @abstractmethod
    def complete(
        self, prompt: str, params: GenerationParams, emit: EmitText, cancel: CancelToken
    ) -> CompletionStats:
        """Generate a continuation of `prompt`, emitting text as it comes."""

    @abstractmethod
    def chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
    ) -> CompletionStats:
        """Generate the assistant's reply using the model's chat template."""

    @abstractmethod
    def tokenize(self, text: str, add_special: bool) -> list[int]: ...

    @abstractmethod
    def token_pieces(self, token_ids: Sequence[int]) -> list[str]: ...

    @abstractmethod
    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int: ...

    def use_threads(self, threads: int) -> int:
        """Run the next calls with `threads` compute threads (0: as loaded), and return
        the count now in force. Called before each request, in the thread that runs it.
        Optional: a model that cannot change its thread count keeps `self.threads`."""
        return self.threads

    def enable_prompt_cache(self, capacity_bytes: int) -> None:  # noqa: B027 (optional)
        """Keep the evaluated state of recent prompts so a follow-up turn of a
        conversation does not evaluate its history again. Optional."""

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory."""


class LLMProvider(ModelFiles, ABC):
    """An engine that can load language models (llama.cpp, a remote endpoint...).

    Local engines declare the files they serve (`suffixes`, `describe()`: see
    ModelFiles); remote ones declare none. `SimpleLLM` is a shortcut for a minimal one.
    """

    name: str
    # Remote engines run elsewhere: no local memory, network needed (routing uses this).
    remote: bool = False

    @abstractmethod
    def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedLLM:
        """Load a model or connect to it (blocking; runs in a worker thread).
        Remote engines raise errors.Unavailable / Unauthenticated for endpoint failures."""


class SimpleLLM(LLMProvider):
    """A whole local engine in one method: subclass, set `name` and `suffixes`, write
    `generate()`. Optionally `open()` loads a model file once and `close_model()` frees it.

    The base does the rest of the contract: chats become one prompt (`format_chat()`),
    pieces are emitted as they come, cancellation, `max_tokens` and stop sequences are
    honoured between pieces, and each piece counts as one token. Tokens are UTF-8 bytes
    for `tokenize()` (what the daemon uses to check prompts against the context length),
    unless the engine overrides it. Grammars and JSON Schemas are refused.
    """

    # Context length of the models, in tokens (bytes, unless tokenize() is overridden).
    context_length: int = 4096

    def open(self, spec: ModelSpec) -> Any:
        """Load the model (blocking; runs in a worker thread); what it returns is handed
        to generate(). The default hands on the file's path."""
        return spec.path

    @abstractmethod
    def generate(self, model: Any, prompt: str, params: GenerationParams) -> Iterator[str]:
        """Yield the text that continues `prompt`, piece by piece (the base stops asking
        for more on cancellation, `max_tokens` or a stop sequence)."""

    def close_model(self, model: Any) -> None:
        """Free what open() loaded."""

    def format_chat(self, messages: Sequence[ChatMessage]) -> str:
        """One prompt from a conversation: "role: content" lines, then "assistant:"."""
        lines = [f"{m.role.value}: {m.content}" for m in messages]
        return "\n".join([*lines, f"{Role.ASSISTANT.value}:"])

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return list(text.encode("utf-8"))

    def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedLLM:
        return _SimpleModel(self, self.open(spec), options)


class _SimpleModel(LoadedLLM):
    """A model loaded by a SimpleLLM: the LoadedLLM contract around its generate()."""

    def __init__(self, engine: SimpleLLM, model: Any, options: LoadOptions) -> None:
        self._engine = engine
        self._model = model
        self.context_length = options.context_length or engine.context_length
        self.threads = options.threads or 1

    def validate_params(self, params: GenerationParams) -> None:
        if params.grammar or params.json_schema:
            raise InvalidArgument(
                f"the {self._engine.name} engine cannot constrain output with a grammar or "
                "JSON Schema; leave grammar and json_schema empty for its models",
                field="params.grammar" if params.grammar else "params.json_schema",
            )

    def complete(
        self, prompt: str, params: GenerationParams, emit: EmitText, cancel: CancelToken
    ) -> CompletionStats:
        self.validate_params(params)
        prompt_tokens = len(self.tokenize(prompt, True))
        if prompt_tokens >= self.context_length:
            raise InvalidArgument(
                f"the prompt is {prompt_tokens} tokens; the model's context holds "
                f"{self.context_length}: shorten it",
                field="prompt",
            )
        t0 = time.perf_counter()
        finish, produced = FinishReason.STOP, 0
        # Text not yet emitted because it could be the start of a stop sequence.
        held = ""
        keep = max((len(s) for s in params.stop), default=1) - 1
        pieces = self._engine.generate(self._model, prompt, params)
        try:
            for piece in pieces:
                if cancel.cancelled:
                    finish = FinishReason.CANCELLED
                    break
                if params.max_tokens is not None and produced >= params.max_tokens:
                    finish = FinishReason.LENGTH
                    break
                produced += 1
                held += piece
                at = min((i for s in params.stop if (i := held.find(s)) >= 0), default=-1)
                if at >= 0:
                    held = held[:at]
                    finish = FinishReason.STOP_SEQUENCE
                    break
                if len(held) > keep:
                    emit(held[: len(held) - keep])
                    held = held[len(held) - keep :]
                cancel.rest()
        finally:
            close = getattr(pieces, "close", None)
            if close is not None:
                close()
        if held and finish is not FinishReason.CANCELLED:
            emit(held)
        return CompletionStats(
            finish_reason=finish,
            prompt_tokens=prompt_tokens,
            completion_tokens=produced,
            prompt_eval_ms=0.0,
            generation_ms=(time.perf_counter() - t0) * 1000,
        )

    def chat(
        self,
        messages: Sequence[ChatMessage],
        params: GenerationParams,
        emit: EmitText,
        cancel: CancelToken,
    ) -> CompletionStats:
        return self.complete(self._engine.format_chat(messages), params, emit, cancel)

    def tokenize(self, text: str, add_special: bool) -> list[int]:
        return self._engine.tokenize(text, add_special)

    def token_pieces(self, token_ids: Sequence[int]) -> list[str]:
        # Byte tokens (the default tokenize()): one character per byte value.
        return [chr(t) if t < 0x80 else "\ufffd" for t in token_ids]

    def count_chat_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self.tokenize(self._engine.format_chat(messages), True))

    def close(self) -> None:
        self._engine.close_model(self._model)


# --- Embeddings -------------------------------------------------------------------------


@dataclass(frozen=True)
class EmbeddingOptions:
    threads: int = 0  # 0: the daemon's setting / physical cores
    batch_size: int = 0  # 0: the provider's default
    # Idle worker threads spin-wait for the next piece of work: faster runs, but CPU
    # burnt between them (off in the power-saving profiles).
    spin_wait: bool = True


class LoadedEmbedder(ABC):
    """An embedding model in memory. The daemon serialises calls to one model."""

    # Length of every vector.
    dimension: int
    # Longest input in tokens, special tokens included; longer inputs are truncated.
    max_tokens: int
    # Tokens the model adds around every input (e.g. [CLS] and [SEP]: 2).
    special_tokens: int
    threads: int
    # How token vectors become one vector: "mean", "cls", "max", "last" or "model".
    pooling: str
    # True when token_offsets() may run in another thread while embed() runs (chunking a
    # long document then does not hold up searches).
    concurrent_token_offsets: bool = False

    @abstractmethod
    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        """One L2-normalised vector per text, in order; long texts are truncated."""

    @abstractmethod
    def token_offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        """For each text, the [start, end) character span of each of its tokens, without
        special tokens and without truncation (chunking uses this to count tokens)."""

    def embed_reporting(self, texts: Sequence[str]) -> tuple[list[list[float]], list[int]]:
        """Like embed(), plus the indexes of the texts that were truncated. Providers
        whose tokenizer reports truncation override this to skip the second pass."""
        limit = self.max_tokens - self.special_tokens
        long = [i for i, spans in enumerate(self.token_offsets(texts)) if len(spans) > limit]
        return self.embed(texts), long

    def embed_packed(self, texts: Sequence[str]) -> tuple[bytes, list[int]]:
        """The vectors of embed_reporting() as little-endian float32 bytes, one row
        after the other, and the indexes of the truncated texts: what goes on the wire,
        without a Python float per value. Providers holding arrays override this."""
        vectors, truncated = self.embed_reporting(texts)
        packed = array.array("f", (x for vector in vectors for x in vector))
        if sys.byteorder == "big":
            packed.byteswap()
        return packed.tobytes(), truncated

    def memory_bytes(self) -> int:
        """Approximate memory the model holds (0 when unknown)."""
        return 0

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory."""


class EmbeddingProvider(ModelFiles, ABC):
    """An engine that turns text into vectors (ONNX Runtime, llama.cpp...); it declares
    the files it serves in `embeddings/` and `nlu/` like an LLM engine (ModelFiles)."""

    name: str

    @abstractmethod
    def load(self, path: Path, options: EmbeddingOptions) -> LoadedEmbedder:
        """Load a model (blocking; runs in a worker thread). Raise errors.PreconditionFailed
        with a message saying what is wrong with the files."""


# --- Rerankers ---------------------------------------------------------------------------


class LoadedReranker(ABC):
    """A reranking model in memory: it reads the query and each passage together (a
    cross-encoder), which ranks better than comparing two vectors made apart, and is too
    slow for more than a search's few best candidates. The daemon serialises calls."""

    @abstractmethod
    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        """One relevance score per text, in order, higher is more relevant. Scores need
        only compare within one call."""

    def memory_bytes(self) -> int:
        """Approximate memory the model holds (0 when unknown)."""
        return 0

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory."""


class RerankerProvider(ABC):
    """An engine for reranking models: folders under `models/rerankers/`, one of which
    `[rag] reranker` names."""

    name: str

    @abstractmethod
    def handles(self, path: Path) -> bool:
        """True if `path` is a model this engine can load (cheap: looks at file names)."""

    @abstractmethod
    def load(self, path: Path, options: EmbeddingOptions) -> LoadedReranker:
        """Load a model (blocking; runs in a worker thread). Raise errors.PreconditionFailed
        with a message saying what is wrong with the files."""


# --- Vector stores ----------------------------------------------------------------------


class Distance(StrEnum):
    COSINE = "cosine"
    DOT = "dot"
    EUCLID = "euclid"


class PayloadType(StrEnum):
    """Type of a payload field's index; decides which conditions it supports."""

    KEYWORD = "keyword"
    INTEGER = "integer"
    FLOAT = "float"
    BOOL = "bool"


@dataclass(frozen=True)
class FieldMatch:
    """The field (a dotted payload path, e.g. "metadata.lang") equals `value`."""

    key: str
    value: str | int | bool


@dataclass(frozen=True)
class FieldAnyOf:
    """The field equals one of `values`."""

    key: str
    values: tuple[str, ...]


@dataclass(frozen=True)
class FieldRange:
    """The field is a number within the given bounds (None: unbounded)."""

    key: str
    gt: float | None = None
    gte: float | None = None
    lt: float | None = None
    lte: float | None = None


Condition = FieldMatch | FieldAnyOf | FieldRange


@dataclass(frozen=True)
class Filter:
    """All of `must`, none of `must_not`, and at least one of `should` (when given)."""

    must: tuple[Condition, ...] = ()
    must_not: tuple[Condition, ...] = ()
    should: tuple[Condition, ...] = ()

    @property
    def empty(self) -> bool:
        return not (self.must or self.must_not or self.should)

    def conditions(self) -> tuple[Condition, ...]:
        return (*self.must, *self.must_not, *self.should)


class SearchMode(StrEnum):
    """How a search ranks points: by dense vector similarity, by keyword (BM25) weights,
    or both fused by reciprocal rank (hybrid)."""

    DENSE = "dense"
    KEYWORD = "keyword"
    HYBRID = "hybrid"


@dataclass(frozen=True)
class SparseVector:
    """Keyword weights: term ids (hashed words) and their weights, ids ascending."""

    indices: tuple[int, ...]
    values: tuple[float, ...]


@dataclass(frozen=True)
class VectorPoint:
    # A UUID (vector stores accept UUIDs or integers as point ids).
    id: str
    vector: Sequence[float]
    payload: Mapping[str, Any]
    # Keyword weights of the point's text, for collections created with keywords.
    keywords: SparseVector | None = None


@dataclass(frozen=True)
class ScoredPoint:
    id: str
    # Similarity for cosine and dot (higher is closer), distance for euclid (lower is closer).
    score: float
    payload: Mapping[str, Any]


@dataclass(frozen=True)
class CollectionStats:
    points: int
    # Points reachable through the vector index (the rest are searched exhaustively).
    indexed_points: int
    dimension: int
    distance: Distance
    # A vector index is being built in the background (searches keep working).
    index_building: bool = False
    # The collection holds keyword vectors beside the dense ones.
    keywords: bool = False


class VectorStoreClient(ABC):
    """An open vector store. Methods block (the daemon calls them from worker threads)
    and raise errors.NotFound for a missing collection, errors.InvalidArgument for
    vectors of the wrong dimension, errors.Unavailable when a server cannot be reached."""

    # The store can hold keyword vectors (create_collection(keywords=True),
    # search_keywords()).
    supports_keywords: bool = False

    @abstractmethod
    def create_collection(
        self, name: str, dimension: int, distance: Distance, keywords: bool = False
    ) -> None:
        """Create an empty collection; errors.AlreadyExists if it exists. `keywords`
        (only asked of stores that support them): also hold a keyword vector per point,
        weighted by inverse document frequency at search time."""

    @abstractmethod
    def delete_collection(self, name: str) -> bool:
        """Delete a collection and its data; False if there was none."""

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def stats(self, name: str) -> CollectionStats: ...

    @abstractmethod
    def create_payload_index(self, name: str, key: str, field_type: PayloadType) -> None:
        """Index a payload field so filters on it stay fast (idempotent)."""

    @abstractmethod
    def upsert(self, name: str, points: Sequence[VectorPoint]) -> None:
        """Insert or replace points (durable when the call returns)."""

    @abstractmethod
    def delete(self, name: str, ids: Sequence[str] = (), filter: Filter | None = None) -> None:
        """Delete the points with these ids and/or the points matching `filter`."""

    @abstractmethod
    def count(self, name: str, filter: Filter | None = None) -> int: ...

    @abstractmethod
    def search(
        self,
        name: str,
        vector: Sequence[float],
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
    ) -> list[ScoredPoint]:
        """The `limit` nearest points, best first (with payloads)."""

    def search_keywords(
        self,
        name: str,
        keywords: SparseVector,
        limit: int,
        filter: Filter | None = None,
        score_threshold: float | None = None,
        vector: Sequence[float] | None = None,
        candidates: int = 0,
    ) -> list[ScoredPoint]:
        """Keyword search (`vector` None: scores are BM25 sums, `score_threshold` applies
        to them), or hybrid search: the `candidates` best points by keywords and by the
        dense `vector` (`score_threshold` applies to its similarity), fused by reciprocal
        rank (score: the fused rank score)."""
        raise PreconditionFailed(
            f"vector store {type(self).__name__} has no keyword search", reason="NO_KEYWORDS"
        )

    @abstractmethod
    def scroll(
        self, name: str, filter: Filter | None = None, limit: int = 100, offset: str | None = None
    ) -> tuple[list[ScoredPoint], str | None]:
        """Points matching `filter` (score 0) and the offset of the next page (None: done)."""

    def maintain(self) -> None:  # noqa: B027 (optional)
        """Called from time to time when the store is idle (e.g. to start index builds)."""

    @abstractmethod
    def close(self) -> None:
        """Flush and release everything."""


class VectorStore(ABC):
    """A vector database engine (Qdrant Edge embedded, a Qdrant server...)."""

    name: str
    # Runs inside the daemon's process with data under its state folder.
    embedded: bool = True

    @abstractmethod
    def open(self, state_dir: Path, options: Mapping[str, Any]) -> VectorStoreClient:
        """Open the store (blocking). `state_dir` is this store's own folder under the
        daemon's state; `options` come from the [rag.stores.NAME] settings table.
        Raise errors.InvalidArgument for bad options."""


# --- Document parsers -------------------------------------------------------------------


@dataclass(frozen=True)
class Section:
    """A run of text under one heading path, on one page."""

    text: str
    # Headings above the text, outermost first.
    heading_path: tuple[str, ...] = ()
    # 1-based page number; 0 when the format has no pages.
    page: int = 0


@dataclass(frozen=True)
class ParsedDocument:
    sections: tuple[Section, ...]
    title: str = ""
    # Facts about the file worth keeping with it (e.g. "pages": 12).
    metadata: Mapping[str, Any] = field(default_factory=dict)

    @property
    def text(self) -> str:
        return "\n\n".join(s.text for s in self.sections)


class DocumentParser(ABC):
    """Turns a file's bytes into text with its structure (headings, pages)."""

    name: str
    # File suffixes handled, lower case with the dot, e.g. (".md", ".markdown").
    suffixes: tuple[str, ...]
    # MIME types handled, e.g. ("text/markdown",).
    mime_types: tuple[str, ...] = ()

    def sniff(self, head: bytes) -> bool:
        """True if the first bytes of a file of unknown type look like this format."""
        return False

    @abstractmethod
    def parse(self, content: bytes, filename: str) -> ParsedDocument:
        """Parse a whole file (blocking). Raise errors.InvalidArgument with a message that
        says what is wrong with the file (empty, encrypted, not this format...)."""


# --- Tools and monitors -----------------------------------------------------------------


class ToolError(Exception):
    """Raised by a tool to fail a call with a message meant for the caller (and model)."""


# JSON data, as tools take and return it.
JSONValue: TypeAlias = bool | int | float | str | list["JSONValue"] | dict[str, "JSONValue"] | None
JSONObject: TypeAlias = dict[str, JSONValue]
# A value of rustaid.toml, as tomllib reads it.
TomlValue: TypeAlias = (
    str | int | float | bool | datetime | date | dtime | list["TomlValue"] | dict[str, "TomlValue"]
)


class ToolHost(Protocol):
    """The running daemon as a tool sees it: `tool_context().host` (docs/plugins.md,
    "Tools"). Part of the versioned plugin API: members follow `api_version`, the same
    number as `DaemonAPI.api_version`. Every member may be used from the tool's worker
    thread; the data is a copy, the tool may keep or change it."""

    @property
    def api_version(self) -> int:
        """`rustaid.daemon_api.API_VERSION` of the daemon the tool runs in."""
        ...

    @property
    def settings(self) -> Settings:
        """The settings in force now (a SIGHUP reload may replace them). The tool's own
        [tools.<name>] table is `ToolContext.settings`."""
        ...

    def hidden_paths(self) -> list[Path]:
        """Folders a sandbox must hide from the code it runs: the daemon's data folder
        and the folders of its Unix sockets."""
        ...

    def resources(self) -> JSONObject:
        """The latest resource snapshot as JSON data: `memory`, `cpu`, `thermal`,
        `power`, `gpus`, `power_profile`, `profile_source`, `unavailable_sources`, the
        fields of ResourcesService's snapshot (docs/resources.md)."""
        ...

    def models(self) -> dict[str, str]:
        """Model id -> state ("available", "loading", "loaded" or "error")."""
        ...

    def plugins(self) -> dict[str, str]:
        """Plugin id -> state ("discovered", "validated", "loaded", "active",
        "unloaded" or "failed")."""
        ...

    async def rag_search(self, collection: str, query: str, top_k: int) -> list[JSONObject]:
        """The `top_k` passages of `collection` closest in meaning to `query`, best first:
        `document_id`, `chunk_id`, `text`, `score`, `metadata`, `source`, `page`,
        `heading_path`, `chunk_index`, `title`. A coroutine of the daemon's event loop:
        run it with `tool_context().call_async(...)`. Raises NotFound for an unknown
        collection, InvalidArgument for an empty query."""
        ...


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may use besides its arguments; see `tool_context()`."""

    tool: str
    # The tool's own settings: the [tools.<name>] table of rustaid.toml.
    settings: Mapping[str, TomlValue]
    # time.monotonic() by which the call must end.
    deadline: float
    # Set when the call timed out or its client went away; long-running tools check it.
    cancel: CancelToken
    # The running daemon; None when the tool runs outside one.
    host: ToolHost | None = None
    # The daemon's event loop (`call_async`); None outside a daemon.
    loop: asyncio.AbstractEventLoop | None = None
    # The largest result, in bytes of JSON, the daemon accepts ([tools] max_result_bytes).
    max_result_bytes: int = 1 << 20

    @property
    def remaining(self) -> float:
        """Seconds left before the deadline (0 when it has passed)."""
        return max(0.0, self.deadline - time.monotonic())

    def call_async(self, coro: Coroutine[Any, Any, T]) -> T:
        """Run a coroutine on the daemon's event loop and wait for it, at most until the
        deadline (TimeoutError after that)."""
        if self.loop is None:
            coro.close()
            raise ToolError("this tool needs the running daemon")
        future = asyncio.run_coroutine_threadsafe(coro, self.loop)
        try:
            return future.result(timeout=self.remaining)
        except TimeoutError:
            future.cancel()
            raise


_TOOL_CONTEXT: contextvars.ContextVar[ToolContext] = contextvars.ContextVar("rustaid_tool")


def tool_context() -> ToolContext:
    """The context of the tool call running in this thread (inside `Tool.run`)."""
    try:
        return _TOOL_CONTEXT.get()
    except LookupError:
        raise RuntimeError("tool_context() is only available inside Tool.run") from None


def call_with_tool_context(context: ToolContext, fn: Callable[[], T]) -> T:
    """Call `fn` with `tool_context()` returning `context` (the daemon's executor)."""
    token = _TOOL_CONTEXT.set(context)
    try:
        return fn()
    finally:
        _TOOL_CONTEXT.reset(token)


class Tool(ABC):
    """A function that models and clients can call.

    `run` is blocking: the daemon calls it in a worker thread, after validating the
    arguments against `parameters_schema`, with a timeout. Inside it, `tool_context()`
    gives the daemon (`host`), the tool's settings, its deadline and a cancel token.
    """

    name: str
    description: str
    # JSON Schema of the arguments (an object schema).
    parameters_schema: Mapping[str, Any]
    # JSON Schema of the result (optional): a result that violates it is refused.
    result_schema: Mapping[str, Any] | None = None
    # Seconds a call may take when the caller does not say (capped by the settings).
    timeout_s: float = 10.0
    # False: listed, but refused until enabled with `enable = ["NAME"]` in [tools].
    enabled_by_default: bool = True

    def check_available(self) -> None:  # noqa: B027 (optional)
        """Raise errors.PreconditionFailed when the tool cannot run now (e.g. a
        subsystem it needs is missing). Called before each call, with tool_context()."""

    @abstractmethod
    def run(self, arguments: Mapping[str, Any]) -> Any:
        """Return a JSON-serialisable result; raise ToolError (or anything) to fail."""


class ResourceMonitor(ABC):
    name: str

    @abstractmethod
    def read(self) -> Mapping[str, Any]:
        """Current readings of this source; raise OSError when it is unavailable."""


# --- Plugin metadata --------------------------------------------------------------------


@dataclass(frozen=True)
class ResourceRequirements:
    min_memory_bytes: int = 0
    recommended_memory_bytes: int = 0
    cores: int = 0
    gpu: bool = False
    battery_draw_mw: int = 0
    thermal_impact: int = 0  # 0..100
    background_capable: bool = True


@dataclass(frozen=True)
class PluginInfo:
    """Declared by a plugin module as a module-level `PLUGIN = PluginInfo(...)`."""

    name: str
    version: str = "0"
    description: str = ""
    requirements: ResourceRequirements = field(default_factory=ResourceRequirements)
