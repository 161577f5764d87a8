"""Keyword vectors: BM25 term weights of a text as a sparse vector.

Dense embeddings miss passages whose only link to a question is a rare word (a command,
an option, a file name); keyword weights find them. Words are lower-cased, stop words
dropped, stemmed (Snowball) and hashed to term ids by Qdrant's own BM25 (`qdrant_edge.Bm25`,
in Rust), so the vectors are the same whichever store holds them. A document's weights
carry the term-frequency part of BM25; the store multiplies by the inverse document
frequency when it searches (its IDF modifier), so weights never need recomputing as
the collection grows.
"""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

from rustaid.errors import InvalidArgument
from rustaid.providers import SparseVector

if TYPE_CHECKING:
    import qdrant_edge

# Languages with Snowball stemmers and stop word lists in Qdrant's BM25.
LANGUAGES = (
    "arabic",
    "danish",
    "dutch",
    "english",
    "finnish",
    "french",
    "german",
    "greek",
    "hungarian",
    "italian",
    "norwegian",
    "portuguese",
    "romanian",
    "russian",
    "spanish",
    "swedish",
    "turkish",
)
# Expected words in a chunk (BM25's average length, fixed when a collection is made:
# its stored weights depend on it). Measured: the 2,319 chunks (default chunking) of the
# 55 manual pages in tests/bench/retrieval average 59.6 words, and keyword recall@5 on
# their questions is 0.743 with 60 against 0.700 with the 160 of older collections.
AVERAGE_WORDS = 60.0
# What collections made before the average was recorded were indexed with.
LEGACY_AVERAGE_WORDS = 160.0


def check_language(language: str, field_name: str = "keyword_language") -> str:
    if language not in LANGUAGES:
        raise InvalidArgument(
            f"{field_name} {language!r} is not a language keyword search knows; use one "
            f"of: {', '.join(LANGUAGES)}",
            field=field_name,
        )
    return language


class KeywordEncoder:
    """BM25 weights for one language and average length. Thread-safe; built on first use."""

    def __init__(self, language: str, average_words: float = AVERAGE_WORDS) -> None:
        self.language = check_language(language)
        self.average_words = average_words
        self._bm25: qdrant_edge.Bm25 | None = None
        self._lock = threading.Lock()

    def _model(self) -> qdrant_edge.Bm25:
        with self._lock:
            if self._bm25 is None:
                import qdrant_edge as qe

                config = qe.Bm25Config(language=self.language, avg_len=self.average_words)
                self._bm25 = qe.Bm25(config)
            return self._bm25

    def document(self, text: str) -> SparseVector:
        """Weights of a stored passage (saturated term frequencies)."""
        v = self._model().embed_document(text)
        return SparseVector(tuple(v.indices), tuple(v.values))

    def query(self, text: str) -> SparseVector:
        """Weights of a query: 1 per distinct term."""
        v = self._model().embed_query(text)
        return SparseVector(tuple(v.indices), tuple(v.values))


class KeywordEncoders:
    """One encoder per language and average length, shared by the collections using it."""

    def __init__(self) -> None:
        self._encoders: dict[tuple[str, float], KeywordEncoder] = {}
        self._lock = threading.Lock()

    def get(self, language: str, average_words: float = AVERAGE_WORDS) -> KeywordEncoder:
        with self._lock:
            key = (language, average_words)
            encoder = self._encoders.get(key)
            if encoder is None:
                encoder = self._encoders[key] = KeywordEncoder(language, average_words)
            return encoder
