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
from collections.abc import Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any, TypeVar

T = TypeVar("T")

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
    between tokens so a generation stops within one token."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()


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
class LoadOptions:
    context_length: int = 0  # 0: the model's own, capped by settings
    threads: int = 0  # 0: from the power profile / CPU count
    batch_size: int = 0
    gpu_layers: int = 0
    chat_format: str = ""  # "" : the model's own chat template


class LoadedLLM(ABC):
    """A language model in memory. The daemon guarantees one call at a time."""

    context_length: int
    threads: int

    def validate_params(self, params: GenerationParams) -> None:  # noqa: B027 (optional)
        """Raise errors.InvalidArgument for params this model cannot honour (e.g. a
        grammar it cannot parse). Called before the request queues; may run while
        another request generates, so it must not touch generation state."""

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

    def enable_prompt_cache(self, capacity_bytes: int) -> None:  # noqa: B027 (optional)
        """Keep the evaluated state of recent prompts so a follow-up turn of a
        conversation does not evaluate its history again. Optional."""

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory."""


class LLMProvider(ABC):
    """An engine that can load language models (llama.cpp, a remote endpoint...)."""

    name: str
    # Remote engines run elsewhere: no local memory, network needed (routing uses this).
    remote: bool = False

    @abstractmethod
    def handles(self, path: Path) -> bool:
        """True if this provider serves model files like `path` (False for remote ones)."""

    @abstractmethod
    def load(self, spec: ModelSpec, options: LoadOptions) -> LoadedLLM:
        """Load a model or connect to it (blocking; runs in a worker thread).
        Remote engines raise errors.Unavailable / Unauthenticated for endpoint failures."""


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


class EmbeddingProvider(ABC):
    """An engine that turns text into vectors (ONNX Runtime, llama.cpp...)."""

    name: str

    @abstractmethod
    def handles(self, path: Path) -> bool:
        """True if this provider can load the model file or folder at `path`. Called
        from a worker thread during model scans: look at file names, do not load."""

    @abstractmethod
    def load(self, path: Path, options: EmbeddingOptions) -> LoadedEmbedder:
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


@dataclass(frozen=True)
class VectorPoint:
    # A UUID (vector stores accept UUIDs or integers as point ids).
    id: str
    vector: Sequence[float]
    payload: Mapping[str, Any]


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


class VectorStoreClient(ABC):
    """An open vector store. Methods block (the daemon calls them from worker threads)
    and raise errors.NotFound for a missing collection, errors.InvalidArgument for
    vectors of the wrong dimension, errors.Unavailable when a server cannot be reached."""

    @abstractmethod
    def create_collection(self, name: str, dimension: int, distance: Distance) -> None:
        """Create an empty collection; errors.AlreadyExists if it exists."""

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


@dataclass(frozen=True)
class ToolContext:
    """What a running tool may use besides its arguments; see `tool_context()`."""

    tool: str
    # The tool's own settings: the [tools.<name>] table of rustaid.toml.
    settings: Mapping[str, Any]
    # time.monotonic() by which the call must end.
    deadline: float
    # Set when the call timed out or its client went away; long-running tools check it.
    cancel: CancelToken
    # The running daemon; None when the tool runs outside one.
    daemon: Any = None
    loop: asyncio.AbstractEventLoop | None = None

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
    gives the daemon, the tool's settings, its deadline and a cancel token.
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
