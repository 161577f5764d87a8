"""Interactive work beside bulk work in a real daemon with the real all-MiniLM-L6-v2 and
the embedded Qdrant Edge store: searches complete while a large document is being
indexed, the document still gets every chunk, and Embed calls from several clients at
once each get their own vectors."""

from __future__ import annotations

import threading
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np

from rustaid.api.v1 import rag_pb2
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import MINILM, RagStubs, link_embedding_model, needs_minilm, write_config

pytestmark = needs_minilm

SUBJECTS = ("The battery", "A red bicycle", "The kitchen clock", "An old printer", "The river")
VERBS = ("paints", "repairs", "forgets", "moves", "reads")
OBJECTS = ("three small boxes", "the broken window", "a long list of numbers", "warm coffee")


def manual(sentences: int) -> str:
    return " ".join(
        f"{SUBJECTS[i % 5]} {VERBS[i // 5 % 5]} {OBJECTS[i // 25 % 4]} on day {i}."
        for i in range(sentences)
    )


def test_searches_complete_while_a_large_document_is_indexed(tmp_path: Path) -> None:
    link_embedding_model(tmp_path, MINILM, "minilm")
    write_config(
        tmp_path,
        '[rag]\nembedding_model = "embeddings/minilm"\nembedding_threads = 1\n'
        "chunk_size = 16\nchunk_overlap = 0\n",
    )
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="c"))
        faq = rag_pb2.Document(id="faq", text="Run journalctl --vacuum-size to shrink the journal.")
        stubs.rag.IndexDocuments(
            iter([rag_pb2.IndexDocumentsRequest(collection="c", documents=[faq])])
        )
        # One document of about 600 chunks: a single indexing job.
        big = rag_pb2.Document(id="manual", text=manual(600))
        job = stubs.rag.IndexDocuments.future(
            iter([rag_pb2.IndexDocumentsRequest(collection="c", documents=[big])]), timeout=600
        )
        during, slowest = 0, 0.0
        query = rag_pb2.SearchRequest(collection="c", query="shrink the journal", top_k=3)
        while not job.done():
            t0 = time.perf_counter()
            found = stubs.rag.Search(query, timeout=600)
            if not job.done():
                during += 1
                slowest = max(slowest, time.perf_counter() - t0)
            assert "faq" in [h.document_id for h in found.hits]
        result = job.result()
        print(f"\n{during} searches during the job, slowest {slowest * 1000:.0f} ms")
        # Searches kept completing while the document was embedded (about 280 here); with
        # the document embedded in one run they could only pass before and after it, while
        # it was chunked and stored (about 12 here, one waiting 3.9 s).
        assert during >= 50
        assert result.documents_indexed == 1 and result.chunks_indexed >= 500
        listed = stubs.rag.ListCollections(rag_pb2.ListCollectionsRequest()).collections
        assert [c.points_count for c in listed] == [1 + result.chunks_indexed]
        stubs.channel.close()


def test_embed_calls_from_several_clients_get_their_own_vectors(tmp_path: Path) -> None:
    link_embedding_model(tmp_path, MINILM, "minilm")
    write_config(tmp_path, '[rag]\nembedding_model = "embeddings/minilm"\nembedding_threads = 1\n')
    clients = 8
    texts = [
        [f"{SUBJECTS[c % 5]} {VERBS[(c + k) % 5]} {OBJECTS[k % 4]}" for k in range(1 + c % 3)]
        for c in range(clients)
    ]
    with run_daemon(tmp_path) as d:
        stubs = [RagStubs(d) for _ in range(clients)]

        def embed(c: int) -> np.ndarray:
            reply = stubs[c].rag.Embed(rag_pb2.EmbedRequest(texts=texts[c]), timeout=120)
            assert len(reply.embeddings) == len(texts[c])
            return np.array([list(e.values) for e in reply.embeddings], dtype=np.float32)

        alone = [embed(c) for c in range(clients)]
        start = threading.Barrier(clients)

        def together(c: int) -> list[np.ndarray]:
            start.wait()
            return [embed(c) for _ in range(3)]

        with ThreadPoolExecutor(clients) as pool:
            results = list(pool.map(together, range(clients)))
        for c in range(clients):
            for got in results[c]:
                np.testing.assert_allclose(got, alone[c], atol=1e-5)
        for s in stubs:
            s.channel.close()
