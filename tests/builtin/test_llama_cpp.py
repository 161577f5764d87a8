"""The llama.cpp plugin's generation loop, in-process on real synthetic GGUF models.

The reference is llama-cpp-python's own streaming `Llama.create_completion`, called with
the same tokens and sampling settings: the loop must sample the very same tokens and
produce the same text, count and finish reason.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import llama_cpp
import pytest

from rustaid.builtin.llama_cpp import (
    LlamaCppProvider,
    LlamaModel,
    StopScanner,
    grammar_text,
)
from rustaid.builtin.llama_cpp_loop import Pieces
from rustaid.errors import InvalidArgument
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    CompletionStats,
    FinishReason,
    GenerationParams,
    LoadOptions,
    ModelSpec,
    Role,
)
from rustaid.testing.synthetic import N_BASE_TOKENS, ModelShape, write_llama_gguf

PROMPT = "hello world"
MULTIBYTE_GRAMMAR = 'root ::= ("é" | "€" | "😀" | "ж" | " " | "a" | "z"){16}'


def load(path: Path, context_length: int = 512) -> LlamaModel:
    model = LlamaCppProvider().load(
        ModelSpec(path.stem, path), LoadOptions(context_length=context_length, threads=1)
    )
    assert isinstance(model, LlamaModel)
    return model


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LlamaModel]:
    m = load(write_llama_gguf(tmp_path_factory.mktemp("gguf") / "tiny.gguf", seed=1))
    yield m
    m.close()


@dataclass
class Run:
    text: str
    finish: FinishReason
    completion_tokens: int
    tokens: list[int]  # every token sampled, the end-of-generation token included
    chunks: list[str]


@contextmanager
def recording(llm: llama_cpp.Llama) -> Iterator[list[int]]:
    """Record the tokens `llm.generate` yields, whoever drives it."""
    tokens: list[int] = []
    original = llm.generate

    def generate(*args: Any, **kwargs: Any) -> Iterator[int]:
        inner = original(*args, **kwargs)
        try:
            for token in inner:
                tokens.append(token)
                yield token
        finally:
            inner.close()

    llm.generate = generate  # type: ignore[method-assign]
    try:
        yield tokens
    finally:
        del llm.generate


def run_model(
    model: LlamaModel,
    params: GenerationParams,
    prompt: str | list[ChatMessage] = PROMPT,
    emit: Callable[[str], None] | None = None,
    cancel: CancelToken | None = None,
) -> Run:
    chunks: list[str] = []

    def on_text(text: str) -> None:
        chunks.append(text)
        if emit is not None:
            emit(text)

    model.llm.reset()  # both paths start from an empty context
    with recording(model.llm) as tokens:
        if isinstance(prompt, str):
            stats = model.complete(prompt, params, on_text, cancel or CancelToken())
        else:
            stats = model.chat(prompt, params, on_text, cancel or CancelToken())
    assert isinstance(stats, CompletionStats)
    return Run("".join(chunks), stats.finish_reason, stats.completion_tokens, tokens, chunks)


def run_create_completion(
    model: LlamaModel, params: GenerationParams, prompt: str | list[ChatMessage] = PROMPT
) -> Run:
    """The same request through `create_completion(stream=True)`: a logits processor
    counts samples and a stopping criterion ends at max_tokens (create_completion goes
    past it while it holds back a partial UTF-8 character); stop strings are held back
    across chunks by StopScanner."""
    llm = model.llm
    if isinstance(prompt, str):
        tokens, stop = model.tokenize(prompt, add_special=True), list(params.stop)
    else:
        tokens, template_stops = model._chat_prompt(prompt)
        stop = [*params.stop, *template_stops]
    max_tokens = min(params.max_tokens or 512, model.context_length - len(tokens))
    sampled = 0

    def count(_ids: Any, scores: Any) -> Any:
        nonlocal sampled
        sampled += 1
        return scores

    def at_max(_ids: Any, _logits: Any) -> bool:
        return sampled > max_tokens

    def pick(value: float | None, default: float) -> float:
        return default if value is None else value

    grammar = grammar_text(params)
    scanner = StopScanner(stop)
    chunks: list[str] = []
    finish = FinishReason.LENGTH
    llm.reset()
    with recording(llm) as sampled_tokens:
        stream = llm.create_completion(
            tokens,
            max_tokens=max_tokens,
            temperature=pick(params.temperature, 0.8),
            top_p=pick(params.top_p, 0.95),
            top_k=int(pick(params.top_k, 40)),
            min_p=pick(params.min_p, 0.05),
            repeat_penalty=pick(params.repeat_penalty, 1.0),
            seed=params.seed,
            grammar=llama_cpp.LlamaGrammar.from_string(grammar, verbose=False) if grammar else None,
            logits_processor=llama_cpp.LogitsProcessorList([count]),
            stopping_criteria=llama_cpp.StoppingCriteriaList([at_max]),
            stream=True,
        )
        for chunk in stream:  # type: ignore[union-attr]
            choice = chunk["choices"][0]  # type: ignore[index]
            text, hit = scanner.feed(choice["text"])
            if text:
                chunks.append(text)
            if hit:
                finish = FinishReason.STOP_SEQUENCE
                break
            if choice["finish_reason"] == "stop":
                finish = FinishReason.STOP
        else:
            if rest := scanner.flush():
                chunks.append(rest)
            if sampled > max_tokens:
                finish = FinishReason.LENGTH
        stream.close()  # type: ignore[union-attr]
    return Run("".join(chunks), finish, min(sampled, max_tokens), list(sampled_tokens), chunks)


def completion_bytes(model: LlamaModel, tokens: list[int]) -> bytes:
    return b"".join(model.llm.detokenize([t]) for t in tokens)


CASES = {
    "greedy": GenerationParams(max_tokens=40, temperature=0),
    **{
        f"temp1-seed{s}": GenerationParams(max_tokens=40, temperature=1.0, seed=s) for s in range(4)
    },
    **{
        f"samplers-seed{s}": GenerationParams(
            max_tokens=40,
            temperature=0.7,
            top_k=10,
            top_p=0.9,
            min_p=0.1,
            repeat_penalty=1.3,
            seed=s,
        )
        for s in range(2)
    },
    **{
        f"grammar-seed{s}": GenerationParams(
            max_tokens=16,
            temperature=1.0,
            seed=s,
            grammar='root ::= ("yes" | "no") " " [0-9] [0-9]',
        )
        for s in range(3)
    },
    "json-schema": GenerationParams(
        max_tokens=60,
        temperature=0.5,
        seed=3,
        json_schema='{"type": "object", "properties": {"ok": {"type": "boolean"}}, '
        '"required": ["ok"], "additionalProperties": false}',
    ),
    **{
        f"multibyte-seed{s}": GenerationParams(
            max_tokens=60, temperature=1.0, seed=s, grammar=MULTIBYTE_GRAMMAR
        )
        for s in range(3)
    },
    "multibyte-stop": GenerationParams(
        max_tokens=60, temperature=1.0, seed=0, grammar=MULTIBYTE_GRAMMAR, stop=("€", "zz")
    ),
    "word-stop": GenerationParams(
        max_tokens=40, temperature=1.0, seed=0, grammar="root ::= [a-z ]+", stop=("es",)
    ),
    "max-tokens-1": GenerationParams(max_tokens=1, temperature=1.0, seed=5),
}


@pytest.mark.parametrize("name", CASES)
def test_same_tokens_text_and_counts_as_create_completion(model: LlamaModel, name: str) -> None:
    params = CASES[name]
    ours = run_model(model, params)
    ref = run_create_completion(model, params)
    assert ours.tokens == ref.tokens  # token-exact: same sampler chain, seed and prefix
    assert (ours.finish, ours.completion_tokens) == (ref.finish, ref.completion_tokens)
    assert ours.completion_tokens <= (params.max_tokens or 0)
    data = completion_bytes(model, ours.tokens[: ours.completion_tokens])
    # The text is the completion's bytes decoded at once (bytes that cannot form UTF-8
    # dropped), up to the first stop string.
    expected = data.decode("utf-8", errors="ignore")
    cuts = [i for stop in params.stop if (i := expected.find(stop)) >= 0]
    assert ours.text == expected[: min(cuts, default=len(expected))]
    if data.decode("utf-8", errors="replace") == expected:
        # Valid UTF-8: the same text as the create_completion stream. (At bytes that are
        # not UTF-8 that stream stalls, then decodes the rest token by token, dropping
        # every character split over tokens: only then can the texts differ.)
        assert ours.text == ref.text
    assert "\ufffd" not in ours.text


def test_the_cases_cover_what_they_claim(model: LlamaModel) -> None:
    """The comparisons above include split UTF-8 characters, stops and every finish."""
    runs = {name: run_model(model, params) for name, params in CASES.items()}
    multibyte = runs["multibyte-seed0"]
    assert any(ord(c) > 0x7F for c in multibyte.text)
    assert any(
        completion_bytes(model, [t]) in (b"\xc3", b"\xe2", b"\xf0") for t in multibyte.tokens
    )
    for name in ("multibyte-stop", "word-stop"):
        assert runs[name].finish == FinishReason.STOP_SEQUENCE, name
    assert runs["grammar-seed0"].finish == FinishReason.STOP
    assert runs["greedy"].finish == FinishReason.LENGTH
    assert runs["temp1-seed0"].text != runs["temp1-seed1"].text


def test_only_text_that_may_begin_a_stop_is_held_back() -> None:
    scanner = StopScanner(["<|im_end|>", "###"])
    assert scanner.feed("In") == ("In", False)  # cannot begin a stop: out at once
    assert scanner.feed(" the <|") == (" the ", False)  # "<|" may: held
    assert scanner.feed("b") == ("<|b", False)  # it was not one after all
    assert scanner.feed("end #") == ("end ", False)
    assert scanner.feed("##") == ("", True)
    assert StopScanner([]).feed("<|") == ("<|", False)


def test_no_stop_string_reaches_the_client(model: LlamaModel) -> None:
    params = CASES["multibyte-stop"]
    full = run_model(model, replace(params, stop=()))
    run = run_model(model, params)
    assert "€" in full.text
    assert run.text == full.text[: full.text.index("€")]
    assert "€" not in "".join(run.chunks)
    # It ends at the token that completes the stop string, not later.
    assert run.tokens == full.tokens[: len(run.tokens)]
    end = next(
        n
        for n in range(1, len(full.tokens) + 1)
        if "€" in completion_bytes(model, full.tokens[:n]).decode("utf-8", errors="ignore")
    )
    assert len(run.tokens) == run.completion_tokens == end


def test_matches_create_completion_own_stop_handling(model: LlamaModel) -> None:
    params = CASES["word-stop"]
    run = run_model(model, params)
    model.llm.reset()
    out = model.llm.create_completion(
        model.tokenize(PROMPT, add_special=True),
        max_tokens=40,
        temperature=1.0,
        seed=0,
        stop=["es"],
        grammar=llama_cpp.LlamaGrammar.from_string("root ::= [a-z ]+", verbose=False),
    )
    assert run.text == out["choices"][0]["text"]  # type: ignore[index]
    assert run.finish == FinishReason.STOP_SEQUENCE


def test_chat_same_as_create_completion(model: LlamaModel) -> None:
    messages = [
        ChatMessage(Role.SYSTEM, "be brief"),
        ChatMessage(Role.USER, "hello, what is the answer?"),
    ]
    for seed in range(3):
        params = GenerationParams(max_tokens=30, temperature=1.0, seed=seed)
        ours = run_model(model, params, messages)
        ref = run_create_completion(model, params, messages)
        assert ours.tokens == ref.tokens
        assert (ours.finish, ours.completion_tokens) == (ref.finish, ref.completion_tokens)
        assert ours.text == completion_bytes(model, ours.tokens[: ours.completion_tokens]).decode(
            "utf-8", errors="ignore"
        )


def test_without_a_seed_each_request_samples_differently_but_reproducibly(
    model: LlamaModel,
) -> None:
    params = GenerationParams(max_tokens=20, temperature=1.0)
    model.llm.set_seed(1234)
    ours = [run_model(model, params).tokens for _ in range(3)]
    model.llm.set_seed(1234)
    ref = [run_create_completion(model, params).tokens for _ in range(3)]
    assert ours == ref
    assert len({tuple(t) for t in ours}) == 3


def test_pieces_are_the_bytes_llama_cpp_python_shows(model: LlamaModel) -> None:
    llm = model.llm
    pieces = Pieces(llm)
    for token in range(llm.n_vocab()):
        assert pieces.get(token)[0] == llm.detokenize([token]), token
    assert pieces.get(llm.tokenize(b"hello", add_bos=False)[0])[0] == b" hello"  # space kept
    ends = [t for t in range(llm.n_vocab()) if pieces.get(t)[1]]
    assert ends == [2, N_BASE_TOKENS - 1]  # </s> and <|im_end|>
    assert pieces.get(N_BASE_TOKENS - 2)[0] == b""  # <|im_start|>: control, shows nothing


def test_characters_split_over_tokens_come_out_whole(model: LlamaModel) -> None:
    want = "é€😀 ж ok"
    params = GenerationParams(max_tokens=40, temperature=1.0, seed=1, grammar=f'root ::= "{want}"')
    run = run_model(model, params)
    assert run.text == want
    assert run.finish == FinishReason.STOP
    # 😀 alone is four byte tokens: the characters really were split.
    assert len(run.tokens) > len(want)
    assert all("\ufffd" not in c for c in run.chunks)
    assert "".join(run.chunks) == want


def test_text_keeps_streaming_after_bytes_that_are_not_utf8(model: LlamaModel) -> None:
    """Greedy output of this model has a lone UTF-8 lead byte near its start: later text
    still streams token by token, and a stop string after it still ends generation."""
    full = run_model(model, GenerationParams(max_tokens=40, temperature=0))
    data = completion_bytes(model, full.tokens)
    with pytest.raises(UnicodeDecodeError) as info:
        data.decode("utf-8")
    assert info.value.start < len(data) // 4
    assert full.text == data.decode("utf-8", errors="ignore")
    assert len(full.chunks) >= 15  # not one block at the end
    stop = full.text[-10:-7]
    run = run_model(model, GenerationParams(max_tokens=40, temperature=0, stop=(stop,)))
    assert run.finish == FinishReason.STOP_SEQUENCE
    assert run.text == full.text[: full.text.index(stop)]
    assert run.completion_tokens < 40


def test_cancel_stops_within_one_token(model: LlamaModel) -> None:
    cancel = CancelToken()
    seen: list[str] = []

    def emit(text: str) -> None:
        seen.append(text)
        if len(seen) == 3:
            cancel.cancel()

    params = GenerationParams(max_tokens=200, temperature=0)
    run = run_model(model, params, emit=emit, cancel=cancel)
    assert run.finish == FinishReason.CANCELLED
    assert len(run.chunks) == 3
    assert run.completion_tokens <= len(run.tokens) <= 4
    cancelled = CancelToken()
    cancelled.cancel()
    early = run_model(model, params, cancel=cancelled)
    assert (early.finish, early.text, early.tokens) == (FinishReason.CANCELLED, "", [])


def test_max_tokens_and_the_context(model: LlamaModel) -> None:
    room_for = 5
    prompt = "hello" + " hello" * (model.context_length - room_for - 2)
    n_prompt = len(model.tokenize(prompt, add_special=True))
    assert n_prompt == model.context_length - room_for
    run = run_model(model, GenerationParams(max_tokens=100, temperature=0), prompt)
    assert run.finish == FinishReason.LENGTH
    assert run.completion_tokens == room_for
    with pytest.raises(InvalidArgument) as info:
        run_model(model, GenerationParams(max_tokens=1), prompt + " hello" * room_for)
    assert info.value.field == "prompt"
    assert "context of 512" in str(info.value)


def test_usage_and_timings(model: LlamaModel) -> None:
    model.llm.reset()
    stats = model.complete(
        PROMPT, GenerationParams(max_tokens=12, temperature=0), lambda _t: None, CancelToken()
    )
    assert stats.prompt_tokens == 3
    assert stats.completion_tokens == 12
    assert stats.prompt_eval_ms > 0 and stats.generation_ms > 0


def test_prompt_cache_keeps_a_conversation_between_others(model: LlamaModel) -> None:
    """With the prompt cache, the next turn of a conversation evaluates only its new
    tokens even after another prompt went through the model in between."""
    llm = model.llm
    evaluated: list[int] = []
    original = llm.eval

    def counting_eval(tokens: Any) -> None:
        evaluated.append(len(tokens))
        original(tokens)

    def turn(messages: list[ChatMessage]) -> tuple[str, int]:
        parts: list[str] = []
        evaluated.clear()
        params = GenerationParams(max_tokens=8, temperature=0)
        model.chat(messages, params, parts.append, CancelToken())
        return "".join(parts), evaluated[0]

    first = [ChatMessage(Role.USER, "hello, what is the answer?")]
    other = [ChatMessage(Role.USER, "why")]
    llm.eval = counting_eval  # type: ignore[method-assign]
    try:
        llm.reset()
        reply, _ = turn(first)
        second = [*first, ChatMessage(Role.ASSISTANT, reply), ChatMessage(Role.USER, "ok")]
        turn(other)
        _, without_cache = turn(second)
        model.enable_prompt_cache(64 << 20)
        llm.reset()
        turn(first)
        turn(other)
        _, with_cache = turn(second)
    finally:
        del llm.eval
        llm.set_cache(None)
        model._cache_enabled = False
    first_tokens, other_tokens, second_tokens = (
        model._chat_prompt(m)[0] for m in (first, other, second)
    )
    shared = llm.longest_token_prefix(other_tokens, second_tokens)
    assert 0 < shared < len(first_tokens) < len(second_tokens)
    assert without_cache == len(second_tokens) - shared
    assert with_cache <= len(second_tokens) - len(first_tokens) + 1


def test_per_token_work_does_not_grow_with_the_text(tmp_path: Path) -> None:
    """The text of each token is made once: the loop's own work per token (everything
    between receiving a token and asking for the next: decoding, stop strings, emitting)
    is as small after 1500 tokens as after 10. Re-detokenizing the whole completion for
    every token, as create_completion does, costs milliseconds per token by then. (The
    llama.cpp side also grows a little per token, with the context: not measured here.)"""
    path = write_llama_gguf(tmp_path / "long.gguf", ModelShape(context_length=2048), seed=1)
    model = load(path, context_length=2048)
    work: list[float] = []
    original = model.llm.generate

    def timed(*args: Any, **kwargs: Any) -> Iterator[int]:
        inner = original(*args, **kwargs)
        try:
            for token in inner:
                t = time.perf_counter()
                yield token
                work.append(time.perf_counter() - t)
        finally:
            inner.close()

    model.llm.generate = timed  # type: ignore[method-assign]
    texts: list[str] = []
    try:
        stats = model.complete(
            PROMPT, GenerationParams(max_tokens=1500, temperature=0), texts.append, CancelToken()
        )
    finally:
        model.close()
    assert stats.completion_tokens == 1500
    assert len(work) == 1499  # the loop does not ask for a token after the last one
    assert len("".join(texts)) > 1500
    head, tail = statistics.median(work[:200]), statistics.median(work[-200:])
    assert tail < head * 3 + 50e-6, (head, tail)
