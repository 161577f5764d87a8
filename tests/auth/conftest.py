"""Fixtures for the authentication tests: certificates, free ports, failed starts."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest

from tests.auth.pki import Pki, make_pki

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return make_pki(tmp_path_factory.mktemp("pki"))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def serve_once(
    data_dir: Path, *args: str, env: dict[str, str] | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    """`rustaid serve` that is expected to refuse to start: its exit status and output."""
    data_dir.mkdir(parents=True, exist_ok=True)
    child_env = {
        **os.environ,
        "RUSTAID_ENTRY_POINT_PLUGINS": "0",
        "RUSTAID_THREADS": "1",
        **(env or {}),
    }
    child_env.pop("NOTIFY_SOCKET", None)
    return subprocess.run(
        [sys.executable, "-m", "rustaid", "serve", "--user", "--data-dir", str(data_dir),
         *args],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=timeout,
    )  # fmt: skip


def rustaid_cmd(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "rustaid", *args],
        env={**os.environ, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )
