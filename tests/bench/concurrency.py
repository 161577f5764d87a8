"""Many clients at once: aggregate tokens/s and time to first token with 1, 4 and 8
concurrent streamed chats on the real SmolLM2-135M-Instruct (Q4_1), in one run.

    .venv/bin/python tests/bench/concurrency.py [--clients 1,4,8] [--tokens 128]
                                                [--rounds 3] [--threads 1] [--quick]
                                                [--llama-server PATH]

Arms, each an OpenAI-compatible server on loopback, sent the same requests over
`POST /v1/chat/completions` with `stream: true` (httpx, one thread per client):

- rustaid: a `rustaid serve` child with `parallel` = the most clients measured
  (continuous batching: every client's sequence decoded in one batch);
- rustaid parallel=1: the same daemon serving one request at a time (the others queue);
- llama_cpp.server: `python -m llama_cpp.server` (llama-cpp-python's own server, which
  serves one request at a time);
- llama-server (with `--llama-server PATH`): llama.cpp's own server with `-np` = the
  most clients measured and `-c` = that many times the context, so each slot has the
  same context as rustaid's sequences. Built from the llama.cpp sources that
  llama-cpp-python's sdist vendors (the same llama.cpp as the daemon's) with the same
  `GGML_NATIVE=OFF` as `make setup` builds the daemon's, ~15 min on two cores:

      pip download --no-deps --no-binary :all: llama-cpp-python==0.3.36 -d /tmp/lsrv
      tar xzf /tmp/lsrv/llama_cpp_python-0.3.36.tar.gz -C /tmp/lsrv
      cd /tmp/lsrv/llama_cpp_python-0.3.36/vendor/llama.cpp
      cmake -S . -B build -G Ninja -DCMAKE_BUILD_TYPE=Release -DLLAMA_CURL=OFF \
            -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_SERVER=ON \
            -DGGML_NATIVE=OFF
      cmake --build build --target llama-server   # -> build/bin/llama-server

Every client asks its own question, temperature 0, the same max_tokens. Each round's
questions open with the round's own number, so no server reuses more of an earlier
prompt than the chat template's opening: llama-server keeps the prompts it has evaluated
in memory, and when the 8-client rounds repeated the 4-client rounds' questions it read
half of its prompts from there. Every arm gets the same questions. For one round of N
clients, all start together: aggregate tokens/s is every client's text chunks (one token
each) over the wall time from the start to the last chunk; time to first token (TTFT) is
each client's from the start to its first chunk with text, reported as the median and
the worst. Rounds alternate the arms' order; the figures are medians over the rounds.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path[0] = str(Path(__file__).resolve().parents[2])

from tests.bench import common
from tests.bench.http import N_CTX, _free_port, http_server, llama_cpp_server

MODEL_ID = "smollm2-135m-instruct.q4_1"
WORDS = ("Tell", "Write", "Give", "Share", "Offer", "Compose", "Draft", "Create", "Invent")
TOPICS = ("a dragon", "a lighthouse", "the sea", "a robot", "a garden", "a storm", "a cat",
          "a mountain", "a city", "a train", "a violin", "a forest")  # fmt: skip

Round = dict[str, float]


def question(round_no: int, client: int) -> str:
    word = WORDS[round_no % len(WORDS)]
    return f"({round_no}) {word} a long story about {TOPICS[client % len(TOPICS)]} and a knight."


def stream_chat(client: Any, url: str, content: str, tokens: int, t0: float) -> list[float]:
    """The times (from t0) at which text chunks arrived."""
    body = {
        "model": MODEL_ID,
        "messages": [{"role": "user", "content": content}],
        "max_tokens": tokens,
        "temperature": 0,
        "stream": True,
    }
    stamps: list[float] = []
    with client.stream("POST", url + "/v1/chat/completions", json=body) as reply:
        reply.raise_for_status()
        for line in reply.iter_lines():
            if not line.startswith("data: {"):
                continue
            choices = json.loads(line[6:]).get("choices") or [{}]
            if (choices[0].get("delta") or {}).get("content"):
                stamps.append(time.perf_counter() - t0)
    return stamps


def arm(url: str) -> Callable[[int, int, int], Round]:
    import httpx

    clients = [httpx.Client(timeout=600) for _ in range(16)]

    def run(round_no: int, n: int, tokens: int) -> Round:
        results: list[list[float]] = [[] for _ in range(n)]
        errors: list[BaseException] = []
        start = threading.Barrier(n + 1)
        t0 = 0.0

        def one(i: int) -> None:
            start.wait()
            try:
                results[i] = stream_chat(clients[i], url, question(round_no, i), tokens, t0)
            except BaseException as e:  # reported below
                errors.append(e)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        t0 = time.perf_counter()
        start.wait()
        for t in threads:
            t.join()
        if errors:
            raise errors[0]
        ttfts = [r[0] * 1000 for r in results if r]
        chunks = sum(len(r) for r in results)
        wall = max(r[-1] for r in results if r)
        return {
            "aggregate_tps": chunks / wall,
            "ttft_median_ms": statistics.median(ttfts),
            "ttft_worst_ms": max(ttfts),
            "chunks": float(chunks),
        }

    return run


@contextlib.contextmanager
def llama_server(binary: Path, model: Path, threads: int, slots: int) -> Iterator[str]:
    port = _free_port()
    cmd = [str(binary), "-m", str(model), "-t", str(threads), "-tb", str(threads),
           "-np", str(slots), "-c", str(N_CTX * slots), "--host", "127.0.0.1",
           "--port", str(port)]  # fmt: skip
    with http_server(cmd, port, "/health", "llama-server") as url:
        yield url


@contextlib.contextmanager
def rustaid(model: Path, threads: int, parallel: int) -> Iterator[str]:
    from rustaid.testing import real_model
    from rustaid.testing.daemon import run_daemon

    with tempfile.TemporaryDirectory(prefix="rustaid-bench-concurrency-") as tmp:
        data = Path(tmp)
        real_model.place(model, data / "models")
        env = common.child_env(
            RUSTAID_THREADS=str(threads),
            RUSTAID_MAX_CONTEXT_LENGTH=str(N_CTX),
            RUSTAID_HTTP_LISTEN="127.0.0.1:0",
            RUSTAID_PARALLEL=str(parallel),
            RUSTAID_MAX_REQUESTS_PER_CLIENT="0",
        )
        with run_daemon(data, env=env) as d:
            yield d.http_url()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--clients", default="1,4,8", help="client counts, comma-separated")
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per request")
    parser.add_argument("--rounds", type=int, default=3, help="rounds per client count")
    parser.add_argument("--threads", type=int, default=1, help="llama.cpp threads, every arm")
    parser.add_argument("--llama-server", type=Path, help="llama.cpp's llama-server binary")
    args = common.parse_args(parser, argv, quick={"tokens": 32, "rounds": 1})
    counts = [int(c) for c in args.clients.split(",")]

    from rustaid.testing import real_model

    model = real_model.fetch(quiet=True)
    info: dict[str, Any] = {"machine_start": common.machine()}
    names: tuple[str, ...] = ("rustaid", "rustaid parallel=1", "llama_cpp.server")
    if args.llama_server:
        names += ("llama-server",)
    samples: dict[str, dict[int, list[Round]]] = {a: {n: [] for n in counts} for a in names}
    with contextlib.ExitStack() as stack:
        urls = [
            stack.enter_context(rustaid(model, args.threads, max(counts))),
            stack.enter_context(rustaid(model, args.threads, 1)),
            stack.enter_context(llama_cpp_server(model, args.threads)),
        ]
        if args.llama_server:
            urls.append(
                stack.enter_context(
                    llama_server(args.llama_server, model, args.threads, max(counts))
                )
            )
        arms = {name: arm(url) for name, url in zip(names, urls, strict=True)}
        for run in arms.values():  # warm-up: loads the model
            run(10_000, 1, 4)
        for c, n in enumerate(counts):
            for r in range(args.rounds):
                k = r % len(names)
                order = list(names[k:] + names[:k])
                for name in order:
                    samples[name][n].append(arms[name](c * args.rounds + r, n, args.tokens))
                row = ", ".join(
                    f"{a} {samples[a][n][-1]['aggregate_tps']:.1f}"
                    f" ({samples[a][n][-1]['ttft_worst_ms']:.0f} ms)"
                    for a in names
                )
                print(f"  {n} clients, round {r + 1}: tok/s (worst TTFT) {row}", file=sys.stderr)

    med = {
        a: {
            n: {k: common.median([s[k] for s in runs]) for k in runs[0]} for n, runs in by_n.items()
        }
        for a, by_n in samples.items()
    }
    rows = []
    for n in counts:
        for a in names:
            m = med[a][n]
            rows.append([n, a, f"{m['aggregate_tps']:.1f}",
                         f"{m['aggregate_tps'] / med['llama_cpp.server'][n]['aggregate_tps']:.2f}",
                         f"{m['ttft_median_ms']:.0f}", f"{m['ttft_worst_ms']:.0f}"])  # fmt: skip
    print(f"\nconcurrent streamed chats, SmolLM2-135M Q4_1, {args.threads} thread(s), "
          f"{args.tokens} tokens each, {args.rounds} round(s) (medians)")  # fmt: skip
    print(common.table(["clients", "arm", "aggregate tok/s", "vs llama_cpp.server",
                        "TTFT median ms", "TTFT worst ms"], rows))  # fmt: skip
    figures = []
    for n in counts:
        ours, one, peer_m = med["rustaid"][n], med["rustaid parallel=1"][n], med[names[2]][n]
        if args.llama_server:
            ls = med["llama-server"][n]
            figures += [
                common.figure(f"{n} clients: aggregate tokens/s", ours["aggregate_tps"],
                              "tok/s", peer="llama-server", peer_value=ls["aggregate_tps"],
                              target=">= 1.0" if n > 1 else "", on="ratio"),
                common.figure(f"{n} clients: worst time to first token", ours["ttft_worst_ms"],
                              "ms", peer="llama-server", peer_value=ls["ttft_worst_ms"],
                              target="<= 1.25" if n > 1 else "", on="ratio"),
            ]  # fmt: skip
        figures += [
            common.figure(f"{n} clients: aggregate tokens/s", ours["aggregate_tps"], "tok/s",
                          peer="llama_cpp.server", peer_value=peer_m["aggregate_tps"],
                          target=">= 1.0" if n > 1 else "", on="ratio"),
            common.figure(f"{n} clients: aggregate tokens/s", ours["aggregate_tps"], "tok/s",
                          peer="rustaid parallel=1", peer_value=one["aggregate_tps"], on="ratio"),
            common.figure(f"{n} clients: worst time to first token", ours["ttft_worst_ms"], "ms",
                          peer="llama_cpp.server", peer_value=peer_m["ttft_worst_ms"],
                          on="ratio"),
            common.figure(f"{n} clients: median time to first token", ours["ttft_median_ms"],
                          "ms", peer="llama_cpp.server", peer_value=peer_m["ttft_median_ms"],
                          on="ratio"),
        ]  # fmt: skip
    print()
    print(common.figures_table(figures))
    result = {
        "benchmark": "concurrency",
        "args": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()},
        "medians": {a: {str(n): m for n, m in by_n.items()} for a, by_n in med.items()},
        "samples": {a: {str(n): s for n, s in by_n.items()} for a, by_n in samples.items()},
        "info": info | {"machine_end": common.machine()},
    }
    common.write_json(args.json, result, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
