"""The Node.js client (clients/node) with TLS and a bearer token, against a real daemon."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

from rustaid.auth import tokens
from rustaid.testing.daemon import run_daemon
from tests.auth.conftest import REPO, free_port
from tests.auth.pki import Pki
from tests.conftest import add_model

NODE_DIR = REPO / "clients" / "node"


def test_node_client_with_tls_and_token(
    tmp_path: Path, model_files: dict[str, Path], pki: Pki
) -> None:
    node = shutil.which("node")
    if node is None or not (NODE_DIR / "node_modules" / "@grpc" / "grpc-js").is_dir():
        pytest.skip("node and clients/node/node_modules are needed (make node-deps)")
    add_model(tmp_path, model_files["tiny"])
    token = tokens.add_token(tmp_path / "config" / "tokens.json", "node")[0]
    address = f"127.0.0.1:{free_port()}"
    env = {"RUSTAID_TLS_CERT": str(pki.server.cert), "RUSTAID_TLS_KEY": str(pki.server.key)}
    with run_daemon(tmp_path, "--listen", address, env=env):
        r = subprocess.run(
            [node, "--test", "test-auth/"],
            cwd=NODE_DIR,
            env={
                **{k: v for k, v in os.environ.items() if k != "RUSTAID_TOKEN"},
                "RUSTAID_TLS_ADDRESS": address,
                "RUSTAID_TLS_CA": str(pki.ca),
                "RUSTAID_TLS_TOKEN": token,
            },
            capture_output=True,
            text=True,
            timeout=120,
        )
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# pass 3" in r.stdout and "# skipped 0" in r.stdout, r.stdout
