"""Grounded answers: retrieve passages, fit the best of them into the language model's
context (counting tokens with the model's own tokenizer), then stream its answer.

The model sees a system message with the rules and one user message with the numbered
sources and the question; it is asked to cite sources as [1], [2].
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from rustaid.providers import ChatMessage, Role

SYSTEM_PROMPT = (
    "You answer questions using only the numbered sources given with the question. "
    "Cite the sources you use in square brackets, like [1] or [2]. If the sources do not "
    "contain the answer, say that you do not know; do not make anything up."
)
NO_SOURCES = "(No passage of the collection matches the question.)"
# Tokens kept free for the chat template's own markup around the messages.
TEMPLATE_MARGIN = 16


@dataclass(frozen=True)
class Hit:
    document_id: str
    chunk_id: str
    text: str
    score: float
    metadata: dict[str, object]
    source: str
    page: int
    heading_path: tuple[str, ...]
    chunk_index: int
    title: str


def source_block(number: int, hit: Hit) -> str:
    where = hit.title or hit.source or hit.document_id
    details = []
    if hit.page:
        details.append(f"page {hit.page}")
    if hit.heading_path:
        details.append(" > ".join(hit.heading_path))
    suffix = f" ({'; '.join(details)})" if details else ""
    return f"[{number}] {where}{suffix}\n{hit.text}"


def user_message(question: str, blocks: Sequence[str]) -> str:
    sources = "\n\n".join(blocks) if blocks else NO_SOURCES
    return f"Sources:\n\n{sources}\n\nQuestion: {question}"


def messages(question: str, hits: Sequence[Hit]) -> tuple[ChatMessage, ...]:
    blocks = [source_block(i + 1, h) for i, h in enumerate(hits)]
    return (
        ChatMessage(Role.SYSTEM, SYSTEM_PROMPT),
        ChatMessage(Role.USER, user_message(question, blocks)),
    )


def fit(hits: Sequence[Hit], block_tokens: Sequence[int], budget: int) -> list[Hit]:
    """The hits (best first) whose source blocks fit in `budget` tokens; a passage that
    does not fit is skipped and shorter ones after it may still be used."""
    chosen: list[Hit] = []
    used = 0
    for hit, tokens in zip(hits, block_tokens, strict=True):
        cost = tokens + 2  # the blank line between blocks
        if used + cost <= budget:
            chosen.append(hit)
            used += cost
    return chosen
