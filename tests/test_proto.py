"""The contract: stubs match proto/, buf lint passes, nothing released is broken, the
Node.js client works."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model

ROOT = Path(__file__).resolve().parent.parent
NODE_DIR = ROOT / "clients" / "node"
BUF = NODE_DIR / "node_modules" / ".bin" / "buf"
# The contract of the last release (`make api-baseline` at a release).
BASELINE = ROOT / "proto" / "baseline" / "rustaid-v1.binpb"


def _need(path: Path, what: str) -> None:
    if not path.exists():
        # CI installs everything (.ci/run); elsewhere say how to get it.
        if os.environ.get("CI"):
            pytest.fail(f"{what} missing in CI: {path}")
        pytest.skip(f"{what} not installed: run `make node-deps`")


def test_generated_stubs_match_the_protos(tmp_path: Path) -> None:
    protos = sorted(
        p.relative_to(ROOT / "proto").as_posix() for p in (ROOT / "proto").rglob("*.proto")
    )
    subprocess.run(
        [sys.executable, "-m", "grpc_tools.protoc", "-I", ".", f"--python_out={tmp_path}",
         f"--pyi_out={tmp_path}", f"--grpc_python_out={tmp_path}", *protos],
        cwd=ROOT / "proto", check=True,
    )  # fmt: skip
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*_pb2*.py*"))
    committed = sorted(
        p.relative_to(ROOT)
        for p in (ROOT / "rustaid" / "api").rglob("*_pb2*.py*")
        if "__pycache__" not in p.parts
    )
    assert generated == committed, "run `make proto` and commit the result"
    stale = [str(p) for p in generated if (tmp_path / p).read_bytes() != (ROOT / p).read_bytes()]
    assert not stale, f"stubs out of date (run `make proto`): {stale}"


def test_buf_lint_passes() -> None:
    _need(BUF, "buf (npm @bufbuild/buf)")
    r = subprocess.run([str(BUF), "lint"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stdout + r.stderr


def _buf_breaking(module: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(BUF), "breaking", "--against", str(BASELINE)], cwd=module, capture_output=True,
        text=True, timeout=120,
    )  # fmt: skip


def test_contract_keeps_what_the_last_release_had() -> None:
    _need(BUF, "buf (npm @bufbuild/buf)")
    r = _buf_breaking(ROOT)
    assert r.returncode == 0, (
        "breaking change against the last released contract (proto/baseline/): add a field,"
        " message or RPC instead of changing or removing one\n" + r.stdout + r.stderr
    )


def test_buf_breaking_reports_a_removed_file(tmp_path: Path) -> None:
    _need(BUF, "buf (npm @bufbuild/buf)")
    shutil.copytree(ROOT / "proto", tmp_path / "proto")
    shutil.copy(ROOT / "buf.yaml", tmp_path)
    (tmp_path / "proto" / "rustaid" / "api" / "v1" / "nlu.proto").unlink()
    r = _buf_breaking(tmp_path)
    assert r.returncode != 0
    assert 'file "rustaid/api/v1/nlu.proto" was deleted' in r.stdout, r.stdout + r.stderr


def test_node_client_streams_a_generation(tmp_path: Path, model_files: dict[str, Path]) -> None:
    _need(NODE_DIR / "node_modules" / "@grpc" / "grpc-js", "Node.js dependencies")
    node = shutil.which("node")
    assert node, "node is required (installed by .ci/run)"
    add_model(tmp_path, model_files["tiny"])
    with run_daemon(tmp_path) as d:
        env = {**os.environ, "RUSTAID_TEST_ADDRESS": d.address, "RUSTAID_TEST_MODEL": "tiny"}
        r = subprocess.run(
            [node, "--test", "test/"], cwd=NODE_DIR, env=env, capture_output=True, text=True,
            timeout=120,
        )  # fmt: skip
    assert r.returncode == 0, r.stdout + r.stderr
    assert "# fail 0" in r.stdout and "# skipped 0" in r.stdout, r.stdout
