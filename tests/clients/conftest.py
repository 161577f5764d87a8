"""One real daemon for the client tests, serving real (synthetic) llama.cpp models."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from rustaid.testing.daemon import DaemonProcess, run_daemon
from rustaid.testing.synthetic import ModelShape, write_llama_gguf

# A few ms per token: slow enough to interrupt a generation midway.
SLOW = ModelShape(n_embd=256, n_layer=8, n_head=4, n_head_kv=2, n_ff=768, context_length=4096)


@pytest.fixture(scope="package")
def daemon(tmp_path_factory: pytest.TempPathFactory) -> Iterator[DaemonProcess]:
    """`rustaid serve` with the models `tiny` and `slow`, shared by tests/clients."""
    data_dir = tmp_path_factory.mktemp("clients-daemon")
    (data_dir / "models").mkdir()
    write_llama_gguf(data_dir / "models" / "tiny.gguf")
    write_llama_gguf(data_dir / "models" / "slow.gguf", SLOW, seed=2)
    with run_daemon(data_dir) as running:
        yield running


@pytest.fixture
def address(daemon: DaemonProcess) -> str:
    return daemon.address


@pytest.fixture
def unreachable(tmp_path: Path) -> str:
    return f"unix://{tmp_path}/nobody-listens.sock"
