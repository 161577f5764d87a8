"""Tool-call overhead: through gRPC (a real daemon, a child process) and in-process, and
a WebAssembly tool against the same tool written in Python.

    python tests/bench/tools.py [--calls 500] [--json out.json]

Measured in one run, on the same machine state:
- `calculator` through gRPC ExecuteTool (target: p50 <= 2 ms), against the executor
  in-process (validation, worker thread, serialisation) and the bare tool function;
- `word_count` as a WebAssembly module (the example in rustaid/tools/examples, compiled
  at start) and as a Python drop-in plugin, both through gRPC and in-process.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rustaid.api.v1 import tools_pb2, tools_pb2_grpc
from rustaid.config import load_settings
from rustaid.providers import Tool
from rustaid.testing.daemon import run_daemon
from rustaid.tools.calculator import Calculator
from rustaid.tools.config import WasmLimits
from rustaid.tools.registry import ToolRegistry
from rustaid.tools.wasm import load_file
from tests.bench.common import (
    ForeignLoad,
    child_env,
    figure,
    machine,
    parse_args,
    table,
    write_json,
)

EXAMPLE = Path(__file__).resolve().parents[2] / "rustaid" / "tools" / "examples" / "word_count.wat"
TEXT = "the quick brown fox jumps over the lazy dog " * 4

PY_WORD_COUNT = """\
from rustaid.hookspecs import hookimpl
from rustaid.providers import Tool


class PyWordCount(Tool):
    name = "py_word_count"
    description = "Counts the words and characters of a text (Python)."
    parameters_schema = {
        "type": "object",
        "properties": {"text": {"type": "string", "maxLength": 10000}},
        "required": ["text"],
        "additionalProperties": False,
    }

    def run(self, arguments):
        text = arguments["text"]
        return {"words": len(text.split()), "characters": len(text)}


@hookimpl
def register_tools(register):
    register(PyWordCount())
