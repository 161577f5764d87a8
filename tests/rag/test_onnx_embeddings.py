"""The ONNX embedding provider with real ONNX Runtime and real tokenizers: tiny graphs
built with onnx.helper, and the real all-MiniLM-L6-v2 when it is available."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from rustaid.builtin.onnx_embeddings import OnnxEmbeddingProvider
from rustaid.errors import PreconditionFailed
from rustaid.providers import EmbeddingOptions
from tests.rag.conftest import MINILM, needs_minilm
from tests.rag.models import expected_mean, normalise, token_ids, write_model, write_onnx

OPTIONS = EmbeddingOptions(threads=1, batch_size=4)


def load(folder: Path, options: EmbeddingOptions = OPTIONS) -> object:
    return OnnxEmbeddingProvider().load(folder, options)


def test_handles_only_complete_model_folders(tmp_path: Path) -> None:
    provider = OnnxEmbeddingProvider()
    folder = write_model(tmp_path / "m")
    assert provider.handles(folder)
    assert not provider.handles(folder / "model.onnx")
    (folder / "tokenizer.json").unlink()
    assert not provider.handles(folder)
    with pytest.raises(PreconditionFailed, match=r"needs model\.onnx and tokenizer\.json"):
        provider.load(folder, OPTIONS)


def test_mean_pooling_normalisation_and_order(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", dim=16, seed=3)
    table = write_onnx(
        folder / "model.onnx",
        len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]),
        16,
        seed=3,
    )
    e = OnnxEmbeddingProvider().load(folder, OPTIONS)
    assert (e.dimension, e.max_tokens, e.pooling, e.special_tokens) == (16, 128, "mean", 2)
    texts = ["the cat", "a much longer text about the red car and the engine", "dog", "paris"] * 3
    vectors = np.array(e.embed(texts))
    assert vectors.shape == (12, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    for text, vector in zip(texts, vectors, strict=True):
        assert np.allclose(vector, expected_mean(table, token_ids(folder, text)), atol=1e-5)
    # Batching (sorted by length inside) gives each text the vector it has alone.
    assert np.allclose(vectors[1], e.embed([texts[1]])[0], atol=1e-6)


def test_cls_pooling_and_a_graph_that_pools_itself(tmp_path: Path) -> None:
    cls = load(write_model(tmp_path / "cls", dim=8, seed=4, pooling="cls"))
    pooled = load(write_model(tmp_path / "pooled", dim=8, seed=4, pooled_output=True,
                              int32_inputs=True, token_type_ids=False))  # fmt: skip
    mean = load(write_model(tmp_path / "mean", dim=8, seed=4))
    assert cls.pooling == "cls" and pooled.pooling == "model"  # type: ignore[attr-defined]
    a, b = "the cat", "the dog and the car"
    # Every text starts with [CLS]: CLS pooling gives all texts the same vector here.
    assert np.allclose(cls.embed([a])[0], cls.embed([b])[0])  # type: ignore[attr-defined]
    # The self-pooling graph (int32 inputs, no token_type_ids) matches mean pooling.
    assert np.allclose(pooled.embed([a, b]), mean.embed([a, b]), atol=1e-5)  # type: ignore[attr-defined]


def test_max_and_mean_sqrt_len_pooling_ignore_padding(tmp_path: Path) -> None:
    # In one batch the short texts are padded to the longest; the padded positions hold
    # zero vectors, which a max over unmasked positions would pick up.
    texts = ["cat", "the red car and the engine of the blue car", "dog paris"]
    for pooling in ("max", "mean_sqrt_len"):
        folder = write_model(tmp_path / pooling, dim=16, seed=5, pooling=pooling)
        table = write_onnx(
            folder / "model.onnx",
            len(json.loads((folder / "tokenizer.json").read_text())["model"]["vocab"]),
            16,
            seed=5,
        )
        e = load(folder)
        vectors = np.array(e.embed(texts))  # type: ignore[attr-defined]
        for text, vector in zip(texts, vectors, strict=True):
            rows = table[token_ids(folder, text)]
            # mean_sqrt_len differs from mean by a factor per text: the same direction.
            pooled = rows.max(axis=0) if pooling == "max" else rows.sum(axis=0)
            assert np.allclose(vector, normalise(pooled), atol=1e-5), pooling


def test_long_texts_are_truncated_to_the_model_limit(tmp_path: Path) -> None:
    e = load(write_model(tmp_path / "m", max_length=8))
    assert e.max_tokens == 8  # type: ignore[attr-defined]
    long = "cat dog car red blue green apple banana fruit bread"
    head = "cat dog car red blue green"  # 6 words + [CLS] + [SEP] = 8 tokens
    assert np.allclose(e.embed([long])[0], e.embed([head])[0], atol=1e-6)  # type: ignore[attr-defined]
    offsets = e.token_offsets([long])[0]  # type: ignore[attr-defined]
    assert len(offsets) == 10 and long[offsets[-1][0] : offsets[-1][1]] == "bread"


def test_max_length_from_sentence_transformers_config(tmp_path: Path) -> None:
    folder = write_model(tmp_path / "m", max_length=128)
    (folder / "sentence_bert_config.json").write_text('{"max_seq_length": 64}')
    assert load(folder).max_tokens == 64  # type: ignore[attr-defined]


def test_broken_model_folders_say_what_is_wrong(tmp_path: Path) -> None:
    extra = write_model(tmp_path / "extra", extra_input="pixel_values")
    with pytest.raises(PreconditionFailed, match=r"has inputs .*pixel_values"):
        load(extra)
    corrupt = write_model(tmp_path / "corrupt")
    (corrupt / "model.onnx").write_bytes(b"not a protobuf")
    with pytest.raises(PreconditionFailed, match="cannot be loaded by ONNX Runtime"):
        load(corrupt)
    bad_tok = write_model(tmp_path / "badtok")
    (bad_tok / "tokenizer.json").write_text("{}")
    with pytest.raises(PreconditionFailed, match="tokenizers"):
        load(bad_tok)
    two = write_model(tmp_path / "two", pooling="mean")
    config = two / "1_Pooling" / "config.json"
    config.write_text(
        json.dumps({"pooling_mode_mean_tokens": True, "pooling_mode_cls_token": True})
    )
    with pytest.raises(PreconditionFailed, match="exactly one pooling mode"):
        load(two)


def test_no_heavy_imports_at_daemon_start() -> None:
    code = (
        "import sys, rustaid.daemon, rustaid.services.server, rustaid.builtin.onnx_embeddings, "
        "rustaid.builtin.llama_cpp_embeddings, rustaid.builtin.qdrant_edge, "
        "rustaid.builtin.qdrant_client_store, rustaid.builtin.parsers, rustaid.rag.manager\n"
        "heavy = ['numpy', 'onnxruntime', 'tokenizers', 'qdrant_edge', 'qdrant_client', "
        "'pypdf', 'docx', 'llama_cpp']\n"
        "print(','.join(m for m in heavy if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


@needs_minilm
def test_real_minilm_fp32_and_int8(tmp_path: Path) -> None:
    fp32 = load(MINILM, EmbeddingOptions(threads=2))
    int8_folder = tmp_path / "int8"
    int8_folder.mkdir()
    (int8_folder / "model.onnx").symlink_to(MINILM / "model_int8.onnx")
    shutil.copy(MINILM / "tokenizer.json", int8_folder)
    shutil.copytree(MINILM / "1_Pooling", int8_folder / "1_Pooling")
    int8 = load(int8_folder, EmbeddingOptions(threads=2))
    assert fp32.dimension == int8.dimension == 384  # type: ignore[attr-defined]
    texts = [
        "A kitten is sleeping on the sofa.",
        "A young cat naps on the couch.",
        "The stock market fell sharply today.",
    ]
    a = np.array(fp32.embed(texts))  # type: ignore[attr-defined]
    assert a[0] @ a[1] > 0.6 > a[0] @ a[2]  # the two cat sentences are close
    b = np.array(int8.embed(texts))  # type: ignore[attr-defined]
    agreement = np.sum(a * b, axis=1)
    assert (agreement > 0.9).all(), agreement  # the README measures about 0.955
    assert np.allclose(normalise(a[0]), a[0])


@needs_minilm
def test_threads_stop_spinning_when_a_call_returns() -> None:
    """Spinning worker threads make a run faster, but once a call has returned they
    must not burn a core: the daemon's reply and the next request need it, and an idle
    daemon must not draw power. (ONNX Runtime's workers otherwise spin on for about
    20 ms of CPU after every run.) Measured in a process of its own."""
    code = f"""
import time
from pathlib import Path
from rustaid.builtin.onnx_embeddings import OnnxEmbeddingProvider
from rustaid.providers import EmbeddingOptions
e = OnnxEmbeddingProvider().load(Path({str(MINILM)!r}), EmbeddingOptions(threads=2))
texts = ["a sentence about the battery of my laptop, and then some more words"] * 32
e.embed(texts)
after = []
for _ in range(5):
    e.embed(texts)
    t0 = time.process_time()
    time.sleep(0.2)
    after.append((time.process_time() - t0) * 1000)
print(min(after))
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    # CPU milliseconds used in the 200 ms after a call (the process has nothing to do).
    assert float(out.stdout) < 3.0, out.stdout
