"""Cross-encoder reranking with ONNX Runtime: a folder under `models/rerankers/` holding
`model.onnx` and `tokenizer.json`, as a sentence-transformers CrossEncoder exports it
(e.g. ms-marco-MiniLM-L-6-v2). The query and each passage are read together as one
pair (`[CLS] query [SEP] passage [SEP]`, token types 0 then 1); the model's logit is
the score.

numpy, onnxruntime and tokenizers are imported when the first model loads.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import psutil

from rustaid.builtin.onnx_embeddings import (
    MODEL_FILE,
    TOKENIZER_FILE,
    is_model_folder,
    load_tokenizer,
    read_json,
    read_max_tokens,
    read_pad_token,
    session_options,
)
from rustaid.errors import PreconditionFailed
from rustaid.hookspecs import hookimpl
from rustaid.providers import (
    EmbeddingOptions,
    LoadedReranker,
    PluginInfo,
    RerankerProvider,
    ResourceRequirements,
)

PLUGIN = PluginInfo(
    name="onnx-reranker",
    version="0.1.0",
    description="Cross-encoder reranking of search results with ONNX Runtime.",
    requirements=ResourceRequirements(
        min_memory_bytes=64 << 20, cores=1, battery_draw_mw=3000, thermal_impact=50
    ),
)

log = logging.getLogger(__name__)

# Pairs scored in one model run.
RUN_SIZE = 16
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


class OnnxReranker(LoadedReranker):
    def __init__(self, folder: Path, options: EmbeddingOptions) -> None:
        import onnxruntime as ort

        self.folder = folder
        threads = options.threads or psutil.cpu_count(logical=False) or 1
        tokenizer_path = folder / TOKENIZER_FILE
        tokenizer_config = read_json(tokenizer_path)
        self._tokenizer = load_tokenizer(tokenizer_path)
        self.max_tokens = read_max_tokens(folder, tokenizer_config)
        pad_id, pad_token = read_pad_token(self._tokenizer, tokenizer_config)
        # A long passage is cut, never the query (the pair is cut from its longer side).
        self._tokenizer.enable_truncation(self.max_tokens, strategy="longest_first")
        self._tokenizer.enable_padding(pad_id=pad_id, pad_token=pad_token)
        so = session_options(threads, options.spin_wait)
        try:
            self._session = ort.InferenceSession(
                str(folder / MODEL_FILE), so, providers=["CPUExecutionProvider"]
            )
        except Exception as e:  # onnxruntime raises its own exception types
            raise PreconditionFailed(
                f"{folder / MODEL_FILE} cannot be loaded by ONNX Runtime: {e}",
                reason="MODEL_LOAD_FAILED",
            ) from e
        names = [i.name for i in self._session.get_inputs()]
        if "input_ids" not in names or not set(names) <= set(_INPUTS):
            raise PreconditionFailed(
                f"{folder / MODEL_FILE} has inputs {', '.join(names)}; a cross-encoder needs "
                f"input_ids and may have attention_mask and token_type_ids",
                reason="MODEL_LOAD_FAILED",
            )
        self._inputs = names
        self._size = (folder / MODEL_FILE).stat().st_size
        self.score("probe", ["probe"])  # a graph whose output is not one logit per pair fails here
        log.info(
            "loaded reranker %s: %d tokens max, %d threads", folder.name, self.max_tokens, threads
        )

    def score(self, query: str, texts: Sequence[str]) -> list[float]:
        scores: list[float] = []
        for start in range(0, len(texts), RUN_SIZE):
            scores += self._run(query, texts[start : start + RUN_SIZE])
        return scores

    def _run(self, query: str, texts: Sequence[str]) -> list[float]:
        import numpy as np

        encodings = self._tokenizer.encode_batch([(query, t) for t in texts])
        columns = {
            "input_ids": [e.ids for e in encodings],
            "attention_mask": [e.attention_mask for e in encodings],
            "token_type_ids": [e.type_ids for e in encodings],
        }
        feed = {name: np.asarray(columns[name], dtype=np.int64) for name in self._inputs}
        logits: Any = self._session.run(None, feed)[0]
        logits = np.asarray(logits, dtype=np.float32).reshape(len(texts), -1)
        if logits.shape[1] == 1:
            return [float(v) for v in logits[:, 0]]
        if logits.shape[1] == 2:  # [not relevant, relevant]: the margin orders as softmax does
            return [float(v) for v in logits[:, 1] - logits[:, 0]]
        raise PreconditionFailed(
            f"{self.folder / MODEL_FILE} gives {logits.shape[1]} values per pair; a "
            "cross-encoder gives one relevance logit (or two: not relevant, relevant)",
            reason="MODEL_LOAD_FAILED",
        )

    def memory_bytes(self) -> int:
        return self._size

    def close(self) -> None:
        self._session = None


class OnnxRerankerProvider(RerankerProvider):
    name = "onnx"

    def handles(self, path: Path) -> bool:
        return is_model_folder(path)

    def load(self, path: Path, options: EmbeddingOptions) -> LoadedReranker:
        if not self.handles(path):
            raise PreconditionFailed(
                f"{path} is not an ONNX cross-encoder folder: it needs {MODEL_FILE} and "
                f"{TOKENIZER_FILE}",
                reason="MODEL_LOAD_FAILED",
            )
        return OnnxReranker(path, options)


@hookimpl
def register_reranker_providers(register: Any) -> None:
    register(OnnxRerankerProvider())
