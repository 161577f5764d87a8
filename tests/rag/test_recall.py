"""Retrieval quality with the real all-MiniLM-L6-v2: the project's own documentation is
indexed through the daemon, and known questions must find the passage that answers them
within the first five hits (recall@5, printed)."""

from __future__ import annotations

from pathlib import Path

import pytest

from rustaid.api.v1 import rag_pb2
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import (
    MINILM,
    ROOT,
    RagStubs,
    link_embedding_model,
    needs_minilm,
    write_config,
)

CORPUS = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
# (question, files that answer it, words the answering passage contains)
RAG = "rag.md"
QUESTIONS = [
    ("Which folders may the daemon read files from when indexing by path?", RAG, "allowed_folders"),
    ("What happens to a collection if the daemon is killed while indexing?", RAG, "killed"),
    ("How do I use a Qdrant server instead of the embedded vector store?", RAG,
     "[rag.stores.qdrant]"),
    ("How are documents split into chunks?", RAG, "boundary"),
    ("Which document formats can be indexed?", RAG, "docx"),
    ("Is a password protected PDF accepted?", RAG, "encrypted"),
    ("How are search results filtered by metadata?", RAG, "metadata."),
    ("How does Ask fit the passages into the model's context?", RAG, "context"),
    ("What does the daemon do when it receives SIGHUP?", "README.md architecture.md", "SIGHUP"),
    ("How is the id of a model derived from its file name?",
     "README.md models.md architecture.md grpc-api.md", "lower-cased"),
    ("Which permissions does the Unix socket get?",
     "README.md architecture.md grpc-api.md dbus.md", "0660"),
    ("How do I write a plugin that adds a tool?", "plugins.md", "tool"),
]  # fmt: skip
MIN_RECALL = 0.75


@needs_minilm
@pytest.mark.slow
def test_recall_at_5_on_the_project_docs(tmp_path: Path) -> None:
    link_embedding_model(tmp_path, MINILM, "minilm")
    write_config(tmp_path, '[rag]\nembedding_model = "embeddings/minilm"\nembedding_threads = 2\n')
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        stubs.rag.CreateCollection(rag_pb2.CreateCollectionRequest(name="docs"))
        chunks = 0
        for path in CORPUS:
            r = stubs.rag.IndexFile(
                rag_pb2.IndexFileRequest(
                    collection="docs", content=path.read_bytes(), filename=path.name
                )
            )
            chunks += r.chunks_indexed
        found = 0
        misses = []
        for question, file, words in QUESTIONS:
            hits = stubs.rag.Search(
                rag_pb2.SearchRequest(collection="docs", query=question, top_k=5)
            ).hits
            ok = any(
                h.document_id in file.split()
                and words.lower() in (h.text + " ".join(h.heading_path)).lower()
                for h in hits
            )
            found += ok
            if not ok:
                misses.append((question, [(h.document_id, list(h.heading_path)) for h in hits]))
        recall = found / len(QUESTIONS)
        print(
            f"\nrecall@5 = {recall:.2f} ({found}/{len(QUESTIONS)} questions, "
            f"{len(CORPUS)} files, {chunks} chunks)"
        )
        for question, top in misses:
            print(f"  missed: {question!r}: top 5 {top}")
        assert recall >= MIN_RECALL, misses
        stubs.channel.close()
