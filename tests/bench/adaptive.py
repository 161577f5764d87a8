"""CPU time and energy per token with the adaptive policy applied vs not, on the real
SmolLM2-135M model, while other processes keep cores busy.

    .venv/bin/python tests/bench/adaptive.py [--tokens 64] [--rounds 3] [--threads 2]
                                              [--load 1] [--json out.json] [--quick]

Two `rustaid serve` children serve the same model file (`RUSTAID_THREADS=T`), each
reading a cool fake sysfs tree without a battery, so only the CPU load differs from an
idle machine:

- `policy`: [power] defaults (`share_cpu` on): other processes busy for 3 s take a
  thread each, so with one busy core the model computes with T-1 threads;
- `no policy`: `share_cpu = false` and the performance profile: the model keeps its T
  threads whatever else runs.

`--load` busy-loop processes (one by default) run for the whole benchmark. Rounds
interleave the arms (the order alternates). Per generation (`max_tokens`, greedy, the
same prompt): the daemon's CPU seconds (user+system, psutil) per completion token, the
tokens/s the client saw, and the daemon's own `GenerationDone.energy` per token (an
estimate: the engine's declared draw x compute time, as this machine has no battery).
Target: CPU per token with the policy / without <= 1.0.
"""

from __future__ import annotations

import argparse
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

PROMPT = "Write a short story about a lighthouse keeper who finds a message in a bottle."
ARMS = {
    "policy": "",
    "no policy": "share_cpu = false\n",
}
# The policy counts other processes as busy once three one-second samples agree.
SETTLE_S = 4.0


@contextlib.contextmanager
def busy_loops(n: int) -> Iterator[list[int]]:
    """`n` processes that keep a core each busy."""
    procs = [subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(n)]
    try:
        yield [p.pid for p in procs]
    finally:
        for p in procs:
            p.kill()
            p.wait(10)


@contextlib.contextmanager
def daemons(root: Path, threads: int) -> Iterator[dict[str, Any]]:
    """One daemon per arm with the real model; yields {arm: (daemon, client)}."""
    from rustaid_client.client import Client

    from rustaid.testing import real_model
    from rustaid.testing.daemon import run_daemon
    from tests.power.fakesys import FakeDevice

    model = real_model.fetch(quiet=True)
    dev = FakeDevice(root / "device")
    dev.zone(0, "cpu-thermal", 45.0, [("passive", 80), ("critical", 100)])
    env = common.child_env(RUSTAID_THREADS=str(threads))
    with contextlib.ExitStack() as stack:
        out: dict[str, Any] = {}
        for arm, power in ARMS.items():
            data = root / arm.replace(" ", "-")
            real_model.place(model, data / "models")
            (data / "config").mkdir(parents=True, exist_ok=True)
            (data / "config" / "rustaid.toml").write_text(
                f"[power]\n{dev.toml()}dbus = false\n{power}"
            )
            d = stack.enter_context(run_daemon(data, env=env))
            client = stack.enter_context(Client(d.address, timeout=300))
            if arm == "no policy":
                client.set_power_profile("performance")
            client.generate("Hi", real_model.MODEL_ID, max_tokens=1)  # loads the model
            out[arm] = (d, client)
        yield out


def one(daemon: Any, client: Any, tokens: int) -> dict[str, Any]:
    import psutil

    from rustaid.testing import real_model

    proc = psutil.Process(daemon.proc.pid)
    c0 = proc.cpu_times()
    t0 = time.perf_counter()
    done = client.generate(PROMPT, real_model.MODEL_ID, max_tokens=tokens, temperature=0.0, seed=1)
    wall = time.perf_counter() - t0
    c1 = proc.cpu_times()
    n = max(1, done.usage.completion_tokens)
    cpu = (c1.user + c1.system) - (c0.user + c0.system)
    return {
        "tokens": n,
        "wall_s": wall,
        "cpu_s": cpu,
        "cpu_s_per_token": cpu / n,
        "tokens_per_s": n / wall,
        "energy_j_per_token": done.energy.joules / n,
        "energy_basis": done.energy.basis,
        "adjustments": list(done.adjustments),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--tokens", type=int, default=64, help="max_tokens per generation")
    parser.add_argument("--rounds", type=int, default=3, help="generations per arm")
    parser.add_argument("--threads", type=int, default=2, help="the daemons' RUSTAID_THREADS")
    parser.add_argument("--load", type=int, default=1, help="busy-loop processes meanwhile")
    args = common.parse_args(parser, argv, quick={"tokens": 24, "rounds": 2})
    machine_start = common.machine()
    samples: dict[str, list[dict[str, Any]]] = {arm: [] for arm in ARMS}
    with (
        tempfile.TemporaryDirectory(prefix="rustaid-bench-adaptive-") as tmp,
        daemons(Path(tmp), args.threads) as arms,
        busy_loops(args.load),
    ):
        time.sleep(SETTLE_S)
        for r in range(args.rounds):
            order = list(ARMS) if r % 2 == 0 else list(reversed(ARMS))
            for arm in order:
                print(f"  round {r + 1}: {arm}...", file=sys.stderr, flush=True)
                samples[arm].append(one(*arms[arm], args.tokens))
    machine_end = common.machine()

    def med(arm: str, key: str) -> float:
        return common.median([s[key] for s in samples[arm]])

    rows = [
        [arm, f"{med(arm, 'cpu_s_per_token') * 1000:.1f}", f"{med(arm, 'tokens_per_s'):.1f}",
         f"{med(arm, 'energy_j_per_token'):.3f}",
         "; ".join(a for a in samples[arm][-1]["adjustments"] if a.startswith("threads")) or "-"]
        for arm in ARMS
    ]  # fmt: skip
    print()
    print(f"SmolLM2-135M Q4_1, {args.tokens} tokens, {args.threads} threads, "
          f"{args.load} busy-loop process(es), median of {args.rounds}")  # fmt: skip
    print(common.table(["arm", "CPU ms/token", "tokens/s", "J/token (estimate)", "threads"],
                       rows))  # fmt: skip
    ratio = med("policy", "cpu_s_per_token") / med("no policy", "cpu_s_per_token")
    print(f"CPU per token, policy / no policy: {ratio:.2f} (target <= 1.0)")
    print(f"load average {machine_start['loadavg'][0]:.2f} -> {machine_end['loadavg'][0]:.2f} "
          f"({machine_start['cores']} cores, shared machine)")  # fmt: skip
    figures = [
        common.figure(
            "CPU time per token, policy applied",
            med("policy", "cpu_s_per_token") * 1000,
            "ms",
            peer="no policy",
            peer_value=med("no policy", "cpu_s_per_token") * 1000,
            target="<= 1.0",
            on="ratio",
            note=f"{args.load} busy core(s), {args.threads} threads",
        ),
        common.figure(
            "energy estimate per token, policy applied",
            med("policy", "energy_j_per_token"),
            "J",
            peer="no policy",
            peer_value=med("no policy", "energy_j_per_token"),
            note=samples["policy"][-1]["energy_basis"],
        ),
        common.figure(
            "tokens/s, policy applied",
            med("policy", "tokens_per_s"),
            "tokens/s",
            peer="no policy",
            peer_value=med("no policy", "tokens_per_s"),
        ),
    ]
    result = {
        "benchmark": "adaptive",
        "settings": vars(args),
        "samples": samples,
        "info": {"machine_start": machine_start, "machine_end": machine_end},
    }
    common.write_json(args.json, result, figures)
    return 0


if __name__ == "__main__":
    sys.exit(main())
