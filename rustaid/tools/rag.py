"""The `rag_search` tool: searches a document collection of the daemon's RAG subsystem.

It calls `ToolHost.rag_search(collection, query, top_k)` on the daemon's event loop.
Outside a daemon the tool is unavailable (FAILED_PRECONDITION "RAG not available").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from rustaid.errors import PreconditionFailed
from rustaid.providers import JSONObject, Tool, ToolHost, tool_context

MAX_TEXT = 2000


def _hit(data: JSONObject) -> JSONObject:
    text = data.get("text")
    if isinstance(text, str) and len(text) > MAX_TEXT:
        data["text"] = text[:MAX_TEXT] + "…"
    return data


def _host() -> ToolHost:
    host = tool_context().host
    if host is None:
        raise PreconditionFailed(
            "RAG not available: this daemon has no document search subsystem",
            reason="RAG_NOT_AVAILABLE",
        )
    return host


class RagSearch(Tool):
    name = "rag_search"
    description = (
        "Searches a document collection for the passages closest in meaning to a query; "
        "returns the passages with their document ids and scores."
    )
    parameters_schema: Mapping[str, Any] = {
        "type": "object",
        "properties": {
            "collection": {"type": "string", "minLength": 1, "maxLength": 128},
            "query": {"type": "string", "minLength": 1, "maxLength": 1000},
            "top_k": {"type": "integer", "minimum": 1, "maximum": 20},
        },
        "required": ["collection", "query"],
        "additionalProperties": False,
    }
    timeout_s = 30.0

    def check_available(self) -> None:
        _host()

    def run(self, arguments: Mapping[str, Any]) -> Any:
        context = tool_context()
        search = _host().rag_search(
            arguments["collection"], arguments["query"], int(arguments.get("top_k", 5))
        )
        return {"hits": [_hit(h) for h in context.call_async(search)]}
