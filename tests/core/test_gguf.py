"""The GGUF metadata reader on real files written by gguf-py and quantised by llama.cpp."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from rustaid.core.gguf import GGUFError, read_gguf
from rustaid.testing.synthetic import TINY, ModelShape, write_llama_gguf, write_truncated_copy


def test_reads_metadata_and_counts_parameters(model_files: dict[str, Path]) -> None:
    info = read_gguf(model_files["tiny"])
    assert info.architecture == "llama"
    assert info.context_length == TINY.context_length
    assert info.embedding_length == TINY.n_embd
    assert info.block_count == TINY.n_layer
    assert info.vocab_size == TINY.n_vocab
    assert info.parameter_count == TINY.n_params()
    assert info.quantization == "F32"
    assert "<|im_start|>" in info.chat_template


def test_quantised_file(tmp_path: Path) -> None:
    shape = ModelShape(n_embd=64, n_ff=128)
    info = read_gguf(write_llama_gguf(tmp_path / "q.gguf", shape, file_type="Q8_0"))
    assert info.quantization == "Q8_0"
    assert info.parameter_count == shape.n_params()


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.3, 0.9, 0.999])
def test_truncated_files_are_rejected(
    model_files: dict[str, Path], tmp_path: Path, fraction: float
) -> None:
    cut = write_truncated_copy(model_files["tiny"], tmp_path / "cut.gguf", fraction)
    with pytest.raises(GGUFError, match=r"truncated|too small"):
        read_gguf(cut)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"GGML" + b"\0" * 40, "bad magic"),
        (b"GGUF" + struct.pack("<I", 99) + b"\0" * 40, "version 99"),
        (
            b"GGUF" + struct.pack("<IQQ", 3, 0, 1) + struct.pack("<Q", 1 << 40) + b"\0" * 8,
            "corrupt",
        ),
        (
            b"GGUF"
            + struct.pack("<IQQ", 3, 0, 1)
            + struct.pack("<Q", 1)
            + b"k"
            + struct.pack("<I", 77)
            + b"\0" * 8,
            "value type 77",
        ),
        (b"GGUF" + struct.pack("<IQQ", 3, 1 << 40, 0) + b"\0" * 8, "corrupt"),
    ],
)
def test_corrupt_headers_are_rejected_with_a_reason(
    tmp_path: Path, data: bytes, message: str
) -> None:
    path = tmp_path / "bad.gguf"
    path.write_bytes(data)
    with pytest.raises(GGUFError, match=message):
        read_gguf(path)
