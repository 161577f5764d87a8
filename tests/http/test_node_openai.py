"""The `openai` npm package from Node.js against the HTTP API
(clients/node/test-http/openai.test.js), on the real SmolLM2 and MiniLM models."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.http.conftest import CHAT, EMBED, HttpDaemon

NODE_DIR = Path(__file__).resolve().parents[2] / "clients" / "node"


def test_the_openai_npm_package(http_daemon: HttpDaemon) -> None:
    node = shutil.which("node")
    assert node, "node is required (installed by .ci/run)"
    if not (NODE_DIR / "node_modules" / "openai").is_dir():
        pytest.skip("clients/node/node_modules has no openai: run `make node-deps`")
    env = {
        **os.environ,
        "RUSTAID_TEST_HTTP_URL": http_daemon.url,
        "RUSTAID_TEST_CHAT_MODEL": CHAT,
        "RUSTAID_TEST_EMBED_MODEL": EMBED,
    }
    done = subprocess.run(
        [node, "--test", "test-http/openai.test.js"],
        cwd=NODE_DIR, env=env, capture_output=True, text=True, timeout=240,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "# pass 6" in done.stdout and "# skipped 0" in done.stdout, done.stdout[-2000:]
