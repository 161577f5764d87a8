"""Memory given back: a real daemon embeds long batches with the real all-MiniLM-L6-v2,
fp32 and int8, unloads both, and its resident memory falls back near where it was before
they loaded (with the vector store open and the runtime imported)."""

from __future__ import annotations

import os
import time
from pathlib import Path

import psutil

from rustaid.api.v1 import models_pb2, models_pb2_grpc, rag_pb2
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import MINILM, RagStubs, link_embedding_model, needs_minilm, write_config

# Long texts (each fills the model's 256 tokens), in requests of this many.
TEXTS = 256
BATCH = 64


def int8_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "minilm-int8"
    folder.mkdir()
    (folder / "model.onnx").symlink_to(MINILM / "model_int8.onnx")
    (folder / "tokenizer.json").symlink_to(MINILM / "tokenizer.json")
    (folder / "1_Pooling").symlink_to(MINILM / "1_Pooling", target_is_directory=True)
    old = time.time() - 3600  # settled: listed at once
    os.utime(folder, (old, old), follow_symlinks=False)
    return folder


def rss_mib(pid: int) -> float:
    return psutil.Process(pid).memory_info().rss / (1 << 20)


@needs_minilm
def test_rss_after_unloading_the_models_is_back_near_the_baseline(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    link_embedding_model(tmp_path, tiny_models["tiny"], "tiny")
    link_embedding_model(tmp_path, MINILM, "minilm")
    link_embedding_model(tmp_path, int8_folder(tmp_path), "minilm-int8")
    write_config(tmp_path, '[rag]\nembedding_model = "embeddings/tiny"\nembedding_threads = 2\n')
    words = "the daemon embeds long passages of text " * 40
    texts = [f"passage {i}: {words}" for i in range(TEXTS)]
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        models = models_pb2_grpc.ModelsServiceStub(stubs.channel)
        # Baseline: the store open with a collection, ONNX Runtime imported (the tiny
        # model loaded and unloaded), no real model in memory.
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="c"))
        models.UnloadModel(models_pb2.UnloadModelRequest(id="embeddings/tiny"))
        baseline = rss_mib(d.proc.pid)
        peak = baseline
        for model in ("embeddings/minilm", "embeddings/minilm-int8"):
            for start in range(0, TEXTS, BATCH):
                request = rag_pb2.EmbedRequest(model_id=model, texts=texts[start : start + BATCH])
                assert len(stubs.rag.Embed(request, timeout=300).embeddings) == BATCH
            peak = max(peak, rss_mib(d.proc.pid))
            listed = models.ListModels(models_pb2.ListModelsRequest()).models
            assert {m.id: m.state for m in listed}[model] == models_pb2.MODEL_STATE_LOADED
        for model in ("embeddings/minilm", "embeddings/minilm-int8"):
            unloaded = models.UnloadModel(models_pb2.UnloadModelRequest(id=model)).model
            assert unloaded.state == models_pb2.MODEL_STATE_AVAILABLE
        after = rss_mib(d.proc.pid)
        print(f"\nRSS MiB: baseline {baseline:.0f}, peak {peak:.0f}, after unload {after:.0f}")
        assert peak > baseline + 50  # the models and their work did take memory
        assert after <= baseline * 1.2, (baseline, peak, after)
        stubs.channel.close()
