"""int8 embedding models give a text the same vector alone or in any batch.

onnxruntime's dynamic quantisation picks one scale per activation tensor, from every
text of the batch and its padding; the provider rewrites those quantisers per token when
it loads the model. Checked on a tiny graph quantised here with onnxruntime's own
`quantize_dynamic`, and on the real all-MiniLM-L6-v2 int8 file."""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from rustaid.builtin.onnx_embeddings import OnnxEmbeddingProvider
from rustaid.builtin.onnx_quantization import has_dynamic_quantization
from rustaid.providers import EmbeddingOptions
from tests.rag.conftest import MINILM, needs_minilm
from tests.rag.models import write_tokenizer

TEXT = "the cat sat on the mat"
# Batches around TEXT: short and long neighbours (padding), a lone word, many copies.
NEIGHBOURS = [
    [],
    ["memory"],
    ["the dog ran in the park and the cat sat on the mat " * 4, "a"],
    ["hello memory world"] * 7,
]
LOUD = "memory"  # a token whose features are far larger than the others


def write_matmul_model(folder: Path, dim: int = 16, seed: int = 5) -> Path:
    """Token table -> MatMul -> Relu -> MatMul: a graph with something to quantise."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    folder.mkdir(parents=True)
    vocab = write_tokenizer(folder / "tokenizer.json")
    rng = np.random.default_rng(seed)
    table = rng.standard_normal((len(vocab), dim)).astype(np.float32)
    # Features of very different sizes, as in real models: a per-tensor scale then
    # depends on which texts share the batch.
    table *= np.linspace(0.1, 8.0, dim, dtype=np.float32)
    table[vocab[LOUD]] *= 40
    w1 = rng.standard_normal((dim, 32)).astype(np.float32)
    w2 = rng.standard_normal((32, dim)).astype(np.float32)
    ids = helper.make_tensor_value_info("input_ids", TensorProto.INT64, ["batch", "seq"])
    mask = helper.make_tensor_value_info("attention_mask", TensorProto.INT64, ["batch", "seq"])
    out = helper.make_tensor_value_info(
        "last_hidden_state", TensorProto.FLOAT, ["batch", "seq", dim]
    )
    nodes = [
        helper.make_node("Gather", ["table", "input_ids"], ["vectors"], axis=0),
        helper.make_node("MatMul", ["vectors", "w1"], ["hidden"]),
        helper.make_node("Relu", ["hidden"], ["active"]),
        helper.make_node("MatMul", ["active", "w2"], ["projected"]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("Unsqueeze", ["mask_f", "last_axis"], ["mask_3d"]),
        helper.make_node("Mul", ["projected", "mask_3d"], ["last_hidden_state"]),
    ]
    inits = [
        numpy_helper.from_array(table, "table"),
        numpy_helper.from_array(w1, "w1"),
        numpy_helper.from_array(w2, "w2"),
        numpy_helper.from_array(np.array([-1], dtype=np.int64), "last_axis"),
    ]
    graph = helper.make_graph(nodes, "tiny-matmul", [ids, mask], [out], inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(folder / "model.onnx"))
    return folder


def quantized_copy(folder: Path, target: Path) -> Path:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    target.mkdir(parents=True)
    shutil.copy(folder / "tokenizer.json", target)
    quantize_dynamic(
        str(folder / "model.onnx"), str(target / "model.onnx"), weight_type=QuantType.QInt8
    )
    return target


def load(folder: Path, batch_size: int = 32) -> Any:
    return OnnxEmbeddingProvider().load(folder, EmbeddingOptions(threads=1, batch_size=batch_size))


def vectors_of_text(embedder: Any) -> list[np.ndarray]:
    """TEXT's vector in each batch of NEIGHBOURS (TEXT placed in the middle)."""
    found = []
    for others in NEIGHBOURS:
        half = len(others) // 2
        batch = [*others[:half], TEXT, *others[half:]]
        found.append(np.array(embedder.embed(batch)[half]))
    return found


def test_a_quantized_tiny_model_gives_the_same_vector_in_any_batch(tmp_path: Path) -> None:
    fp32_folder = write_matmul_model(tmp_path / "fp32")
    int8_folder = quantized_copy(fp32_folder, tmp_path / "int8")
    assert has_dynamic_quantization(int8_folder / "model.onnx")
    assert not has_dynamic_quantization(fp32_folder / "model.onnx")
    int8 = load(int8_folder)
    alone, *in_batches = vectors_of_text(int8)
    for v in in_batches:
        np.testing.assert_allclose(v, alone, atol=1e-6)
    # Still the model: close to the fp32 vectors.
    fp32 = np.array(load(fp32_folder).embed([TEXT, "cat", "hello world"]))
    quantized = np.array(int8.embed([TEXT, "cat", "hello world"]))
    assert (np.sum(fp32 * quantized, axis=1) > 0.98).all()


