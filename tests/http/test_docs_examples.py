"""Every example of docs/http-api.md, run as written (only the port is the test
daemon's) in a fresh interpreter or shell."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.http.conftest import HttpDaemon

DOC = Path(__file__).resolve().parents[2] / "docs" / "http-api.md"
DOC_URL = "http://127.0.0.1:11435"


def blocks(language: str) -> list[str]:
    return re.findall(rf"```{language}\n(.*?)```", DOC.read_text(), re.DOTALL)


def run(cmd: list[str], http_daemon: HttpDaemon) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OPENAI_", "OLLAMA_"))}
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_the_doc_has_the_examples() -> None:
    assert len(blocks("python")) == 3 and len(blocks("sh")) == 1
    assert 'http_listen = ["127.0.0.1:11435"]' in blocks("toml")[0]


@pytest.mark.parametrize("index", [0, 1, 2], ids=["openai", "ollama", "langchain"])
def test_python_examples(http_daemon: HttpDaemon, index: int) -> None:
    code = blocks("python")[index].replace(DOC_URL, http_daemon.url)
    out = run([sys.executable, "-c", code], http_daemon)
    assert out.strip()
    if index == 0:
        assert "2 vectors of 384" in out
    if index == 1:
        assert "smollm2-135m-instruct.q4_1" in out and out.strip().endswith("384")


def test_curl_examples(http_daemon: HttpDaemon) -> None:
    script = blocks("sh")[0].replace(DOC_URL, http_daemon.url)
    out = run(["sh", "-c", script], http_daemon)
    first, *lines = out.splitlines()
    decoder = json.JSONDecoder()
    reply, end = decoder.raw_decode(first)
    assert reply["choices"][0]["message"]["content"]
    streamed = [json.loads(line) for line in [first[end:], *lines] if line.strip()]
    assert len(streamed) > 1 and streamed[-1]["done"] is True
