"""What the metrics interceptor adds to one gRPC call (not a test).

    .venv/bin/python tests/observability/bench_interceptor.py [--calls 2000] [--rounds 5]

Two grpc.aio servers in this process serve the standard health Check, one with the
daemon's ErrorInterceptor alone, one with the metrics interceptor in front of it (as in
the daemon); a client calls each in interleaved rounds over loopback TCP. Reported: the
median per-call time of each and the difference, in microseconds. On a shared machine
that difference drowns in noise, so the interceptor's own work (intercept_service and
the wrapped call around a handler that returns at once) is also timed alone.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
from pathlib import Path

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

import grpc
from grpc_health.v1 import _async as health_aio
from grpc_health.v1 import health_pb2, health_pb2_grpc
from prometheus_client import CollectorRegistry

from rustaid.observability.grpc_metrics import GrpcMetrics, MetricsInterceptor
from rustaid.services.errors import ErrorInterceptor


async def serve(interceptors: list[grpc.aio.ServerInterceptor]) -> tuple[grpc.aio.Server, int]:  # type: ignore[type-arg]
    server = grpc.aio.server(interceptors=interceptors)
    health = health_aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    await health.set("", health_pb2.HealthCheckResponse.SERVING)
    return server, port


async def per_call_us(port: int, calls: int) -> float:
    async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        request = health_pb2.HealthCheckRequest()
        await stub.Check(request)
        t0 = time.perf_counter()
        for _ in range(calls):
            await stub.Check(request)
        return (time.perf_counter() - t0) / calls * 1e6


class _Context:
    """What the wrapper asks of a finished call's context."""

    def code(self) -> None:
        return None


async def isolated_us(calls: int) -> float:
    interceptor = MetricsInterceptor(GrpcMetrics(CollectorRegistry()))
    response = health_pb2.HealthCheckResponse()

    async def check(request: object, context: object) -> health_pb2.HealthCheckResponse:
        return response

    handler = grpc.unary_unary_rpc_method_handler(check)

    async def continuation(details: object) -> object:
        return handler

    class Details:
        method = "/grpc.health.v1.Health/Check"

    context = _Context()
    t0 = time.perf_counter()
    for _ in range(calls):
        wrapped = await interceptor.intercept_service(continuation, Details())  # type: ignore[arg-type]
        await wrapped.unary_unary(None, context)
    with_metrics = time.perf_counter() - t0
    t0 = time.perf_counter()
    for _ in range(calls):
        await continuation(Details())
        await check(None, context)
    return (with_metrics - (time.perf_counter() - t0)) / calls * 1e6


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    metrics = GrpcMetrics(CollectorRegistry())
    plain, plain_port = await serve([ErrorInterceptor()])
    counted, counted_port = await serve([MetricsInterceptor(metrics), ErrorInterceptor()])
    off: list[float] = []
    on: list[float] = []
    for _ in range(args.rounds):
        off.append(await per_call_us(plain_port, args.calls))
        on.append(await per_call_us(counted_port, args.calls))
    await plain.stop(0)
    await counted.stop(0)
    a, b = statistics.median(off), statistics.median(on)
    diffs = statistics.median(y - x for x, y in zip(off, on, strict=True))
    print(f"unary health Check over loopback TCP, {args.rounds} x {args.calls} calls each")
    print(f"  without metrics  {a:8.1f} us/call")
    print(f"  with metrics     {b:8.1f} us/call  ({b / a:.3f}x)")
    print(f"  added per call   {diffs:8.1f} us (median of per-round differences)")
    alone = statistics.median([await isolated_us(20000) for _ in range(5)])
    print(f"  interceptor's own work, timed alone: {alone:.1f} us per call")


if __name__ == "__main__":
    asyncio.run(main())
