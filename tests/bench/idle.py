"""The idle daemon: start-up time to READY=1, resident memory, CPU time while idle, and
which heavy modules it has (not) loaded.

    .venv/bin/python tests/bench/idle.py [--starts 5] [--idle 60] [--json out.json]

- start-up: wall time from Popen of `python -m rustaid serve` (no models in its models
  folder) to the arrival of READY=1 on a NOTIFY_SOCKET of our own; median of --starts;
- memory: RSS, USS and PSS (psutil) right after READY=1 and after --idle seconds idle;
- CPU: user+system seconds the daemon used during the idle period, per minute, plus its
  context switches (wake-ups) per minute;
- heavy modules: shared objects mapped in the idle daemon (/proc/PID/maps: libllama,
  libggml, onnxruntime, numpy's _multiarray_umath...), and the Python modules imported
  up to READY=1 in one more start with PYTHONPROFILEIMPORTTIME=1 (`-X importtime`).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import re
import socket
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

TARGET_START_S = 1.0
TARGET_RSS_MB = 60.0
# With no requests (the resource monitor's polling and event sources included; see
# tests/bench/monitor.py for the monitor's share).
TARGET_IDLE_CPU_S_PER_MIN = 0.2

# Shared objects that must not be mapped into an idle daemon (regex on /proc/PID/maps).
HEAVY_LIBRARIES = {
    "llama.cpp (libllama)": r"libllama\.so",
    "ggml (libggml)": r"libggml[^/]*\.so",
    "onnxruntime": r"onnxruntime[^/]*\.so",
    "numpy (_multiarray_umath)": r"_multiarray_umath[^/]*\.so",
    "torch": r"libtorch[^/]*\.so",
    "pydantic-core": r"_pydantic_core[^/]*\.so",
    "tokenizers": r"tokenizers[^/]*\.so",
}
# For contrast: what the daemon is expected to have mapped.
EXPECTED_LIBRARIES = {"grpc (cygrpc)": r"cygrpc[^/]*\.so"}
# Top-level Python packages that must not be imported before READY=1.
HEAVY_MODULES = (
    "numpy",
    "llama_cpp",
    "gguf",
    "onnxruntime",
    "qdrant_client",
    "sentence_transformers",
    "transformers",
    "torch",
    "tokenizers",
    "jinja2",
    "pydantic",
    "cryptography",
    "dbus_next",
    "pyudev",
    # The HTTP API's stack: only with http_listen set.
    "starlette",
    "uvicorn",
)


def _wait_ready(notify: socket.socket, proc: Any, timeout: float = 30.0) -> float:
    """perf_counter() at which READY=1 arrived on `notify`."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        notify.settimeout(0.2)
        try:
            message = notify.recv(4096).decode()
        except TimeoutError:
            if proc.poll() is not None:
                raise RuntimeError(f"daemon exited with {proc.returncode}") from None
            continue
        t = time.perf_counter()
        if "READY=1" in message.split("\n"):
            return t
    raise TimeoutError(f"no READY=1 within {timeout} s")


@contextlib.contextmanager
def started(data_dir: Path, **env: str) -> Any:
    """A daemon on an empty data dir; yields (daemon, seconds from Popen to READY=1)."""
    from rustaid.testing.daemon import run_daemon

    (data_dir / "models").mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()  # run_daemon binds a socket, then Popen()s: microseconds
    with run_daemon(data_dir, env=common.child_env(**env), wait_ready=False) as d:
        t_ready = _wait_ready(d.notify_socket, d.proc)
        yield d, t_ready - t0


def memory(pid: int) -> dict[str, float]:
    import psutil

    p = psutil.Process(pid)
    out: dict[str, float] = {"rss_mb": p.memory_info().rss / 1e6}
    with contextlib.suppress(psutil.Error):
        full = p.memory_full_info()
        for name in ("uss", "pss", "swap"):
            if hasattr(full, name):
                out[f"{name}_mb"] = getattr(full, name) / 1e6
    out["threads"] = p.num_threads()
    return out


def cpu_and_switches(pid: int) -> tuple[float, dict[str, tuple[str, int]]]:
    """CPU seconds of the whole process, and context switches of each thread (tid ->
    (name, switches)); /proc/PID/status, which psutil reads, counts the main thread only."""
    import psutil

    t = psutil.Process(pid).cpu_times()
    threads: dict[str, tuple[str, int]] = {}
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(OSError):
            status = (task / "status").read_text().splitlines()
            n = sum(int(line.split(":", 1)[1]) for line in status if "ctxt_switches:" in line)
            threads[task.name] = ((task / "comm").read_text().strip(), n)
    return t.user + t.system, threads


def mapped_libraries(pid: int) -> dict[str, list[str]]:
    maps = Path(f"/proc/{pid}/maps").read_text()
    paths = sorted({line.split()[-1] for line in maps.splitlines() if "/" in line})
    found: dict[str, list[str]] = {}
    for name, pattern in {**HEAVY_LIBRARIES, **EXPECTED_LIBRARIES}.items():
        found[name] = [Path(p).name for p in paths if re.search(pattern, p)]
    return found