@needs_minilm
def test_real_minilm_int8_vectors_do_not_depend_on_the_batch(tmp_path: Path) -> None:
    folder = tmp_path / "int8"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(MINILM / "model_int8.onnx")
    shutil.copy(MINILM / "tokenizer.json", folder)
    shutil.copytree(MINILM / "1_Pooling", folder / "1_Pooling")
    for batch_size in (32, 3):
        int8 = load(folder, batch_size)
        alone, *in_batches = vectors_of_text(int8)
        for v in in_batches:
            np.testing.assert_allclose(v, alone, atol=1e-5)
    texts = [TEXT, "Use journalctl --vacuum-size to shrink the journal.", "zstd -19 file"]
    fp32 = np.array(load(MINILM).embed(texts))
    assert (np.sum(fp32 * np.array(int8.embed(texts)), axis=1) > 0.93).all()


@pytest.mark.parametrize("quantized", [True, False])
def test_has_dynamic_quantization_reads_the_operator_names(tmp_path: Path, quantized: bool) -> None:
    folder = write_matmul_model(tmp_path / "m")
    if quantized:
        folder = quantized_copy(folder, tmp_path / "q")
    assert has_dynamic_quantization(folder / "model.onnx") is quantized


SENTENCES = [
    "Use journalctl --vacuum-size to shrink the journal.",
    "zstd -19 compresses harder and slower",
    "apt-get autoremove removes packages nothing depends on any more",
    "sed -i edits the file in place",
    "The cat sat on the mat while the dog slept.",
    "How do I list the services that failed to start?",
    "Mount the disk read-only before checking it.",
    "memory",
]


def rustaid_quantize(*args: str | Path) -> Any:
    import subprocess
    import sys

    return subprocess.run(
        [sys.executable, "-m", "rustaid", "quantize", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


@needs_minilm
def test_rustaid_quantize_makes_an_int8_model_closer_to_fp32_than_the_published_one(
    tmp_path: Path,
) -> None:
    fp32_folder = tmp_path / "minilm"
    shutil.copytree(MINILM, fp32_folder, ignore=shutil.ignore_patterns("model_int8.onnx"))
    done = rustaid_quantize(fp32_folder)
    assert done.returncode == 0, done.stderr
    int8_folder = tmp_path / "minilm-int8"
    assert f"{int8_folder}: int8" in done.stdout
    assert "quantising" in done.stderr and "WARNING" not in done.stderr
    # A whole model folder: the tokenizer and pooling came along, nothing half-written.
    assert (int8_folder / "tokenizer.json").is_file()
    assert (int8_folder / "1_Pooling" / "config.json").is_file()
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []
    assert has_dynamic_quantization(int8_folder / "model.onnx")
    size = (int8_folder / "model.onnx").stat().st_size
    assert size < (fp32_folder / "model.onnx").stat().st_size / 3

    published = tmp_path / "published"
    published.mkdir()
    (published / "model.onnx").symlink_to(MINILM / "model_int8.onnx")
    shutil.copy(MINILM / "tokenizer.json", published)
    shutil.copytree(MINILM / "1_Pooling", published / "1_Pooling")

    fp32 = np.array(load(fp32_folder).embed(SENTENCES))
    ours = load(int8_folder)
    theirs = np.array(load(published).embed(SENTENCES))
    ours_cos = np.sum(fp32 * np.array(ours.embed(SENTENCES)), axis=1)
    theirs_cos = np.sum(fp32 * theirs, axis=1)
    assert ours_cos.min() > 0.99, ours_cos
    assert ours_cos.mean() > theirs_cos.mean() + 0.01, (ours_cos, theirs_cos)
    # Loaded like any int8 graph: per token, so the same vector in any batch.
    alone, *in_batches = vectors_of_text(ours)
    for v in in_batches:
        np.testing.assert_allclose(v, alone, atol=1e-5)


def test_rustaid_quantize_says_what_to_fix(tmp_path: Path) -> None:
    fp32_folder = write_matmul_model(tmp_path / "tiny")
    missing = rustaid_quantize(tmp_path / "nothing")
    assert missing.returncode == 2
    assert "has no model.onnx" in missing.stderr

    done = rustaid_quantize(fp32_folder, "--output", tmp_path / "tiny-q")
    assert done.returncode == 0, done.stderr
    assert has_dynamic_quantization(tmp_path / "tiny-q" / "model.onnx")

    again = rustaid_quantize(fp32_folder, "--output", tmp_path / "tiny-q")
    assert again.returncode == 2
    assert "exists; remove it or name another folder" in again.stderr
    twice = rustaid_quantize(tmp_path / "tiny-q", "--output", tmp_path / "tiny-qq")
    assert twice.returncode == 2
    assert "is already quantised; give the fp32 model's folder" in twice.stderr
    assert not (tmp_path / "tiny-qq").exists()
