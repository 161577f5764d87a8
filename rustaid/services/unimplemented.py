"""Services the contract defines but this version does not serve yet: every RPC answers
UNIMPLEMENTED with a message naming it, instead of grpc's bare "Method not implemented!"."""

from __future__ import annotations

from typing import Any

from rustaid import __version__
from rustaid.api.v1 import (
    rag_pb2_grpc,
    resources_pb2_grpc,
    tools_pb2_grpc,
    updates_pb2_grpc,
)
from rustaid.errors import NotImplementedYet

SERVICERS: tuple[tuple[type, Any, str], ...] = (
    (rag_pb2_grpc.RagServiceServicer, rag_pb2_grpc.add_RagServiceServicer_to_server, "RagService"),
    (
        tools_pb2_grpc.ToolsServiceServicer,
        tools_pb2_grpc.add_ToolsServiceServicer_to_server,
        "ToolsService",
    ),
    (
        resources_pb2_grpc.ResourcesServiceServicer,
        resources_pb2_grpc.add_ResourcesServiceServicer_to_server,
        "ResourcesService",
    ),
    (
        updates_pb2_grpc.UpdatesServiceServicer,
        updates_pb2_grpc.add_UpdatesServiceServicer_to_server,
        "UpdatesService",
    ),
)


def _not_yet(service: str, method: str) -> Any:
    async def handler(self: Any, request: Any, context: Any) -> Any:
        raise NotImplementedYet(
            f"{service}.{method} is part of the rustaid.api.v1 contract but is not served by "
            f"rustaid {__version__} yet; see docs/grpc-api.md for the status of each RPC",
            reason="NOT_IMPLEMENTED",
        )

    return handler


def unimplemented_servicer(base: type, service: str) -> Any:
    methods = {
        name: _not_yet(service, name)
        for name in vars(base)
        if not name.startswith("_") and callable(getattr(base, name))
    }
    return type(f"Unimplemented{service}", (base,), methods)()
