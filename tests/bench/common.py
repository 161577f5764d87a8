"""Shared helpers for the benchmarks in tests/bench (not a test module)."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

REPO_ROOT = Path(__file__).resolve().parents[2]


def child_env(**extra: str) -> dict[str, str]:
    """Environment additions for a daemon child: the repo on PYTHONPATH (rustaid is run
    from the source tree, not installed), plus `extra`."""
    path = os.environ.get("PYTHONPATH", "")
    return {"PYTHONPATH": os.pathsep.join(p for p in (str(REPO_ROOT), path) if p), **extra}


def cache_dir() -> Path:
    """Where built synthetic models are kept between runs ($RUSTAID_BENCH_CACHE)."""
    root = os.environ.get("RUSTAID_BENCH_CACHE") or str(
        Path(tempfile.gettempdir()) / "rustaid-bench-cache"
    )
    path = Path(root)
    path.mkdir(parents=True, exist_ok=True)
    return path


def synthetic_model(shape: Any, name: str, file_type: str = "Q8_0", seed: int = 0) -> Path:
    """A synthetic llama GGUF with `shape`, built once and cached under a key of the
    shape, file type and seed."""
    from rustaid.testing.synthetic import write_llama_gguf

    spec = json.dumps(
        {"shape": dataclasses.asdict(shape), "file_type": file_type, "seed": seed}, sort_keys=True
    )
    key = hashlib.sha256(spec.encode()).hexdigest()[:12]
    path = cache_dir() / f"{name}-{file_type.lower()}-{key}.gguf"
    if not path.exists():
        t0 = time.perf_counter()
        print(f"building {path.name} (cached for later runs)...", file=sys.stderr, flush=True)
        write_llama_gguf(path, shape, seed=seed, name=name, file_type=file_type)  # type: ignore[arg-type]
        print(f"  built in {time.perf_counter() - t0:.1f} s", file=sys.stderr, flush=True)
    return path


class ForeignLoad:
    """CPU used by everything except the given processes while a measurement runs, in
    cores (from /proc/stat, steal time included), to tell clean samples from ones that
    shared the machine with someone else. Resolution: one clock tick (10 ms)."""

    def __init__(self, *pids: int) -> None:
        import psutil

        self.procs = [psutil.Process(p) for p in pids or (os.getpid(),)]
        self.hz = os.sysconf("SC_CLK_TCK")
        self._start: tuple[float, float, float] | None = None

    def _snapshot(self) -> tuple[float, float, float]:
        fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        # user nice system idle iowait irq softirq steal (guest is counted in user)
        busy = sum(fields[i] for i in (0, 1, 2, 5, 6, 7) if i < len(fields)) / self.hz
        own = 0.0
        for p in self.procs:
            t = p.cpu_times()
            own += t.user + t.system
        return time.monotonic(), busy, own

    def start(self) -> None:
        self._start = self._snapshot()

    def stop(self) -> float:
        """Average number of cores others kept busy since start()."""
        assert self._start is not None
        t1, busy1, own1 = self._snapshot()
        t0, busy0, own0 = self._start
        return max(0.0, (busy1 - busy0) - (own1 - own0)) / max(t1 - t0, 1e-9)


def median(values: Sequence[float]) -> float:
    return statistics.median(values) if values else float("nan")


def spread(values: Sequence[float]) -> dict[str, float]:
    """Median, min and max of a series (for the JSON)."""
    if not values:
        return {"median": float("nan"), "min": float("nan"), "max": float("nan")}
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def machine() -> dict[str, Any]:
    """What the numbers were measured on (machines here are shared: note the load)."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return {
        "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
        "cpu": model or platform.processor(),
        "cores": os.cpu_count(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "loadavg": list(os.getloadavg()),
    }


def table(headers: Sequence[str], rows: Sequence[Sequence[object]]) -> str:
    """A small fixed-width text table."""
    cells = [[str(h) for h in headers]] + [[_fmt(c) for c in r] for r in rows]
    widths = [max(len(r[i]) for r in cells) for i in range(len(headers))]
    lines = ["  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)) for r in cells]
    lines.insert(1, "  ".join("-" * w for w in widths))
    return "\n".join(lines)


def _fmt(value: object) -> str:
    if isinstance(value, float):
        return f"{value:.3g}" if abs(value) < 0.01 else f"{value:.2f}"
    return str(value)


def write_json(path: str | None, data: dict[str, Any]) -> None:
    if path:
        Path(path).write_text(json.dumps(data, indent=2) + "\n")
        print(f"wrote {path}", file=sys.stderr)
