"""RagService end to end: a real daemon (child process) with tiny real ONNX embedding
models, the embedded Qdrant Edge store, the built-in parsers and a synthetic GGUF
language model; every RPC with good and bad input."""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import grpc
import numpy as np
import pytest
from google.protobuf import struct_pb2
from google.rpc import error_details_pb2, status_pb2

from rustaid.api.v1 import common_pb2, models_pb2, rag_pb2
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import RagStubs, link_embedding_model, rpc_error, write_config
from tests.rag.documents import encrypted, make_docx, make_pdf, with_outline

CODE = grpc.StatusCode


def reason(error: grpc.RpcError) -> str:
    for key, value in error.trailing_metadata() or ():  # type: ignore[attr-defined]
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            for detail in status.details:
                if detail.Is(error_details_pb2.ErrorInfo.DESCRIPTOR):
                    info = error_details_pb2.ErrorInfo()
                    detail.Unpack(info)
                    return str(info.reason)
    return ""


def create(stubs: RagStubs, name: str, model: str = "") -> rag_pb2.Collection:
    request = rag_pb2.CreateCollectionRequest(name=name, embedding_model_id=model)
    return stubs.rag.CreateCollection(request).collection


def struct(**values: object) -> struct_pb2.Struct:
    s = struct_pb2.Struct()
    s.update(values)
    return s


def index(
    stubs: RagStubs,
    collection: str,
    documents: Sequence[rag_pb2.Document],
    per_message: int = 2,
    chunking: rag_pb2.ChunkingOptions | None = None,
) -> rag_pb2.IndexDocumentsResponse:
    def requests() -> Iterator[rag_pb2.IndexDocumentsRequest]:
        for i in range(0, max(1, len(documents)), per_message):
            yield rag_pb2.IndexDocumentsRequest(
                collection=collection if i == 0 else "",
                documents=documents[i : i + per_message],
                chunking=chunking if i == 0 else None,
            )

    return stubs.rag.IndexDocuments(requests())


def points(stubs: RagStubs, collection: str) -> int:
    for c in stubs.rag.ListCollections(rag_pb2.ListCollectionsRequest()).collections:
        if c.name == collection:
            return int(c.points_count)
    raise AssertionError(f"no collection {collection}")


def search(stubs: RagStubs, collection: str, query: str, **kw: object) -> list[rag_pb2.SearchHit]:
    request = rag_pb2.SearchRequest(collection=collection, query=query, **kw)  # type: ignore[arg-type]
    return list(stubs.rag.Search(request).hits)


def value(key: str, v: str | int | bool) -> rag_pb2.Condition:
    if isinstance(v, bool):
        return rag_pb2.Condition(key=key, value=rag_pb2.MatchValue(boolean=v))
    if isinstance(v, int):
        return rag_pb2.Condition(key=key, value=rag_pb2.MatchValue(integer=v))
    return rag_pb2.Condition(key=key, value=rag_pb2.MatchValue(text=v))


def any_of(key: str, *values: str) -> rag_pb2.Condition:
    return rag_pb2.Condition(key=key, any=rag_pb2.MatchAny(values=values))


def between(key: str, **bounds: float) -> rag_pb2.Condition:
    return rag_pb2.Condition(key=key, range=rag_pb2.Range(**bounds))


def must(*conditions: rag_pb2.Condition) -> rag_pb2.Filter:
    return rag_pb2.Filter(must=conditions)


DOCS = [
    rag_pb2.Document(
        id="animals",
        text="The cat and the kitten. The dog and the dogs.",
        metadata=struct(lang="en", year=2020, reviewed=True),
        source="a.txt",
    ),
    rag_pb2.Document(
        id="cities",
        text="Paris is the capital of France. Berlin is the capital of Germany. "
        "Rome is the capital of Italy.",
        metadata=struct(lang="fr", year=2021),
    ),
    rag_pb2.Document(
        id="music",
        text="The piano and the violin and the guitar make music.",
        metadata=struct(lang="de", year=2022, reviewed=False),
    ),
    rag_pb2.Document(
        id="food",
        text="Apple and banana are fruit. Bread and cheese and milk.",
        metadata=struct(lang="en", year=2023),
    ),
]


# -- Embed -------------------------------------------------------------------------------


