"""The openai remote engine against a plain streaming client, on the same peer.

    .venv/bin/python tests/bench/remote.py [--tokens 64] [--runs 10] [--json out.json]

Starts `python -m llama_cpp.server` on 127.0.0.1 with a synthetic model (SmolLM2-135M
shapes, Q8_0: real llama.cpp speed), then, in interleaved rounds:

- plain: one `http.client` POST /v1/completions with `stream: true`, reading the SSE
  lines and decoding each JSON chunk: the least a streaming client can do;
- provider: `OpenAIModel.complete()` of rustaid's openai plugin, same request.

Reported: time to the first text and total time per request (median), and the ratio
provider / plain. Then the time from a cancel to complete() returning while the server
is silent (a loopback server that never answers), which does not depend on timeout_s.
"""

from __future__ import annotations

import argparse
import http.client
import json
import random
import statistics
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rustaid.builtin.openai_compat import OpenAICompatProvider
from rustaid.providers import CancelToken, GenerationParams, LoadOptions, ModelSpec
from rustaid.testing.synthetic import SMOLLM2_135M
from tests.bench.common import figure, machine, parse_args, synthetic_model, write_json
from tests.remote.loopback import LoopbackServer, free_port, silent


def plain(port: int, tokens: int) -> tuple[float, float]:
    t0 = time.perf_counter()
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
    body = {"prompt": "hello world", "max_tokens": tokens, "temperature": 0, "stream": True}
    conn.request("POST", "/v1/completions", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    first = 0.0
    for line in resp:
        if line.startswith(b"data: ") and line.strip() != b"data: [DONE]":
            chunk = json.loads(line[6:])
            if chunk["choices"][0]["text"] and not first:
                first = time.perf_counter()
    conn.close()
    return first - t0, time.perf_counter() - t0


def provider(model: object, tokens: int) -> tuple[float, float]:
    first = 0.0

    def emit(_: str) -> None:
        nonlocal first
        first = first or time.perf_counter()

    t0 = time.perf_counter()
    params = GenerationParams(max_tokens=tokens, temperature=0)
    model.complete("hello world", params, emit, CancelToken())  # type: ignore[attr-defined]
    return first - t0, time.perf_counter() - t0


def cancel_latency(n: int) -> list[float]:
    server = LoopbackServer()
    try:
        spec = ModelSpec(id="x", url=server.url("/v1"), options={"timeout_s": 60})
        model = OpenAICompatProvider().load(spec, LoadOptions())
        out = []
        for _ in range(n):
            server.then(silent())
            cancel = CancelToken()
            fired: list[float] = []

            def fire(cancel: CancelToken = cancel, fired: list[float] = fired) -> None:
                fired.append(time.perf_counter())
                cancel.cancel()

            timer = threading.Timer(random.uniform(0.1, 0.3), fire)
            timer.start()
            model.complete("hi", GenerationParams(), lambda _: None, cancel)
            out.append(time.perf_counter() - fired[0])
        return out
    finally:
        server.close()


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--runs", type=int, default=10)
    args = parse_args(ap, quick={"tokens": 16, "runs": 2})
    path = synthetic_model(SMOLLM2_135M, "smollm2-135m")
    port = free_port()
    proc = subprocess.Popen(
        [sys.executable, "-m", "llama_cpp.server", "--model", str(path), "--host", "127.0.0.1",
         "--port", str(port), "--n_ctx", "512"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 120
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/v1/models", timeout=2).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise SystemExit("llama_cpp.server did not start") from None
                time.sleep(0.2)
        spec = ModelSpec(id="peer", url=f"http://127.0.0.1:{port}/v1")
        model = OpenAICompatProvider().load(spec, LoadOptions())
        plain(port, 4), provider(model, 4)  # warm-up
        results: dict[str, list[tuple[float, float]]] = {"plain": [], "provider": []}
        for i in range(args.runs):
            arms = ["plain", "provider"] if i % 2 == 0 else ["provider", "plain"]
            for arm in arms:
                r = plain(port, args.tokens) if arm == "plain" else provider(model, args.tokens)
                results[arm].append(r)
    finally:
        proc.terminate()
        proc.wait()
    med = {a: (statistics.median(r[0] for r in v), statistics.median(r[1] for r in v))
           for a, v in results.items()}  # fmt: skip
    print(f"{args.tokens} tokens, {args.runs} runs, SmolLM2-135M shapes (Q8_0) on llama_cpp.server")
    print(f"{'arm':<10}{'first text ms':>15}{'total ms':>12}")
    for arm, (ttft, total) in med.items():
        print(f"{arm:<10}{ttft * 1000:>15.1f}{total * 1000:>12.1f}")
    print(
        f"provider / plain: first text x{med['provider'][0] / med['plain'][0]:.2f}, "
        f"total x{med['provider'][1] / med['plain'][1]:.2f}"
    )
    lat = cancel_latency(20)
    print(
        f"cancel while the server is silent -> return: median {statistics.median(lat) * 1000:.0f}"
        f" ms, max {max(lat) * 1000:.0f} ms (20 runs, timeout_s 60)"
    )
    write_json(
        args.json,
        {
            "machine": machine(),
            "tokens": args.tokens,
            "runs": args.runs,
            "seconds": {arm: [list(r) for r in v] for arm, v in results.items()},
            "cancel_s": lat,
        },
        [
            figure("first text through the provider (median)", med["provider"][0] * 1000, "ms",
                   peer="plain http.client SSE reader", peer_value=med["plain"][0] * 1000),
            figure(f"whole {args.tokens}-token request (median)", med["provider"][1] * 1000, "ms",
                   peer="plain http.client SSE reader", peer_value=med["plain"][1] * 1000),
            figure("cancel while the server is silent -> return (median)",
                   statistics.median(lat) * 1000, "ms", note=f"max {max(lat) * 1000:.0f} ms"),
        ],
    )  # fmt: skip


if __name__ == "__main__":
    main()
