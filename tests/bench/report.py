"""Turn the benchmarks' JSON results into docs/benchmarks.md and its plots.

    .venv/bin/python tests/bench/report.py [RESULTS_DIR] [--output docs/benchmarks.md]
                                           [--plots docs/benchmarks] [--quick]

`make bench` runs every script in tests/bench with `--json RESULTS_DIR/NAME.json` (default
build/bench) and then this. Each JSON carries "figures" (tests/bench/common.py `figure()`:
the daemon's value, the library or peer it competes with measured in the same run, the
ratio, the target and whether it passed), "machine" and everything measured; this writes
one table per benchmark, the machine, and matplotlib plots (PNG) of the series worth
seeing: generation speed per round, search latency, embedding throughput, the soak's
memory, descriptors, latency and throughput over time. `--quick` marks the document as
a quick run (short settings: the pipeline is checked, the figures mean little).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

BENCH_DIR = Path(__file__).resolve().parent
NOT_BENCHMARKS = {"__init__", "common", "report"}
TITLES = {
    "generate": "Generation: the daemon against llama-cpp-python",
    "idle": "The idle daemon",
    "registry": "Model registry: landing, switching, session cache",
    "monitor": "Resource monitor: reaction time and the cost of watching",
    "adaptive": "Adaptive inference: CPU and energy per token under a competing load",
    "rag": "RAG: embeddings, ingestion and search",
    "tools": "Tools: call overhead, WebAssembly against Python",
    "updates": "Updates: verification, switch, rollback, resume",
    "remote": "Remote engine against a plain streaming client",
    "dbus": "D-Bus against gRPC",
    "http": "HTTP API against gRPC, llama-cpp-python and llama_cpp.server",
    "concurrency": "Many clients at once: continuous batching against one at a time",
    "soak": "Soak: many clients for a long time",
    "admission": "Admission control and request context: the cost per request",
    "auth": "Peer credentials: the cost of the relay",
    "rag_churn": "Vector store under re-indexing churn: memory and disk",
    "retrieval": "Retrieval quality: dense, keyword and hybrid search",
}


def benchmark_names() -> list[str]:
    return sorted(p.stem for p in BENCH_DIR.glob("*.py") if p.stem not in NOT_BENCHMARKS)


# -- formatting ----------------------------------------------------------------------------


def num(value: float | None, unit: str = "") -> str:
    if value is None:
        return "n/a"
    if value == int(value) and abs(value) < 1e6 and unit in ("", "MB", "bytes"):
        text = f"{int(value)}"
    elif abs(value) >= 100:
        text = f"{value:.0f}"
    elif abs(value) >= 10:
        text = f"{value:.1f}"
    elif abs(value) >= 0.1:
        text = f"{value:.2f}"
    else:
        text = f"{value:.3g}"
    return f"{text} {unit}".strip() if unit and unit != "x" else (text + "x" if unit else text)


def cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def figure_row(f: dict[str, Any]) -> list[str]:
    peer = f.get("compared_with")
    target = f.get("target")
    on = target["on"] if target else ("ratio" if f.get("ratio") is not None else "")
    if on == "difference" and f.get("difference") is not None:
        d = f["difference"]
        relation = f"{'+' if d >= 0 else ''}{num(d, f['unit'])}"
    elif f.get("ratio") is not None:
        relation = f"{f['ratio']:.3f}x" if abs(f["ratio"]) < 100 else f"{f['ratio']:.0f}x"
    else:
        relation = ""
    result = {True: "pass", False: "**FAIL**", None: ""}[f.get("pass")]
    target_text = ""
    if target:
        target_text = target["text"].replace(">=", "≥").replace("<=", "≤")
        if target["on"] == "difference" and f["unit"]:
            target_text += f" {f['unit']}"
        if target["on"] == "value":
            target_text = target_text.removeprefix("value ") + (
                f" {f['unit']}" if f["unit"] and f["unit"] not in ("x", "%") else ""
            )
            target_text += "%" if f["unit"] == "%" else ""
    name = f["name"] + (f" ({f['note']})" if f.get("note") else "")
    return [
        cell(name),
        num(f.get("value"), f["unit"]),
        cell(f"{peer['name']}: {num(peer.get('value'), f['unit'])}") if peer else "",
        relation,
        cell(target_text),
        result,
    ]


def md_table(headers: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(lines)


# -- plots -------------------------------------------------------------------------------------


class Plots:
    """PNG files under `folder`, linked from the document by a path relative to it."""

    def __init__(self, folder: Path, doc: Path) -> None:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        self.plt = plt
        self.folder = folder
        self.doc = doc
        folder.mkdir(parents=True, exist_ok=True)
        for old in folder.glob("*.png"):
            old.unlink()

    def save(self, fig: Any, name: str, caption: str) -> str:
        path = self.folder / f"{name}.png"
        fig.tight_layout()
        fig.savefig(path, dpi=100)
        self.plt.close(fig)
        rel = os.path.relpath(path, self.doc.parent)
        return f"![{caption}]({rel})"

    def ratios(self, name: str, figures: list[dict[str, Any]]) -> str | None:
        """Every figure that has a peer: the daemon's value relative to the peer's."""
        rows = [f for f in figures if f.get("ratio") is not None and f.get("compared_with")]
        if not rows:
            return None
        plt = self.plt
        fig, ax = plt.subplots(figsize=(8, 0.45 * len(rows) + 1.2))
        labels = [f"{f['name']}\n(vs {f['compared_with']['name']})" for f in rows]
        colors = [{True: "#3a8f3a", False: "#c03030", None: "#5a7fb0"}[f.get("pass")] for f in rows]
        ax.barh(range(len(rows)), [f["ratio"] for f in rows], color=colors)
        ax.axvline(1.0, color="black", lw=0.8)
        bounds = [(i, f["target"]["bound"]) for i, f in enumerate(rows)
                  if f.get("target") and f["target"]["on"] == "ratio"]  # fmt: skip
        if bounds:
            ax.plot([b for _, b in bounds], [i for i, _ in bounds], "k|", ms=18, mew=2,
                    label="target")  # fmt: skip
            ax.legend(fontsize=7, loc="lower right")
        ax.set_yticks(range(len(rows)), labels, fontsize=7)
        ax.invert_yaxis()
        ax.set_xlabel("daemon / compared-with (1 = the same)")
        ax.set_title(f"{name}: the daemon relative to what it competes with", fontsize=9)
        return self.save(fig, f"{name}-ratios", f"{name}: ratios to the peers")

    def generate(self, data: dict[str, Any]) -> list[str]:
        samples = data.get("samples") or []
        if not samples:
            return []
        plt = self.plt
        fig, (a1, a2) = plt.subplots(1, 2, figsize=(10, 3.6))
        from matplotlib.ticker import MaxNLocator

        for arm in sorted({s["arm"] for s in samples}):
            pts = [s for s in samples if s["arm"] == arm]
            for a, key in ((a1, "tokens_per_s"), (a2, "ttft_ms")):
                (line,) = a.plot([s["round"] for s in pts], [s[key] for s in pts], "-", label=arm)
                noisy = [s for s in pts if not s.get("clean_round", True)]
                clean = [s for s in pts if s.get("clean_round", True)]
                a.plot(
                    [s["round"] for s in clean],
                    [s[key] for s in clean],
                    "o",
                    color=line.get_color(),
                )
                a.plot([s["round"] for s in noisy], [s[key] for s in noisy], "o",
                       mfc="none", color=line.get_color())  # fmt: skip
        a1.set(xlabel="round (hollow: others used the CPU)", ylabel="tokens/s",
               title="generation speed per round")  # fmt: skip
        a2.set(xlabel="round", ylabel="ms", title="time to first token per round")
        for a in (a1, a2):
            a.legend(fontsize=8)
            a.grid(alpha=0.3)
            a.xaxis.set_major_locator(MaxNLocator(integer=True))
        a1.set_ylim(bottom=0)
        a2.set_ylim(bottom=0)
        return [self.save(fig, "generate", "generation: daemon vs llama-cpp-python per round")]

    def rag(self, data: dict[str, Any]) -> list[str]:
        out = []
        plt = self.plt
        searches = [(k, data[k]) for k in ("search_10k", "search_100k") if data.get(k)]
        if searches:
            fig, ax = plt.subplots(figsize=(7, 3.6))
            width = 0.2
            metrics = [
                ("p50_ms", "gRPC p50"),
                ("p99_ms", "gRPC p99"),
                ("embed_p50_ms", "embed p50 (in daemon)"),
                ("search_p50_ms", "store search p50 (in daemon)"),
            ]
            for i, (key, label) in enumerate(metrics):
                xs = [j + (i - 1.5) * width for j in range(len(searches))]
                ax.bar(xs, [s.get(key) or 0 for _, s in searches], width, label=label)
            sizes = {"search_10k": (data.get("ingestion") or {}).get("chunks")}
            sizes["search_100k"] = (data.get("search_100k") or {}).get("points")
            ax.set_xticks(
                range(len(searches)),
                [f"{sizes.get(k) or k.split('_')[1]} chunks" for k, _ in searches],
            )
            ax.set(ylabel="ms", title="search latency through gRPC (top_k 5)")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            out.append(self.save(fig, "rag-search", "search latency p50/p99 at 10k and 100k"))
        emb = data.get("embeddings") or {}
        variants = [v for v in ("fp32", "int8") if isinstance(emb.get(v), dict)]
        if variants:
            fig, ax = plt.subplots(figsize=(7, 3.4))
            width = 0.35
            for i, (key, label) in enumerate(
                (("direct_texts_s", "onnxruntime direct"), ("daemon_texts_s", "daemon (gRPC)"))
            ):
                xs = [j + (i - 0.5) * width for j in range(len(variants))]
                ax.bar(xs, [emb[v][key] for v in variants], width, label=label)
            st = emb.get("sentence_transformers_texts_s")
            if st:
                ax.axhline(st, color="gray", ls="--", label="sentence-transformers")
            ax.set_xticks(range(len(variants)), [f"MiniLM {v}" for v in variants])
            ax.set(ylabel="texts/s", title="embedding throughput (batches of 64)")
            ax.legend(fontsize=8)
            ax.grid(axis="y", alpha=0.3)
            out.append(self.save(fig, "rag-embed", "embedding throughput, daemon vs direct"))
        return out

    def soak(self, data: dict[str, Any]) -> list[str]:
        samples = data.get("samples") or []
        if not samples:
            return []
        out = []
        plt = self.plt
        warm = data.get("settings", {}).get("warmup_s", 0)
        ts = [s["t"] for s in samples]
        fig, ax = plt.subplots(figsize=(9, 3.6))
        ax.plot(ts, [s["rss_mb"] for s in samples], color="#1f5fa8", label="RSS (MB)")
        ax.set(xlabel="seconds", ylabel="resident memory, MB", title="daemon under load")
        ax.axvspan(0, warm, color="gray", alpha=0.15, label="warm-up")
        ax.set_ylim(bottom=0)
        ax2 = ax.twinx()
        ax2.plot(ts, [s["fds"] for s in samples], color="#c06000", label="open fds")
        ax2.plot(ts, [s["threads"] for s in samples], color="#6a3d9a", ls=":", label="threads")
        ax2.set_ylabel("open fds, threads")
        ax2.set_ylim(bottom=0)
        lines = ax.get_legend_handles_labels()
        lines2 = ax2.get_legend_handles_labels()
        ax.legend(lines[0] + lines2[0], lines[1] + lines2[1], fontsize=8, loc="lower right")
        ax.grid(alpha=0.3)
        out.append(self.save(fig, "soak-memory", "soak: daemon RSS, fds and threads over time"))
        series = data.get("series") or {}
        if series:
            fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 3.8), sharey=True)
            for kind, rows in series.items():
                xs = [r[0] for r in rows]
                a1.plot(xs, [r[2] for r in rows], label=kind, lw=1)
                a2.plot(xs, [r[3] for r in rows], label=kind, lw=1)
            for a, title in ((a1, "p50 latency per 10 s"), (a2, "p99 latency per 10 s")):
                a.set_yscale("log")
                a.axvspan(0, warm, color="gray", alpha=0.15)
                a.set(xlabel="seconds", title=title)
                a.grid(alpha=0.3, which="both")
            a1.set_ylabel("ms (log)")
            a2.legend(fontsize=7, ncol=2)
            out.append(self.save(fig, "soak-latency", "soak: latency per kind over time"))
            fig, ax = plt.subplots(figsize=(10.5, 3.8))
            kinds = list(series)
            xs = sorted({r[0] for rows in series.values() for r in rows})
            rates = [{r[0]: r[1] for r in series[k]} for k in kinds]
            ax.stackplot(xs, [[rate.get(x, 0.0) for x in xs] for rate in rates], labels=kinds)
            ex = data.get("exhausted_series") or []
            if ex:
                ax.plot([r[0] for r in ex], [r[1] for r in ex], "k--", lw=1,
                        label="RESOURCE_EXHAUSTED answers")  # fmt: skip
            ax.axvspan(0, warm, color="gray", alpha=0.15)
            ax.set(xlabel="seconds", ylabel="answers/s",
                   title="successful answers per kind, stacked (10 s windows)")  # fmt: skip
            ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0))
            ax.grid(alpha=0.3)
            out.append(self.save(fig, "soak-throughput", "soak: throughput per kind over time"))
        return out


# -- the document ---------------------------------------------------------------------------


def machine_section(results: dict[str, dict[str, Any]]) -> list[str]:
    m = next(
        (r["machine"] for r in results.values() if isinstance(r.get("machine"), dict)),
        common.machine(),
    )
    now = common.machine()
    packages = m.get("packages") or now["packages"]
    dates = sorted(r["machine"].get("date", "") for r in results.values() if r.get("machine"))
    rows = [
        ["CPU", cell(f"{m.get('cpu', '?')}, {m.get('cores', '?')} logical cores")],
        ["RAM", f"{m.get('ram_gb') or now['ram_gb']} GB"],
        ["kernel", cell(str(m.get("kernel") or now["kernel"]))],
        ["Python", str(m.get("python", now["python"]))],
        *[[name, str(version)] for name, version in packages.items()],
        ["run", f"{dates[0]} to {dates[-1]}" if dates else now["date"]],
    ]
    return ["## The machine", "", md_table(["", ""], rows), ""]


def benchmark_section(
    name: str, data: dict[str, Any] | None, failed: bool, plots: Plots | None
) -> list[str]:
    lines = [f"## {title(name)}", ""]
    run = f"`.venv/bin/python tests/bench/{name}.py --json build/bench/{name}.json`"
    if data is None:
        lines += [f"No results: {run} {'failed' if failed else 'did not run'}.", ""]
        return lines
    doc = (data.get("_doc") or "").strip().split("\n\n")[0].replace("\n", " ")
    if doc:
        lines += [doc, ""]
    m = data.get("machine") or {}
    load = m.get("loadavg") or []
    start = (data.get("machine_start") or data.get("info", {}).get("machine_start") or {}).get(
        "loadavg"
    )
    when = f"Run {m.get('date', '?')}"
    if start and load:
        when += f", load average {start[0]:.1f} → {load[0]:.1f} on {m.get('cores', '?')} cores"
    elif load:
        when += f", load average {load[0]:.1f}"
    lines += [f"{when}. Alone: {run}." + (" **The script exited non-zero.**" if failed else ""), ""]
    figures = data.get("figures")
    if name == "soak" and figures:  # the per-kind figures are in the soak's own table
        kinds = tuple(f"{k}: " for k in data.get("by_kind", {}))
        figures = [f for f in figures if not f["name"].startswith(kinds)]
    if figures is None:
        lines += ["(This result file carries no figures.)", ""]
    elif figures:
        headers = [
            "figure",
            "daemon",
            "compared with (same run)",
            "ratio / difference",
            "target",
            "",
        ]
        lines += [md_table(headers, [figure_row(f) for f in figures]), ""]
        passed = sum(f.get("pass") is True for f in figures)
        missed = sum(f.get("pass") is False for f in figures)
        if passed or missed:
            lines += [f"{passed} of {passed + missed} targets met.", ""]
    if name == "soak":
        lines += soak_details(data)
    if plots is not None:
        images = []
        try:
            special = getattr(plots, name, None)
            if callable(special):
                images += special(data)
            ratio_plot = plots.ratios(name, figures or []) if name != "soak" else None
            if ratio_plot:
                images.append(ratio_plot)
        except (KeyError, TypeError, ValueError) as e:  # a changed result layout: say so
            lines += [f"(plots skipped: {type(e).__name__}: {e})", ""]
        for image in images:
            lines += [image, ""]
    return lines


def soak_details(data: dict[str, Any]) -> list[str]:
    s = data.get("settings", {})
    by_kind = data.get("by_kind", {})
    rows = []
    for kind, v in by_kind.items():
        outcomes = v.get("outcomes", {})
        errors = {
            c: n
            for c, n in outcomes.items()
            if c not in ("OK", "CANCELLED_BY_CLIENT", "RESOURCE_EXHAUSTED")
        }
        rows.append(
            [
                kind,
                f"{v['throughput_per_s']:.2f}" if v.get("throughput_per_s") is not None else "n/a",
                num(v.get("p50_ms")),
                num(v.get("p99_ms")),
                f"{num(v.get('ttft_p50_ms'))} / {num(v.get('ttft_p99_ms'))}"
                if v.get("ttft_p50_ms") is not None
                else "",
                str(outcomes.get("OK", 0) + outcomes.get("CANCELLED_BY_CLIENT", 0)),
                str(outcomes.get("RESOURCE_EXHAUSTED", 0)),
                ", ".join(f"{c} {n}" for c, n in errors.items()) or "0",
            ]
        )
    mem = data.get("memory", {})
    checks = data.get("checks", {})
    lines = [
        f"{s.get('clients')} clients in {s.get('workers')} process(es) on {s.get('channels')} "
        f"gRPC channels, {num(s.get('warmup_s'))} s warm-up + {num(s.get('duration_s'))} s "
        f"measured; {s.get('threads')} inference thread(s); prompt cache "
        f"{s.get('prompt_cache_mb')} MB; {s.get('chunks')} chunks in the searched collection. "
        f"Per kind, after warm-up (answers/s, latency of successful calls in ms; the counts "
        f"cover the whole run):",
        "",
        md_table(
            [
                "kind",
                "ok/s",
                "p50 ms",
                "p99 ms",
                "first chunk p50 / p99 ms",
                "ok",
                "RESOURCE_EXHAUSTED",
                "errors",
            ],
            rows,
        ),
        "",
        f"Memory: {num(mem.get('rss_mb_at_warmup_end'), 'MB')} after warm-up, "
        f"{num(mem.get('rss_mb_at_end'), 'MB')} at the end (medians of "
        f"{num(mem.get('window_s'))} s windows), "
        f"max {num(mem.get('rss_mb_max'), 'MB')}, trend "
        f"{num(mem.get('rss_mb_slope_per_hour'), 'MB')}/h. Open fds "
        f"{num(mem.get('fds_min_after_warmup'))}-{num(mem.get('fds_max_after_warmup'))}, threads "
        f"{num(mem.get('threads_min_after_warmup'))}-{num(mem.get('threads_max_after_warmup'))} "
        f"after warm-up. CPU: daemon {num(data.get('daemon_cores'))} cores, clients "
        f"{num(data.get('client_cores'))} cores.",
        "",
        "Checks: "
        + "; ".join(f"{k}: {'pass' if v else '**FAIL**'}" for k, v in checks.items())
        + ".",
        "",
    ]
    return lines


def write_report(
    results_dir: Path, output: Path, plots_dir: Path | None, quick: bool
) -> tuple[int, int]:
    names = benchmark_names()
    results: dict[str, dict[str, Any]] = {}
    for path in sorted(results_dir.glob("*.json")):
        try:
            data = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as e:
            print(f"skipping {path}: {e}", file=sys.stderr)
            continue
        results[path.stem] = data
    for name, data in results.items():
        script = BENCH_DIR / f"{name}.py"
        if script.exists():
            text = script.read_text()
            if text.startswith('"""'):
                data["_doc"] = text[3 : text.index('"""', 3)]
    failed_file = results_dir / "failed"
    failed = set(failed_file.read_text().split()) if failed_file.exists() else set()
    plots = Plots(plots_dir, output) if plots_dir is not None else None
    lines = ["# Benchmarks", ""]
    if quick:
        lines += [
            "> **QUICK RUN.** These figures come from `make bench-quick`: short settings that",
            "> check the pipeline (scripts, JSON, this report), not the project's results. The",
            "> real figures come from `make bench` on an otherwise idle machine.",
            "",
        ]
    lines += [
        "Generated by `tests/bench/report.py` from the JSON the benchmarks wrote; do not edit by "
        "hand. To regenerate (about 25 minutes on 2 cores; the machine should be otherwise idle):",
        "",
        "```sh",
        "make bench            # every tests/bench script, then this report",
        "make bench-quick      # the same with short settings, to check the pipeline",
        "```",
        "",
        "Every figure is the daemon's, measured in the same run as the library or program it "
        "wraps or competes with (the machines here are shared and noisy, so ratios matter more "
        "than absolute values). `tests/bench/README.md` describes each benchmark's method.",
        "",
    ]
    lines += machine_section(results)
    summary = []
    total_pass = total_fail = 0
    for name in names:
        data = results.get(name)
        figures = (data or {}).get("figures") or []
        p = sum(f.get("pass") is True for f in figures)
        f_ = sum(f.get("pass") is False for f in figures)
        total_pass += p
        total_fail += f_
        state = "no results" if data is None else ("exited non-zero" if name in failed else "ran")
        summary.append(
            [
                f"[{name}](#{anchor(title(name))})",
                state,
                str(p),
                str(f_) if not f_ else f"**{f_}**",
            ]
        )
    lines += ["## Summary", "", md_table(["benchmark", "", "targets met", "missed"], summary), ""]
    for name in names:
        lines += benchmark_section(name, results.get(name), name in failed, plots)
    extra = sorted(set(results) - set(names))
    for name in extra:
        lines += benchmark_section(name, results[name], name in failed, plots)
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text("\n".join(lines).rstrip("\n") + "\n")
    return total_pass, total_fail


