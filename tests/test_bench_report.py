"""The benchmark pipeline's own logic: figures, --quick, the soak's analysis, and the
report `make bench` writes (docs/benchmarks.md). The benchmarks themselves are scripts,
run by `make bench`, not tests."""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import pytest

from tests.bench import common, report, soak


def test_figure_checks_the_target_on_value_ratio_or_difference() -> None:
    f = common.figure("tokens/s", 97.0, "tok/s", peer="direct", peer_value=100.0,
                      target=">= 0.97", on="ratio")  # fmt: skip
    assert f["ratio"] == pytest.approx(0.97) and f["difference"] == pytest.approx(-3.0)
    assert f["pass"] is True and f["compared_with"] == {"name": "direct", "value": 100.0}
    assert common.figure("x", 96.0, "", peer="p", peer_value=100.0, target=">= 0.97",
                         on="ratio")["pass"] is False  # fmt: skip
    ttft = common.figure("ttft", 86.0, "ms", peer="p", peer_value=80.0, target="<= 5",
                         on="difference")  # fmt: skip
    assert ttft["pass"] is False and ttft["target"]["text"] == "difference <= 5"
    assert common.figure("rss", 4.9, "%", target="< 5")["pass"] is True
    assert common.figure("no target", 1.0, "")["pass"] is None


def test_figure_without_a_measurement_fails_its_target_and_says_why() -> None:
    nan = common.figure("p50", math.nan, "ms", target="<= 5")
    assert nan["value"] is None and nan["pass"] is False
    no_peer = common.figure("r", 1.0, "", peer="p", peer_value=None, target=">= 1", on="ratio")
    assert no_peer["ratio"] is None and no_peer["pass"] is False
    with pytest.raises(ValueError, match="op one of"):
        common.figure("x", 1.0, "", target="about 5")


def test_write_json_adds_figures_and_machine_and_writes_strict_json(tmp_path: Path) -> None:
    out = tmp_path / "sub" / "x.json"
    common.write_json(str(out), {"value": math.inf}, [common.figure("a", 1.0, "s")])
    data = json.loads(out.read_text(), parse_constant=lambda c: pytest.fail(f"{c} in JSON"))
    assert data["value"] is None and data["figures"][0]["name"] == "a"
    assert {"cpu", "cores", "ram_gb", "kernel", "python", "packages"} <= set(data["machine"])
    assert "llama-cpp-python" in data["machine"]["packages"]
    common.write_json(None, {"ignored": True})  # no --json: nothing written, no error


def test_quick_replaces_defaults_but_not_options_given() -> None:
    def parser() -> argparse.ArgumentParser:
        p = argparse.ArgumentParser()
        p.add_argument("--runs", type=int, default=5)
        p.add_argument("--tokens", type=int, default=128)
        return p

    args = common.parse_args(parser(), [], quick={"runs": 1, "tokens": 16})
    assert (args.runs, args.tokens, args.quick, args.json) == (5, 128, False, None)
    args = common.parse_args(parser(), ["--quick", "--runs", "3", "--json", "o.json"],
                             quick={"runs": 1, "tokens": 16})  # fmt: skip
    assert (args.runs, args.tokens, args.json) == (3, 16, "o.json")


def _records(n: int, kind: str, outcome: str, start: float, step: float) -> soak.Records:
    rec = soak.Records()
    for i in range(n):
        rec.t.append(start + i * step)
        rec.kind.append(kind)
        rec.outcome.append(outcome)
        rec.latency_ms.append(float(i % 100 + 1))
        rec.ttft_ms.append(-1.0)
    return rec


def test_soak_analysis_separates_warmup_and_measures_growth() -> None:
    recs = [
        _records(1000, "search", soak.OK, 0.0, 0.1),  # 0-100 s
        _records(10, "search", soak.EXHAUSTED, 50.0, 1.0),
        _records(5, "search", "INTERNAL", 1.0, 1.0),
    ]
    # RSS flat during warm-up (first 20 s), then +10 % by the end; fds steady, one spike.
    samples = [
        {"t": float(t), "rss_mb": 100.0 if t < 60 else 110.0, "fds": 30.0 + (t == 50),
         "threads": 20.0, "cpu_s": t / 2}
        for t in range(0, 101, 2)
    ]  # fmt: skip
    a = soak.analyse(recs, samples, warmup=20.0, end=100.0, mix={"search": 1.0},
                     max_growth_pct=5.0, sample_s=2.0)  # fmt: skip
    k = a["by_kind"]["search"]
    assert k["ok_after_warmup"] == 800 and k["throughput_per_s"] == pytest.approx(10.0)
    assert k["outcomes"] == {"OK": 1000, "RESOURCE_EXHAUSTED": 10, "INTERNAL": 5}
    assert k["p50_ms"] == pytest.approx(50.5, abs=1)
    m = a["memory"]
    assert m["window_s"] == pytest.approx(8.0)
    assert m["rss_growth_pct"] == pytest.approx(10.0)
    assert m["fds_at_warmup_end"] == 30 and m["fds_at_end"] == 30
    assert m["rss_mb_slope_per_hour"] > 0
    assert all(row[0] < 100 for row in a["series"]["search"])


