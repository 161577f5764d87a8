"""Services the contract defines but this version does not serve yet: every RPC answers
UNIMPLEMENTED with a message naming it, instead of grpc's bare "Method not implemented!"."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

from google.protobuf.descriptor import ServiceDescriptor

from rustaid import __version__
from rustaid.errors import NotImplementedYet

# (servicer base, add-to-server function, service descriptor); every service is served.
SERVICERS: tuple[tuple[type, Any, ServiceDescriptor], ...] = ()


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
