"""pluggy hook specifications for rustaid plugins (entry-point group "rustaid").

A plugin is a module with `@hookimpl` functions and, optionally, a module-level
`PLUGIN = rustaid.providers.PluginInfo(...)` describing it. Hooks only register
things; work happens in the registered providers' methods.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import pluggy

from rustaid.providers import (
    DocumentParser,
    EmbeddingProvider,
    LLMProvider,
    RerankerProvider,
    ResourceMonitor,
    Tool,
    VectorStore,
)

if TYPE_CHECKING:
    from rustaid.daemon_api import DaemonAPI

PROJECT_NAME = "rustaid"

hookspec = pluggy.HookspecMarker(PROJECT_NAME)
hookimpl = pluggy.HookimplMarker(PROJECT_NAME)


@hookspec
def register_llm_providers(register: Callable[[LLMProvider], None]) -> None:
    """Register language-model engines (llama.cpp, remote endpoints)."""


@hookspec
def register_embedding_providers(register: Callable[[EmbeddingProvider], None]) -> None:
    """Register embedding engines."""


@hookspec
def register_reranker_providers(register: Callable[[RerankerProvider], None]) -> None:
    """Register reranking engines (cross-encoders)."""


@hookspec
def register_vector_stores(register: Callable[[VectorStore], None]) -> None:
    """Register vector stores."""


@hookspec
def register_document_parsers(register: Callable[[DocumentParser], None]) -> None:
    """Register document parsers."""


@hookspec
def register_tools(register: Callable[[Tool], None]) -> None:
    """Register tools that models and clients can call."""


@hookspec
def register_resource_monitors(register: Callable[[ResourceMonitor], None]) -> None:
    """Register device-state sources."""


@hookspec
def startup(daemon: DaemonAPI) -> None:
    """Called once the plugin is loaded and the daemon is running; `daemon` is the
    daemon's stable, versioned API (`rustaid.daemon_api.DaemonAPI`)."""


@hookspec
def shutdown(daemon: DaemonAPI) -> None:
    """Called before the plugin is unloaded or the daemon stops (stop the callbacks
    registered through `daemon` here)."""