def _results(folder: Path) -> None:
    folder.mkdir()
    gen = {
        "figures": [
            common.figure("tokens/s", 80.0, "tok/s", peer="llama-cpp-python direct",
                          peer_value=100.0, target=">= 0.97", on="ratio"),
            common.figure("ttft", 81.0, "ms", peer="llama-cpp-python direct", peer_value=80.0,
                          target="<= 5", on="difference"),
        ],
        "samples": [
            {"arm": arm, "round": r, "tokens_per_s": tps, "ttft_ms": 80.0, "clean_round": r != 2}
            for r in (1, 2) for arm, tps in (("direct", 100.0), ("daemon", 80.0))
        ],
    }  # fmt: skip
    common.write_json(str(folder / "generate.json"), gen)
    samples = [{"t": float(t), "rss_mb": 300.0, "fds": 30, "threads": 28, "cpu_s": t * 0.5,
                "client_cpu_s": 0.0, "load1": 1.0} for t in range(0, 40, 2)]  # fmt: skip
    soak_data = {
        "settings": {"warmup_s": 10, "duration_s": 30, "clients": 8, "workers": 1},
        "samples": samples,
        "series": {"search": [[5.0, 10.0, 4.0, 9.0], [15.0, 11.0, 4.5, 9.5]]},
        "exhausted_series": [[5.0, 1.0]],
        "by_kind": {"search": {"throughput_per_s": 10.5, "p50_ms": 4.2, "p99_ms": 9.1,
                               "outcomes": {"OK": 400, "RESOURCE_EXHAUSTED": 3}}},
        "memory": {"rss_mb_at_warmup_end": 300.0, "rss_mb_at_end": 300.0},
        "checks": {"no crash": True},
        "figures": [common.figure("daemon RSS growth after warm-up", 0.0, "%", target="< 5"),
                    common.figure("search: throughput", 10.5, "req/s")],
    }  # fmt: skip
    common.write_json(str(folder / "soak.json"), soak_data)
    (folder / "failed").write_text("soak\n")


def test_report_tables_targets_and_missing_benchmarks(tmp_path: Path) -> None:
    _results(tmp_path / "results")
    out = tmp_path / "docs" / "benchmarks.md"
    passed, missed = report.write_report(tmp_path / "results", out, None, quick=False)
    text = out.read_text()
    assert (passed, missed) == (2, 1)
    assert "QUICK RUN" not in text and "make bench" in text.split("## The machine")[0]
    row = "| tokens/s | 80.0 tok/s | llama-cpp-python direct: 100 tok/s | 0.800x | ratio ≥ 0.97 |"
    assert row + " **FAIL** |" in text
    assert "| +1.00 ms | difference ≤ 5 ms | pass |" in text
    assert "llama-cpp-python |" in text  # the machine table lists the versions
    # Every script in tests/bench is listed; those without results say so.
    assert "No results: `.venv/bin/python tests/bench/idle.py" in text
    assert "**The script exited non-zero.**" in text.split("## Soak")[1]
    # The soak's per-kind figures are in its own table, not repeated in the figures table.
    assert "search: throughput" not in text and "| search | 10.50 |" in text


def test_report_quick_run_banner_and_plots(tmp_path: Path) -> None:
    pytest.importorskip("matplotlib")
    _results(tmp_path / "results")
    out = tmp_path / "docs" / "benchmarks.md"
    plots = tmp_path / "docs" / "benchmarks"
    report.write_report(tmp_path / "results", out, plots, quick=True)
    text = out.read_text()
    assert text.splitlines()[2].startswith("> **QUICK RUN.**")
    made = {p.name for p in plots.glob("*.png")}
    assert {"generate.png", "generate-ratios.png", "soak-memory.png", "soak-latency.png",
            "soak-throughput.png"} <= made  # fmt: skip
    for name in made:
        assert f"](benchmarks/{name})" in text
        assert (plots / name).read_bytes().startswith(b"\x89PNG")
