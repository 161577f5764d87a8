"""`rustaictl` niceties for people at a terminal: shell completion generated from the
parser (run by real bash, zsh and fish), `tools show`, `tokenize` without --model, and
tables that fit the terminal's width."""

from __future__ import annotations

import io
import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from rustaid_client.cli import main

RUSTAICTL = str(Path(sys.executable).with_name("rustaictl"))


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def completion(shell: str) -> str:
    r = subprocess.run([RUSTAICTL, "completion", shell], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    return r.stdout


BASH_COMPLETE = """
source <({rustaictl} completion bash)
complete_words() {{
    COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); _rustaictl; echo "${{COMPREPLY[*]}}"
}}
complete_words rustaictl mod
complete_words rustaictl models l
complete_words rustaictl generate --priority ''
complete_words rustaictl rag index --by
complete_words rustaictl completion b
"""


def test_bash_completion(tmp_path: Path) -> None:
    script = BASH_COMPLETE.format(rustaictl=RUSTAICTL)
    r = subprocess.run(["bash", "-c", script], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == [
        "models",
        "list load",
        "interactive background",
        "--by-path",
        "bash",
    ]


def test_zsh_completion(tmp_path: Path) -> None:
    if shutil.which("zsh") is None:
        pytest.skip("zsh is not installed (make system-deps installs it)")
    script = tmp_path / "c.zsh"
    script.write_text(completion("zsh"))
    r = subprocess.run(
        ["zsh", "-f", "-c", f"source {script}; complete -p rustaictl"],
        capture_output=True,
        text=True,
        timeout=30,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    assert "_rustaictl rustaictl" in r.stdout


def test_fish_completion(tmp_path: Path) -> None:
    if shutil.which("fish") is None:
        pytest.skip("fish is not installed (make system-deps installs it)")
    script = tmp_path / "rustaictl.fish"
    script.write_text(completion("fish"))
    r = subprocess.run(
        [
            "fish",
            "--no-config",
            "-c",
            f"source {script}; complete -C 'rustaictl models l'; echo ===; "
            f"complete -C 'rustaictl generate --priority '",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env={"HOME": str(tmp_path), "PATH": "/usr/bin:/bin"},
    )
    assert r.returncode == 0, r.stderr
    models, priorities = r.stdout.split("===\n")
    assert sorted(models.split()) == ["list", "load"]
    assert sorted(priorities.split()) == ["background", "interactive"]


def test_completion_needs_no_daemon(capsys: pytest.CaptureFixture[str], unreachable: str) -> None:
    code, out, err = run(capsys, "--address", unreachable, "completion", "bash")
    assert (code, err) == (0, "") and "complete -o default -F _rustaictl rustaictl" in out
    code, _, err = run(capsys, "completion", "tcsh")
    assert code == 2 and "invalid choice: 'tcsh'" in err


def test_tools_show(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, err = run(capsys, "--address", address, "tools", "show", "calculator")
    assert (code, err) == (0, "")
    assert out.startswith("name:")
    assert "arguments:\n  {\n" in out and '"expression"' in out  # the schema, indented
    code, out, _ = run(capsys, "--address", address, "--json", "tools", "show", "calculator")
    tool = json.loads(out)
    assert tool["name"] == "calculator" and json.loads(tool["parametersSchema"])["type"]
    code, out, err = run(capsys, "--address", address, "tools", "show", "nope")
    assert code == 2 and "no tool named 'nope'" in err and "calculator" in err


def test_tokenize_without_a_model_uses_the_routers_pick(
    capsys: pytest.CaptureFixture[str], address: str
) -> None:
    code, out, err = run(capsys, "--address", address, "tokenize", "hello world")
    assert code == 0, err
    picked = err.split("model ", 1)[1].split(" ", 1)[0]
    assert "picked by the router; --model chooses" in err
    code, chosen, _ = run(capsys, "--address", address, "tokenize", "hello world", "-m", picked)
    assert code == 0 and chosen == out


def test_tables_fit_the_terminal(
    capsys: pytest.CaptureFixture[str], address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    code, wide, _ = run(capsys, "--address", address, "plugins", "list")
    assert code == 0
    assert max(len(line) for line in wide.splitlines()) > 60  # it needs fitting
    monkeypatch.setenv("COLUMNS", "60")
    code, narrow, _ = run(capsys, "--address", address, "plugins", "list")
    assert code == 0
    assert max(len(line) for line in narrow.splitlines()) <= 60
    # Nothing is lost: the narrow table holds every character of the wide one.
    assert sorted("".join(wide.split())) == sorted("".join(narrow.split()))
    assert len(narrow.splitlines()) > len(wide.splitlines())  # long cells wrapped


def test_index_progress_advances_by_bytes_with_rate_and_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from rustaid_client import cli

    err = io.StringIO()
    monkeypatch.setattr(cli.output, "stderr", lambda: err)
    clock = iter([100.0, 102.0, 104.0])
    monkeypatch.setattr(cli.rag.time, "monotonic", lambda: next(clock))
    progress = cli.Progress(3, True, total_bytes=1000)  # started at 100 s
    progress.update("small.md", 10, 100)  # 102 s: 10 % of the bytes in 2 s
    first = err.getvalue().rsplit("\r", 1)[-1]
    assert first.startswith("[##----------------------] 1/3 files, 10 chunks (5/s), 2.0 s")
    assert "ETA 0:18" in first
    progress.update("big.pdf", 70, 800)  # 104 s: 90 %
    second = err.getvalue().rsplit("\r", 1)[-1]
    assert second.startswith("[#####################---] 2/3 files, 80 chunks (20/s), 4.0 s")
    assert "ETA 0:00" in second