def test_embed(rag_daemon: RagStubs) -> None:
    r = rag_daemon.rag.Embed(rag_pb2.EmbedRequest(texts=["the cat", "paris is the capital"]))
    assert r.model_id == "embeddings/tiny" and r.dimension == 16 and r.max_tokens == 128
    vectors = np.array([e.values for e in r.embeddings])
    assert vectors.shape == (2, 16)
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1, atol=1e-5)
    other = rag_daemon.rag.Embed(rag_pb2.EmbedRequest(model_id="embeddings/other", texts=["x"]))
    assert other.dimension == 8
    long = rag_daemon.rag.Embed(rag_pb2.EmbedRequest(texts=["short", "cat " * 300]))
    assert list(long.truncated) == [1]
    # A GGUF language model embeds through llama.cpp, behind the same interface.
    gguf = rag_daemon.rag.Embed(rag_pb2.EmbedRequest(model_id="chat", texts=["hello world"]))
    assert gguf.dimension > 0 and len(gguf.embeddings[0].values) == gguf.dimension


def test_embed_bad_input(rag_daemon: RagStubs) -> None:
    cases = [
        (rag_pb2.EmbedRequest(), CODE.INVALID_ARGUMENT, "texts is empty"),
        (rag_pb2.EmbedRequest(texts=["ok", " "]), CODE.INVALID_ARGUMENT, "texts[1] is empty"),
        (rag_pb2.EmbedRequest(texts=["x"] * 1025), CODE.INVALID_ARGUMENT, "at most 1024"),
        (rag_pb2.EmbedRequest(model_id="nope", texts=["x"]), CODE.NOT_FOUND, "no model"),
    ]
    for request, code, words in cases:
        e = rpc_error(lambda r=request: rag_daemon.rag.Embed(r))  # type: ignore[misc]
        assert e.code() == code and words in e.details(), e.details()


def test_embedding_models_are_listed_and_marked_loaded(rag_daemon: RagStubs) -> None:
    rag_daemon.rag.Embed(rag_pb2.EmbedRequest(texts=["warm up"]))
    listing = rag_daemon.models.ListModels(
        models_pb2.ListModelsRequest(kind=common_pb2.MODEL_KIND_EMBEDDING)
    )
    by_id = {m.id: m for m in listing.models}
    assert set(by_id) == {"embeddings/tiny", "embeddings/other"}
    tiny = by_id["embeddings/tiny"]
    assert tiny.provider == "onnx" and tiny.state == models_pb2.MODEL_STATE_LOADED
    assert tiny.metadata.embedding_length == 16 and tiny.context_length == 128


# -- collections -------------------------------------------------------------------------


def test_collection_lifecycle_and_bad_input(rag_daemon: RagStubs) -> None:
    c = create(rag_daemon, "life")
    assert (c.embedding_model_id, c.dimension, c.vector_store) == (
        "embeddings/tiny",
        16,
        "qdrant-edge",
    )
    assert c.distance == rag_pb2.DISTANCE_COSINE
    e = rpc_error(lambda: create(rag_daemon, "life"))
    assert e.code() == CODE.ALREADY_EXISTS
    for name in ("", "../etc", "has space", "x" * 65, ".hidden"):
        e = rpc_error(lambda n=name: create(rag_daemon, n))  # type: ignore[misc]
        assert e.code() == CODE.INVALID_ARGUMENT, name
    e = rpc_error(lambda: create(rag_daemon, "m", model="missing-model"))
    assert e.code() == CODE.NOT_FOUND
    e = rpc_error(
        lambda: rag_daemon.rag.CreateCollection(
            rag_pb2.CreateCollectionRequest(name="s", vector_store="milvus")
        )
    )
    assert e.code() == CODE.INVALID_ARGUMENT and "qdrant-edge" in e.details()
    e = rpc_error(
        lambda: rag_daemon.rag.CreateCollection(
            rag_pb2.CreateCollectionRequest(name="d", distance=9)
        )  # type: ignore[arg-type]
    )
    assert e.code() == CODE.INVALID_ARGUMENT
    names = [
        c.name for c in rag_daemon.rag.ListCollections(rag_pb2.ListCollectionsRequest()).collections
    ]
    assert "life" in names
    rag_daemon.rag.DeleteCollection(rag_pb2.DeleteCollectionRequest(name="life"))
    e = rpc_error(
        lambda: rag_daemon.rag.DeleteCollection(rag_pb2.DeleteCollectionRequest(name="life"))
    )
    assert e.code() == CODE.NOT_FOUND and reason(e) == "COLLECTION_NOT_FOUND"
    assert not (rag_daemon.daemon.data_dir / "state" / "rag" / "qdrant-edge" / "life").exists()


