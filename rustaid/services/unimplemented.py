"""Services the contract defines but this version does not serve yet: every RPC answers
UNIMPLEMENTED with a message naming it, instead of grpc's bare "Method not implemented!"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from rustaid import __version__
from rustaid.api.v1 import (
    rag_pb2,
    rag_pb2_grpc,
    resources_pb2,
    resources_pb2_grpc,
    tools_pb2,
    tools_pb2_grpc,
    updates_pb2,
    updates_pb2_grpc,
)
from rustaid.errors import NotImplementedYet

# (servicer base, add-to-server function, service descriptor)
SERVICERS: tuple[tuple[type, Any, ServiceDescriptor], ...] = (
    (
        rag_pb2_grpc.RagServiceServicer,
        rag_pb2_grpc.add_RagServiceServicer_to_server,
        rag_pb2.DESCRIPTOR.services_by_name["RagService"],
    ),
    (
        tools_pb2_grpc.ToolsServiceServicer,
        tools_pb2_grpc.add_ToolsServiceServicer_to_server,
        tools_pb2.DESCRIPTOR.services_by_name["ToolsService"],
    ),
    (
        resources_pb2_grpc.ResourcesServiceServicer,
        resources_pb2_grpc.add_ResourcesServiceServicer_to_server,
        resources_pb2.DESCRIPTOR.services_by_name["ResourcesService"],
    ),
    (
        updates_pb2_grpc.UpdatesServiceServicer,
        updates_pb2_grpc.add_UpdatesServiceServicer_to_server,
        updates_pb2.DESCRIPTOR.services_by_name["UpdatesService"],
    ),
)


def _error(service: str, method: str) -> NotImplementedYet:
    return NotImplementedYet(
        f"{service}.{method} is part of the rustaid.api.v1 contract but is not served by "
        f"rustaid {__version__} yet; see docs/grpc-api.md for the status of each RPC",
        reason="NOT_IMPLEMENTED",
    )


def _not_yet(service: str, method: str, streaming: bool) -> Any:
    if streaming:

        async def stream(self: Any, request: Any, context: Any) -> AsyncIterator[Any]:
            raise _error(service, method)
            yield  # an async generator, as grpc.aio expects for server streams

        return stream

    async def unary(self: Any, request: Any, context: Any) -> Any:
        raise _error(service, method)

    return unary


def unimplemented_servicer(base: type, service: ServiceDescriptor) -> Any:
    methods = {m.name: _not_yet(service.name, m.name, m.server_streaming) for m in service.methods}
    return type(f"Unimplemented{service.name}", (base,), methods)()
