"""Shared helpers for the benchmarks in tests/bench (not a test module)."""

from __future__ import annotations

import argparse
import dataclasses
import hashlib
import json
import math
import operator
import os
import platform
import statistics
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
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
        "ram_gb": _ram_gb(),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "packages": package_versions(),
        "loadavg": list(os.getloadavg()),
    }


# The libraries the daemon wraps or competes with (their versions decide the figures).
PACKAGES = ("llama-cpp-python", "onnxruntime", "grpcio", "qdrant-edge-py", "protobuf", "numpy")


def package_versions() -> dict[str, str]:
    """Installed versions of PACKAGES (from the distribution metadata: nothing imported)."""
    from importlib import metadata

    out = {}
    for name in PACKAGES:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def _ram_gb() -> float:
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                return round(int(line.split()[1]) / 2**20, 1)
    except (OSError, ValueError):
        pass
    return float("nan")


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


def write_json(
    path: str | None, data: dict[str, Any], figures: Sequence[dict[str, Any]] | None = None
) -> None:
    """Write `data` (everything measured) as JSON, with `figures` (see `figure()`) under
    "figures" and the machine under "machine" when the data has none: what
    tests/bench/report.py turns into docs/benchmarks.md. NaN and infinities become null."""
    if not path:
        return
    out = dict(data)
    if figures is not None:
        out["figures"] = list(figures)
    out.setdefault("machine", machine())
    out.setdefault("benchmark", Path(sys.argv[0]).stem)
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(json.dumps(_finite(out), indent=2) + "\n")
    print(f"wrote {path}", file=sys.stderr)


def _finite(value: Any) -> Any:
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_finite(v) for v in value]
    return value


# -- figures: the numbers docs/benchmarks.md shows --------------------------------------

_OPS: dict[str, Callable[[float, float], bool]] = {
    ">=": operator.ge,
    "<=": operator.le,
    ">": operator.gt,
    "<": operator.lt,
}


def figure(
    name: str,
    value: float | None,
    unit: str,
    *,
    peer: str = "",
    peer_value: float | None = None,
    target: str = "",
    on: str = "value",
    note: str = "",
) -> dict[str, Any]:
    """One figure of a benchmark: the daemon's `value` in `unit`, against `peer` (the
    library or program it wraps or competes with, measured in the same run) worth
    `peer_value`, and a `target` such as ">= 0.97" checked on `on`: "value", "ratio"
    (value / peer_value) or "difference" (value - peer_value). `pass` is None without a
    target, False when the checked quantity is missing or NaN."""

    def num(x: float | None) -> float | None:
        return float(x) if x is not None and math.isfinite(float(x)) else None

    v, pv = num(value), num(peer_value)
    ratio = v / pv if v is not None and pv else None
    difference = v - pv if v is not None and pv is not None else None
    checked = {"value": v, "ratio": ratio, "difference": difference}[on]
    passed: bool | None = None
    target_info: dict[str, Any] | None = None
    if target:
        op, _, bound = target.partition(" ")
        if op not in _OPS:
            raise ValueError(f"target {target!r}: expected '<op> <number>', op one of {list(_OPS)}")
        target_info = {"on": on, "op": op, "bound": float(bound), "text": f"{on} {target}"}
        passed = checked is not None and _OPS[op](checked, float(bound))
    return {
        "name": name,
        "value": v,
        "unit": unit,
        "compared_with": {"name": peer, "value": pv} if peer else None,
        "ratio": ratio,
        "difference": difference,
        "target": target_info,
        "pass": passed,
        "note": note,
    }


def figures_table(figures: Sequence[dict[str, Any]]) -> str:
    """The figures as a text table (what the script measured against what, and the verdict)."""
    rows = []
    for f in figures:
        peer = f["compared_with"]
        rows.append(
            [
                f["name"],
                _fmt(f["value"]) + (f" {f['unit']}" if f["unit"] else ""),
                f"{peer['name']}: {_fmt(peer['value'])}" if peer else "",
                _fmt(f["ratio"]) if f["ratio"] is not None else "",
                f["target"]["text"] if f["target"] else "",
                {True: "pass", False: "FAIL", None: ""}[f["pass"]],
            ]
        )
    return table(["figure", "value", "compared with", "ratio", "target", ""], rows)


def parse_args(
    parser: argparse.ArgumentParser,
    argv: Sequence[str] | None = None,
    *,
    quick: dict[str, Any] | None = None,
) -> argparse.Namespace:
    """Parse with the options every benchmark has (added unless the script has its own):
    `--json PATH`, the figures and every sample as JSON for tests/bench/report.py, and
    `--quick`, short settings that check the pipeline, not the figures: `quick` replaces
    the defaults of those options (options given on the command line still win)."""
    known = {s for action in parser._actions for s in action.option_strings}
    if "--json" not in known:
        parser.add_argument(
            "--json", metavar="PATH", help="write the figures and every sample here (JSON)"
        )
    if "--quick" not in known:
        settings = ", ".join(f"--{k.replace('_', '-')} {v}" for k, v in (quick or {}).items())
        parser.add_argument(
            "--quick",
            action="store_true",
            help="short run that checks the pipeline, not the figures"
            + (f" ({settings})" if settings else ""),
        )
    args = parser.parse_args(argv)
    if args.quick and quick:
        parser.set_defaults(**quick)
        args = parser.parse_args(argv)
    return args
