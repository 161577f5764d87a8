"""Token-aware chunking: documents become pieces that fit the embedding model.

Sizes are counted in tokens of the embedding model's own tokenizer. A chunk never
crosses a section (heading or page) boundary, and is cut at the strongest boundary
available before its size limit: a blank line, then a line end, then a sentence end,
then a space, and only then between two tokens. Consecutive chunks of a section overlap
by about `overlap` tokens, starting at a sentence or word boundary.

Every chunk carries its heading path, page and index, and the text the model embeds
starts with the heading path ("Install > From source"), which helps retrieval of
passages whose own words do not name their subject.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from rustaid.providers import ParsedDocument, Section

# For each text: the [start, end) character span of each token (no special tokens).
TokenOffsets = Callable[[Sequence[str]], list[list[tuple[int, int]]]]

HEADING_SEPARATOR = " > "
# A chunk is at least this share of its budget unless its section ends first.
MIN_FILL = 0.5
# Boundary strengths between two tokens.
_TOKEN, _WORD, _SENTENCE, _LINE, _PARAGRAPH = range(5)
_SENTENCE_END = re.compile(r"[.!?;:\u3002\uff01\uff1f][\"')\]\u201d\u2019]*$")


@dataclass(frozen=True)
class Chunk:
    # The passage as it appears in the document.
    text: str
    # What the embedding model sees: the heading path, a newline, then `text`.
    embed_text: str
    heading_path: tuple[str, ...]
    page: int
    # Position in the document, from 0.
    index: int
    # Tokens of embed_text, special tokens not included.
    tokens: int

    @property
    def hash(self) -> str:
        return hashlib.sha256(self.embed_text.encode("utf-8")).hexdigest()[:32]


def _prefix(heading_path: tuple[str, ...]) -> str:
    return HEADING_SEPARATOR.join(heading_path) + "\n" if heading_path else ""


def _boundary(text: str, left: tuple[int, int], right: tuple[int, int]) -> int:
    """Strength of the boundary between two adjacent tokens."""
    gap = text[left[1] : right[0]]
    if not gap:
        return _TOKEN
    if "\n" in gap:
        return _PARAGRAPH if gap.count("\n") >= 2 else _LINE
    if not gap.isspace():
        return _WORD
    if _SENTENCE_END.search(text[left[0] : left[1]]):
        return _SENTENCE
    return _WORD


class Chunker:
    """Splits parsed documents into chunks of at most `size` tokens."""

    def __init__(self, offsets: TokenOffsets, size: int, overlap: int) -> None:
        if size < 1:
            raise ValueError("chunk size must be >= 1")
        if not 0 <= overlap < size:
            raise ValueError("overlap must be in [0, size)")
        self.offsets = offsets
        self.size = size
        self.overlap = overlap

    def chunk(self, document: ParsedDocument) -> list[Chunk]:
        sections = [s for s in document.sections if s.text.strip()]
        prefixes = sorted({_prefix(s.heading_path) for s in sections})
        spans = self.offsets([s.text for s in sections] + prefixes)
        prefix_tokens = dict(zip(prefixes, (len(o) for o in spans[len(sections) :]), strict=True))
        chunks: list[Chunk] = []
        for section, offsets in zip(sections, spans, strict=False):
            self._section(section, offsets, prefix_tokens, chunks)
        return chunks

    def _section(
        self,
        section: Section,
        offsets: list[tuple[int, int]],
        prefix_tokens: dict[str, int],
        out: list[Chunk],
    ) -> None:
        if not offsets:
            return
        path = section.heading_path
        prefix = _prefix(path)
        # The heading path takes at most half of a chunk: drop outer headings if needed.
        while path and prefix_tokens.get(prefix, self.size) > self.size // 2:
            path = path[1:]
            prefix = _prefix(path)
            if prefix and prefix not in prefix_tokens:
                prefix_tokens[prefix] = len(self.offsets([prefix])[0])
        budget = self.size - (prefix_tokens.get(prefix, 0) if prefix else 0)
        text = section.text
        n = len(offsets)
        start = 0
        while start < n:
            end = self._cut(text, offsets, start, budget)
            piece = text[offsets[start][0] : offsets[end - 1][1]].strip()
            if piece:
                out.append(
                    Chunk(
                        text=piece,
                        embed_text=prefix + piece,
                        heading_path=path,
                        page=section.page,
                        index=len(out),
                        tokens=(end - start) + (prefix_tokens.get(prefix, 0) if prefix else 0),
                    )
                )
            if end >= n:
                break
            start = self._next_start(text, offsets, start, end)

    def _cut(self, text: str, offsets: list[tuple[int, int]], start: int, budget: int) -> int:
        """Token index where the chunk starting at `start` ends (exclusive)."""
        n = len(offsets)
        limit = min(n, start + budget)
        if limit >= n:
            return n
        lowest = start + max(1, int(budget * MIN_FILL))
        best_strength, best = -1, limit
        for k in range(limit, lowest - 1, -1):  # cut before token k
            strength = _boundary(text, offsets[k - 1], offsets[k])
            if strength > best_strength:
                best_strength, best = strength, k
                if strength == _PARAGRAPH:
                    break
        return best

    def _next_start(self, text: str, offsets: list[tuple[int, int]], start: int, end: int) -> int:
        """Where the next chunk starts: about `overlap` tokens before `end`, at a sentence
        or word start."""
        if not self.overlap:
            return end
        target = max(start + 1, end - self.overlap)
        best_strength, best = -1, end
        for k in range(target, end):
            strength = _boundary(text, offsets[k - 1], offsets[k])
            if strength > best_strength:  # earliest of the strongest: keeps the overlap full
                best_strength, best = strength, k
        return best if best_strength >= _WORD else end
