"""Plugin contracts: the small interfaces every engine, store, parser, tool and monitor
implements. Built-in plugins implement them exactly like third-party ones.

Providers see plain dataclasses, never protobuf messages.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import Any

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
class LoadOptions:
    context_length: int = 0  # 0: the model's own, capped by settings
    threads: int = 0  # 0: from the power profile / CPU count
    batch_size: int = 0
    gpu_layers: int = 0


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

    @abstractmethod
    def close(self) -> None:
        """Free the model's memory."""


class LLMProvider(ABC):
    """An engine that can load language models (llama.cpp, a remote endpoint...)."""

    name: str

    @abstractmethod
    def handles(self, path: Path) -> bool:
        """True if this provider serves model files like `path`."""

    @abstractmethod
    def load(self, path: Path, options: LoadOptions) -> LoadedLLM:
        """Load a model (blocking; runs in a worker thread)."""


# --- Embeddings, vector stores, parsers -------------------------------------------------


class EmbeddingProvider(ABC):
    name: str

    @abstractmethod
    def handles(self, path: Path) -> bool: ...

    @abstractmethod
    def embed(self, model_path: Path, texts: Sequence[str]) -> list[list[float]]: ...


class VectorStore(ABC):
    name: str

    @abstractmethod
    def create_collection(self, name: str, dimension: int, distance: str) -> None: ...

    @abstractmethod
    def delete_collection(self, name: str) -> None: ...

    @abstractmethod
    def list_collections(self) -> list[str]: ...

    @abstractmethod
    def upsert(
        self, collection: str, points: Sequence[tuple[str, Sequence[float], Mapping[str, Any]]]
    ) -> None: ...

    @abstractmethod
    def search(
        self, collection: str, vector: Sequence[float], top_k: int, filter: Mapping[str, Any]
    ) -> list[tuple[str, float, Mapping[str, Any]]]: ...


class DocumentParser(ABC):
    name: str
    # File suffixes handled, e.g. (".md", ".txt").
    suffixes: tuple[str, ...]

    @abstractmethod
    def parse(self, content: bytes, filename: str) -> str: ...


# --- Tools and monitors -----------------------------------------------------------------


class Tool(ABC):
    name: str
    description: str
    # JSON Schema of the arguments.
    parameters_schema: Mapping[str, Any]

    @abstractmethod
    def run(self, arguments: Mapping[str, Any]) -> Any: ...


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
