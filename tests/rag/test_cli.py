"""`rustaictl rag ...` and the client library's RAG calls against a real daemon."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest
from rustaid_client import cli
from rustaid_client.cli import main
from rustaid_client.client import Client, RustaidError, parse_condition, parse_filter

from rustaid.api.v1 import rag_pb2
from tests.rag.conftest import RagStubs
from tests.rag.documents import make_pdf


@pytest.fixture
def address(rag_daemon: RagStubs) -> str:
    return rag_daemon.daemon.address


def test_filter_expressions() -> None:
    f = parse_filter(["metadata.lang=en", "page>=3", "source=a.md|b.md", "metadata.ok=true",
                      "metadata.year=2020", "document_id!=x", "page<10.5"])  # fmt: skip
    must = {c.key: c for c in f.must}
    assert must["metadata.lang"].value.text == "en"
    assert must["metadata.ok"].value.boolean is True
    assert must["metadata.year"].value.integer == 2020
    assert list(must["source"].any.values) == ["a.md", "b.md"]
    ranges = [c.range for c in f.must if c.key == "page"]
    assert ranges[0].gte == 3 and ranges[1].lt == 10.5
    assert f.must_not[0].value.text == "x"
    for bad in ("nokey", "page>=three", "=x", "a b=c"):
        with pytest.raises(ValueError):
            parse_condition(bad)


def test_index_folder_with_progress_search_and_ask(
    tmp_path: Path,
    address: str,
    capsys: pytest.CaptureFixture[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    docs = tmp_path / "docs"
    (docs / "sub").mkdir(parents=True)
    (docs / "cats.md").write_text("# Cats\n\nThe kitten drinks milk.\n")
    (docs / "sub" / "cities.txt").write_text("Paris is the capital of France.")
    (docs / "report.pdf").write_bytes(make_pdf([["The green apple grows in Italy."]]))
    (docs / ".hidden.md").write_text("hidden words")
    (docs / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"\x00" * 100)
    (docs / "empty.txt").write_bytes(b"")
    # A terminal on stderr: the progress bar is drawn.
    err = io.StringIO()
    err.isatty = lambda: True  # type: ignore[method-assign]
    monkeypatch.setattr(cli.output, "stderr", lambda: err)
    code = main(
        ["--address", address, "rag", "index", str(docs), "-c", "clidocs", "--meta", "team=core"]
    )
    out = capsys.readouterr().out
    assert code == 1  # empty.txt failed, the rest went in
    assert "clidocs: 3 indexed" in out and "1 failed" in out
    progress = err.getvalue()
    assert "created collection clidocs" in progress
    assert "[" in progress and "4/4 files" in progress and "empty.txt" in progress
    assert "hidden" not in progress and "image.png" not in progress
    # Again: nothing changed. Other metadata is a change.
    monkeypatch.setattr(cli.output, "stderr", lambda: io.StringIO())
    cats = ["--address", address, "rag", "index", str(docs / "cats.md"), "-c", "clidocs"]
    assert main([*cats, "--meta", "team=core"]) == 0
    assert "0 indexed (0 chunks), 1 unchanged" in capsys.readouterr().out
    assert main([*cats, "--meta", "team=web"]) == 0
    assert "1 indexed (1 chunks), 0 unchanged" in capsys.readouterr().out
    assert main([*cats, "--meta", "team=core"]) == 0

    assert (
        main(["--address", address, "rag", "search", "kitten milk", "-c", "clidocs", "-k", "1"])
        == 0
    )
    out = capsys.readouterr().out
    assert "cats.md (Cats)" in out and "The kitten drinks milk." in out
    code = main(["--address", address, "rag", "search", "capital", "-c", "clidocs",
                 "--where", "metadata.team=core", "--json"])  # fmt: skip
    assert code == 0
    hits = json.loads(capsys.readouterr().out)["hits"]
    assert hits and all(h["metadata"]["team"] == "core" for h in hits)

    code = main(["--address", address, "rag", "search", "milk", "-c", "clidocs", "--mode",
                 "keyword", "--json"])  # fmt: skip
    found = json.loads(capsys.readouterr().out)
    assert code == 0 and found["mode"] == "SEARCH_MODE_KEYWORD"
    assert found["hits"] and all("milk" in h["text"] for h in found["hits"])
    assert main(["--address", address, "rag", "search", "x", "--mode", "fuzzy"]) == 2

    code = main(["--address", address, "rag", "ask", "What does the kitten drink?", "-c", "clidocs",
                 "-m", "chat", "-n", "6", "--seed", "1"])  # fmt: skip
    out = capsys.readouterr().out
    assert code == 0 and "Sources:" in out and "[1] " in out

    assert main(["--address", address, "rag", "collections"]) == 0
    table = capsys.readouterr().out
    assert "clidocs" in table and "embeddings/tiny" in table and "qdrant-edge" in table
    cats = str((docs / "cats.md").resolve())
    assert main(["--address", address, "rag", "delete", "-c", "clidocs", "-d", cats]) == 0
    assert "deleted 1 chunks" in capsys.readouterr().out
    assert main(["--address", address, "rag", "drop", "clidocs"]) == 0
    assert "deleted collection clidocs" in capsys.readouterr().out


def test_cli_errors(address: str, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    assert main(["--address", address, "rag", "search", "x", "-c", "nope"]) == 1
    assert "NOT_FOUND" in capsys.readouterr().err
    assert main(["--address", address, "rag", "search", "x", "--where", "page>=many"]) == 2
    assert main(["--address", address, "rag", "index", str(tmp_path / "missing")]) == 2
    assert main(["--address", address, "rag", "delete", "-c", "x"]) == 2
    assert (
        main(["--address", address, "rag", "index", str(tmp_path), "--no-create", "-c", "z"]) == 2
    )


def test_client_library(address: str) -> None:
    with Client(address) as client:
        client.create_collection("lib", distance="cosine")
        r = client.index_documents(
            "lib",
            [
                "the cat and the dog",
                {"id": "fr", "text": "paris france", "metadata": {"lang": "fr"}},
            ],
            chunk_size=16,
            chunk_overlap=0,
        )
        assert r.documents_indexed == 2
        hits = client.search("lib", "paris", top_k=1, filter=["metadata.lang=fr"]).hits
        assert hits[0].document_id == "fr"
        up = client.index_file("lib", content=b"# T\n\nthe red car", filename="car.md")
        assert up.parser == "markdown"
        embedded = client.embed(["the cat"])
        assert embedded.dimension == 16
        events = list(client.ask("lib", "where is paris?", "chat", passages=2, max_tokens=4))
        assert events[0].WhichOneof("event") == "citations"
        assert client.delete_documents("lib", ["fr"]).deleted == 1
        with pytest.raises(RustaidError) as info:
            client.search("lib", "x", top_k=5000)
        assert info.value.code_name == "INVALID_ARGUMENT"
        assert any(f == "top_k" for f, _ in info.value.field_violations)
        with pytest.raises(ValueError):
            client.index_file("lib")
        client.delete_collection("lib")
        assert "lib" not in [c.name for c in client.list_collections().collections]
        assert isinstance(client.list_collections(), rag_pb2.ListCollectionsResponse)
