"""Model registry benchmark: how fast a dropped file is served, switching between cached
models vs a cold load, and a follow-up chat turn with vs without the session cache.

    python tests/bench/registry.py [--history 1000] [--runs 5] [--json out.json]

Everything is measured against the real daemon (a child process) in one run.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

import grpc

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from rustaid.api.v1 import common_pb2, generate_pb2, generate_pb2_grpc, models_pb2, models_pb2_grpc
from rustaid.testing.daemon import run_daemon
from rustaid.testing.synthetic import SMOLLM2_135M, TINY
from tests.bench.common import (
    child_env,
    figure,
    machine,
    median,
    parse_args,
    synthetic_model,
    table,
    write_json,
)

USER = generate_pb2.ROLE_USER


def _wait_added(call: object, name: str, seen: threading.Event) -> None:
    try:
        for e in call:  # type: ignore[attr-defined]
            if e.type == models_pb2.MODEL_EVENT_TYPE_ADDED and e.model.id == name:
                seen.set()
    except grpc.RpcError:
        pass


def landing_latency(
    daemon_dir: Path, models: models_pb2_grpc.ModelsServiceStub, src: Path, runs: int
) -> list[float]:
    """Seconds from a file's rename into models/ to the daemon's ADDED event."""
    out = []
    for i in range(runs):
        seen = threading.Event()
        call = models.WatchModels(models_pb2.WatchModelsRequest())
        name = f"landed-{i}"

        t = threading.Thread(target=_wait_added, args=(call, name, seen))
        t.start()
        time.sleep(0.2)
        tmp = daemon_dir / "models" / f".{name}.part"
        shutil.copyfile(src, tmp)
        t0 = time.perf_counter()
        tmp.rename(daemon_dir / "models" / f"{name}.gguf")
        seen.wait(10)
        out.append(time.perf_counter() - t0)
        call.cancel()
        t.join()
    return out


def one_token(gen: generate_pb2_grpc.GenerateServiceStub, model_id: str) -> float:
    t0 = time.perf_counter()
    gen.Generate(
        generate_pb2.GenerateRequest(
            model_id=model_id, prompt="hi", params=common_pb2.GenerationParams(max_tokens=1)
        )
    )
    return time.perf_counter() - t0


def follow_up_prompt_ms(
    gen: generate_pb2_grpc.GenerateServiceStub, history_words: int, session: str
) -> float:
    """Server-side prompt evaluation time of turn 2 of a session whose first turn holds
    about `history_words` tokens, with another conversation run in between (so only a
    cache, not the engine's own last context, can spare re-evaluating the history)."""
    first = " ".join(["the"] * history_words)

    def chat(sid: str, text: str) -> generate_pb2.ChatResponse:
        message = generate_pb2.ChatMessage(role=USER, content=text)
        params = common_pb2.GenerationParams(max_tokens=4, temperature=0)
        request = generate_pb2.ChatRequest(
            model_id="smol", session_id=sid, messages=[message], params=params
        )
        return gen.Chat(request)

    chat(session, first)
    chat(session + "-other", "a different conversation")
    r = chat(session, "and then?")
    return r.timings.prompt_eval_ms


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--history", type=int, default=1000, help="tokens of chat history")
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--json")
    args = parse_args(ap, quick={"history": 200, "runs": 2})
    tiny = synthetic_model(TINY, "tiny", file_type="F32")
    smol = synthetic_model(SMOLLM2_135M, "smollm2-135m")
    results: dict[str, object] = {"machine": machine()}
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "models").mkdir()
        for name in ("a", "b"):
            shutil.copyfile(smol, root / "models" / f"{name}.gguf")
        shutil.copyfile(smol, root / "models" / "smol.gguf")
        env = child_env(RUSTAID_THREADS=str(args.threads), RUSTAID_KEEP_ALIVE_S="-1")
        with run_daemon(root, env=env) as d:
            ch = grpc.insecure_channel(d.address)
            models = models_pb2_grpc.ModelsServiceStub(ch)
            gen = generate_pb2_grpc.GenerateServiceStub(ch)
            landing = landing_latency(root, models, tiny, args.runs)
            cold, warm = [], []
            for _ in range(args.runs):
                models.UnloadModel(models_pb2.UnloadModelRequest(id="a"))
                cold.append(one_token(gen, "a"))
                one_token(gen, "b")
                warm.append(one_token(gen, "a"))  # both cached: a switch, no load
            with_cache = [follow_up_prompt_ms(gen, args.history, f"c{i}") for i in range(args.runs)]
            ch.close()
        env_nocache = child_env(RUSTAID_THREADS=str(args.threads), RUSTAID_PROMPT_CACHE_MB="0")
        with run_daemon(root, env=env_nocache) as d:
            ch = grpc.insecure_channel(d.address)
            gen = generate_pb2_grpc.GenerateServiceStub(ch)
            without_cache = [
                follow_up_prompt_ms(gen, args.history, f"n{i}") for i in range(args.runs)
            ]
            ch.close()
    rows.append(["file landed -> listed (s)", f"{median(landing):.3f}", "<= 1.0"])
    rows.append(["1-token request, model cached (ms)", f"{median(warm) * 1000:.1f}", ""])
    rows.append(["1-token request, cold load (ms)", f"{median(cold) * 1000:.1f}", ""])
    rows.append(["cold / cached", f"{median(cold) / median(warm):.1f}x", ""])
    rows.append(
        [
            f"follow-up turn prompt eval, {args.history} tokens history, session cache (ms)",
            f"{median(with_cache):.1f}",
            "",
        ]
    )
    rows.append(["same without the cache (ms)", f"{median(without_cache):.1f}", ""])
    speedup = median(without_cache) / max(median(with_cache), 1e-6)
    rows.append(["speed-up from the session cache", f"{speedup:.1f}x", ">= 5x"])
    print(table(["measure", "value", "target"], rows))
    results.update(
        landing_s=landing, cold_s=cold, cached_s=warm, followup_cache_ms=with_cache,
        followup_nocache_ms=without_cache, cache_speedup=speedup,
    )  # fmt: skip
    write_json(args.json, results, figures(results, args.history))
    return 0


def figures(r: dict[str, Any], history: int) -> list[dict[str, Any]]:
    """The figures of docs/benchmarks.md: each path against the slower one it avoids."""
    return [
        figure("file landed -> listed (median)", median(r["landing_s"]), "s", target="<= 1.0"),
        figure("1-token request, model cached", median(r["cached_s"]) * 1000, "ms",
               peer="cold load", peer_value=median(r["cold_s"]) * 1000),
        figure(f"follow-up turn prompt eval, {history} tokens of history, session cache",
               median(r["followup_cache_ms"]), "ms", peer="no session cache",
               peer_value=median(r["followup_nocache_ms"]), target="<= 0.2", on="ratio",
               note=f"speed-up {r['cache_speedup']:.1f}x, target >= 5x"),
    ]  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