# -- IndexDocuments ----------------------------------------------------------------------


def test_index_documents_stream_reindex_and_replace(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "stream")
    r = index(rag_daemon, "stream", DOCS, per_message=3)
    assert list(r.document_ids) == ["animals", "cities", "music", "food"]
    assert r.documents_indexed == 4 and r.chunks_indexed >= 4 and r.elapsed_ms > 0
    total = points(rag_daemon, "stream")
    assert total == r.chunks_indexed
    again = index(rag_daemon, "stream", DOCS)
    assert again.documents_unchanged == 4 and again.documents_indexed == 0
    only_cities = rag_pb2.Filter(
        must=[rag_pb2.Condition(key="document_id", value=rag_pb2.MatchValue(text="cities"))]
    )
    old_chunks = len(search(rag_daemon, "stream", "capital", top_k=100, filter=only_cities))
    changed = rag_pb2.Document(id="cities", text="Rome is the capital of Italy.")
    r3 = index(rag_daemon, "stream", [changed])
    assert r3.documents_replaced == 1 and r3.chunks_indexed == 1
    hits = search(rag_daemon, "stream", "capital of germany berlin", top_k=20)
    assert all("Berlin" not in h.text for h in hits)  # the old version is gone
    assert points(rag_daemon, "stream") == total - old_chunks + 1
    # Derived ids come from the content.
    derived = index(rag_daemon, "stream", [rag_pb2.Document(text="music of the piano")])
    assert derived.document_ids[0].startswith("sha256:")


def test_index_documents_chunks_long_texts(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "long")
    text = " ".join(f"The cat number {i} sat on the red car." for i in range(60))
    chunking = rag_pb2.ChunkingOptions(chunk_size=24, chunk_overlap=4)
    r = index(rag_daemon, "long", [rag_pb2.Document(id="long", text=text)], chunking=chunking)
    assert r.chunks_indexed > 10
    hits = search(rag_daemon, "long", "cat number", top_k=1000)
    assert sorted(h.chunk_index for h in hits) == list(range(r.chunks_indexed))


def test_index_documents_bad_input_leaves_nothing_half_written(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "strict")
    e = rpc_error(lambda: rag_daemon.rag.IndexDocuments(iter([])))
    assert e.code() == CODE.INVALID_ARGUMENT and "stream is empty" in e.details()
    e = rpc_error(lambda: index(rag_daemon, "", DOCS))
    assert e.code() == CODE.INVALID_ARGUMENT
    e = rpc_error(lambda: index(rag_daemon, "nowhere", DOCS))
    assert e.code() == CODE.NOT_FOUND
    bad = [DOCS[0], DOCS[1], rag_pb2.Document(id="blank", text="  "), DOCS[3]]
    e = rpc_error(lambda: index(rag_daemon, "strict", bad))
    assert e.code() == CODE.INVALID_ARGUMENT and "documents[2].text is empty" in e.details()
    hits = search(rag_daemon, "strict", "cat dog capital piano fruit", top_k=50)
    assert {h.document_id for h in hits} == {"animals", "cities"}
    twice = [DOCS[2], DOCS[2]]
    e = rpc_error(lambda: index(rag_daemon, "strict", twice))
    assert e.code() == CODE.INVALID_ARGUMENT and "appears twice" in e.details()

    def two_collections() -> Iterator[rag_pb2.IndexDocumentsRequest]:
        yield rag_pb2.IndexDocumentsRequest(collection="strict", documents=[DOCS[0]])
        yield rag_pb2.IndexDocumentsRequest(collection="other", documents=[DOCS[1]])

    e = rpc_error(lambda: rag_daemon.rag.IndexDocuments(two_collections()))
    assert e.code() == CODE.INVALID_ARGUMENT and "later message" in e.details()
    for chunking, words in (
        (rag_pb2.ChunkingOptions(chunk_size=500), "exceeds"),
        (rag_pb2.ChunkingOptions(chunk_size=4), "at least 8"),
        (rag_pb2.ChunkingOptions(chunk_size=20, chunk_overlap=10), "less than half"),
    ):
        e = rpc_error(lambda c=chunking: index(rag_daemon, "strict", DOCS, chunking=c))  # type: ignore[misc]
        assert e.code() == CODE.INVALID_ARGUMENT and words in e.details(), e.details()


