"""Counts every gRPC call by method and final status code, and times it.

The interceptor sits outside the error mapping, authentication and admission (only the
request-context interceptor, which changes no status, is further out), so the code it
records is the one the client receives, including calls refused before they reached a
service. Method labels come only from methods the
protobuf descriptor pool knows, so a client calling made-up method names cannot grow
the number of series; those calls are counted under "unknown".
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from prometheus_client import CollectorRegistry, Counter, Histogram

Handler = Any  # grpc.RpcMethodHandler (generic only in the type stubs)

UNKNOWN = "unknown"
# Seconds; unary calls take milliseconds, generations and uploads seconds to minutes.
LATENCY_BUCKETS = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0,
)  # fmt: skip


class _Method:
    """The metric children of one method, resolved once (a label lookup per call would
    cost more than the rest of the bookkeeping)."""

    __slots__ = ("_handled", "_labels", "_metrics", "seconds", "started")

    def __init__(self, metrics: GrpcMetrics, service: str, method: str) -> None:
        self._metrics = metrics
        self._labels = (service, method)
        self.started = metrics.started.labels(service, method)
        self.seconds = metrics.seconds.labels(service, method)
        self._handled: dict[str, Any] = {}

    def done(self, code: str, seconds: float | None) -> None:
        child = self._handled.get(code)
        if child is None:
            child = self._handled[code] = self._metrics.handled.labels(*self._labels, code)
        child.inc()
        if seconds is not None:
            self.seconds.observe(seconds)


class GrpcMetrics:
    def __init__(self, registry: CollectorRegistry) -> None:
        labels = ("grpc_service", "grpc_method")
        self.started = Counter(
            "rustaid_grpc_server_started",
            "gRPC calls started, by method.",
            labels,
            registry=registry,
        )
        self.handled = Counter(
            "rustaid_grpc_server_handled",
            "gRPC calls finished, by method and the status code the client received.",
            (*labels, "grpc_code"),
            registry=registry,
        )
        self.seconds = Histogram(
            "rustaid_grpc_server_handling_seconds",
            "Time from the start of a gRPC call to its end (for streams: the whole stream).",
            labels,
            buckets=LATENCY_BUCKETS,
            registry=registry,
        )
        self._methods: dict[str, _Method] = {}
        self._pool = descriptor_pool.Default()

    def method(self, path: str) -> _Method:
        """The metrics of `path` ("/package.Service/Method"); "unknown" for a method no
        protobuf module of this process declares."""
        found = self._methods.get(path)
        if found is not None:
            return found
        service, _, name = path.lstrip("/").partition("/")
        try:
            self._pool.FindMethodByName(f"{service}.{name}")
        except KeyError:
            service = name = UNKNOWN
            path = UNKNOWN
            found = self._methods.get(path)
            if found is not None:
                return found
        found = self._methods[path] = _Method(self, service, name)
        return found


def _code(context: Any) -> str:
    code = context.code()
    return "OK" if code is None else str(code.name)


def _failed(error: BaseException, context: Any) -> str:
    if isinstance(error, grpc.aio.AbortError):
        return _code(context)
    if isinstance(error, asyncio.CancelledError | GeneratorExit):
        remaining = context.time_remaining()
        if remaining is not None and remaining <= 0:
            return "DEADLINE_EXCEEDED"
        return "CANCELLED"
    code = context.code()
    return "UNKNOWN" if code is None else str(code.name)


def _stream(inner: Any, m: _Method) -> Any:
    """Wrap a handler that produces a stream (async generator) or writes one itself."""
    if inspect.isasyncgenfunction(inner):

        async def generator(request: Any, context: Any) -> AsyncIterator[Any]:
            t0 = time.perf_counter()
            m.started.inc()
            code = "UNKNOWN"
            try:
                async for response in inner(request, context):
                    yield response
                code = _code(context)
            except BaseException as e:
                code = _failed(e, context)
                raise
            finally:
                m.done(code, time.perf_counter() - t0)

        return generator
    return _unary(inner, m)


def _unary(inner: Any, m: _Method) -> Any:
    async def call(request: Any, context: Any) -> Any:
        t0 = time.perf_counter()
        m.started.inc()
        code = "UNKNOWN"
        try:
            response = await inner(request, context)
            code = _code(context)
            return response
        except BaseException as e:
            code = _failed(e, context)
            raise
        finally:
            m.done(code, time.perf_counter() - t0)

    return call


class MetricsInterceptor(grpc.aio.ServerInterceptor):  # type: ignore[type-arg]
    def __init__(self, metrics: GrpcMetrics) -> None:
        self.metrics = metrics

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> Handler:
        m = self.metrics.method(handler_call_details.method)
        try:
            handler = await continuation(handler_call_details)
        except BaseException:
            m.started.inc()
            m.done("UNKNOWN", None)
            raise
        if handler is None:  # no such method: gRPC answers UNIMPLEMENTED
            m.started.inc()
            m.done("UNIMPLEMENTED", None)
            return handler
        kw = {
            "request_deserializer": handler.request_deserializer,
            "response_serializer": handler.response_serializer,
        }
        if handler.unary_unary is not None:
            return grpc.unary_unary_rpc_method_handler(_unary(handler.unary_unary, m), **kw)
        if handler.unary_stream is not None:
            return grpc.unary_stream_rpc_method_handler(_stream(handler.unary_stream, m), **kw)
        if handler.stream_unary is not None:
            return grpc.stream_unary_rpc_method_handler(_unary(handler.stream_unary, m), **kw)
        if handler.stream_stream is not None:
            return grpc.stream_stream_rpc_method_handler(_stream(handler.stream_stream, m), **kw)
        return handler