def title(name: str) -> str:
    return TITLES.get(name, f"{name}.py")


def anchor(heading: str) -> str:
    """GitHub's anchor of a heading: lower case, punctuation dropped, spaces to dashes."""
    keep = "".join(c for c in heading.lower() if c.isalnum() or c in " -_")
    return keep.replace(" ", "-")


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    ap.add_argument("results", nargs="?", default="build/bench", help="folder of NAME.json")
    ap.add_argument("--output", default="docs/benchmarks.md")
    ap.add_argument("--plots", default="docs/benchmarks", help="folder for the PNG plots")
    ap.add_argument("--no-plots", action="store_true")
    ap.add_argument("--quick", action="store_true", help="mark the document as a quick run")
    # make bench passes its BENCH_ARGS to every script and to this: ignore the scripts' options.
    args, ignored = ap.parse_known_args(argv)
    if ignored:
        print(f"report: ignoring {' '.join(ignored)}", file=sys.stderr)
    results = Path(args.results)
    if not results.is_dir():
        print(f"no results folder {results}: run the benchmarks with --json first", file=sys.stderr)
        return 2
    output = Path(args.output)
    passed, missed = write_report(
        results, output, None if args.no_plots else Path(args.plots), args.quick
    )
    print(f"wrote {output}: {passed} targets met, {missed} missed")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