# -- IndexFile ---------------------------------------------------------------------------


def upload(
    stubs: RagStubs, collection: str, content: bytes, filename: str, **kw: object
) -> rag_pb2.IndexFileResponse:
    request = rag_pb2.IndexFileRequest(
        collection=collection, content=content, filename=filename, **kw
    )  # type: ignore[arg-type]
    return stubs.rag.IndexFile(request)


def test_index_file_uploads_of_every_format(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "files")
    md = (
        b"# Guide\n\n## Install\n\nThe daemon needs a socket.\n\n## Power\n\nBattery and thermal.\n"
    )
    html = b"<html><head><title>Page</title></head><body><h1>Cars</h1><p>The red car.</p></body>"
    pdf = with_outline(
        make_pdf([["The green apple."], ["The blue banana."]]), [("Fruit", 0), ("More", 1)]
    )
    docx = make_docx([("h1", "Music"), ("p", "The piano and the violin.")])
    results = {
        name: upload(rag_daemon, "files", content, name)
        for name, content in (("g.md", md), ("p.html", html), ("f.pdf", pdf), ("m.docx", docx))
    }
    assert {n: r.parser for n, r in results.items()} == {
        "g.md": "markdown", "p.html": "html", "f.pdf": "pdf", "m.docx": "docx",
    }  # fmt: skip
    assert results["g.md"].document_id == "g.md"
    hit = search(rag_daemon, "files", "battery thermal power", top_k=1)[0]
    assert hit.document_id == "g.md" and list(hit.heading_path) == ["Guide", "Power"]
    assert hit.source == "g.md"
    pdf_hits = search(rag_daemon, "files", "banana", top_k=10, filter=must(value("parser", "pdf")))
    by_page = {h.page: list(h.heading_path) for h in pdf_hits}
    assert by_page == {1: ["Fruit"], 2: ["More"]}
    again = upload(rag_daemon, "files", md, "g.md")
    assert again.unchanged and again.chunks_indexed == 0
    changed = upload(rag_daemon, "files", md + b"\nMore text about the grpc port.\n", "g.md")
    assert changed.replaced and not changed.unchanged


def test_index_file_bad_uploads(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "badfiles")
    before = points(rag_daemon, "badfiles")
    cases = [
        (b"", "empty.txt", "empty (0 bytes)", "DOCUMENT_EMPTY"),
        (os.urandom(4096), "garbage.pdf", "not a PDF file", "DOCUMENT_UNREADABLE"),
        (
            b"%PDF-1.4\n" + os.urandom(4096),
            "broken.pdf",
            "not a readable PDF",
            "DOCUMENT_UNREADABLE",
        ),
        (encrypted(make_pdf([["x"]]), "pw"), "locked.pdf", "encrypted", "DOCUMENT_ENCRYPTED"),
        (os.urandom(2048), "random.docx", "not a DOCX", "DOCUMENT_UNREADABLE"),
        (b"\x00\x01\x02\x03" * 512, "blob.bin", "no parser", "NO_PARSER"),
    ]
    for content, name, words, why in cases:
        e = rpc_error(lambda c=content, n=name: upload(rag_daemon, "badfiles", c, n))  # type: ignore[misc]
        assert e.code() == CODE.INVALID_ARGUMENT, (name, e.details())
        assert words in e.details() and reason(e) == why, (name, e.details(), reason(e))
    e = rpc_error(lambda: rag_daemon.rag.IndexFile(rag_pb2.IndexFileRequest(collection="badfiles")))
    assert e.code() == CODE.INVALID_ARGUMENT and "set path" in e.details()
    e = rpc_error(lambda: upload(rag_daemon, "badfiles", b"text", "t.txt", document_id="x" * 600))
    assert e.code() == CODE.INVALID_ARGUMENT
    assert points(rag_daemon, "badfiles") == before == 0


