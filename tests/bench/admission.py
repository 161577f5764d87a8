"""Admission and request-context costs: what the per-request machinery adds to an RPC,
how fast an oversized prompt is refused compared with tokenizing it, and the cost of a
log line in each format.

    python tests/bench/admission.py [--calls 2000] [--runs 5] [--json out.json]

- RPC overhead: a unary call to a trivial handler registered at a counted method
  (`GenerateService/Tokenize`), on an in-process grpc.aio server over a Unix socket,
  with and without RequestContextInterceptor + AdmissionInterceptor (request id,
  initial metadata, caller, per-client place). Interleaved rounds, medians.
- Oversized prompt: `check_prompt_size` refusing 1.05 MB of non-ASCII text vs
  llama.cpp tokenizing the same text (the work the check spares).
- Log lines: one record formatted as text and as JSON (OpenTelemetry fields), inside a
  request context.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import contextvars
import logging
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rustaid.core import caller as caller_mod
from rustaid.core import request_id
from rustaid.core.admission import Admission, check_prompt_size
from rustaid.errors import InvalidArgument
from rustaid.log import JsonFormatter, RequestContextFilter, TextFormatter
from rustaid.services.context import AdmissionInterceptor, RequestContextInterceptor
from rustaid.testing.synthetic import TINY
from tests.bench.common import figure, figures_table, machine, median, parse_args, write_json

METHOD = "/rustaid.api.v1.GenerateService/Tokenize"


async def _echo(request: bytes, context: Any) -> bytes:
    return request


def _server(interceptors: list[Any], address: str) -> grpc.aio.Server:
    server = grpc.aio.server(interceptors=interceptors)
    handler = grpc.method_handlers_generic_handler(
        "rustaid.api.v1.GenerateService",
        {"Tokenize": grpc.unary_unary_rpc_method_handler(_echo)},
    )
    server.add_generic_rpc_handlers((handler,))
    server.add_insecure_port(address)
    return server


async def rpc_overhead(calls: int, runs: int) -> dict[str, list[float]]:
    """Microseconds per call, bare server vs server with the request-context chain."""
    out: dict[str, list[float]] = {"bare": [], "with_context": []}
    with tempfile.TemporaryDirectory(dir="/tmp") as tmp:
        arms = {
            "bare": [],
            "with_context": [
                RequestContextInterceptor(),
                AdmissionInterceptor(Admission(lambda: 8)),
            ],
        }
        servers = {}
        for name, interceptors in arms.items():
            address = f"unix://{tmp}/{name}.sock"
            servers[name] = (_server(interceptors, address), address)
            await servers[name][0].start()
        try:
            for i in range(runs):
                order = list(arms) if i % 2 == 0 else list(reversed(arms))
                for name in order:
                    async with grpc.aio.insecure_channel(servers[name][1]) as channel:
                        call = channel.unary_unary(METHOD)
                        for _ in range(50):  # warm up the connection
                            await call(b"x")
                        t0 = time.perf_counter()
                        for _ in range(calls):
                            await call(b"x", metadata=(("x-request-id", "bench-1"),))
                        out[name].append((time.perf_counter() - t0) / calls * 1e6)
        finally:
            for server, _ in servers.values():
                await server.stop(None)
    return out


def prompt_refusal(runs: int) -> dict[str, list[float]]:
    """Milliseconds: refusing just over 1 MiB of UTF-8 vs tokenizing it with llama.cpp."""
    import llama_cpp

    from rustaid.testing.synthetic import write_llama_gguf

    # 900,000 characters, 1,050,000 bytes: the check has to encode it (its slowest case).
    text = "héllo wörld " * 75_000
    out: dict[str, list[float]] = {"refuse_ms": [], "tokenize_ms": []}
    with tempfile.TemporaryDirectory() as tmp:
        path = write_llama_gguf(Path(tmp) / "tiny.gguf", TINY, seed=1)
        llm = llama_cpp.Llama(str(path), vocab_only=True, verbose=False)
        data = text.encode()
        for _ in range(runs):
            t0 = time.perf_counter()
            with contextlib.suppress(InvalidArgument):  # it is refused
                check_prompt_size([text], 1 << 20, "prompt")
            out["refuse_ms"].append((time.perf_counter() - t0) * 1000)
            t0 = time.perf_counter()
            llm.tokenize(data, add_bos=True)
            out["tokenize_ms"].append((time.perf_counter() - t0) * 1000)
        out["bytes"] = [float(len(data))]
    return out


def log_line_us(records: int) -> dict[str, float]:
    def run() -> dict[str, float]:
        caller_mod.set_current(caller_mod.Caller(key="uid:1000", transport="unix"))
        request_id.set_current(
            request_id.RequestInfo("bench-1", METHOD, "4" * 32, "0" * 15 + "1", "01")
        )
        results = {}
        for name, formatter in (
            ("text", TextFormatter("%(asctime)s %(levelname)s %(name)s: %(message)s")),
            ("json", JsonFormatter()),
        ):
            t0 = time.perf_counter()
            for i in range(records):
                record = logging.LogRecord(
                    "rustaid.core.engine", logging.INFO, __file__, 1, "loaded %s in %d ms",
                    ("tiny.gguf", i), None,
                )  # fmt: skip
                RequestContextFilter().filter(record)
                formatter.format(record)
            results[name] = (time.perf_counter() - t0) / records * 1e6
        return results

    return contextvars.copy_context().run(run)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--calls", type=int, default=2000, help="calls per round and arm")
    ap.add_argument("--runs", type=int, default=5)
    args = parse_args(ap, quick={"calls": 200, "runs": 2})
    rpc = asyncio.run(rpc_overhead(args.calls, args.runs))
    prompt = prompt_refusal(args.runs)
    logs = log_line_us(20 * args.calls)
    bare, ctx = median(rpc["bare"]), median(rpc["with_context"])
    figures = [
        figure(
            "unary RPC with request id + admission", ctx, "us",
            peer="same server without them", peer_value=bare,
            target="<= 150", on="difference",  # microseconds added per call
        ),
        figure(
            "refuse a 1.05 MB prompt (max_prompt_bytes 1 MiB)", median(prompt["refuse_ms"]), "ms",
            peer="llama.cpp tokenizing it", peer_value=median(prompt["tokenize_ms"]),
            target="<= 0.01", on="ratio",
        ),
        figure("log line, text format", logs["text"], "us"),
        figure("log line, json format", logs["json"], "us",
               peer="text format", peer_value=logs["text"]),
    ]  # fmt: skip
    print(figures_table(figures))
    write_json(
        args.json,
        {"machine": machine(), "rpc_us": rpc, "prompt": prompt, "log_line_us": logs},
        figures,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
