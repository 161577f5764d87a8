"""The `rag_search` tool: searches a document collection of the daemon's RAG subsystem.

It calls `daemon.rag.search(collection=..., query=..., top_k=...)` (awaited when it is a
coroutine). A daemon without a RAG subsystem makes the tool unavailable
(FAILED_PRECONDITION "RAG not available").
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

from rustaid.errors import PreconditionFailed
from rustaid.providers import Tool, tool_context
from rustaid.tools.device import jsonable

MAX_TEXT = 2000


def _hit(hit: Any) -> dict[str, Any]:
    data = jsonable(hit)
    if not isinstance(data, dict):
        return {"text": str(data)}
    text = data.get("text")
    if isinstance(text, str) and len(text) > MAX_TEXT:
        data["text"] = text[:MAX_TEXT] + "…"
    return data


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
        rag = getattr(tool_context().daemon, "rag", None)
        if rag is None or not callable(getattr(rag, "search", None)):
            raise PreconditionFailed(
                "RAG not available: this daemon has no document search subsystem",
                reason="RAG_NOT_AVAILABLE",
            )

    def run(self, arguments: Mapping[str, Any]) -> Any:
        context = tool_context()
        rag = context.daemon.rag
        result = rag.search(
            collection=arguments["collection"],
            query=arguments["query"],
            top_k=int(arguments.get("top_k", 5)),
        )
        if inspect.isawaitable(result):
            result = context.call_async(result)  # type: ignore[arg-type]
        hits = getattr(result, "hits", result)
        return {"hits": [_hit(h) for h in hits]}
