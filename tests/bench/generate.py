"""Generation speed: the daemon (GenerateStream over its Unix socket) against
llama-cpp-python called directly, in one run, on the same model: a synthetic model with
SmolLM2-135M's shapes, then the real SmolLM2-135M-Instruct (Q4_1).

    .venv/bin/python tests/bench/generate.py [--tokens 128] [--runs 5] [--threads 2]
                                             [--model synthetic|real|both] [--json out.json]

Arms, run one at a time in interleaved rounds (the order alternates every round so
that drift in the machine's load hits every arm alike):

- direct: `Llama.create_completion(prompt, stream=True)` in this process, the way a
  plain llama-cpp-python user calls it; tokens are counted with a stopping criterion
  (cheap: it sees numpy views only);
- direct+lp: the same call with Python callbacks on every token (a logits_processor
  that counts samples, and a stopping criterion), to show what such callbacks cost;
- daemon: a `rustaid serve` child with RUSTAID_THREADS=T and the same context length,
  GenerateStream with the same prompt, max_tokens, temperature 0 and seed.

Time to first token (TTFT) is measured by the caller: from the call to the first chunk
carrying text. Tokens/s is (tokens - 1) / (time from the first to the last text chunk),
with the exact token count (the daemon's from its GenerationDone message). The first
word of the prompt changes every round, so llama-cpp-python's prompt-prefix cache cannot
skip the prompt evaluation; every arm has a Llama of its own and sees the same prompt in
a round, so every arm evaluates the same prompt tokens.

Prompt evaluation (~80 ms here) dominates that TTFT and is as noisy as the machine, so
each round also runs `--probe-reps` short requests (max_tokens 2) that repeat the round's
prompt: the prompt cache then leaves one token to evaluate, and the TTFT difference
between the arms is the daemon's per-request overhead, measured with less noise.

Long generations (e.g. `--tokens 2000 --no-lp-arm --power-profile performance`; the
daemon's default profile caps max_tokens at 1024): tokens/s is also reported over the
first and the last quarter of the text chunks (with this model and greedy decoding every
token is one chunk). A constant cost per token keeps the two close; work that grows
with the text generated so far (create_completion detokenizes the whole completion
after every token) makes the last quarter slower. Attention over a longer context also
costs a little more per token, in every arm alike.

The machine is shared: other processes' CPU use is measured during every sample
(/proc/stat minus this process and the daemon). Two llama.cpp threads on two cores slow
down many times over when anything else runs, so rounds where others used more than
--max-foreign cores are repeated (up to --budget seconds) and only clean rounds count;
when fewer than 3 are clean, all are used and the result is marked NOISY.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

MODEL_NAME = "smollm2-135m-synthetic"
SEED = 42
# Each a single token in the synthetic vocabulary: the first word of round i's prompt.
FIRST_WORDS = ("hello", "what", "how", "why", "when", "where", "who", "which", "yes", "no")
PROMPT_TAIL = (
    " user said to the assistant: can you answer this question about the rust daemon,"
    " and is the json value true or false? the answer was"
)
# The real model's: greedy SmolLM2 keeps counting, so every arm generates all max_tokens.
# With the tail above it ended after 3-4 tokens in some rounds, at a different token on
# each arm (a batching daemon decodes with flash attention, llama-cpp-python without),
# and tokens/s over 4 tokens meant nothing.
REAL_PROMPT_TAIL = " - count from one to one thousand, one number per line: 1, 2, 3,"
TARGET_RATIO = 0.97
TARGET_TTFT_OVERHEAD_MS = 5.0


def prompt_for(round_no: int, tail: str = PROMPT_TAIL) -> str:
    return FIRST_WORDS[round_no % len(FIRST_WORDS)] + tail


@dataclass
class Sample:
    arm: str
    round: int
    ttft_ms: float
    tokens: int
    gen_s: float
    tokens_per_s: float
    total_ms: float
    text: str = field(repr=False, default="")
    server: dict[str, Any] = field(default_factory=dict)
    foreign_cores: float = 0.0
    # Tokens/s over the first and the last quarter of the text chunks.
    first_quarter_tokens_per_s: float = float("nan")
    last_quarter_tokens_per_s: float = float("nan")


def _quarter_rates(stamps: list[float]) -> tuple[float, float]:
    q = len(stamps) // 4
    if q < 2 or stamps[q - 1] <= stamps[0] or stamps[-1] <= stamps[-q]:
        return float("nan"), float("nan")
    return (q - 1) / (stamps[q - 1] - stamps[0]), (q - 1) / (stamps[-1] - stamps[-q])


def _sample(
    arm: str,
    round_no: int,
    t0: float,
    stamps: list[float],
    tokens: int,
    t_end: float,
    text: str,
    server: dict[str, Any] | None = None,
) -> Sample:
    if not stamps:
        raise RuntimeError(f"{arm}: the generation produced no text")
    gen_s = stamps[-1] - stamps[0]
    tps = (tokens - 1) / gen_s if gen_s > 0 and tokens > 1 else float("nan")
    first, last = _quarter_rates(stamps)
    return Sample(
        arm,
        round_no,
        (stamps[0] - t0) * 1000,
        tokens,
        gen_s,
        tps,
        (t_end - t0) * 1000,
        text,
        server or {},
        first_quarter_tokens_per_s=first,
        last_quarter_tokens_per_s=last,
    )


# -- direct -------------------------------------------------------------------------------


class Direct:
    def __init__(self, model: Path, n_ctx: int, threads: int, tail: str) -> None:
        import llama_cpp

        self.llama_cpp = llama_cpp
        self.tail = tail
        self.llm = llama_cpp.Llama(
            model_path=str(model),
            n_ctx=n_ctx,
            n_threads=threads,
            n_threads_batch=threads,
            n_batch=512,
            verbose=False,
        )

    def prompt_tokens(self, prompt: str) -> int:
        return len(self.llm.tokenize(prompt.encode(), add_bos=True, special=True))

    def run(self, round_no: int, max_tokens: int, with_lp: bool) -> Sample:
        lc = self.llama_cpp
        sampled = 0

        def count_lp(_ids: Any, scores: Any) -> Any:
            nonlocal sampled
            sampled += 1
            return scores

        def count_sc(_ids: Any, _logits: Any) -> bool:
            nonlocal sampled
            if not with_lp:
                sampled += 1
            return sampled > max_tokens

        kwargs: dict[str, Any] = {"stopping_criteria": lc.StoppingCriteriaList([count_sc])}
        if with_lp:
            kwargs["logits_processor"] = lc.LogitsProcessorList([count_lp])
        stamps: list[float] = []
        parts: list[str] = []
        tokens_at_last_text = 0
        t0 = time.perf_counter()
        for chunk in self.llm.create_completion(
            prompt_for(round_no, self.tail),
            max_tokens=max_tokens,
            temperature=0,
            seed=SEED,
            stream=True,
            **kwargs,
        ):
            text = chunk["choices"][0]["text"]
            if text:
                stamps.append(time.perf_counter())
                parts.append(text)
                tokens_at_last_text = sampled
        t_end = time.perf_counter()
        # The stopping criterion also runs once after the last token: count to the last text.
        tokens = min(tokens_at_last_text, max_tokens)
        arm = "direct+lp" if with_lp else "direct"
        return _sample(arm, round_no, t0, stamps, tokens, t_end, "".join(parts))


# -- daemon -------------------------------------------------------------------------------


@contextlib.contextmanager
def daemon_client(model: Path, n_ctx: int, threads: int, profile: str = "") -> Iterator[Any]:
    import grpc

    from rustaid.api.v1 import generate_pb2_grpc
    from rustaid.testing.daemon import run_daemon

    with tempfile.TemporaryDirectory(prefix="rustaid-bench-") as tmp:
        data_dir = Path(tmp)
        (data_dir / "models").mkdir()
        (data_dir / "models" / model.name).symlink_to(model)
        # share_cpu off: the direct arm, in this process, would count as a busy
        # neighbour and take a thread from the daemon; this measures the wrapper, not
        # the policy. A profile, e.g. "performance": Balanced caps max_tokens at 1024.
        power = "[power]\nshare_cpu = false\n"
        if profile:
            power += f'default_profile = "{profile}"\n'
        (data_dir / "config").mkdir()
        (data_dir / "config" / "rustaid.toml").write_text(power)
        env = common.child_env(
            RUSTAID_THREADS=str(threads),
            RUSTAID_MAX_CONTEXT_LENGTH=str(n_ctx),
            RUSTAID_LOG_LEVEL="warning",
        )
        with run_daemon(data_dir, env=env) as d, grpc.insecure_channel(d.address) as channel:
            grpc.channel_ready_future(channel).result(timeout=30)
            yield d, channel, generate_pb2_grpc.GenerateServiceStub(channel)


def daemon_run(stub: Any, model_id: str, round_no: int, max_tokens: int, tail: str) -> Sample:
    from google.protobuf.json_format import MessageToDict

    from rustaid.api.v1 import common_pb2, generate_pb2

    request = generate_pb2.GenerateStreamRequest(
        model_id=model_id,
        prompt=prompt_for(round_no, tail),
        params=common_pb2.GenerationParams(max_tokens=max_tokens, temperature=0.0, seed=SEED),
    )
    stamps: list[float] = []
    parts: list[str] = []
    done = None
    t0 = time.perf_counter()
    for response in stub.GenerateStream(request, timeout=300):
        if response.HasField("chunk"):
            if response.chunk.text:
                stamps.append(time.perf_counter())
                parts.append(response.chunk.text)
        elif response.HasField("done"):
            done = response.done
    t_end = time.perf_counter()
    if done is None:
        raise RuntimeError("the stream ended without GenerationDone")
    server = {
        "usage": MessageToDict(done.usage, preserving_proto_field_name=True),
        "timings": MessageToDict(done.timings, preserving_proto_field_name=True),
        "finish_reason": common_pb2.FinishReason.Name(done.finish_reason),
        # What the device-aware policy changed (a power profile capping max_tokens...).
        "adjustments": list(getattr(done, "adjustments", ())),
    }
    tokens = done.usage.completion_tokens
    return _sample("daemon", round_no, t0, stamps, tokens, t_end, "".join(parts), server)


def loaded_settings(channel: Any, model_id: str) -> dict[str, int]:
    from rustaid.api.v1 import models_pb2, models_pb2_grpc

    m = models_pb2_grpc.ModelsServiceStub(channel).GetModel(models_pb2.GetModelRequest(id=model_id))
    return {"context_length": m.model.context_length, "threads": m.model.threads}


# -- main ---------------------------------------------------------------------------------


@dataclass
class Round:
    number: int
    samples: dict[str, Sample] = field(default_factory=dict)
    probes: dict[str, list[float]] = field(default_factory=dict)
    # Cores others kept busy: the worst of the arms' generations and the probe block.
    foreign_cores: float = 0.0
    clean: bool = True


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=128, help="max_tokens per generation")
    parser.add_argument("--runs", type=int, default=5, help="clean rounds wanted (after warm-up)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-lp-arm", action="store_true", help="skip the direct+lp arm")
    parser.add_argument(
        "--probe-reps", type=int, default=10, help="cached-prompt TTFT probes per arm and round"
    )
    parser.add_argument(
        "--max-foreign",
        type=float,
        default=0.15,
        help="a round is clean when other processes used at most this many cores",
    )
    parser.add_argument(
        "--budget", type=float, default=150, help="seconds of rounds before giving up on clean ones"
    )
    parser.add_argument(
        "--power-profile",
        default="",
        help="the daemon's default power profile (its own default, balanced, caps max_tokens "
        "at 1024: use performance for longer generations)",
    )
    parser.add_argument(
        "--model",
        choices=["synthetic", "real", "both"],
        default="both",
        help="the synthetic SmolLM2-135M-shaped Q8_0 file, the real SmolLM2-135M-Instruct "
        "Q4_1 (fetched once, see rustaid.testing.real_model), or both one after the other",
    )
    parser.add_argument("--json", help="write the results here")
    args = common.parse_args(
        parser,
        argv,
        quick={"tokens": 32, "runs": 1, "probe_reps": 2, "budget": 0, "no_lp_arm": True},
    )

    from rustaid.core.registry import model_id_for
    from rustaid.testing import real_model
    from rustaid.testing.synthetic import SMOLLM2_135M

    shape = SMOLLM2_135M
    n_ctx = shape.context_length
    results: list[dict[str, Any]] = []
    if args.model in ("synthetic", "both"):
        model = common.synthetic_model(shape, MODEL_NAME, "Q8_0")
        about = {"file": model.name, "shape": asdict(shape), "file_type": "Q8_0"}
        model_id = model_id_for(Path(model.name))
        results.append(measure(args, model, model_id, n_ctx, about, PROMPT_TAIL))
    if args.model in ("real", "both"):
        model = real_model.fetch(quiet=True)
        about = {"file": model.name, "real": real_model.PACKAGE, "file_type": "Q4_1"}
        results.append(measure(args, model, real_model.MODEL_ID, n_ctx, about, REAL_PROMPT_TAIL))
    result = results[0]
    if len(results) > 1:
        result["real_model"] = results[1]
    if len(results) > 1:
        print("\nsummary (daemon vs llama-cpp-python direct, same model and threads):")
        rows = [
            [
                r["model"]["file"],
                f"{r['ratio_tokens_per_s']:.3f}",
                f"{r['ttft_overhead_ms']:+.1f}",
                f"{r['ttft_cached_prompt_overhead_ms']:+.1f}",
            ]
            for r in results
        ]
        print(common.table(["model", "tok/s ratio", "TTFT +ms", "cached TTFT +ms"], rows))
    common.write_json(args.json, result, figures(result))
    return 0


def measure(
    args: argparse.Namespace,
    model: Path,
    model_id: str,
    n_ctx: int,
    about: dict[str, Any],
    tail: str,
) -> dict[str, Any]:
    """One model: interleaved rounds of every arm; prints its tables, returns its result."""
    info: dict[str, Any] = {"machine_start": common.machine()}
    print(
        f"model {model.name} ({model.stat().st_size / 1e6:.0f} MB, {about['file_type']}), "
        f"n_ctx {n_ctx}, {args.threads} threads, {args.tokens} tokens, "
        f"{args.runs} clean rounds wanted",
        file=sys.stderr,
    )
    t_load = time.perf_counter()
    direct = Direct(model, n_ctx, args.threads, tail)
    info["direct_load_ms"] = (time.perf_counter() - t_load) * 1000
    # Its own Llama (and so its own prompt cache), like the daemon has.
    direct_lp = None if args.no_lp_arm else Direct(model, n_ctx, args.threads, tail)
    n_prompt = direct.prompt_tokens(prompt_for(0, tail))

    arms = ["direct", "daemon"] if args.no_lp_arm else ["direct", "direct+lp", "daemon"]
    rounds: list[Round] = []
    with daemon_client(model, n_ctx, args.threads, args.power_profile) as (d, channel, stub):
        load = common.ForeignLoad(os.getpid(), d.proc.pid)

        def run(arm: str, round_no: int, max_tokens: int = args.tokens) -> Sample:
            if arm == "daemon":
                return daemon_run(stub, model_id, round_no, max_tokens, tail)
            if arm == "direct+lp" and direct_lp is not None:
                return direct_lp.run(round_no, max_tokens, with_lp=True)
            return direct.run(round_no, max_tokens, with_lp=False)

        # Warm-up: the daemon's first request loads the model; the direct model's first
        # generation touches its pages. Neither is measured.
        t_warm = time.perf_counter()
        warm = daemon_run(stub, model_id, 0, 8, tail)
        info["daemon_first_request_ms"] = (time.perf_counter() - t_warm) * 1000
        info["daemon_load_ms"] = warm.server["timings"].get("load_ms", 0.0)
        info["daemon_loaded"] = loaded_settings(channel, model_id)
        for arm in arms:
            run(arm, 0)

        t_rounds = time.monotonic()
        while sum(r.clean for r in rounds) < args.runs and (
            len(rounds) < args.runs or time.monotonic() - t_rounds < args.budget
        ):
            rnd = Round(len(rounds) + 1, probes={a: [] for a in arms})
            order = arms if rnd.number % 2 else arms[::-1]
            for arm in order:
                load.start()
                s = rnd.samples[arm] = run(arm, rnd.number)
                s.foreign_cores = load.stop()
                print(
                    f"  round {rnd.number} {arm:9s} ttft {s.ttft_ms:6.1f} ms  {s.tokens} tokens "
                    f"{s.tokens_per_s:6.1f} tok/s  (others: {s.foreign_cores:.2f} cores)",
                    file=sys.stderr,
                )
            load.start()
            for _ in range(args.probe_reps):
                for arm in order:
                    rnd.probes[arm].append(run(arm, rnd.number, 2).ttft_ms)
            probe_foreign = load.stop()
            rnd.foreign_cores = max(
                [probe_foreign, *(s.foreign_cores for s in rnd.samples.values())]
            )
            rnd.clean = rnd.foreign_cores <= args.max_foreign
            rounds.append(rnd)
        daemon_rss = _rss(d.proc.pid)
        compute_threads = _busy_threads(d.proc.pid)

    clean = [r for r in rounds if r.clean]
    used = clean if len(clean) >= min(3, args.runs) else rounds
    noisy = used is rounds and len(clean) < len(rounds)

    def col(arm: str, attr: str) -> list[float]:
        return [getattr(r.samples[arm], attr) for r in used]

    # Greedy decoding with one seed: every arm must produce the same text in a round.
    mismatches = [
        (r.number, a) for r in rounds for a in arms if r.samples[a].text != r.samples["direct"].text
    ]
    summary: dict[str, Any] = {}
    for arm in arms:
        summary[arm] = {
            "tokens_per_s": common.spread(col(arm, "tokens_per_s")),
            "ttft_ms": common.spread(col(arm, "ttft_ms")),
            "ttft_cached_prompt_ms": common.spread([t for r in used for t in r.probes[arm]]),
            "tokens": sorted({r.samples[arm].tokens for r in used}),
            "first_quarter_tokens_per_s": common.spread(col(arm, "first_quarter_tokens_per_s")),
            "last_quarter_tokens_per_s": common.spread(col(arm, "last_quarter_tokens_per_s")),
            "last_vs_first_quarter": common.spread(
                [
                    r.samples[arm].last_quarter_tokens_per_s
                    / r.samples[arm].first_quarter_tokens_per_s
                    for r in used
                ]
            ),
        }
    timings = [r.samples["daemon"].server["timings"] for r in used]
    summary["daemon"]["server_tokens_per_s"] = common.spread(
        [t.get("tokens_per_second", 0.0) for t in timings]
    )
    summary["daemon"]["server_ttft_ms"] = common.spread(
        [t.get("time_to_first_token_ms", 0.0) for t in timings]
    )
    med = {a: summary[a]["tokens_per_s"]["median"] for a in arms}
    ttft = {a: summary[a]["ttft_ms"]["median"] for a in arms}
    probe = {a: summary[a]["ttft_cached_prompt_ms"]["median"] for a in arms}
    # Per-round ratios cancel slow drift better than a ratio of medians; report both.
    per_round = [r.samples["daemon"].tokens_per_s / r.samples["direct"].tokens_per_s for r in used]
    result: dict[str, Any] = {
        "benchmark": "generate",
        "model": about,
        "settings": {
            "tokens": args.tokens,
            "runs": args.runs,
            "threads": args.threads,
            "n_ctx": n_ctx,
            "prompt_tokens": n_prompt,
            "seed": SEED,
            "probe_reps": args.probe_reps,
            "max_foreign_cores": args.max_foreign,
            "power_profile": args.power_profile or "default",
        },
        "rounds": {"total": len(rounds), "clean": len(clean), "used": len(used), "noisy": noisy},
        "summary": summary,
        "ratio_tokens_per_s": med["daemon"] / med["direct"],
        "ratio_tokens_per_s_per_round_median": common.median(per_round),
        "ttft_overhead_ms": ttft["daemon"] - ttft["direct"],
        "ttft_cached_prompt_overhead_ms": probe["daemon"] - probe["direct"],
        "targets": {"ratio_min": TARGET_RATIO, "ttft_overhead_max_ms": TARGET_TTFT_OVERHEAD_MS},
        "text_mismatches": mismatches,
        "daemon_rss_mb": daemon_rss / 1e6,
        # CPU seconds of the compute threads: --threads per OpenMP team. More than one team
        # (llama.cpp called from several executor threads) slows llama.cpp down.
        "daemon_compute_threads_cpu_s": compute_threads,
        "info": info | {"machine_end": common.machine()},
        "samples": [
            asdict(s) | {"text": s.text[:40], "clean_round": r.clean}
            for r in rounds
            for s in r.samples.values()
        ],
    }
    if "direct+lp" in arms:
        result["ratio_direct_lp_vs_direct"] = med["direct+lp"] / med["direct"]
        result["ratio_daemon_vs_direct_lp"] = med["daemon"] / med["direct+lp"]

    rows = [
        [
            a,
            f"{med[a]:.1f}",
            f"{med[a] / med['direct']:.3f}",
            f"{ttft[a]:.1f}",
            f"{ttft[a] - ttft['direct']:+.1f}",
            f"{probe[a]:.1f}",
            f"{probe[a] - probe['direct']:+.1f}",
        ]
        for a in arms
    ]
    print()
    print(
        f"generate: {n_prompt}-token prompt, {args.tokens} tokens, {args.threads} threads, "
        f"median of {len(used)} interleaved rounds ({len(clean)} of {len(rounds)} clean"
        f"{'; NOISY: too few clean rounds, all used' if noisy else ''})"
    )
    headers = ["arm", "tok/s", "vs direct", "TTFT ms", "+ms", "TTFT cached ms", "+ms"]
    print(common.table(headers, rows))
    quarters = [
        [
            a,
            f"{summary[a]['first_quarter_tokens_per_s']['median']:.1f}",
            f"{summary[a]['last_quarter_tokens_per_s']['median']:.1f}",
            f"{summary[a]['last_vs_first_quarter']['median']:.3f}",
            f"{summary[a]['last_vs_first_quarter']['min']:.3f}-"
            f"{summary[a]['last_vs_first_quarter']['max']:.3f}",
        ]
        for a in arms
    ]
    quarter_headers = ["arm", "first 1/4 tok/s", "last 1/4 tok/s", "last/first", "range"]
    print(common.table(quarter_headers, quarters))
    ok_ratio = result["ratio_tokens_per_s"] >= TARGET_RATIO
    ok_ttft = result["ttft_overhead_ms"] <= TARGET_TTFT_OVERHEAD_MS
    print(
        f"daemon/direct tokens/s {result['ratio_tokens_per_s']:.3f} (per-round median "
        f"{result['ratio_tokens_per_s_per_round_median']:.3f}; target >= {TARGET_RATIO}): "
        f"{'ok' if ok_ratio else 'MISSED'}"
    )
    print(
        f"daemon TTFT overhead {result['ttft_overhead_ms']:+.1f} ms "
        f"(target <= {TARGET_TTFT_OVERHEAD_MS:g} ms): {'ok' if ok_ttft else 'MISSED'}; "
        f"cached-prompt probe {result['ttft_cached_prompt_overhead_ms']:+.1f} ms"
    )
    sv = summary["daemon"]
    load0 = info["machine_start"]["loadavg"][0]
    load1 = result["info"]["machine_end"]["loadavg"][0]
    print(
        f"server-reported: {sv['server_tokens_per_s']['median']:.1f} tok/s, TTFT "
        f"{sv['server_ttft_ms']['median']:.1f} ms; load average {load0:.2f} -> {load1:.2f}"
    )
    busy = ", ".join(f"{t:.1f}" for t in compute_threads)
    print(f"daemon compute threads: {len(compute_threads)} ({busy} s of CPU)")
    if len(compute_threads) > args.threads:
        print(
            f"WARNING: more compute threads than --threads {args.threads}: llama.cpp ran "
            "from several threads, each with an OpenMP team of its own (slow; see README)"
        )
    if mismatches:
        print(f"WARNING: text differs from the direct arm in {mismatches}")
    adjusted = sorted({a for r in rounds for a in r.samples["daemon"].server["adjustments"]})
    if adjusted:
        print(f"WARNING: the daemon's policy adjusted the requests: {adjusted}")
    keys = ("ratio_tokens_per_s", "ttft_overhead_ms", "ttft_cached_prompt_overhead_ms")
    print(json.dumps({"model": model.name} | {k: round(result[k], 4) for k in keys}))
    return result


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of docs/benchmarks.md: the daemon against llama-cpp-python."""
    s = result["summary"]
    noisy = " NOISY: too few clean rounds" if result["rounds"]["noisy"] else ""
    out = [
        common.figure(
            "tokens/s (median)",
            s["daemon"]["tokens_per_s"]["median"],
            "tok/s",
            peer="llama-cpp-python direct",
            peer_value=s["direct"]["tokens_per_s"]["median"],
            target=f">= {TARGET_RATIO}",
            on="ratio",
            note=f"{result['rounds']['used']} rounds{noisy}",
        ),
        common.figure(
            "time to first token",
            s["daemon"]["ttft_ms"]["median"],
            "ms",
            peer="llama-cpp-python direct",
            peer_value=s["direct"]["ttft_ms"]["median"],
            target=f"<= {TARGET_TTFT_OVERHEAD_MS}",
            on="difference",
        ),
        common.figure(
            "time to first token, cached prompt",
            s["daemon"]["ttft_cached_prompt_ms"]["median"],
            "ms",
            peer="llama-cpp-python direct",
            peer_value=s["direct"]["ttft_cached_prompt_ms"]["median"],
        ),
    ]
    if "direct+lp" in s:
        out.append(
            common.figure(
                "tokens/s against the same call with per-token Python callbacks",
                s["daemon"]["tokens_per_s"]["median"],
                "tok/s",
                peer="llama-cpp-python + logits processor",
                peer_value=s["direct+lp"]["tokens_per_s"]["median"],
            )
        )
    out.append(common.figure("daemon RSS with the model loaded", result["daemon_rss_mb"], "MB"))
    return out


def _busy_threads(pid: int) -> list[float]:
    """CPU seconds of the daemon's compute threads, busiest first: those with at least a
    quarter of the busiest one's time. The main thread (the event loop, and start-up) is
    not one: with llama.cpp's work split over two threads it passes that mark."""
    import psutil

    with contextlib.suppress(psutil.Error):
        threads = psutil.Process(pid).threads()
        times = [t.user_time + t.system_time for t in threads if t.id != pid]
        top = max(times, default=0.0)
        return sorted((t for t in times if t >= top / 4), reverse=True)
    return []


def _rss(pid: int) -> int:
    import psutil

    with contextlib.suppress(psutil.Error):
        return int(psutil.Process(pid).memory_info().rss)
    return 0


if __name__ == "__main__":
    sys.exit(main())
