"""Streamed chat through the HTTP API against gRPC, llama-cpp-python called directly and
llama-cpp-python's own OpenAI-compatible server, in one run, on the same model.

    .venv/bin/python tests/bench/http.py [--tokens 96] [--rounds 5] [--threads 1]
                                         [--json out.json]

Model: the real SmolLM2-135M-Instruct (Q4_1, `make real-model`), context 2048 and T
threads in every arm. Arms, one at a time in interleaved rounds (the order rotates
every round so that drift in the machine's load hits every arm alike):

- direct: `Llama.create_chat_completion(messages, stream=True)` in this process;
- grpc: a `rustaid serve` child (RUSTAID_THREADS=T), `ChatStream` on its Unix socket;
- http: the same daemon, `POST /v1/chat/completions` with `stream: true` (httpx,
  server-sent events read as they arrive);
- llama_cpp.server: `python -m llama_cpp.server --n_threads T --n_ctx 2048`, the same
  request on its /v1/chat/completions.

Every arm gets the same message (its first word changes with every request, so that no
arm skips the prompt evaluation: the grpc and http arms share the daemon's model),
max_tokens, temperature 0 and seed.
TTFT: from the call to the first chunk with text. Tokens/s: (chunks - 1) / (time from
the first to the last chunk with text); each arm streams one token per chunk. Targets:
http/direct tokens/s >= 0.97, http TTFT - direct TTFT <= 5 ms, and http ahead of
llama_cpp.server in tokens/s.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable,
    # in place of this file's folder, where this file would hide the standard `http`
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from tests.bench import common

N_CTX = 2048
SEED = 42
WORDS = ("Tell", "Write", "Give", "Share", "Offer", "Compose", "Draft", "Create", "Invent")
TARGET_RATIO = 0.97
TARGET_TTFT_OVERHEAD_MS = 5.0

Sample = dict[str, float]


def messages(round_no: int) -> list[dict[str, str]]:
    word = WORDS[round_no % len(WORDS)]  # round_no: round * 4 + the arm's index
    return [{"role": "user", "content": f"{word} a long story about a dragon and a knight."}]


def _rates(stamps: list[float], t0: float) -> Sample:
    if len(stamps) < 2:
        return {"ttft_ms": float("nan"), "tps": float("nan"), "tokens": float(len(stamps))}
    return {
        "ttft_ms": (stamps[0] - t0) * 1000,
        "tps": (len(stamps) - 1) / (stamps[-1] - stamps[0]),
        "tokens": float(len(stamps)),
    }


def direct_arm(model: Path, threads: int) -> Callable[[int, int], Sample]:
    from llama_cpp import Llama

    llm = Llama(str(model), n_ctx=N_CTX, n_threads=threads, n_threads_batch=threads, verbose=False)

    def run(round_no: int, tokens: int) -> Sample:
        t0 = time.perf_counter()
        stamps = []
        for chunk in llm.create_chat_completion(
            messages(round_no), max_tokens=tokens, temperature=0, seed=SEED, stream=True
        ):
            if chunk["choices"][0]["delta"].get("content"):  # type: ignore[index,union-attr]
                stamps.append(time.perf_counter())
        return _rates(stamps, t0)

    return run


def sse_arm(url: str) -> Callable[[int, int], Sample]:
    import httpx

    client = httpx.Client(timeout=300)

    def run(round_no: int, tokens: int) -> Sample:
        body = {
            "model": "smollm2-135m-instruct.q4_1",
            "messages": messages(round_no),
            "max_tokens": tokens,
            "temperature": 0,
            "seed": SEED,
            "stream": True,
        }
        t0 = time.perf_counter()
        stamps = []
        with client.stream("POST", url + "/v1/chat/completions", json=body) as reply:
            reply.raise_for_status()
            for line in reply.iter_lines():
                if not line.startswith("data: {"):
                    continue
                choices = json.loads(line[6:]).get("choices") or [{}]
                if (choices[0].get("delta") or {}).get("content"):
                    stamps.append(time.perf_counter())
        return _rates(stamps, t0)

    return run


def grpc_arm(address: str) -> Callable[[int, int], Sample]:
    import grpc

    from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc

    stub = generate_pb2_grpc.GenerateServiceStub(grpc.insecure_channel(address))

    def run(round_no: int, tokens: int) -> Sample:
        request = generate_pb2.ChatStreamRequest(
            model_id="smollm2-135m-instruct.q4_1",
            messages=[
                generate_pb2.ChatMessage(role=generate_pb2.ROLE_USER, content=m["content"])
                for m in messages(round_no)
            ],
            params=common_pb2.GenerationParams(max_tokens=tokens, temperature=0, seed=SEED),
        )
        t0 = time.perf_counter()
        stamps = []
        for r in stub.ChatStream(request, timeout=300):
            if r.HasField("chunk") and r.chunk.text:
                stamps.append(time.perf_counter())
        return _rates(stamps, t0)

    return run


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def http_server(cmd: list[str], port: int, ready_path: str, name: str) -> Iterator[str]:
    """Start a server process and yield its URL once `ready_path` answers 200."""
    import httpx

    with tempfile.TemporaryFile() as log:
        proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
        try:
            url = f"http://127.0.0.1:{port}"
            deadline = time.monotonic() + 120
            while True:
                with contextlib.suppress(httpx.HTTPError):
                    if httpx.get(url + ready_path, timeout=2).status_code == 200:
                        break
                if proc.poll() is not None or time.monotonic() > deadline:
                    log.seek(0)
                    raise RuntimeError(f"{name} did not start: {log.read()[-2000:]!r}")
                time.sleep(0.2)
            yield url
        finally:
            proc.terminate()
            proc.wait(30)


@contextlib.contextmanager
def llama_cpp_server(model: Path, threads: int) -> Iterator[str]:
    port = _free_port()
    cmd = [sys.executable, "-m", "llama_cpp.server", "--model", str(model),
           "--n_threads", str(threads), "--n_threads_batch", str(threads),
           "--n_ctx", str(N_CTX), "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    with http_server(cmd, port, "/v1/models", "llama_cpp.server") as url:
        yield url


@contextlib.contextmanager
def daemon(model: Path, threads: int) -> Iterator[Any]:
    from rustaid.testing import real_model
    from rustaid.testing.daemon import run_daemon

    with tempfile.TemporaryDirectory(prefix="rustaid-bench-http-") as tmp:
        data = Path(tmp)
        real_model.place(model, data / "models")
        env = common.child_env(
            RUSTAID_THREADS=str(threads),
            RUSTAID_MAX_CONTEXT_LENGTH=str(N_CTX),
            RUSTAID_HTTP_LISTEN="127.0.0.1:0",
        )
        with run_daemon(data, env=env) as d:
            yield d


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=96, help="max_tokens per request")
    parser.add_argument("--rounds", type=int, default=5, help="interleaved rounds")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads, every arm")
    args = common.parse_args(parser, argv, quick={"tokens": 24, "rounds": 2})

    from rustaid.testing import real_model

    model = real_model.fetch(quiet=True)
    info: dict[str, Any] = {"machine_start": common.machine()}
    arm_names = ("direct", "grpc", "http", "llama_cpp.server")
    samples: dict[str, list[Sample]] = {name: [] for name in arm_names}
    with daemon(model, args.threads) as d, llama_cpp_server(model, args.threads) as peer:
        arms = {
            "direct": direct_arm(model, args.threads),
            "grpc": grpc_arm(d.address),
            "http": sse_arm(d.http_url()),
            "llama_cpp.server": sse_arm(peer),
        }
        for run in arms.values():  # warm-up: loads the model, fills the caches
            run(len(WORDS) - 1, 4)
        names = list(arms)
        for r in range(args.rounds):
            order = names[r % len(names) :] + names[: r % len(names)]
            for name in order:
                # A word of its own per arm and round: the grpc and http arms share the
                # daemon's model, whose prompt-prefix reuse would skip a repeated prompt.
                samples[name].append(arms[name](r * len(names) + names.index(name), args.tokens))
            row = ", ".join(f"{n} {samples[n][-1]['tps']:.1f} tok/s" for n in names)
            print(f"  round {r + 1}: {row}", file=sys.stderr)

    med = {
        name: {k: common.median([s[k] for s in runs]) for k in ("ttft_ms", "tps", "tokens")}
        for name, runs in samples.items()
    }
    rows = [
        [name, f"{m['tps']:.1f}", f"{m['tps'] / med['direct']['tps']:.3f}", f"{m['ttft_ms']:.1f}",
         f"{m['ttft_ms'] - med['direct']['ttft_ms']:+.1f}", f"{m['tokens']:.0f}"]
        for name, m in med.items()
    ]  # fmt: skip
    print(f"\nstreamed chat, SmolLM2-135M Q4_1, {args.threads} thread(s), {args.tokens} tokens, "
          f"{args.rounds} rounds (medians)")  # fmt: skip
    print(common.table(["arm", "tokens/s", "vs direct", "TTFT ms", "vs direct", "chunks"], rows))
    http, direct, peer_m = med["http"], med["direct"], med["llama_cpp.server"]
    figures = [
        common.figure("HTTP streamed tokens/s", http["tps"], "tok/s", peer="llama-cpp-python",
                      peer_value=direct["tps"], target=f">= {TARGET_RATIO}", on="ratio"),
        common.figure("HTTP time to first token", http["ttft_ms"], "ms", peer="llama-cpp-python",
                      peer_value=direct["ttft_ms"], target=f"<= {TARGET_TTFT_OVERHEAD_MS}",
                      on="difference"),
        common.figure("HTTP streamed tokens/s", http["tps"], "tok/s", peer="llama_cpp.server",
                      peer_value=peer_m["tps"], target=">= 1.0", on="ratio"),
        common.figure("HTTP time to first token", http["ttft_ms"], "ms",
                      peer="llama_cpp.server", peer_value=peer_m["ttft_ms"]),
        common.figure("gRPC streamed tokens/s", med["grpc"]["tps"], "tok/s",
                      peer="llama-cpp-python", peer_value=direct["tps"]),
    ]  # fmt: skip
    print()
    print(common.figures_table(figures))
    result = {
        "benchmark": "http",
        "args": vars(args),
        "medians": med,
        "samples": samples,
        "info": info | {"machine_end": common.machine()},
    }
    common.write_json(args.json, result, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
