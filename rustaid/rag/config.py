"""The [rag] section of rustaid.toml, read into one typed object.

[rag]
embedding_model = "all-minilm-l6-v2"   # default model ("" : the first one found)
vector_store = "qdrant-edge"           # default store of new collections
allowed_folders = ["~/Documents"]      # IndexFile may read files under these only
chunk_size = 256                       # tokens (capped by the embedding model)
chunk_overlap = 32
embedding_threads = 0                  # 0: the daemon's `threads` setting
embedding_batch_size = 32
loaded_embedding_models = 2            # embedding models kept in memory (LRU)
max_file_mb = 64
ask_answer_tokens = 512                # answer length when the request sets none
keyword_language = "english"           # keyword (BM25) vectors of new collections: stop
                                       # words and stemming of this language ("": none)
reranker = ""                          # a cross-encoder in models/rerankers/NAME reorders
                                       # Search's best results ("": no reranking)
rerank_candidates = 20                 # how many of them

[rag.stores.qdrant]                    # options of one vector store plugin
url = "http://qdrant.lan:6333"
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

from rustaid.config import Settings
from rustaid.errors import InvalidArgument
from rustaid.rag.keywords import check_language

SECTION = "rag"
# A cross-encoder runs once per candidate: more than this would make a search slow.
MAX_RERANK_CANDIDATES = 200


@dataclass(frozen=True)
class RagConfig:
    embedding_model: str = ""
    vector_store: str = "qdrant-edge"
    # Resolved (symbolic links followed) absolute folders.
    allowed_folders: tuple[Path, ...] = ()
    chunk_size: int = 256
    chunk_overlap: int = 32
    embedding_threads: int = 0
    embedding_batch_size: int = 32
    loaded_embedding_models: int = 2
    max_file_mb: int = 64
    ask_answer_tokens: int = 512
    # Language of the keyword vectors of new collections ("": dense vectors only).
    keyword_language: str = "english"
    # Folder name of a cross-encoder under models/rerankers/ ("": no reranking), and how
    # many of the store's best results it reorders.
    reranker: str = ""
    rerank_candidates: int = 20
    # Options per vector store plugin name ([rag.stores.NAME]).
    stores: Mapping[str, Mapping[str, Any]] = field(default_factory=dict)

    @property
    def max_file_bytes(self) -> int:
        return self.max_file_mb << 20


_INTS = {
    "chunk_size": 8,
    "chunk_overlap": 0,
    "embedding_threads": 0,
    "embedding_batch_size": 1,
    "loaded_embedding_models": 1,
    "max_file_mb": 1,
    "ask_answer_tokens": 1,
    "rerank_candidates": 1,
}


def _bad(key: str, why: str, value: object) -> InvalidArgument:
    return InvalidArgument(f"[rag] {key} {why} (got {value!r})", field=f"rag.{key}")


def parse_rag_config(section: object) -> RagConfig:
    """Validate a [rag] table; raises InvalidArgument naming the bad key."""
    if section is None:
        return RagConfig()
    if not isinstance(section, Mapping):
        raise InvalidArgument("[rag] must be a table", field="rag")
    known = {f.name for f in fields(RagConfig)}
    unknown = set(section) - known
    if unknown:
        raise InvalidArgument(
            f"[rag]: unknown setting(s) {', '.join(sorted(unknown))}; known: "
            f"{', '.join(sorted(known))}",
            field="rag",
        )
    values: dict[str, Any] = {}
    for key in ("embedding_model", "vector_store", "keyword_language", "reranker"):
        if key in section:
            if not isinstance(section[key], str):
                raise _bad(key, "must be a string", section[key])
            values[key] = section[key]
    for key, minimum in _INTS.items():
        if key in section:
            value = section[key]
            if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
                raise _bad(key, f"must be an integer >= {minimum}", value)
            values[key] = value
    if "allowed_folders" in section:
        folders = section["allowed_folders"]
        if not isinstance(folders, list) or not all(isinstance(f, str) for f in folders):
            raise _bad("allowed_folders", "must be a list of folder paths", folders)
        resolved = []
        for folder in folders:
            path = Path(folder).expanduser()
            if not path.is_absolute():
                raise _bad("allowed_folders", "entries must be absolute paths", folder)
            resolved.append(Path(os.path.realpath(path)))
        values["allowed_folders"] = tuple(resolved)
    if "stores" in section:
        stores = section["stores"]
        if not isinstance(stores, Mapping) or not all(
            isinstance(v, Mapping) for v in stores.values()
        ):
            raise _bad("stores", "must hold one table per store, e.g. [rag.stores.qdrant]", stores)
        values["stores"] = {str(k): dict(v) for k, v in stores.items()}
    reranker = values.get("reranker", "")
    if reranker and (reranker.startswith(".") or "/" in reranker or "\\" in reranker):
        raise _bad("reranker", "must be the name of a folder in models/rerankers/", reranker)
    if values.get("rerank_candidates", 0) > MAX_RERANK_CANDIDATES:
        raise _bad(
            "rerank_candidates",
            f"must be at most {MAX_RERANK_CANDIDATES}",
            values["rerank_candidates"],
        )
    if values.get("keyword_language"):
        check_language(values["keyword_language"], "rag.keyword_language")
    config = RagConfig(**values)
    if config.chunk_overlap * 2 >= config.chunk_size:
        raise _bad("chunk_overlap", "must be less than half of chunk_size", config.chunk_overlap)
    return config


def rag_config(settings: Settings) -> RagConfig:
    return parse_rag_config(settings.extra.get(SECTION))
