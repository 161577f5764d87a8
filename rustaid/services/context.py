"""Per-request context at the gRPC edge: request id, trace context, caller, admission.

RequestContextInterceptor (first in the server's list) gives every RPC an id (the
client's `x-request-id` when well-formed, else a fresh one), sends it back as initial
metadata, keeps it with the method and the caller's `traceparent` in
rustaid.core.request_id for the log, and, when no authentication interceptor has
identified the caller, sets a fallback caller from the peer address.

AdmissionInterceptor (last in the list, after authentication) holds a per-client place
(rustaid.core.admission) for the whole of every RPC that runs inference: see
COUNTED_METHODS. The engine enforces the same limit again where it is entered, so
callers that do not come through gRPC (D-Bus) are limited too; one request holds one
place however often it enters the engine.

Each RPC runs in its own asyncio task, so the context variables set here live exactly
as long as the RPC.
"""

from __future__ import annotations

import contextlib
import inspect
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from rustaid.core import caller as caller_mod
from rustaid.core import request_id
from rustaid.core.admission import Admission

log = logging.getLogger(__name__)

Handler = Any  # grpc.RpcMethodHandler (generic only in the type stubs)
Context = Any  # grpc.aio.ServicerContext

_PKG = "/rustaid.api.v1."
# RPCs that run inference (generation, embeddings, tokenization, retrieval, agents,
# NLU) and so count against max_requests_per_client. Listings, status, watches,
# model/plugin management and updates do not: they are cheap, or long-lived streams
# that would hold a place for hours.
COUNTED_METHODS = frozenset(
    _PKG + m
    for m in (
        "GenerateService/Generate",
        "GenerateService/GenerateStream",
        "GenerateService/Chat",
        "GenerateService/ChatStream",
        "GenerateService/Tokenize",
        "GenerateService/CountTokens",
        "RagService/Embed",
        "RagService/Search",
        "RagService/Ask",
        "RagService/IndexDocuments",
        "RagService/IndexFile",
        "ToolsService/RunAgent",
        "ToolsService/ExecuteTool",
        "NluService/ClassifyIntent",
        "NluService/ExtractEntities",
    )
)


def _first(metadata: Any, key: str) -> str | None:
    for k, v in metadata or ():
        if k == key and isinstance(v, str):
            return v
    return None


def fallback_caller(peer: str) -> caller_mod.Caller:
    """Who is calling when no authentication interceptor said: the peer address. Unix
    socket peers carry no address ("unix:"), so local clients share one key
    ("peer:unix:"); so do TCP clients of one host (see caller.anonymous_key)."""
    transport = "unix" if peer.startswith("unix") else "tcp"
    return caller_mod.Caller(key=caller_mod.anonymous_key(peer), transport=transport, admin=False)


Around = Callable[[Context], contextlib.AbstractAsyncContextManager[None]]


def wrap_handler(handler: Handler, around: Around) -> Handler:
    """The same handler, with each call run inside `around(context)`. Handles the four
    kinds of RPC, and stream handlers written either as async generators or as
    coroutines that call context.write()."""

    # grpc.aio tells coroutine and async-generator handlers apart by their functions'
    # kind, so these must be `async def` functions (not lambdas returning coroutines).
    def unary(inner: Any) -> Callable[[Any, Context], Awaitable[Any]]:
        async def call(request: Any, context: Context) -> Any:
            async with around(context):
                return await inner(request, context)

        return call

    def stream(inner: Any) -> Callable[[Any, Context], AsyncIterator[Any]]:
        async def call(request: Any, context: Context) -> AsyncIterator[Any]:
            async with around(context):
                result = inner(request, context)
                if inspect.isawaitable(result):
                    await result  # writes with context.write()
                    return
                async for response in result:
                    yield response

        return call

    kinds = (
        ("unary_unary", grpc.unary_unary_rpc_method_handler, unary),
        ("unary_stream", grpc.unary_stream_rpc_method_handler, stream),
        ("stream_unary", grpc.stream_unary_rpc_method_handler, unary),
        ("stream_stream", grpc.stream_stream_rpc_method_handler, stream),
    )
    for attr, make, adapt in kinds:
        inner = getattr(handler, attr)
        if inner is not None:
            return make(
                adapt(inner),
                request_deserializer=handler.request_deserializer,
                response_serializer=handler.response_serializer,
            )
    return handler


class RequestContextInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Request id, trace context and fallback caller for every RPC; one debug line per
    finished RPC (method, outcome, duration). Never logs metadata: it carries tokens."""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        metadata = handler_call_details.invocation_metadata
        method = handler_call_details.method
        info = request_id.RequestInfo(
            request_id.accept_id(_first(metadata, request_id.REQUEST_ID_HEADER)),
            method,
            *request_id.parse_traceparent(_first(metadata, request_id.TRACEPARENT_HEADER)),
        )
        # Set here too, so inner interceptors' own log lines carry the id.
        request_id.set_current(info)
        handler = await continuation(handler_call_details)
        if handler is None:
            return handler

        @contextlib.asynccontextmanager
        async def around(context: Context) -> AsyncIterator[None]:
            request_id.set_current(info)
            if caller_mod.current() is caller_mod.INTERNAL:
                caller_mod.set_current(fallback_caller(context.peer()))
            with contextlib.suppress(Exception):  # the client may be gone already
                await context.send_initial_metadata(((request_id.REQUEST_ID_HEADER, info.id),))
            t0 = time.perf_counter()
            outcome = "OK"
            try:
                yield
            except BaseException as e:
                outcome = type(e).__name__
                raise
            finally:
                if log.isEnabledFor(logging.DEBUG):
                    code = _code(context)
                    log.debug(
                        "%s %s in %.1f ms",
                        method,
                        code if code else outcome,
                        (time.perf_counter() - t0) * 1000,
                    )

        return wrap_handler(handler, around)


def _code(context: Context) -> str:
    with contextlib.suppress(Exception):
        code = context.code()
        if isinstance(code, grpc.StatusCode):
            return str(code.name)
    return ""


class AdmissionInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    """Holds the caller's place for the whole of each RPC in COUNTED_METHODS (an agent
    between its turns, a retrieval before its answer). Must come after authentication:
    it reads the caller then."""

    def __init__(self, admission: Admission) -> None:
        self.admission = admission

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or method not in COUNTED_METHODS:
            return handler
        kind = method.rsplit("/", 1)[-1]

        @contextlib.asynccontextmanager
        async def around(context: Context) -> AsyncIterator[None]:
            with self.admission.admit(kind):
                yield

        return wrap_handler(handler, around)
