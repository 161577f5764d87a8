"""RagService conversions that are not field-by-field copies."""

from __future__ import annotations

import numpy as np

from rustaid.api.v1 import rag_pb2
from rustaid.providers import LoadedEmbedder
from rustaid.rag.manager import Embedded
from rustaid.services.convert.rag import embed_response_to_pb, filter_from_pb


class ListEmbedder(LoadedEmbedder):
    """An embedder that only implements the required methods (lists of floats)."""

    dimension, max_tokens, special_tokens, threads, pooling = 3, 4, 2, 1, "mean"

    def embed(self, texts: object) -> list[list[float]]:
        return [[1.5, -2.0, 0.25] for _ in texts]  # type: ignore[attr-defined]

    def token_offsets(self, texts: object) -> list[list[tuple[int, int]]]:
        return [[(i, i + 1) for i in range(len(t))] for t in texts]  # type: ignore[attr-defined]

    def close(self) -> None:
        pass


def test_packed_vectors_become_the_same_message_as_lists() -> None:
    rng = np.random.default_rng(0)
    for count, dim in ((1, 384), (64, 384), (3, 1), (200, 1024)):
        vectors = rng.standard_normal((count, dim)).astype(np.float32)
        packed = Embedded("m", vectors.astype("<f4").tobytes(), count, dim, 128, [1])
        built = embed_response_to_pb(packed)
        expected = rag_pb2.EmbedResponse(
            embeddings=[rag_pb2.Embedding(values=v) for v in vectors.tolist()],
            model_id="m",
            dimension=dim,
            max_tokens=128,
            truncated=[1],
        )
        assert built == expected
        assert np.array_equal(np.array(packed.vectors(), dtype=np.float32), vectors)


def test_the_default_packing_and_truncation_report() -> None:
    e = ListEmbedder()
    packed, truncated = e.embed_packed(["ab", "abcdef"])  # limit: 4 - 2 = 2 tokens
    assert truncated == [1]
    assert np.frombuffer(packed, dtype="<f4").tolist() == [1.5, -2.0, 0.25] * 2


def test_an_empty_filter_message_is_no_filter() -> None:
    assert filter_from_pb(rag_pb2.Filter()).empty