def test_index_file_by_path_only_inside_allowed_folders(
    rag_daemon: RagStubs, tmp_path: Path
) -> None:
    create(rag_daemon, "paths")
    allowed = rag_daemon.daemon.data_dir / "allowed"
    inside = allowed / "notes.md"
    inside.write_text("# Notes\n\nThe kitten likes milk.\n")
    outside = tmp_path / "secret.txt"
    outside.write_text("the secret engine")
    (allowed / "escape.txt").unlink(missing_ok=True)
    (allowed / "escape.txt").symlink_to(outside)
    (allowed / "sub").mkdir(exist_ok=True)

    def by_path(path: str) -> rag_pb2.IndexFileResponse:
        return rag_daemon.rag.IndexFile(rag_pb2.IndexFileRequest(collection="paths", path=path))

    r = by_path(str(inside))
    assert r.document_id == str(inside.resolve()) and r.parser == "markdown"
    assert search(rag_daemon, "paths", "kitten milk", top_k=1)[0].source == str(inside.resolve())
    for path, code in (
        (str(outside), CODE.PERMISSION_DENIED),
        (str(allowed / "escape.txt"), CODE.PERMISSION_DENIED),  # a symlink escaping the folder
        (str(allowed / ".." / "config" / "rustaid.toml"), CODE.PERMISSION_DENIED),
        ("/etc/passwd", CODE.PERMISSION_DENIED),
        (str(allowed / "missing.txt"), CODE.NOT_FOUND),
        (str(allowed / "sub"), CODE.INVALID_ARGUMENT),
        ("notes.md", CODE.INVALID_ARGUMENT),
    ):
        e = rpc_error(lambda p=path: by_path(p))  # type: ignore[misc]
        assert e.code() == code, (path, e.code(), e.details())
    assert "allowed_folders" in rpc_error(lambda: by_path(str(outside))).details()
    hits = search(rag_daemon, "paths", "secret engine", top_k=10)
    assert all("secret" not in h.text for h in hits)


# -- Search and filters -----------------------------------------------------------------


@pytest.fixture(scope="module")
def searchable(rag_daemon: RagStubs) -> str:
    create(rag_daemon, "search")
    index(rag_daemon, "search", DOCS)
    return "search"


def cond(key: str, **match: object) -> rag_pb2.Condition:
    return rag_pb2.Condition(key=key, **match)  # type: ignore[arg-type]


def test_search_ranks_and_filters(rag_daemon: RagStubs, searchable: str) -> None:
    hits = search(rag_daemon, searchable, "the capital of france")
    assert hits[0].document_id == "cities" and len(hits) == 4  # default top_k 5, 4 chunks
    assert hits[0].metadata["lang"] == "fr" and hits[0].metadata["year"] == 2021
    assert hits[0].score >= hits[-1].score
    assert len(search(rag_daemon, searchable, "cat", top_k=2)) == 2
    only = {
        "lang=en": must(value("metadata.lang", "en")),
        "any": must(any_of("metadata.lang", "de", "fr")),
        "range": must(between("metadata.year", gte=2022)),
        "int": must(value("metadata.year", 2020)),
        "bool": must(value("metadata.reviewed", True)),
        "not": rag_pb2.Filter(must_not=[value("document_id", "cities")]),
    }
    expected = {
        "lang=en": {"animals", "food"},
        "any": {"cities", "music"},
        "range": {"music", "food"},
        "int": {"animals"},
        "bool": {"animals"},
        "not": {"animals", "music", "food"},
    }
    for name, f in only.items():
        found = {h.document_id for h in search(rag_daemon, searchable, "the", top_k=10, filter=f)}
        assert found == expected[name], name
    dense = rag_pb2.SEARCH_MODE_DENSE
    high = search(rag_daemon, searchable, "the capital of france", score_threshold=0.99, mode=dense)
    assert all(h.score >= 0.99 for h in high)


