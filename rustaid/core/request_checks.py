"""Checks of a generation request before it reaches a model: the prompt or messages,
their size, the generation parameters' ranges, the grammar's size. Every engine shares
them; a model's own checks (its vocabulary, its grammar compiler) come after.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from rustaid.config import Settings
from rustaid.core.admission import check_grammar_size, check_prompt_size
from rustaid.core.generation_types import GenerationRequest
from rustaid.errors import InvalidArgument
from rustaid.providers import ChatMessage, GenerationParams, GrammarLimits

MAX_STOP_SEQUENCES = 16
MAX_STOP_LENGTH = 256


def grammar_limits(settings: Settings) -> GrammarLimits:
    return GrammarLimits(settings.max_grammar_bytes, settings.max_grammar_rules)


def validate_request(request: GenerationRequest, settings: Settings) -> None:
    """Refuse an empty or oversized prompt and parameters out of range."""
    if request.messages:
        for i, m in enumerate(request.messages):
            if not m.content and m.role.value != "assistant":
                raise InvalidArgument(
                    f"messages[{i}].content is empty", field=f"messages[{i}].content"
                )
    elif not request.prompt:
        raise InvalidArgument("prompt is empty: give the text to continue", field="prompt")
    # Bytes before tokens: a huge prompt is refused before anything tokenizes it.
    if request.messages:
        texts = [m.content for m in request.messages]
        check_prompt_size(texts, settings.max_prompt_bytes, "messages")
    else:
        check_prompt_size([request.prompt], settings.max_prompt_bytes, "prompt")
    validate_params(request.params, settings.max_tokens_limit)
    for name in ("grammar", "json_schema"):
        if text := getattr(request.params, name):
            check_grammar_size(text, grammar_limits(settings), f"params.{name}")


def validate_params(p: GenerationParams, max_tokens_limit: int) -> None:
    """Range checks shared by every engine. Every field at fault is reported at once
    (InvalidArgument.violations), each message naming the field and how to fix it."""
    found: list[InvalidArgument] = []

    def bad(name: str, why: str) -> None:
        if all(e.field != f"params.{name}" for e in found):  # one message per field
            found.append(InvalidArgument(f"params.{name} {why}", field=f"params.{name}"))

    for name in ("temperature", "top_p", "min_p", "repeat_penalty"):
        value = getattr(p, name)
        if value is not None and not math.isfinite(value):
            bad(name, f"must be a finite number (got {value})")
    if p.max_tokens is not None and not 1 <= p.max_tokens <= max_tokens_limit:
        bad("max_tokens", f"must be between 1 and {max_tokens_limit} (got {p.max_tokens})")
    if p.temperature is not None and p.temperature < 0:
        bad("temperature", f"must be >= 0 (got {p.temperature})")
    if p.top_p is not None and not 0 < p.top_p <= 1:
        bad("top_p", f"must be in (0, 1] (got {p.top_p})")
    if p.min_p is not None and not 0 <= p.min_p <= 1:
        bad("min_p", f"must be in [0, 1] (got {p.min_p})")
    if p.top_k is not None and p.top_k < 0:
        bad("top_k", f"must be >= 0 (got {p.top_k})")
    if p.repeat_penalty is not None and p.repeat_penalty <= 0:
        bad("repeat_penalty", f"must be > 0 (got {p.repeat_penalty})")
    if len(p.stop) > MAX_STOP_SEQUENCES:
        bad("stop", f"has {len(p.stop)} sequences; at most {MAX_STOP_SEQUENCES} allowed")
    elif any(not s or len(s) > MAX_STOP_LENGTH for s in p.stop):
        bad("stop", f"sequences must be 1..{MAX_STOP_LENGTH} characters")
    if p.grammar and p.json_schema:
        bad("grammar", "and params.json_schema are exclusive: give one of them")
    if found:
        raise InvalidArgument.all_of(found)


def chat_messages(messages: Sequence[ChatMessage]) -> tuple[ChatMessage, ...]:
    if not messages:
        raise InvalidArgument("messages is empty: give at least one message", field="messages")
    return tuple(messages)
