"""Built-in plugin: embeddings from GGUF models with llama.cpp (llama-cpp-python).

Any GGUF model the daemon lists can embed text through the same interface as the ONNX
models: the file is loaded a second time in embedding mode (its own memory), with the
model's pooling, or mean pooling when the file declares none; vectors are L2-normalised.
llama_cpp is imported on the first load.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from rustaid.errors import PreconditionFailed
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    EmbeddingOptions,
    EmbeddingProvider,
    LoadedEmbedder,
    PluginInfo,
    ResourceRequirements,
)

PLUGIN = PluginInfo(
    name="llama.cpp-embeddings",
    version="0.1.0",
    description="Embeddings from GGUF models with llama.cpp.",
    requirements=ResourceRequirements(
        min_memory_bytes=64 << 20, cores=1, battery_draw_mw=4000, thermal_impact=60
    ),
)

log = logging.getLogger(__name__)

# Longest input embedded in one piece (the model's own context when smaller).
MAX_TOKENS = 512
_POOLING = {1: "mean", 2: "cls", 3: "last"}


class LlamaEmbedder(LoadedEmbedder):
    def __init__(self, path: Path, options: EmbeddingOptions) -> None:
        import llama_cpp

        self.threads = options.threads or psutil.cpu_count(logical=False) or 1
        try:
            probe = llama_cpp.Llama(model_path=str(path), vocab_only=True, verbose=False)
            arch = str(probe.metadata.get("general.architecture", ""))
            trained = int(probe.metadata.get(f"{arch}.context_length", 0) or 0)
            declared = probe.metadata.get(f"{arch}.pooling_type")
            probe.close()
            pooling = int(declared) if declared is not None else 0
            if pooling not in _POOLING:
                pooling = llama_cpp.LLAMA_POOLING_TYPE_MEAN
            self.max_tokens = min(MAX_TOKENS, trained or MAX_TOKENS)
            self.llm = llama_cpp.Llama(
                model_path=str(path),
                embedding=True,
                n_ctx=self.max_tokens,
                n_batch=self.max_tokens,
                n_ubatch=self.max_tokens,
                n_threads=self.threads,
                n_threads_batch=self.threads,
                pooling_type=pooling,
                verbose=False,
            )
        except (ValueError, RuntimeError) as e:
            raise PreconditionFailed(
                f"llama.cpp could not load {path.name} for embeddings: {e}",
                reason="MODEL_LOAD_FAILED",
            ) from e
        self.pooling = _POOLING[pooling]
        self.dimension = int(self.llm.n_embd())
        adds_bos = self.llm.metadata.get("tokenizer.ggml.add_bos_token", "true") != "false"
        self.special_tokens = 1 if adds_bos else 0
        self._size = path.stat().st_size

    def embed(self, texts: Sequence[str]) -> list[list[float]]:
        if not texts:
            return []
        vectors = self.llm.embed(list(texts), normalize=True, truncate=True)
        return [list(map(float, v)) for v in vectors]

    def token_offsets(self, texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        return [self._offsets(text) for text in texts]

    def _offsets(self, text: str) -> list[tuple[int, int]]:
        """Character spans of the tokens, found by locating each token's text in order."""
        tokens = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=False)
        spans: list[tuple[int, int]] = []
        cursor = 0
        pending = b""
        for token in tokens:
            pending += self.llm.detokenize([token])
            try:
                piece = pending.decode("utf-8")
            except UnicodeDecodeError:
                continue  # part of a multi-byte character: wait for the rest
            pending = b""
            stripped = piece.strip()
            if not stripped:
                continue
            at = text.find(stripped, cursor)
            if at < 0:
                at = cursor
            end = min(len(text), at + len(stripped))
            spans.append((at, end))
            cursor = end
        return spans

    def memory_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        self.llm.close()


class LlamaCppEmbeddingProvider(EmbeddingProvider):
    name = "llama.cpp"

    # Embeds with a language model's GGUF file; declares no suffixes, so it claims no
    # file of embeddings/ or nlu/ (the registry lists GGUF files as language models).
    def handles(self, path: Path) -> bool:
        return path.suffix.lower() == ".gguf" and path.is_file()

    def load(self, path: Path, options: EmbeddingOptions) -> LoadedEmbedder:
        return LlamaEmbedder(path, options)


@hookimpl
def register_embedding_providers(register: Any) -> None:
    register(LlamaCppEmbeddingProvider())
