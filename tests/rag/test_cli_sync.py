"""`rustaictl rag index --prune` (files deleted from a folder leave the index), `rag
watch` (the collection follows the folder) and `--by-path` on a daemon that reads no
paths (said once, no collection left behind)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from rustaid_client.cli import main

from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import RagStubs, link_embedding_model

RUSTAICTL = str(Path(sys.executable).with_name("rustaictl"))


@pytest.fixture
def address(rag_daemon: RagStubs) -> str:
    return rag_daemon.daemon.address


def sources(address: str, capsys: pytest.CaptureFixture[str], collection: str) -> set[str]:
    code = main(["--address", address, "--json", "rag", "search", "words", "-c", collection,
                 "-k", "50"])  # fmt: skip
    assert code == 0
    return {Path(h["documentId"]).name for h in json.loads(capsys.readouterr().out)["hits"]}


def test_prune_removes_deleted_files(
    tmp_path: Path, address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    docs, other = tmp_path / "docs", tmp_path / "other"
    docs.mkdir()
    other.mkdir()
    for name in ("a.md", "b.md", "c.md"):
        (docs / name).write_text(f"# {name}\n\nSome words about {name}.\n")
    (other / "keep.md").write_text("Words from another folder.\n")
    index = ["--address", address, "rag", "index", "-c", "sync"]
    assert main([*index, str(docs), str(other)]) == 0
    capsys.readouterr()
    assert sources(address, capsys, "sync") == {"a.md", "b.md", "c.md", "keep.md"}
    (docs / "b.md").unlink()
    (docs / "c.md").rename(docs / "d.md")
    # Without --prune the deleted files stay; with it they go, and only from that folder.
    assert main([*index, str(docs)]) == 0
    assert "0 chunks of deleted files" not in capsys.readouterr().out
    assert "b.md" in sources(address, capsys, "sync")
    assert main([*index, str(docs), "--prune"]) == 0
    out = capsys.readouterr().out
    assert (
        "1 indexed" not in out
        and "2 unchanged" in out
        and "2 chunks of deleted files removed" in out
    )
    assert sources(address, capsys, "sync") == {"a.md", "d.md", "keep.md"}
    assert main([*index, str(docs / "a.md"), "--prune"]) == 2
    assert "--prune needs a folder" in capsys.readouterr().err


def test_by_path_when_the_daemon_reads_no_paths(
    tmp_path: Path, tiny_models: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "data"
    link_embedding_model(data, tiny_models["tiny"], "tiny")
    docs = tmp_path / "docs"
    docs.mkdir()
    for name in ("a.md", "b.md", "c.md"):
        (docs / name).write_text(f"{name} words\n")
    with run_daemon(data) as daemon:
        code = main(["--address", daemon.address, "rag", "index", str(docs), "--by-path"])
        err = capsys.readouterr().err
        assert code == 1
        assert err.count("reading files by path is off") == 1
        assert main(["--address", daemon.address, "--json", "rag", "collections"]) == 0
        assert "default" not in capsys.readouterr().out  # not left behind, empty


def test_watch_keeps_the_collection_in_step(
    tmp_path: Path, address: str, capsys: pytest.CaptureFixture[str]
) -> None:
    docs = tmp_path / "watched"
    docs.mkdir()
    (docs / "first.md").write_text("First words.\n")
    proc = subprocess.Popen(
        [RUSTAICTL, "--address", address, "rag", "watch", str(docs), "-c", "watched",
         "--interval", "0.2"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    assert proc.stdout is not None and proc.stderr is not None
    try:
        assert "watched: 1 indexed" in proc.stdout.readline()
        assert "created collection watched" in proc.stderr.readline()
        assert "watching" in proc.stderr.readline()
        (docs / "second.md").write_text("Second words.\n")
        assert "watched: 1 indexed" in proc.stdout.readline()
        assert sources(address, capsys, "watched") == {"first.md", "second.md"}
        (docs / "first.md").unlink()
        assert "watched: 1 deleted files removed (1 chunks)" in proc.stdout.readline()
        assert sources(address, capsys, "watched") == {"second.md"}
    finally:
        proc.send_signal(signal.SIGINT)
        proc.communicate(timeout=30)
    assert proc.returncode == 0