def test_search_bad_input(rag_daemon: RagStubs, searchable: str) -> None:
    def bad(**kw: object) -> grpc.RpcError:
        kw.setdefault("query", "cat")
        return rpc_error(lambda: search(rag_daemon, searchable, **kw))  # type: ignore[arg-type]

    for kw, words in (
        ({"top_k": 10**6}, "between 1 and 1000"),
        ({"query": "  "}, "query is empty"),
        ({"filter": must(value("lang", "en"))}, "unknown field 'lang'"),
        ({"filter": must(between("source", gt=1))}, "holds text"),
        ({"filter": must(value("page", "one"))}, "holds integers"),
        ({"filter": must(between("metadata.lang", lt=3))}, "holds text"),
        ({"filter": must(rag_pb2.Condition(key="metadata.x"))}, "sets none of value, any"),
        ({"filter": must(cond("page", value=rag_pb2.MatchValue()))}, "sets none of text"),
        ({"filter": must(between("page"))}, "no bound"),
        ({"filter": must(value("", "x"))}, "key is empty"),
        ({"filter": must(value("metadata.a b", "x"))}, "not a field path"),
        ({"score_threshold": float("nan")}, "finite"),
    ):
        e = bad(**kw)
        assert e.code() == CODE.INVALID_ARGUMENT and words in e.details(), (kw, e.details())
    e = rpc_error(lambda: search(rag_daemon, "missing", "cat"))
    assert e.code() == CODE.NOT_FOUND


def test_delete_documents(rag_daemon: RagStubs) -> None:
    create(rag_daemon, "deleting")
    index(rag_daemon, "deleting", DOCS)
    total = points(rag_daemon, "deleting")
    r = rag_daemon.rag.DeleteDocuments(
        rag_pb2.DeleteDocumentsRequest(collection="deleting", document_ids=["animals"])
    )
    assert r.deleted == 1 and points(rag_daemon, "deleting") == total - 1
    by_filter = must(value("metadata.lang", "fr"))
    r = rag_daemon.rag.DeleteDocuments(
        rag_pb2.DeleteDocumentsRequest(collection="deleting", filter=by_filter)
    )
    assert r.deleted == 1
    both = rag_pb2.DeleteDocumentsRequest(
        collection="deleting",
        document_ids=["music", "food"],
        filter=must(value("metadata.lang", "en")),
    )
    assert rag_daemon.rag.DeleteDocuments(both).deleted == 1  # only "food" is both
    e = rpc_error(
        lambda: rag_daemon.rag.DeleteDocuments(
            rag_pb2.DeleteDocumentsRequest(collection="deleting")
        )
    )
    assert e.code() == CODE.INVALID_ARGUMENT and "give document_ids or a filter" in e.details()
    e = rpc_error(
        lambda: rag_daemon.rag.DeleteDocuments(
            rag_pb2.DeleteDocumentsRequest(collection="deleting", document_ids=[""])
        )
    )
    assert e.code() == CODE.INVALID_ARGUMENT


# -- Ask ---------------------------------------------------------------------------------


def test_ask_streams_citations_then_the_answer(rag_daemon: RagStubs, searchable: str) -> None:
    request = rag_pb2.AskRequest(
        collection=searchable, question="What is the capital of France?", model_id="chat",
        params=common_pb2.GenerationParams(max_tokens=8, temperature=0, seed=1),
    )  # fmt: skip
    events = list(rag_daemon.rag.Ask(request))
    kinds = [e.WhichOneof("event") for e in events]
    assert kinds[0] == "citations" and kinds[-1] == "done" and "chunk" in kinds
    citations = events[0].citations
    assert citations.hits and citations.hits[0].document_id == "cities"
    assert len(citations.hits) + citations.dropped == 4
    done = events[-1].done
    assert done.model_id == "chat" and 0 < done.usage.completion_tokens <= 8
    # The prompt holds the sources: far more prompt tokens than the question alone.
    assert done.usage.prompt_tokens > 40


def test_ask_bad_input(rag_daemon: RagStubs, searchable: str) -> None:
    def ask(**kw: object) -> grpc.RpcError:
        kw.setdefault("collection", searchable)
        kw.setdefault("question", "capital?")
        kw.setdefault("model_id", "chat")
        return rpc_error(lambda: list(rag_daemon.rag.Ask(rag_pb2.AskRequest(**kw))))  # type: ignore[arg-type]

    e = ask(question="")
    assert e.code() == CODE.INVALID_ARGUMENT
    e = ask(top_k=101)
    assert e.code() == CODE.INVALID_ARGUMENT and "between 1 and 100" in e.details()
    e = ask(model_id="no-such-model")
    assert e.code() == CODE.NOT_FOUND
    e = ask(collection="nowhere")
    assert e.code() == CODE.NOT_FOUND
    e = ask(params=common_pb2.GenerationParams(max_tokens=30000))
    assert e.code() == CODE.INVALID_ARGUMENT and "max_tokens" in e.details()
    e = ask(params=common_pb2.GenerationParams(temperature=-1))
    assert e.code() == CODE.INVALID_ARGUMENT


