"""The reranking stage of Search: the model `[rag] reranker` names reads the query with
each of the store's best candidates and puts them in its order.

A cross-encoder ranks better than the distance between two vectors made apart, but it
runs once per candidate, so it sees only `[rag] rerank_candidates` of them (dense, keyword
or fused hybrid results), after which the best `top_k` are kept.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import replace
from pathlib import Path

from rustaid.errors import PreconditionFailed
from rustaid.providers import EmbeddingOptions, LoadedReranker, RerankerProvider, ScoredPoint

FOLDER = "rerankers"


class Rerankers:
    """The one reranking model in use, loaded on first use and kept while the setting
    names it. Blocking: call from a worker thread."""

    def __init__(
        self,
        models_dir: Callable[[], Path],
        providers: Callable[[], Mapping[str, RerankerProvider]],
        options: Callable[[], EmbeddingOptions],
    ) -> None:
        self._models_dir = models_dir
        self._providers = providers
        self._options = options
        self._lock = threading.Lock()
        self._loaded: tuple[Path, LoadedReranker] | None = None

    def get(self, name: str) -> LoadedReranker | None:
        """The model named `name` (a folder of models/rerankers/); None for ""."""
        path = self._models_dir() / FOLDER / name if name else None
        with self._lock:
            if self._loaded is not None:
                if self._loaded[0] == path:
                    return self._loaded[1]
                self._loaded[1].close()
                self._loaded = None
            if path is None:
                return None
            model = self._load(name, path)
            self._loaded = (path, model)
            return model

    def _load(self, name: str, path: Path) -> LoadedReranker:
        if not path.is_dir():
            raise PreconditionFailed(
                f"[rag] reranker = {name!r}, but there is no folder {path}: put a "
                'cross-encoder there (model.onnx and tokenizer.json) or set reranker = ""',
                reason="RERANKER_NOT_FOUND",
            )
        for provider in self._providers().values():
            if provider.handles(path):
                return provider.load(path, self._options())
        raise PreconditionFailed(
            f"[rag] reranker = {name!r}: no reranking engine reads {path} (the ONNX engine "
            "needs model.onnx and tokenizer.json)",
            reason="RERANKER_NOT_FOUND",
        )

    def close(self) -> None:
        with self._lock:
            if self._loaded is not None:
                self._loaded[1].close()
                self._loaded = None


def rerank(
    model: LoadedReranker, query: str, points: Sequence[ScoredPoint], limit: int
) -> list[ScoredPoint]:
    """The best `limit` of `points` in the model's order, each scored by the model."""
    if not points:
        return []
    scores = model.score(query, [str(p.payload.get("text", "")) for p in points])
    if len(scores) != len(points):
        raise RuntimeError(f"the reranker gave {len(scores)} scores for {len(points)} passages")
    order = sorted(range(len(points)), key=lambda i: -scores[i])[:limit]
    return [replace(points[i], score=float(scores[i])) for i in order]
