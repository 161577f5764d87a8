"""Search modes through a real daemon: dense, keyword (BM25) and hybrid (reciprocal rank
fusion), the default per collection, the errors, and, with the real all-MiniLM-L6-v2 on
Debian manual pages, a rare-word passage that dense search misses and hybrid finds."""

from __future__ import annotations

import json
from pathlib import Path

import grpc
import pytest

from rustaid.api.v1 import rag_pb2
from rustaid.rag.keywords import KeywordEncoder
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import (
    MINILM,
    ROOT,
    RagStubs,
    link_embedding_model,
    needs_minilm,
    rpc_error,
    write_config,
)
from tests.rag.test_service import create, index, search

DENSE, KEYWORD, HYBRID = (
    rag_pb2.SEARCH_MODE_DENSE,
    rag_pb2.SEARCH_MODE_KEYWORD,
    rag_pb2.SEARCH_MODE_HYBRID,
)
DOCS = [
    rag_pb2.Document(id="journal", text="journalctl --vacuum-size shrinks the journal files."),
    rag_pb2.Document(id="apt", text="apt-get autoremove removes unneeded dependencies."),
    rag_pb2.Document(id="cats", text="The cat and the kitten sleep on the sofa."),
]


@pytest.mark.parametrize("store", ["qdrant-edge", "qdrant"])
def test_modes_on_a_new_collection(rag_daemon: RagStubs, store: str) -> None:
    name = f"modes-{store}"
    request = rag_pb2.CreateCollectionRequest(name=name, vector_store=store)
    collection = rag_daemon.rag.CreateCollection(request).collection
    assert collection.keyword_language == "english"
    index(rag_daemon, name, DOCS)
    listed = rag_daemon.rag.ListCollections(rag_pb2.ListCollectionsRequest()).collections
    assert {c.name: c.keyword_language for c in listed}[name] == "english"

    def run(query: str, mode: int = 0) -> rag_pb2.SearchResponse:
        request = rag_pb2.SearchRequest(collection=name, query=query, top_k=3, mode=mode)
        return rag_daemon.rag.Search(request)

    # Unspecified: hybrid, since the collection has keyword vectors.
    default = run("vacuum the journal")
    assert default.mode == HYBRID and default.hits[0].document_id == "journal"
    # Keyword: only passages sharing a word, BM25 scores, no embedding model run.
    keyword = run("autoremove", KEYWORD)
    assert keyword.mode == KEYWORD
    assert [h.document_id for h in keyword.hits] == ["apt"] and keyword.hits[0].score > 0
    assert keyword.embed_ms == 0
    assert list(run("zeppelin", KEYWORD).hits) == []
    # A query of stop words only has no keywords: hybrid falls back to dense.
    assert len(run("the and of", HYBRID).hits) == 3
    dense = run("autoremove", DENSE)
    assert dense.mode == DENSE and len(dense.hits) == 3
    # Filters apply in every mode.
    no_apt = rag_pb2.Filter(
        must_not=[rag_pb2.Condition(key="document_id", value=rag_pb2.MatchValue(text="apt"))]
    )
    for mode in (KEYWORD, HYBRID):
        request = rag_pb2.SearchRequest(
            collection=name, query="autoremove", mode=mode, filter=no_apt
        )
        assert "apt" not in [h.document_id for h in rag_daemon.rag.Search(request).hits]


