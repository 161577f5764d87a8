"""What the peer-credential relay costs: the same calls to two daemons, one serving its
Unix socket through the relay (peer_credentials on), one with gRPC on the socket itself
(peer_credentials off), interleaved call by call so the machine's noise hits both.

    .venv/bin/python tests/bench/auth.py [--calls 200] [--gen-rounds 6] [--tokens 128]
                                         [--threads 2] [--json out.json]

- health: grpc.health.v1 Check round trip (the smallest call, no authorisation work);
- tokenize: a short Tokenize (the whole interceptor chain, a user-level call);
- bulk: an 8 MB Generate request the daemon refuses at once (larger than
  max_prompt_bytes): the copying cost, and the daemon's CPU time per relayed MB;
- generate: time to first token of a 2-token GenerateStream whose prompt llama.cpp has
  cached (the per-request overhead, little noise: --calls/4 per arm); then
  GenerateStream of --tokens tokens on a SmolLM2-135M-shaped synthetic model
  with --threads threads: time to first token and tokens/s (the product targets for
  the whole daemon are tokens/s >= 0.97 of llama-cpp-python and TTFT overhead <= 5 ms;
  tests/bench/generate.py measures those, run it with RUSTAID_PEER_CREDENTIALS=1 and 0).
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common


@contextlib.contextmanager
def daemon(model: Path, peer_credentials: bool, threads: int) -> Iterator[Any]:
    from rustaid.testing.daemon import run_daemon

    with tempfile.TemporaryDirectory(prefix="rustaid-bench-auth-") as tmp:
        data_dir = Path(tmp)
        (data_dir / "models").mkdir()
        (data_dir / "models" / model.name).symlink_to(model)
        env = common.child_env(
            RUSTAID_THREADS=str(threads),
            RUSTAID_LOG_LEVEL="warning",
            RUSTAID_PEER_CREDENTIALS="1" if peer_credentials else "0",
            RUSTAID_MAX_REQUESTS_PER_CLIENT="0",
        )
        with run_daemon(data_dir, env=env) as d:
            yield d


def _cpu(pid: int) -> float:
    import psutil

    t = psutil.Process(pid).cpu_times()
    return float(t.user + t.system)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--calls", type=int, default=200, help="health/tokenize calls per arm")
    parser.add_argument("--bulk", type=int, default=10, help="bulk calls per arm")
    parser.add_argument("--gen-rounds", type=int, default=6, help="generations per arm")
    parser.add_argument("--tokens", type=int, default=128)
    parser.add_argument("--threads", type=int, default=2)
    args = common.parse_args(
        parser, argv, quick={"calls": 20, "bulk": 2, "gen_rounds": 2, "tokens": 16}
    )

    import grpc
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc
    from rustaid.core.registry import model_id_for
    from rustaid.testing.synthetic import SMOLLM2_135M

    model = common.synthetic_model(SMOLLM2_135M, "smollm2-135m-synthetic", "Q8_0")
    model_id = model_id_for(Path(model.name))
    arms = ("relay", "direct")
    bulk_text = "x" * 8_000_000
    samples: dict[str, dict[str, list[float]]] = {a: {} for a in arms}

    def add(arm: str, key: str, value: float) -> None:
        samples[arm].setdefault(key, []).append(value)

    with (
        daemon(model, True, args.threads) as relayed,
        daemon(model, False, args.threads) as direct,
    ):
        daemons = {"relay": relayed, "direct": direct}
        channels = {a: grpc.insecure_channel(d.address) for a, d in daemons.items()}
        health = {a: health_pb2_grpc.HealthStub(c) for a, c in channels.items()}
        gen = {a: generate_pb2_grpc.GenerateServiceStub(c) for a, c in channels.items()}

        def timed(fn: Callable[[], Any]) -> float:
            t0 = time.perf_counter()
            fn()
            return (time.perf_counter() - t0) * 1000

        def stream(arm: str, max_tokens: int, word: str) -> tuple[float, float, int]:
            request = generate_pb2.GenerateStreamRequest(
                model_id=model_id,
                prompt=f"{word} user said to the assistant: tell me about the daemon",
                params=common_pb2.GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=42),
            )
            stamps: list[float] = []
            t0 = time.perf_counter()
            tokens = 0
            for r in gen[arm].GenerateStream(request, timeout=300):
                if r.HasField("chunk") and r.chunk.text:
                    stamps.append(time.perf_counter())
                elif r.HasField("done"):
                    tokens = r.done.usage.completion_tokens
            ttft = (stamps[0] - t0) * 1000
            rate = (tokens - 1) / (stamps[-1] - stamps[0]) if tokens > 1 else float("nan")
            return ttft, rate, tokens

        # Warm-up: connections, model loads, page cache.
        for arm in arms:
            health[arm].Check(health_pb2.HealthCheckRequest(), timeout=30)
            stream(arm, 4, "hello")
        words = ("hello", "what", "how", "why", "when", "where", "who", "which", "yes", "no")
        for i in range(args.calls):
            order = arms if i % 2 else arms[::-1]
            for arm in order:
                add(arm, "health_ms", timed(lambda a=arm: health[a].Check(
                    health_pb2.HealthCheckRequest(), timeout=30)))  # fmt: skip
            for arm in order:
                request = generate_pb2.TokenizeRequest(model_id=model_id, text="hello world")
                add(arm, "tokenize_ms", timed(lambda a=arm, r=request: gen[a].Tokenize(
                    r, timeout=30)))  # fmt: skip
        big = generate_pb2.GenerateRequest(model_id=model_id, prompt=bulk_text)
        moved_mb = big.ByteSize() / 1e6

        def refused(arm: str) -> None:
            try:
                gen[arm].Generate(big, timeout=120)
            except grpc.RpcError as e:
                if e.code() != grpc.StatusCode.INVALID_ARGUMENT:  # type: ignore[attr-defined]
                    raise
            else:
                raise RuntimeError("the daemon took an 8 MB prompt: raise max_prompt_bytes?")

        cpu = dict.fromkeys(arms, 0.0)  # summed: one call is below the clock's tick
        for i in range(args.bulk):
            for arm in arms if i % 2 else arms[::-1]:
                pid = daemons[arm].proc.pid
                c0 = _cpu(pid)
                add(arm, "bulk_ms", timed(lambda a=arm: refused(a)))
                cpu[arm] += _cpu(pid) - c0
        for arm in arms:
            add(arm, "bulk_cpu_s_per_mb", cpu[arm] / (moved_mb * args.bulk))
        # Time to first token with the prompt already evaluated (llama.cpp's prefix
        # cache): what is left is the per-request overhead, with little noise.
        for i in range(args.calls // 4):
            for arm in arms if i % 2 else arms[::-1]:
                add(arm, "ttft_cached_ms", stream(arm, 2, "hello")[0])
        for i in range(args.gen_rounds):
            for arm in arms if i % 2 else arms[::-1]:
                ttft, rate, _ = stream(arm, args.tokens, words[i % len(words)])
                add(arm, "ttft_ms", ttft)
                add(arm, "tokens_per_s", rate)
        for c in channels.values():
            c.close()

    med = {a: {k: statistics.median(v) for k, v in samples[a].items()} for a in arms}
    figures = [
        common.figure(
            "health check p50 through the relay", med["relay"]["health_ms"], "ms",
            peer="gRPC on the socket", peer_value=med["direct"]["health_ms"],
        ),
        common.figure(
            "Tokenize (short) p50 through the relay", med["relay"]["tokenize_ms"], "ms",
            peer="gRPC on the socket", peer_value=med["direct"]["tokenize_ms"],
        ),
        common.figure(
            f"{moved_mb:.0f} MB request p50 through the relay",
            med["relay"]["bulk_ms"], "ms",
            peer="gRPC on the socket", peer_value=med["direct"]["bulk_ms"],
        ),
        common.figure(
            "daemon CPU per MB moved, relay", med["relay"]["bulk_cpu_s_per_mb"] * 1000, "ms/MB",
            peer="gRPC on the socket", peer_value=med["direct"]["bulk_cpu_s_per_mb"] * 1000,
        ),
        common.figure(
            "time to first token through the relay", med["relay"]["ttft_ms"], "ms",
            peer="gRPC on the socket", peer_value=med["direct"]["ttft_ms"],
            target="<= 1.0", on="difference",
            note="the relay's share of the 5 ms TTFT overhead budget",
        ),
        common.figure(
            "time to first token, prompt cached, through the relay",
            med["relay"]["ttft_cached_ms"], "ms",
            peer="gRPC on the socket", peer_value=med["direct"]["ttft_cached_ms"],
            target="<= 1.0", on="difference",
        ),
        common.figure(
            "tokens/s through the relay", med["relay"]["tokens_per_s"], "tok/s",
            peer="gRPC on the socket", peer_value=med["direct"]["tokens_per_s"],
            target=">= 0.99", on="ratio",
        ),
    ]  # fmt: skip
    print(common.figures_table(figures))
    common.write_json(
        args.json,
        {
            "settings": vars(args),
            "moved_mb_per_bulk_call": moved_mb,
            "medians": med,
            "samples": samples,
        },
        figures,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
