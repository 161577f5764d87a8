"""OTA updates: SHA-256 verification speed against `sha256sum`, switch and rollback
time, and what HTTP Range resume saves.

    .venv/bin/python tests/bench/updates.py [--size-mb 1024] [--rounds 3] [--json out.json]

- verification: the updater's sha256_file() and coreutils `sha256sum` on the same file
  (default 1 GiB of random bytes, in the page cache: both read it warm), alternating,
  median of --rounds; the ratio is ours / sha256sum throughput (target >= 0.9);
- switch: a real daemon in this process updates a model through its UpdateManager from
  a real HTTP server on 127.0.0.1; the time from the rename of `current` to the
  registry serving the new file (the next request loads it; loading is not counted);
- rollback: the same daemon gets a signed release that fails its health check; the
  time to switch back and have the registry serve the old file again;
- resume: a download cut by the server at 50 % and at 90 %: bytes sent over the wire
  with Range resume against a restart from zero (measured with a server that ignores
  Range), and the time of each.
Targets: ratio >= 0.9, switch and rollback <= 100 ms (model load excluded).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

if __package__ in (None, ""):  # run as a script: make `tests` and `rustaid` importable
    sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from tests.bench import common

TARGET_RATIO = 0.9
TARGET_SWITCH_MS = 100.0


def bench_hash(path: Path, rounds: int) -> dict[str, Any]:
    """sha256_file() against `sha256sum` (the target) and `openssl dgst -sha256` (the
    same library hashlib uses: what is left is our own overhead)."""
    import shutil

    from rustaid.updates.download import sha256_file

    size = path.stat().st_size
    commands = {"sha256sum": ["sha256sum", str(path)]}
    if shutil.which("openssl"):
        commands["openssl"] = ["openssl", "dgst", "-sha256", "-r", str(path)]
    subprocess.run(commands["sha256sum"], check=True, capture_output=True)  # warm the cache
    times: dict[str, list[float]] = {"ours": [], **{name: [] for name in commands}}
    digests = set()
    arms = list(times)
    for i in range(rounds):
        for arm in arms if i % 2 == 0 else arms[::-1]:
            t0 = time.perf_counter()
            if arm == "ours":
                digests.add(sha256_file(path))
            else:
                out = subprocess.run(commands[arm], check=True, capture_output=True, text=True)
                digests.add(out.stdout.split()[0].lstrip("*"))
            took = time.perf_counter() - t0
            times[arm].append(took)
            speed = size / (1 << 20) / took
            print(f"  hash round {i + 1} {arm:9s} {speed:7.0f} MiB/s", file=sys.stderr)
    assert len(digests) == 1, f"the SHA-256 disagree: {digests}"
    mib = size / (1 << 20)
    speeds = {arm: mib / statistics.median(t) for arm, t in times.items()}
    result: dict[str, Any] = {
        "file_mib": mib,
        "ours_mib_s": speeds["ours"],
        "sha256sum_mib_s": speeds["sha256sum"],
        "ratio": speeds["ours"] / speeds["sha256sum"],
        "seconds": {arm: common.spread(t) for arm, t in times.items()},
    }
    if "openssl" in speeds:
        result["openssl_mib_s"] = speeds["openssl"]
        result["ratio_openssl"] = speeds["ours"] / speeds["openssl"]
    return result


async def bench_switch(root: Path, rounds: int) -> dict[str, Any]:
    from rustaid.testing.daemon import isolated_settings, running_daemon
    from rustaid.testing.synthetic import write_llama_gguf, write_truncated_copy
    from rustaid.updates.publish import Repository, generate_key, load_private_key
    from tests.updates.conftest import updates_config, write_config
    from tests.updates.server import serve

    key_file, _, public = generate_key(root / "key")
    key = load_private_key(key_file)
    good = [write_llama_gguf(root / f"good{i}.gguf", seed=20 + i) for i in range(2)]
    (root / "repo").mkdir()
    switch_ms: list[float] = []
    rollback_ms: list[float] = []
    with serve(root / "repo") as server:
        repo = Repository(root / "repo")
        section = updates_config(server.url, [])
        section["trusted_keys"] = [public]
        write_config(root / "data", section)
        async with running_daemon(isolated_settings(root / "data")) as d:
            manager = d.updates  # type: ignore[attr-defined]
            version = 0

            async def release(file: Path) -> Any:
                nonlocal version
                version += 1
                repo.add(file, channel="stable", version=f"{version}.0", artifact_id="chat")
                repo.sign([key])
                _, (record,) = await manager.apply(wait=True)
                return record

            await release(good[0])  # first install (no switch from a previous version)
            for i in range(rounds):
                record = await release(good[(i + 1) % 2])
                assert record.outcome == "committed", record.message
                switch_ms.append(manager.timings["switch_ms"])
                broken = write_truncated_copy(good[i % 2], root / f"broken{i}.gguf", 0.5 + i / 100)
                record = await release(broken)
                assert record.outcome == "rolled_back", record.message
                rollback_ms.append(manager.timings["rollback_ms"])
                print(f"  round {i + 1}: switch {switch_ms[-1]:.1f} ms, rollback "
                      f"{rollback_ms[-1]:.1f} ms", file=sys.stderr)  # fmt: skip
    return {"switch_ms": common.spread(switch_ms), "rollback_ms": common.spread(rollback_ms)}


def bench_resume(root: Path, size_mb: int) -> dict[str, Any]:
    from rustaid.updates.download import DownloadFailed, download
    from tests.updates.server import serve

    size = size_mb << 20
    path = "artifacts/blob/1/blob.gguf"
    (root / "repo" / path).parent.mkdir(parents=True)
    with (root / "repo" / path).open("wb") as f:
        for _ in range(size_mb):
            f.write(os.urandom(1 << 20))
    out: dict[str, Any] = {"file_mib": size_mb}
    with serve(root / "repo") as server:
        for cut_fraction in (0.5, 0.9):
            cut = int(size * cut_fraction)
            row = {}
            for mode in ("resume", "restart"):
                dest = root / f"{mode}.part"
                dest.unlink(missing_ok=True)
                server.requests.clear()
                server.fault(path, "truncate", cut)
                if mode == "restart":  # the second request gets the whole file again
                    server.faults[path].times = 1
                    t0 = time.perf_counter()
                    with contextlib.suppress(DownloadFailed):  # cut, no retry
                        download(f"{server.url}/{path}", dest, size, attempts=1)
                    server.fault(path, "no_range")  # then a server without Range
                    download(f"{server.url}/{path}", dest, size, attempts=2, backoff=0)
                else:
                    t0 = time.perf_counter()
                    download(f"{server.url}/{path}", dest, size, attempts=2, backoff=0)
                took = time.perf_counter() - t0
                sent = [r.sent for r in server.requests_for("/" + path)]
                # After the cut: what the second request had to send.
                row[mode] = {"bytes": sum(sent), "after_cut": sent[-1], "seconds": took}
            row["saved_bytes"] = row["restart"]["bytes"] - row["resume"]["bytes"]
            row["saved_fraction"] = row["saved_bytes"] / row["restart"]["bytes"]
            out[f"cut_{int(cut_fraction * 100)}"] = row
    return out


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--size-mb", type=int, default=1024, help="hashed file size (MiB)")
    parser.add_argument("--resume-mb", type=int, default=64, help="resumed download size (MiB)")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--switch-rounds", type=int, default=5)
    parser.add_argument("--json", help="write the results here")
    args = common.parse_args(
        parser, argv, quick={"size_mb": 64, "resume_mb": 8, "rounds": 1, "switch_rounds": 2}
    )
    results: dict[str, Any] = {"machine": common.machine()}
    with tempfile.TemporaryDirectory(prefix="rustaid-bench-updates-") as tmp:
        root = Path(tmp)
        big = root / "big.bin"
        print(f"writing {args.size_mb} MiB of random bytes...", file=sys.stderr)
        with big.open("wb") as f:
            for _ in range(args.size_mb // 16):
                f.write(os.urandom(16 << 20))
        results["verify"] = bench_hash(big, args.rounds)
        big.unlink()
        results["switch"] = asyncio.run(bench_switch(root / "switch", args.switch_rounds))
        results["resume"] = bench_resume(root / "resume", args.resume_mb)
    v, s, r = results["verify"], results["switch"], results["resume"]
    rows = [
        ["SHA-256 ours", f"{v['ours_mib_s']:.0f} MiB/s", f"{v['file_mib']:.0f} MiB file", ""],
        ["SHA-256 sha256sum", f"{v['sha256sum_mib_s']:.0f} MiB/s", "", ""],
        *(
            [["SHA-256 openssl dgst", f"{v['openssl_mib_s']:.0f} MiB/s",
              f"ours/openssl {v['ratio_openssl']:.3f}", ""]]
            if "openssl_mib_s" in v else []
        ),
        ["ratio ours/sha256sum", f"{v['ratio']:.3f}", f">= {TARGET_RATIO}",
         "ok" if v["ratio"] >= TARGET_RATIO else "MISSED"],
        ["switch (rename -> serving)", f"{s['switch_ms']['median']:.1f} ms",
         f"<= {TARGET_SWITCH_MS:.0f} ms", "ok" if s["switch_ms"]["median"] <= TARGET_SWITCH_MS
         else "MISSED"],
        ["rollback (health fail -> old serving)", f"{s['rollback_ms']['median']:.1f} ms",
         f"<= {TARGET_SWITCH_MS:.0f} ms", "ok" if s["rollback_ms"]["median"] <= TARGET_SWITCH_MS
         else "MISSED"],
    ]  # fmt: skip
    for cut in ("cut_50", "cut_90"):
        row = r[cut]
        mib = 1 << 20
        rows.append([
            f"cut at {cut[4:]} % of {r['file_mib']} MiB: resume",
            f"{row['resume']['after_cut'] / mib:.1f} MiB after the cut",
            f"restart: {row['restart']['after_cut'] / mib:.1f} MiB",
            f"total {row['resume']['bytes'] / mib:.1f} vs {row['restart']['bytes'] / mib:.1f} "
            f"MiB: {row['saved_fraction'] * 100:.0f} % less",
        ])  # fmt: skip
    print(common.table(["measure", "value", "reference", ""], rows))
    common.write_json(args.json, results, figures(results))
    return 0


def figures(results: dict[str, Any]) -> list[dict[str, Any]]:
    """The figures of docs/benchmarks.md: the updater against coreutils and a download
    that starts over."""
    f = common.figure
    v, s, r = results["verify"], results["switch"], results["resume"]
    out = [
        f(
            "SHA-256 verification",
            v["ours_mib_s"],
            "MiB/s",
            peer="sha256sum",
            peer_value=v["sha256sum_mib_s"],
            target=f">= {TARGET_RATIO}",
            on="ratio",
        ),
    ]
    if "openssl_mib_s" in v:
        out.append(
            f(
                "SHA-256 verification",
                v["ours_mib_s"],
                "MiB/s",
                peer="openssl dgst",
                peer_value=v["openssl_mib_s"],
            )
        )
    out += [
        f(
            "switch: rename -> serving (median)",
            s["switch_ms"]["median"],
            "ms",
            target=f"<= {TARGET_SWITCH_MS:g}",
        ),
        f(
            "rollback: health failure -> old serving (median)",
            s["rollback_ms"]["median"],
            "ms",
            target=f"<= {TARGET_SWITCH_MS:g}",
        ),
    ]
    for cut in ("cut_50", "cut_90"):
        row = r[cut]
        out.append(
            f(
                f"bytes sent, download cut at {cut[4:]} % of {r['file_mib']} MiB, resumed",
                row["resume"]["bytes"] / (1 << 20),
                "MiB",
                peer="restart from zero",
                peer_value=row["restart"]["bytes"] / (1 << 20),
            )
        )
    return out  # fmt: skip


if __name__ == "__main__":
    raise SystemExit(main())
