"""Fixtures for the RAG tests: tiny real ONNX embedding models, the real MiniLM when the
shared model folder is there, and a daemon serving them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import rag_pb2_grpc
from rustaid.testing.daemon import DaemonProcess, run_daemon
from tests.conftest import Stubs, add_model
from tests.rag.models import write_model

ROOT = Path(__file__).resolve().parents[2]
# Real weights shared by the machines that run the tests (absent on a user's machine).
MINILM = Path(
    os.environ.get("RUSTAID_MINILM", ROOT.parent / "shared" / "models" / "all-minilm-l6-v2")
)
needs_minilm = pytest.mark.skipif(
    not (MINILM / "model.onnx").is_file(),
    reason=f"the real all-MiniLM-L6-v2 is not at {MINILM} (set RUSTAID_MINILM)",
)


@pytest.fixture(scope="session")
def tiny_models(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Model folders: 16-dim mean-pooled ("tiny"), 8-dim ("other"), CLS-pooled."""
    root = tmp_path_factory.mktemp("onnx")
    return {
        "tiny": write_model(root / "tiny", dim=16, seed=1),
        "other": write_model(root / "other", dim=8, seed=2),
        "cls": write_model(root / "cls", dim=16, seed=1, pooling="cls"),
    }


def link_embedding_model(data_dir: Path, src: Path, name: str) -> Path:
    folder = data_dir / "models" / "embeddings"
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    if target.is_symlink() or target.exists():
        target.unlink()
    target.symlink_to(src, target_is_directory=True)
    return target


class RagStubs(Stubs):
    def __init__(self, daemon: DaemonProcess) -> None:
        super().__init__(daemon)
        self.rag = rag_pb2_grpc.RagServiceStub(self.channel)


def write_config(data_dir: Path, text: str) -> None:
    (data_dir / "config").mkdir(parents=True, exist_ok=True)
    (data_dir / "config" / "rustaid.toml").write_text(text)


@pytest.fixture(scope="module")
def rag_daemon(
    tmp_path_factory: pytest.TempPathFactory,
    tiny_models: dict[str, Path],
    model_files: dict[str, Path],
) -> Iterator[RagStubs]:
    """A daemon with the tiny embedding model (the default), a second one, the tiny GGUF
    language model, and an allowed folder `<data>/allowed` for IndexFile by path."""
    data_dir = tmp_path_factory.mktemp("rag")
    link_embedding_model(data_dir, tiny_models["tiny"], "tiny")
    link_embedding_model(data_dir, tiny_models["other"], "other")
    add_model(data_dir, model_files["tiny"], "chat.gguf")
    allowed = data_dir / "allowed"
    allowed.mkdir()
    write_config(
        data_dir,
        f'[rag]\nembedding_model = "embeddings/tiny"\nallowed_folders = ["{allowed}"]\n'
        "chunk_size = 32\nchunk_overlap = 4\nembedding_threads = 2\n"
        # qdrant-client's local mode stands in for a Qdrant server.
        '[rag.stores.qdrant]\npath = "qdrant-local"\n',
    )
    with run_daemon(data_dir) as daemon:
        stubs = RagStubs(daemon)
        yield stubs
        stubs.channel.close()


def rpc_error(call: object) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        result = call()  # type: ignore[operator]
        if hasattr(result, "__iter__") and not hasattr(result, "DESCRIPTOR"):
            list(result)
    return info.value
