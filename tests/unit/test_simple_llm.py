"""SimpleLLM's side of the LoadedLLM contract around a generate() of pieces: what is
emitted and why generation ended, for stop sequences, max_tokens and cancellation."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from rustaid.errors import InvalidArgument
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    FinishReason,
    GenerationParams,
    LoadOptions,
    ModelSpec,
    Role,
    SimpleLLM,
)


class Pieces(SimpleLLM):
    """Yields the model's pieces (the model is the list open() returns)."""

    name = "pieces"
    suffixes = (".pieces",)
    context_length = 64

    def open(self, spec: ModelSpec) -> Any:
        return spec.options["pieces"]

    def generate(self, model: Any, prompt: str, params: GenerationParams) -> Iterator[str]:
        yield from model


def run(
    pieces: list[str], cancel: CancelToken | None = None, **params: Any
) -> tuple[list[str], FinishReason, int]:
    model = Pieces().load(ModelSpec("m", options={"pieces": pieces}), LoadOptions())
    out: list[str] = []
    stats = model.complete("hi", GenerationParams(**params), out.append, cancel or CancelToken())
    return out, stats.finish_reason, stats.completion_tokens


@pytest.mark.parametrize(
    ("pieces", "params", "text", "finish", "tokens"),
    [
        (["a ", "b ", "c"], {}, "a b c", FinishReason.STOP, 3),
        (["a ", "b ", "c"], {"max_tokens": 2}, "a b ", FinishReason.LENGTH, 2),
        (["a ", "b ", "c"], {"max_tokens": 3}, "a b c", FinishReason.STOP, 3),
        (["a ", "b ", "c"], {"stop": ("b",)}, "a ", FinishReason.STOP_SEQUENCE, 2),
        # A stop sequence split across pieces is never emitted, not even its start.
        (["x", "EN", "D!"], {"stop": ("END",)}, "x", FinishReason.STOP_SEQUENCE, 3),
        # Text held back as a possible stop sequence is emitted once it is not one.
        (["x", "EN", "d"], {"stop": ("END",)}, "xENd", FinishReason.STOP, 3),
        (["ab"], {"stop": ("zz", "b")}, "a", FinishReason.STOP_SEQUENCE, 1),
        ([], {}, "", FinishReason.STOP, 0),
    ],
)
def test_pieces_stop_and_length(
    pieces: list[str], params: dict[str, Any], text: str, finish: FinishReason, tokens: int
) -> None:
    out, got_finish, got_tokens = run(pieces, **params)
    assert ("".join(out), got_finish, got_tokens) == (text, finish, tokens)


def test_a_cancelled_generation_stops_before_the_next_piece() -> None:
    cancel = CancelToken()
    cancel.cancel()
    out, finish, tokens = run(["a", "b"], cancel)
    assert (out, finish, tokens) == ([], FinishReason.CANCELLED, 0)


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"grammar": 'root ::= "a"'}, "params.grammar"),
        ({"json_schema": "{}"}, "params.json_schema"),
    ],
)
def test_constraints_are_refused_naming_the_field(params: dict[str, str], field: str) -> None:
    with pytest.raises(InvalidArgument, match="cannot constrain output") as info:
        run(["a"], **params)
    assert info.value.field == field


def test_a_prompt_longer_than_the_context_is_refused() -> None:
    model = Pieces().load(ModelSpec("m", options={"pieces": []}), LoadOptions())
    with pytest.raises(InvalidArgument, match="64"):
        model.complete("x" * 64, GenerationParams(), print, CancelToken())


def test_a_chat_is_one_prompt_of_role_lines() -> None:
    model = Pieces().load(ModelSpec("m", options={"pieces": []}), LoadOptions(context_length=9))
    messages = [ChatMessage(Role.SYSTEM, "be"), ChatMessage(Role.USER, "hi")]
    prompt = "system: be\nuser: hi\nassistant:"
    assert model.count_chat_tokens(messages) == len(prompt)
    assert model.context_length == 9
    assert model.token_pieces(model.tokenize("hi", True)) == ["h", "i"]
