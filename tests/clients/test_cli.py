"""`rustaictl` against a real daemon: in-process through main(), and as real processes."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from rustaid_client.cli import friendly, human_size, main

from rustaid.api.v1 import models_pb2

ROOT = Path(__file__).resolve().parents[2]


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    out, err = capsys.readouterr()
    return code, out, err


def json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines() if line.strip()]


def stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.StringIO(text))


# ---------------------------------------------------------------------- formatting


def test_friendly_names_and_sizes() -> None:
    assert friendly(models_pb2.ModelState, models_pb2.MODEL_STATE_LOADED) == "loaded"
    assert friendly(models_pb2.ModelState, models_pb2.MODEL_STATE_UNSPECIFIED) == "-"
    assert human_size(512) == "512 B"
    assert human_size(1536) == "1.5 KiB"
    assert human_size(3 * 1024**3) == "3.0 GiB"


# -------------------------------------------------------------------------- models


def test_models_list_shows_the_model(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, err = run(capsys, "--address", address, "models", "list")
    assert (code, err) == (0, "")
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "KIND", "STATE", "SIZE", "QUANT", "CONTEXT", "ERROR"]
    tiny = next(r.split() for r in rows if r.startswith("tiny "))
    assert tiny[1] == "llm"
    assert tiny[2] in {"available", "loaded"}
    assert tiny[3:5] == ["561.0", "KiB"]
    assert tiny[5:7] == ["F32", "512"]


def test_models_list_json_and_filters(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, "--address", address, "models", "list", "--json", "--kind", "llm")
    assert code == 0
    models = json.loads(out)["models"]
    assert "tiny" in [m["id"] for m in models]
    assert all(m["kind"] == "MODEL_KIND_LLM" for m in models)
    code, out, _ = run(capsys, "--address", address, "models", "list", "--kind", "embedding")
    assert (code, out.splitlines()[1:]) == (0, [])


def test_models_load_show_unload(capsys: pytest.CaptureFixture[str], address: str) -> None:
    base = ["--address", address, "models"]
    assert run(capsys, *base, "unload", "tiny")[0] == 0
    code, out, _ = run(capsys, *base, "load", "tiny", "--context", "256", "--threads", "1")
    assert code == 0
    assert out.startswith("loaded tiny in ")
    assert "(context 256, 1 threads)" in out
    code, out, _ = run(capsys, *base, "show", "tiny")
    fields = dict(line.split(":", 1) for line in out.splitlines())
    assert fields["state"].strip() == "loaded"
    assert fields["context"].strip() == "256"
    assert fields["architecture"].strip() == "llama"
    code, out, _ = run(capsys, *base, "unload", "tiny")
    assert (code, out) == (0, "unloaded tiny\n")
    code, out, _ = run(capsys, *base, "show", "tiny", "--json")
    assert json.loads(out)["state"] == "MODEL_STATE_AVAILABLE"


def test_models_select(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, "--address", address, "models", "select", "--prefer-local")
    assert code == 0
    assert out.splitlines()[0] in {"selected: tiny", "selected: slow"}
    assert "SCORE" in out


# ---------------------------------------------------------------------- generation


def test_generate_streams_text(capsys: pytest.CaptureFixture[str], address: str) -> None:
    argv = ["--address", address, "generate", "Hello", "--model", "tiny", "--max-tokens", "8"]
    code, out, err = run(capsys, *argv, "--seed", "3")
    assert (code, err) == (0, "")
    assert out.endswith("\n")
    assert out.strip()
    # The same text as the unary call.
    code, unary, _ = run(capsys, *argv, "--seed", "3", "--no-stream")
    assert (code, unary) == (0, out)


def test_generate_json_lines_end_with_done(
    capsys: pytest.CaptureFixture[str], address: str
) -> None:
    code, out, _ = run(
        capsys, "--address", address, "--json", "generate", "Hello", "-m", "tiny", "-n", "8"
    )
    assert code == 0
    events = json_lines(out)
    assert set(events[-1]) == {"done"}
    assert all(set(e) == {"chunk"} for e in events[:-1])
    assert [e["chunk"]["index"] for e in events[:-1]] == list(range(len(events) - 1))
    done = events[-1]["done"]
    assert done["modelId"] == "tiny"
    assert done["finishReason"].startswith("FINISH_REASON_")
    assert int(done["usage"]["completionTokens"]) <= 8


def test_generate_stats(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, _, err = run(
        capsys, "--address", address, "generate", "Hi", "-m", "tiny", "-n", "4", "--stats"
    )
    assert code == 0
    line = err.strip()
    assert line.startswith("[model tiny, ")
    assert " tokens/s, TTFT " in line
    assert " ms, finish " in line


def test_generate_reads_the_prompt_from_stdin(
    capsys: pytest.CaptureFixture[str], address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, "hello world")
    code, out, _ = run(
        capsys, "--address", address, "--json", "generate", "-", "-m", "tiny", "-n", "2"
    )
    assert code == 0
    # "hello world" is two tokens; the daemon saw it (plus BOS).
    assert json_lines(out)[-1]["done"]["usage"]["promptTokens"] == 3


def test_generate_with_a_grammar_file(
    capsys: pytest.CaptureFixture[str], address: str, tmp_path: Path
) -> None:
    grammar = tmp_path / "yes-no.gbnf"
    grammar.write_text('root ::= "yes" | "no"\n')
    code, out, _ = run(
        capsys, "--address", address, "generate", "Answer:", "-m", "tiny", "--grammar-file",
        str(grammar),
    )  # fmt: skip
    assert code == 0
    assert out.strip() in {"yes", "no"}
    code, _, err = run(
        capsys, "--address", address, "generate", "x", "--grammar-file", str(tmp_path / "none")
    )
    assert code == 2
    assert "cannot read the grammar file" in err


def test_unknown_model_is_not_found(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, err = run(capsys, "--address", address, "generate", "Hi", "--model", "nope")
    assert (code, out) == (1, "")
    assert err.startswith("rustaictl: NOT_FOUND: ")
    assert "nope" in err


def test_empty_prompt_is_invalid(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, _, err = run(capsys, "--address", address, "generate", "", "-m", "tiny")
    assert code == 1
    assert err.startswith("rustaictl: INVALID_ARGUMENT: ")


def test_ctrl_c_cancels_the_stream(
    capsys: pytest.CaptureFixture[str], address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    class InterruptedStdout(io.StringIO):
        def write(self, s: str) -> int:
            raise KeyboardInterrupt

    monkeypatch.setattr(sys, "stdout", InterruptedStdout())
    code = main(["--address", address, "generate", "Once", "-m", "slow", "-n", "4000"])
    assert code == 130


# ---------------------------------------------------------------------------- chat


def test_chat_one_shot(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, err = run(
        capsys, "--address", address, "chat", "-m", "tiny", "--system", "Be brief.", "hello",
        "-n", "6", "--stats",
    )  # fmt: skip
    assert code == 0
    assert out.endswith("\n")
    assert err.startswith("[model tiny, ")


def test_chat_interactive_keeps_history(
    capsys: pytest.CaptureFixture[str], address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, "hello\n\nhow are you\n")
    code, out, _ = run(capsys, "--address", address, "--json", "chat", "-m", "tiny", "-n", "6")
    assert code == 0
    assert "> " not in out  # no prompt when stdin is not a terminal
    done = [e["done"] for e in json_lines(out) if "done" in e]
    assert len(done) == 2  # the blank line is skipped
    first, second = (d["usage"] for d in done)
    # The second turn carries the first exchange: question, answer and the new line.
    assert second["promptTokens"] > first["promptTokens"] + first["completionTokens"]


def test_chat_interactive_plain_text(
    capsys: pytest.CaptureFixture[str], address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stdin(monkeypatch, "hello\nhow are you\n")
    code, out, err = run(capsys, "--address", address, "chat", "-m", "tiny", "-n", "4")
    assert (code, err) == (0, "")
    assert out.count("\n") >= 2


# ------------------------------------------------------------------------ tokenize


def test_tokenize(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, err = run(capsys, "--address", address, "tokenize", "hello world", "--model", "tiny")
    assert code == 0
    rows = [line.split(maxsplit=1) for line in out.splitlines()]
    assert rows[0] == ["ID", "PIECE"]
    assert [json.loads(piece) for _, piece in rows[1:]] == [" hello", " world"]
    assert err == "2 tokens\n"


# ------------------------------------------------------------------ plugins/health


def test_plugins_list_shows_llama_cpp_active(
    capsys: pytest.CaptureFixture[str], address: str
) -> None:
    code, out, _ = run(capsys, "--address", address, "plugins", "list")
    assert code == 0
    header, *rows = out.splitlines()
    assert header.split() == ["ID", "VERSION", "STATE", "SOURCE", "CAPABILITIES", "ERROR"]
    llama = next(r.split() for r in rows if r.startswith("llama.cpp "))
    assert llama[2:5] == ["active", "builtin", "llm:llama.cpp"]


def test_plugins_show_and_reload(capsys: pytest.CaptureFixture[str], address: str) -> None:
    code, out, _ = run(capsys, "--address", address, "plugins", "show", "llama.cpp", "--json")
    assert code == 0
    assert json.loads(out)["state"] == "PLUGIN_STATE_ACTIVE"
    code, out, _ = run(capsys, "--address", address, "plugins", "reload", "llama.cpp")
    assert (code, out) == (0, "plugin llama.cpp: active\n")
    code, _, err = run(capsys, "--address", address, "plugins", "unload", "nope")
    assert code == 1
    assert err.startswith("rustaictl: NOT_FOUND: ")


def test_health(capsys: pytest.CaptureFixture[str], address: str) -> None:
    assert run(capsys, "--address", address, "health") == (0, "SERVING\n", "")
    code, out, _ = run(capsys, "--address", address, "health", "--json")
    assert (code, json.loads(out)) == (0, {"status": "SERVING"})


# -------------------------------------------------------------------------- errors


def test_unreachable_daemon_says_how_to_start_it(
    capsys: pytest.CaptureFixture[str], unreachable: str
) -> None:
    code, out, err = run(capsys, "--address", unreachable, "models", "list")
    assert (code, out) == (1, "")
    assert err == (
        f"rustaictl: UNAVAILABLE: cannot reach the rustaid daemon at {unreachable}: "
        "is it running? Start it with `systemctl --user start rustaid` (`sudo systemctl "
        "start rustaid` for the system service), or run `rustaid serve` in a terminal\n"
    )


def test_address_from_the_environment(
    capsys: pytest.CaptureFixture[str], address: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("RUSTAID_ADDRESS", address)
    assert run(capsys, "health") == (0, "SERVING\n", "")


@pytest.mark.parametrize(
    "argv",
    [
        [],
        ["models"],
        ["models", "list", "--kind", "vision"],
        ["generate"],
        ["generate", "x", "--max-tokens", "-1"],
        ["frobnicate"],
    ],
)
def test_usage_errors_exit_2(capsys: pytest.CaptureFixture[str], argv: list[str]) -> None:
    code, out, err = run(capsys, *argv)
    assert code == 2
    assert out == ""
    assert "usage: rustaictl" in err


# ------------------------------------------------------------------ real processes


def _env() -> dict[str, str]:
    # The daemon's package (rustaid.api.v1) comes from the source tree.
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    return {**os.environ, "PYTHONPATH": path}


def test_real_process_generate(address: str) -> None:
    argv = ["--address", address, "generate", "Hello", "-m", "tiny", "-n", "8", "--stats"]
    proc = subprocess.run(
        [sys.executable, "-m", "rustaid_client.cli", *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip()
    assert proc.stderr.startswith("[model tiny, ")


def test_real_process_ctrl_c_exits_130(address: str) -> None:
    # Python leaves SIGINT ignored when its parent ignores it (e.g. a background job);
    # restore the default handler so the test means the same everywhere.
    code = (
        "import signal, sys; signal.signal(signal.SIGINT, signal.default_int_handler); "
        "from rustaid_client.cli import main; sys.exit(main(sys.argv[1:]))"
    )
    argv = ["--address", address, "generate", "Once upon a time", "-m", "slow", "-n", "4000"]
    with subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=_env(),
    ) as proc:
        assert proc.stdout is not None
        assert proc.stdout.read(1)  # the stream has started
        proc.send_signal(signal.SIGINT)
        assert proc.wait(timeout=30) == 130
    # The daemon stopped generating: the model is free at once.
    code_, out, _ = _run_json(address, "generate", "hi", "-m", "slow", "-n", "1")
    assert code_ == 0
    assert json_lines(out)[-1]["done"]["timings"]["queueMs"] < 1000


def _run_json(address: str, *argv: str) -> tuple[int, str, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "rustaid_client.cli", "--address", address, "--json", *argv],
        capture_output=True,
        text=True,
        env=_env(),
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout, proc.stderr