def test_a_bad_mode_is_refused(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "bad-mode")
    e = rpc_error(lambda: search(rag_daemon, "bad-mode", "cat", mode=7))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "dense, keyword or hybrid" in (e.details() or "")
    ask = rag_pb2.AskRequest(collection="bad-mode", question="cat", mode=9)
    e = rpc_error(lambda: rag_daemon.rag.Ask(ask))
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_collection_without_keyword_vectors_searches_dense(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    link_embedding_model(tmp_path, tiny_models["tiny"], "tiny")
    write_config(tmp_path, '[rag]\nembedding_model = "embeddings/tiny"\nkeyword_language = ""\n')
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        assert create(stubs, "plain").keyword_language == ""
        index(stubs, "plain", DOCS)
        request = rag_pb2.SearchRequest(collection="plain", query="autoremove")
        assert stubs.rag.Search(request).mode == DENSE
        for mode in (KEYWORD, HYBRID):
            e = rpc_error(lambda m=mode: search(stubs, "plain", "autoremove", mode=m))  # type: ignore[misc]
            assert e.code() == grpc.StatusCode.FAILED_PRECONDITION
            assert "has no keyword vectors" in (e.details() or "")
            assert "re-create it" in (e.details() or "")
        stubs.channel.close()


def test_a_bad_keyword_language_is_refused() -> None:
    from rustaid.errors import InvalidArgument
    from rustaid.rag.config import parse_rag_config

    with pytest.raises(InvalidArgument, match=r"klingon.*english"):
        parse_rag_config({"keyword_language": "klingon"})
    assert parse_rag_config({"keyword_language": ""}).keyword_language == ""


MAN = ROOT / "tests" / "bench" / "retrieval" / "corpus"
# Pages whose passages compete for the question below.
PAGES = ("zstd", "gzip", "tar", "journalctl", "apt-get", "sed", "grep", "du", "df", "ls")


# (question, page, phrase of the answering passage): dense ranks the passage 8th; the
# words it shares with the question bring it up in hybrid (3rd).
RARE_WORD_QUESTIONS = [
    (
        "Remove packages that were pulled in as dependencies and are no longer needed",
        "apt-get",
        "autoremove is used to remove packages",
    ),
]


@needs_minilm
def test_hybrid_finds_a_rare_word_passage_that_dense_misses(tmp_path: Path) -> None:
    link_embedding_model(tmp_path, MINILM, "minilm")
    write_config(tmp_path, '[rag]\nembedding_model = "embeddings/minilm"\nembedding_threads = 2\n')
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        create(stubs, "man")
        for page in PAGES:
            path = MAN / f"{page}.md"
            stubs.rag.IndexFile(
                rag_pb2.IndexFileRequest(
                    collection="man", content=path.read_bytes(), filename=path.name
                ),
                timeout=300,
            )

        def rank(question: str, page: str, answer: str, mode: int) -> int | None:
            hits = search(stubs, "man", question, top_k=5, mode=mode)
            for i, h in enumerate(hits, 1):
                if h.document_id == f"{page}.md" and answer in " ".join(h.text.split()):
                    return i
            return None

        for question, page, answer in RARE_WORD_QUESTIONS:
            assert rank(question, page, answer, DENSE) is None, question
            assert rank(question, page, answer, HYBRID) is not None, question
        stubs.channel.close()


def test_a_collection_keeps_the_keyword_weighting_it_was_made_with(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    """BM25's average chunk length is part of a collection's stored keyword weights: new
    collections record theirs (60 words); one made before it was recorded keeps the 160
    it was indexed with, so documents added after an upgrade weigh as the older ones."""
    link_embedding_model(tmp_path, tiny_models["tiny"], "tiny")
    write_config(tmp_path, '[rag]\nembedding_model = "embeddings/tiny"\n')
    text = "journalctl --vacuum-size shrinks the journal files to the size given."
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        for name in ("old", "new"):
            create(stubs, name)
        stubs.channel.close()
    catalogue = next(tmp_path.rglob("collections.json"))
    data = json.loads(catalogue.read_text())
    records = data["collections"]
    assert {n: r["keyword_average_words"] for n, r in records.items()} == {
        "old": 60.0,
        "new": 60.0,
    }
    del records["old"]["keyword_average_words"]  # as an older daemon wrote it
    catalogue.write_text(json.dumps(data))
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        scores = {}
        for name in ("old", "new"):
            index(stubs, name, [rag_pb2.Document(id="doc", text=text)])
            (hit,) = search(stubs, name, "vacuum", mode=KEYWORD)
            scores[name] = hit.score
        stubs.channel.close()
    # Same text, same IDF: the scores differ by the weights of 160 and 60 words.
    term = KeywordEncoder("english").query("vacuum").indices[0]

    def weight(words: float) -> float:
        doc = KeywordEncoder("english", words).document(text)
        return doc.values[doc.indices.index(term)]

    assert scores["old"] / scores["new"] == pytest.approx(weight(160) / weight(60), rel=1e-4)
    assert weight(160) != pytest.approx(weight(60), rel=1e-3)