"""


def percentiles(samples: list[float]) -> dict[str, float]:
    ms = sorted(s * 1000 for s in samples)
    q = statistics.quantiles(ms, n=100)
    return {"p50_ms": statistics.median(ms), "p90_ms": q[89], "p99_ms": q[98], "n": len(ms)}


def timed(fn: Callable[[], Any], calls: int, warmup: int = 20) -> list[float]:
    for _ in range(warmup):
        fn()
    out = []
    for _ in range(calls):
        t0 = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t0)
    return out


def grpc_calls(address: str, calls: int) -> dict[str, list[float]]:
    channel = grpc.insecure_channel(address)
    stub = tools_pb2_grpc.ToolsServiceStub(channel)

    def call(name: str, args: dict[str, Any]) -> Callable[[], None]:
        request = tools_pb2.ExecuteToolRequest(name=name, arguments_json=json.dumps(args))

        def run() -> None:
            r = stub.ExecuteTool(request)
            assert r.status == tools_pb2.TOOL_CALL_STATUS_OK, r.error

        return run

    out = {
        "calculator": timed(
            call("calculator", {"expression": "(2 + 3) * 4 ^ 2 / sqrt(16)"}), calls
        ),
        "word_count (wasm)": timed(call("word_count", {"text": TEXT}), calls),
        "py_word_count (python)": timed(call("py_word_count", {"text": TEXT}), calls),
    }
    channel.close()
    return out


def in_process(wasm_path: Path, calls: int, data_dir: Path) -> dict[str, list[float]]:
    settings = load_settings(data_dir=data_dir, system=False, environ={})
    namespace: dict[str, Any] = {}
    exec(compile(PY_WORD_COUNT, "py_word_count", "exec"), namespace)
    py_tool: Tool = namespace["PyWordCount"]()
    calculator = Calculator()
    registry = ToolRegistry(
        settings=lambda: settings,
        plugin_tools=lambda: {"calculator": calculator, "py_word_count": py_tool},
    )
    plugin = load_file(wasm_path)
    limits = WasmLimits()
    args = json.dumps({"text": TEXT}).encode()
    out: dict[str, list[float]] = {
        "calculator: the function alone": timed(
            lambda: calculator.run({"expression": "(2 + 3) * 4 ^ 2 / sqrt(16)"}), calls
        ),
        "python word count: the function alone": timed(lambda: py_tool.run({"text": TEXT}), calls),
        "wasm word count: instantiate + call": timed(
            lambda: plugin.invoke(
                "tool_call", (b"word_count", args), limits, time.monotonic() + 5, 1 << 20
            ),
            calls,
        ),
    }

    async def executor() -> None:
        await registry.start()
        for name, args_ in (
            ("calculator", '{"expression": "(2 + 3) * 4 ^ 2 / sqrt(16)"}'),
            ("py_word_count", json.dumps({"text": TEXT})),
        ):
            samples = []
            for i in range(calls + 20):
                t0 = time.perf_counter()
                r = await registry.execute(name, args_)
                if i >= 20:
                    samples.append(time.perf_counter() - t0)
                assert r.ok, r.error
            out[f"{name}: in-process executor"] = samples

    asyncio.run(executor())
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=500)
    parser.add_argument("--json", metavar="FILE")
    args = parse_args(parser, quick={"calls": 50})
    import wasmtime

    with tempfile.TemporaryDirectory(prefix="rustaid-bench-tools-") as tmp:
        data = Path(tmp)
        plugins = data / "plugins"
        plugins.mkdir(mode=0o755)
        data.chmod(0o755)
        wasm = plugins / "word_count.wasm"
        wasm.write_bytes(wasmtime.wat2wasm(EXAMPLE.read_text()))
        wasm.chmod(0o644)
        py = plugins / "py_word_count.py"
        py.write_text(PY_WORD_COUNT)
        py.chmod(0o644)
        local = in_process(wasm, args.calls, data / "local")
        with run_daemon(data, env=child_env()) as daemon:
            load = ForeignLoad(daemon.proc.pid)
            load.start()
            remote = grpc_calls(daemon.address, args.calls)
            foreign = load.stop()
    results = {name: percentiles(s) for name, s in {**remote, **local}.items()}
    rows = [[name, r["p50_ms"], r["p90_ms"], r["p99_ms"]] for name, r in results.items()]
    print(table(["call", "p50 ms", "p90 ms", "p99 ms"], rows))
    calc = results["calculator"]["p50_ms"]
    wasm_grpc = results["word_count (wasm)"]["p50_ms"]
    py_grpc = results["py_word_count (python)"]["p50_ms"]
    wasm_local = results["wasm word count: instantiate + call"]["p50_ms"]
    py_local = results["python word count: the function alone"]["p50_ms"]
    print(
        f"\ncalculator through gRPC: p50 {calc:.2f} ms (target <= 2 ms: "
        f"{'met' if calc <= 2 else 'NOT met'})\n"
        f"WASM vs Python tool through gRPC: {wasm_grpc:.2f} vs {py_grpc:.2f} ms p50 "
        f"(+{wasm_grpc - py_grpc:.2f} ms)\n"
        f"WASM call in-process (fresh instance each call): {wasm_local:.3f} ms vs the Python "
        f"function {py_local:.4f} ms\n"
        f"other processes kept {foreign:.2f} cores busy during the gRPC runs"
    )
    write_json(
        args.json,
        {"machine": machine(), "calls": args.calls, "results": results, "foreign_cores": foreign},
        figures(results),
    )
    return 0


def figures(results: dict[str, dict[str, float]]) -> list[dict[str, Any]]:
    """The figures of docs/benchmarks.md: gRPC against in-process, WASM against Python."""
    p50 = {name: r["p50_ms"] for name, r in results.items()}
    return [
        figure("calculator through gRPC, p50", p50["calculator"], "ms",
               peer="the in-process executor", peer_value=p50["calculator: in-process executor"],
               target="<= 2"),
        figure("word count as WASM through gRPC, p50", p50["word_count (wasm)"], "ms",
               peer="the same tool in Python through gRPC",
               peer_value=p50["py_word_count (python)"]),
        figure("WASM word count in-process (fresh instance), p50",
               p50["wasm word count: instantiate + call"], "ms",
               peer="the Python function alone",
               peer_value=p50["python word count: the function alone"]),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
