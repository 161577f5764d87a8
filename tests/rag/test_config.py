"""The [rag] settings: defaults, validation with messages naming the key, and a daemon
that refuses to start with a bad section."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from rustaid.errors import InvalidArgument
from rustaid.rag.config import RagConfig, parse_rag_config
from rustaid.testing.daemon import run_daemon
from tests.rag.conftest import write_config


def test_defaults_and_values(tmp_path: Path) -> None:
    assert parse_rag_config(None) == RagConfig()
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "real", target_is_directory=True)
    (tmp_path / "real").mkdir()
    config = parse_rag_config(
        {
            "embedding_model": "embeddings/minilm",
            "allowed_folders": [str(link), "~"],
            "chunk_size": 128,
            "chunk_overlap": 16,
            "stores": {"qdrant": {"url": "http://q:6333"}},
        }
    )
    # Folders are resolved once: a symbolic link is replaced by its target.
    assert config.allowed_folders == (tmp_path / "real", Path(os.path.realpath(Path.home())))
    assert config.stores["qdrant"]["url"] == "http://q:6333"
    assert config.max_file_bytes == 64 << 20


@pytest.mark.parametrize(
    ("section", "words"),
    [
        ({"chunk_size": 4}, "rag.chunk_size"),
        ({"chunk_size": "big"}, "rag.chunk_size"),
        ({"chunk_overlap": 200}, "less than half"),
        ({"allowed_folders": "/tmp"}, "list of folder paths"),
        ({"allowed_folders": ["relative/dir"]}, "absolute"),
        ({"embedding_threads": True}, "rag.embedding_threads"),
        ({"stores": {"qdrant": "url"}}, "one table per store"),
        ({"vector_store": 3}, "rag.vector_store"),
        ({"chunk_sise": 100}, "unknown setting(s) chunk_sise"),
    ],
)
def test_bad_settings_name_the_key(section: dict[str, object], words: str) -> None:
    with pytest.raises(InvalidArgument) as info:
        parse_rag_config(section)
    assert words in info.value.message or words == info.value.field


def test_the_daemon_refuses_to_start_with_a_bad_rag_section(tmp_path: Path) -> None:
    write_config(tmp_path, "[rag]\nchunk_size = 2\n")
    with run_daemon(tmp_path, wait_ready=False) as d:
        assert d.proc.wait(30) == 1
        assert "[rag] chunk_size must be an integer >= 8" in d.stderr()