# -- models that change under a collection ----------------------------------------------


def test_collection_whose_model_changed_dimension(
    tmp_path: Path, tiny_models: dict[str, Path]
) -> None:
    link_embedding_model(tmp_path, tiny_models["tiny"], "swap")
    write_config(tmp_path, '[rag]\nembedding_model = "embeddings/swap"\n')
    with run_daemon(tmp_path) as d:
        stubs = RagStubs(d)
        create(stubs, "c")
        index(stubs, "c", DOCS[:2])
        assert search(stubs, "c", "cat")
        link_embedding_model(tmp_path, tiny_models["other"], "swap")  # 16 -> 8 dimensions
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            try:
                search(stubs, "c", "cat")
            except grpc.RpcError as e:
                assert e.code() == CODE.FAILED_PRECONDITION, e.details()
                assert "16-dimensional" in e.details() and "re-create" in e.details()
                break
            assert time.monotonic() < deadline, "the changed model was not noticed"
            time.sleep(0.2)
        e = rpc_error(lambda: index(stubs, "c", DOCS[2:]))
        assert e.code() == CODE.FAILED_PRECONDITION
        (tmp_path / "models" / "embeddings" / "swap").unlink()
        os.kill(d.proc.pid, signal.SIGHUP)
        deadline = time.monotonic() + 20
        while True:
            e = rpc_error(lambda: search(stubs, "c", "cat"))
            if "no longer available" in e.details():
                assert e.code() == CODE.FAILED_PRECONDITION
                break
            assert time.monotonic() < deadline, e.details()
            time.sleep(0.2)
        stubs.channel.close()


def test_the_qdrant_store_answers_like_the_embedded_one(rag_daemon: RagStubs) -> None:
    rag_daemon.rag.CreateCollection(
        rag_pb2.CreateCollectionRequest(name="on-server", vector_store="qdrant")
    )
    create(rag_daemon, "embedded")
    for name in ("on-server", "embedded"):
        r = index(rag_daemon, name, DOCS)
        assert r.documents_indexed == 4
    listing = {
        c.name: c
        for c in rag_daemon.rag.ListCollections(rag_pb2.ListCollectionsRequest()).collections
    }
    assert listing["on-server"].vector_store == "qdrant"
    assert listing["on-server"].points_count == listing["embedded"].points_count
    f = rag_pb2.Filter(must=[cond("metadata.year", range=rag_pb2.Range(gte=2021))])
    for query, kw in (("the capital city", {}), ("music", {"filter": f}), ("fruit", {"top_k": 2})):
        a = search(rag_daemon, "on-server", query, **kw)
        b = search(rag_daemon, "embedded", query, **kw)
        assert [(h.document_id, h.chunk_index) for h in a] == [
            (h.document_id, h.chunk_index) for h in b
        ]
        assert np.allclose([h.score for h in a], [h.score for h in b], atol=1e-4)
    assert (rag_daemon.daemon.data_dir / "state" / "rag" / "qdrant" / "qdrant-local").is_dir()


def test_embedding_threads_follow_the_power_profile(rag_daemon: RagStubs) -> None:
    from rustaid.api.v1 import resources_pb2, resources_pb2_grpc

    power = resources_pb2_grpc.ResourcesServiceStub(rag_daemon.channel)

    def threads() -> int:
        rag_daemon.rag.Embed(rag_pb2.EmbedRequest(model_id="embeddings/other", texts=["x"]))
        model = rag_daemon.models.GetModel(models_pb2.GetModelRequest(id="embeddings/other"))
        return int(model.model.threads)

    assert threads() == 2  # [rag] embedding_threads
    power.SetPowerProfile(
        resources_pb2.SetPowerProfileRequest(profile=common_pb2.POWER_PROFILE_ULTRA_SAVER)
    )
    try:
        assert threads() == 1  # UltraSaver runs one thread: the model was reloaded
    finally:
        power.SetPowerProfile(resources_pb2.SetPowerProfileRequest(clear_override=True))
    assert threads() == 2