_IMPORT_LINE = re.compile(r"import time:\s+(\d+)\s+\|\s+(\d+)\s+\|(\s*)(\S+)")


def parse_importtime(log: str) -> dict[str, Any]:
    """Modules from PYTHONPROFILEIMPORTTIME output: top-level packages and their time."""
    modules: dict[str, int] = {}
    self_us = 0
    for line in log.splitlines():
        m = _IMPORT_LINE.match(line)
        if not m:
            continue
        self_us += int(m.group(1))
        depth = (len(m.group(3)) - 1) // 2
        name = m.group(4)
        if depth == 0:  # imported by the daemon itself (cumulative includes its imports)
            modules[name] = int(m.group(2))
    top = sorted(modules.items(), key=lambda kv: -kv[1])[:12]
    seen = {line.group(4).split(".")[0] for line in _IMPORT_LINE.finditer(log)}
    return {
        "total_import_ms": self_us / 1000,
        "modules_imported": sum(1 for _ in _IMPORT_LINE.finditer(log)),
        "slowest_top_level_ms": {k: v / 1000 for k, v in top},
        "heavy_imported": sorted(m for m in HEAVY_MODULES if m in seen),
        "heavy_not_imported": sorted(m for m in HEAVY_MODULES if m not in seen),
        "packages": sorted(seen),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--starts", type=int, default=5, help="start-ups to time")
    parser.add_argument("--idle", type=float, default=60.0, help="idle period in seconds")
    parser.add_argument("--json", help="write the results here")
    args = common.parse_args(parser, argv, quick={"starts": 2, "idle": 10})
    info: dict[str, Any] = {"machine_start": common.machine()}

    with tempfile.TemporaryDirectory(prefix="rustaid-bench-idle-") as tmp:
        root = Path(tmp)
        # 1. Start-up time.
        starts: list[float] = []
        in_daemon_ms: list[float] = []
        for i in range(args.starts):
            with started(root / f"start{i}") as (d, seconds):
                starts.append(seconds)
            m = re.search(r"ready in (\d+) ms", d.stderr())
            if m:
                in_daemon_ms.append(float(m.group(1)))
            print(f"  start {i + 1}: READY=1 after {seconds * 1000:.0f} ms", file=sys.stderr)

        # 2. Idle daemon: memory, CPU, mapped libraries.
        with started(root / "idle") as (d, seconds):
            pid = d.proc.pid
            time.sleep(0.1)  # let READY=1's log line and socket set-up settle
            mem_ready = memory(pid)
            libs = mapped_libraries(pid)
            cpu0, sw0 = cpu_and_switches(pid)
            print(f"  idle for {args.idle:g} s...", file=sys.stderr)
            t0 = time.monotonic()
            time.sleep(args.idle)
            cpu1, sw1 = cpu_and_switches(pid)
            elapsed = time.monotonic() - t0
            mem_idle = memory(pid)
            libs_after = mapped_libraries(pid)

        # 3. Python modules imported up to READY=1.
        with started(root / "importtime", PYTHONPROFILEIMPORTTIME="1") as (d, _):
            pass
        imports = parse_importtime(d.stderr())

        # 4. The same idle daemon with the HTTP API on (Starlette and uvicorn loaded).
        with started(root / "http", RUSTAID_HTTP_LISTEN="127.0.0.1:0") as (d, _):
            time.sleep(0.1)
            mem_http = memory(d.proc.pid)

    cpu_per_min = (cpu1 - cpu0) / elapsed * 60
    by_thread = sorted(
        (
            {"tid": tid, "name": name, "per_min": (n - sw0.get(tid, (name, 0))[1]) / elapsed * 60}
            for tid, (name, n) in sw1.items()
        ),
        key=lambda t: -t["per_min"],
    )
    wakeups_per_min = sum(t["per_min"] for t in by_thread)
    heavy_mapped = sorted(
        {n for n in HEAVY_LIBRARIES if libs[n]} | {n for n in HEAVY_LIBRARIES if libs_after[n]}
    )
    result: dict[str, Any] = {
        "benchmark": "idle",
        "startup_s": common.spread(starts),
        "startup_runs_s": starts,
        "startup_in_daemon_ms": common.spread(in_daemon_ms),
        "memory_at_ready": mem_ready,
        "memory_after_idle": mem_idle,
        "memory_at_ready_http_on": mem_http,
        "idle_s": elapsed,
        "idle_cpu_s_per_min": cpu_per_min,
        "idle_context_switches_per_min": wakeups_per_min,
        "idle_context_switches_by_thread": by_thread,
        "mapped_libraries": libs,
        "heavy_libraries_mapped": heavy_mapped,
        "heavy_libraries_not_mapped": sorted(n for n in HEAVY_LIBRARIES if n not in heavy_mapped),
        "imports": imports,
        "targets": {
            "startup_s_max": TARGET_START_S,
            "rss_mb_max": TARGET_RSS_MB,
            "idle_cpu_s_per_min_max": TARGET_IDLE_CPU_S_PER_MIN,
        },
        "info": info | {"machine_end": common.machine()},
    }

    ok_start = result["startup_s"]["median"] <= TARGET_START_S
    rss = max(mem_ready["rss_mb"], mem_idle["rss_mb"])
    rows = [
        ["start-up to READY=1 (median)", f"{result['startup_s']['median']:.3f} s",
         f"<= {TARGET_START_S:g} s", "ok" if ok_start else "MISSED"],
        ["  min / max", f"{min(starts):.3f} / {max(starts):.3f} s", "", ""],
        ["  of which Daemon.start() (log)", f"{result['startup_in_daemon_ms']['median']:.0f} ms",
         "", ""],
        ["RSS at READY=1", f"{mem_ready['rss_mb']:.1f} MB", f"<= {TARGET_RSS_MB:g} MB",
         "ok" if mem_ready["rss_mb"] <= TARGET_RSS_MB else "MISSED"],
        [f"RSS after {elapsed:.0f} s idle", f"{mem_idle['rss_mb']:.1f} MB",
         f"<= {TARGET_RSS_MB:g} MB", "ok" if mem_idle["rss_mb"] <= TARGET_RSS_MB else "MISSED"],
        ["USS / PSS after idle",
         f"{mem_idle.get('uss_mb', float('nan')):.1f} / {mem_idle.get('pss_mb', float('nan')):.1f}"
         " MB", "", ""],
        ["threads", f"{mem_idle['threads']:.0f}", "", ""],
        ["RSS at READY=1, HTTP API on", f"{mem_http['rss_mb']:.1f} MB", "(reported)", ""],
        ["CPU time while idle", f"{cpu_per_min:.4f} s/min",
         f"<= {TARGET_IDLE_CPU_S_PER_MIN:g} s/min",
         "ok" if cpu_per_min <= TARGET_IDLE_CPU_S_PER_MIN else "MISSED"],
        ["context switches while idle", f"{wakeups_per_min:.0f} /min", "", ""],
        ["  busiest threads", ", ".join(f"{t['name']} {t['per_min']:.0f}" for t in by_thread[:3]),
         "", ""],
        ["Python import time to READY=1", f"{imports['total_import_ms']:.0f} ms "
         f"({imports['modules_imported']} modules)", "", ""],
    ]  # fmt: skip
    print()
    print(f"idle daemon (no models), {args.starts} starts, {elapsed:.0f} s idle")
    print(common.table(["measure", "value", "target", ""], rows))
    print(f"heavy libraries mapped: {', '.join(heavy_mapped) or 'none'}; not mapped: "
          f"{', '.join(result['heavy_libraries_not_mapped'])}")  # fmt: skip
    print(f"heavy Python packages imported: {', '.join(imports['heavy_imported']) or 'none'}; "
          f"not imported: {', '.join(imports['heavy_not_imported'])}")  # fmt: skip
    slow = ", ".join(f"{k} {v:.0f}" for k, v in list(imports["slowest_top_level_ms"].items())[:8])
    print(f"slowest imports (ms, cumulative): {slow}")
    print(f"RSS max {rss:.1f} MB; load average {info['machine_start']['loadavg'][0]:.2f} -> "
          f"{result['info']['machine_end']['loadavg'][0]:.2f}")  # fmt: skip
    common.write_json(args.json, result, figures(result))
    summary = {
        "startup_s_median": round(result["startup_s"]["median"], 4),
        "rss_mb_ready": round(mem_ready["rss_mb"], 1),
        "rss_mb_idle": round(mem_idle["rss_mb"], 1),
        "idle_cpu_s_per_min": round(cpu_per_min, 5),
    }
    print(json.dumps(summary))
    return 0


def figures(result: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of docs/benchmarks.md (the idle daemon has no peer: targets only)."""
    f = common.figure
    imports = result["imports"]
    return [
        f("start-up to READY=1 (median)", result["startup_s"]["median"], "s",
          target=f"<= {TARGET_START_S:g}"),
        f("RSS at READY=1", result["memory_at_ready"]["rss_mb"], "MB",
          target=f"<= {TARGET_RSS_MB:g}"),
        f(f"RSS after {result['idle_s']:.0f} s idle", result["memory_after_idle"]["rss_mb"], "MB",
          target=f"<= {TARGET_RSS_MB:g}"),
        f("CPU time while idle", result["idle_cpu_s_per_min"], "s/min",
          target=f"<= {TARGET_IDLE_CPU_S_PER_MIN:g}"),
        f("context switches while idle", result["idle_context_switches_per_min"], "/min"),
        f("heavy libraries mapped", len(result["heavy_libraries_mapped"]), "", target="<= 0",
          note=", ".join(result["heavy_libraries_mapped"]) or "none"),
        f("Python import time to READY=1", imports.get("total_import_ms"), "ms",
          note=f"{imports.get('modules_imported')} modules"),
    ]  # fmt: skip


if __name__ == "__main__":
    sys.exit(main())
