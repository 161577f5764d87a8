"""Token-aware chunking: sizes, overlap, where cuts fall, and what each chunk carries."""

from __future__ import annotations

import itertools
import re
from collections.abc import Sequence
from pathlib import Path

import pytest

from rustaid.providers import ParsedDocument, Section
from rustaid.rag.chunking import Chunker
from tests.rag.conftest import MINILM

_TOKEN = re.compile(r"\w+|[^\w\s]")


def word_offsets(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
    """A stand-in tokenizer: words and punctuation marks are tokens."""
    return [[m.span() for m in _TOKEN.finditer(t)] for t in texts]


def count(text: str) -> int:
    return len(word_offsets([text])[0])


def doc(*sections: Section) -> ParsedDocument:
    return ParsedDocument(sections=sections)


def sentences(n: int, words: int = 7) -> str:
    return " ".join(" ".join(f"w{i}x{j}" for j in range(words - 1)) + f" end{i}." for i in range(n))


def test_short_sections_are_one_chunk_each_with_heading_and_page() -> None:
    chunks = Chunker(word_offsets, 50, 5).chunk(
        doc(
            Section("Alpha text here.", ("Guide", "Install"), 1),
            Section("Beta text.", ("Guide",), 2),
            Section("   ", ("Empty",), 3),
        )
    )
    assert [c.text for c in chunks] == ["Alpha text here.", "Beta text."]
    assert [c.index for c in chunks] == [0, 1]
    assert chunks[0].heading_path == ("Guide", "Install") and chunks[0].page == 1
    assert chunks[0].embed_text == "Guide > Install\nAlpha text here."
    assert chunks[0].tokens == count(chunks[0].embed_text)
    assert chunks[0].hash != chunks[1].hash


def test_chunks_fit_the_size_and_cut_at_sentence_ends() -> None:
    text = sentences(30)
    chunks = Chunker(word_offsets, 40, 0).chunk(doc(Section(text)))
    assert len(chunks) > 5
    for c in chunks:
        assert count(c.embed_text) <= 40
        assert c.text.endswith(".")  # never mid-sentence when a sentence end fits
    # Without overlap the chunks tile the text.
    assert " ".join(c.text for c in chunks).split() == text.split()


def test_paragraphs_win_over_sentences() -> None:
    para1 = sentences(3)  # 24 tokens
    para2 = sentences(3)
    chunks = Chunker(word_offsets, 40, 0).chunk(doc(Section(para1 + "\n\n" + para2)))
    assert chunks[0].text == para1


def test_overlap_repeats_the_end_of_the_previous_chunk() -> None:
    chunks = Chunker(word_offsets, 40, 10).chunk(doc(Section(sentences(30))))
    for a, b in itertools.pairwise(chunks):
        tail = a.text.split()[-3:]
        assert " ".join(tail) in b.text, "the next chunk starts inside the previous one"
        shared = len(set(a.text.split()) & set(b.text.split()))
        assert 0 < shared <= 12
    assert all(count(c.embed_text) <= 40 for c in chunks)


def test_a_word_longer_than_a_chunk_is_split_between_tokens() -> None:
    def char_offsets(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        return [[(i, i + 1) for i, ch in enumerate(t) if not ch.isspace()] for t in texts]

    chunks = Chunker(char_offsets, 10, 2).chunk(doc(Section("x" * 35)))
    assert all(len(c.text) <= 10 for c in chunks)
    assert chunks[0].text == "x" * 10
    assert len(chunks) >= 4


def test_long_heading_paths_give_way_to_text() -> None:
    heading = tuple(f"heading number {i} with words" for i in range(10))
    chunks = Chunker(word_offsets, 20, 0).chunk(doc(Section(sentences(4), heading)))
    for c in chunks:
        assert count(c.embed_text) <= 20
        assert count("\n".join(c.heading_path)) <= 10  # at most half the chunk
    assert chunks[0].heading_path[-1] == heading[-1]  # the innermost heading stays


def test_bad_sizes() -> None:
    with pytest.raises(ValueError):
        Chunker(word_offsets, 0, 0)
    with pytest.raises(ValueError):
        Chunker(word_offsets, 10, 10)


@pytest.mark.skipif(not MINILM.is_dir(), reason=f"real MiniLM files not found at {MINILM}")
def test_with_the_real_wordpiece_tokenizer() -> None:
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(MINILM / "tokenizer.json"))
    tokenizer.no_truncation()
    tokenizer.no_padding()

    def offsets(texts: Sequence[str]) -> list[list[tuple[int, int]]]:
        return [
            list(e.offsets) for e in tokenizer.encode_batch(list(texts), add_special_tokens=False)
        ]

    text = Path(__file__).read_text() * 3
    chunks = Chunker(offsets, 126, 16).chunk(doc(Section(text, ("Source",))))
    assert len(chunks) > 10
    for c in chunks:
        n = len(tokenizer.encode(c.embed_text, add_special_tokens=False).ids)
        assert n <= 126
