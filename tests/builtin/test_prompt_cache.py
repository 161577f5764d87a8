"""The chat-session prompt cache of the llama.cpp plugin, on real synthetic GGUF models:
it stays within its memory cap counting every byte it holds, evicts the least recently
used state first, and a conversation restored from it samples the very same tokens as
one evaluated from scratch."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import llama_cpp
import pytest

from rustaid.builtin.llama_cpp import LlamaCppProvider, LlamaModel
from rustaid.builtin.llama_cpp_cache import PromptCache, snapshot, state_nbytes
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    GenerationParams,
    LoadOptions,
    ModelSpec,
    Role,
)
from rustaid.testing.synthetic import ModelShape, write_llama_gguf
from tests.builtin.test_llama_cpp import recording

# A vocabulary large enough that a full copy of the logits dwarfs the context state.
SHAPE = ModelShape(vocab_extra_words=4000)
PARAMS = GenerationParams(max_tokens=12, seed=7, temperature=0.9)


@pytest.fixture(scope="module")
def gguf(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_llama_gguf(tmp_path_factory.mktemp("gguf") / "vocab.gguf", SHAPE, seed=3)


def load(path: Path, cache_bytes: int = 0) -> LlamaModel:
    model = LlamaCppProvider().load(
        ModelSpec(path.stem, path), LoadOptions(context_length=512, threads=1)
    )
    assert isinstance(model, LlamaModel)
    model.enable_prompt_cache(cache_bytes)
    return model


@pytest.fixture
def cached(gguf: Path) -> Iterator[LlamaModel]:
    m = load(gguf, 1 << 20)
    yield m
    m.close()


def cache_of(model: LlamaModel) -> PromptCache:
    cache = model.llm.cache
    assert isinstance(cache, PromptCache)
    return cache


def chat(model: LlamaModel, messages: list[ChatMessage]) -> tuple[str, list[int]]:
    """The reply's text and the tokens `llm.generate` yielded for it."""
    chunks: list[str] = []
    with recording(model.llm) as tokens:
        model.chat(messages, PARAMS, chunks.append, CancelToken())
    return "".join(chunks), tokens


def session(i: int) -> list[ChatMessage]:
    return [ChatMessage(Role.USER, f"conversation {i}: tell me about the number {i * 37}")]


def test_cache_stays_under_its_cap_counting_every_byte(cached: LlamaModel) -> None:
    cache = cache_of(cached)
    n_vocab = cached.llm.n_vocab()
    seen = 0
    for i in range(40):
        chat(cached, session(i))
        held = cache.entry_nbytes()
        # the measured bytes of what it holds, key and logits included
        assert sum(held) == cache.cache_size <= cache.capacity_bytes
        seen = max(seen, len(held))
    assert seen >= 3, "the cap should hold several conversations"
    assert len(cache) < 40, "40 conversations do not fit in 1 MiB: some must be evicted"
    # only one row of logits per state, not one per evaluated token
    for key in cache.token_keys():
        state = cache[key]
        assert state.scores.shape == (1, n_vocab)
        assert state.n_tokens > 20


def test_follow_up_turn_from_the_cache_samples_the_same_tokens(
    cached: LlamaModel, gguf: Path
) -> None:
    first = session(1)
    reply, _ = chat(cached, first)
    chat(cached, session(2))  # another conversation takes the context meanwhile
    follow_up = [
        *first,
        ChatMessage(Role.ASSISTANT, reply),
        ChatMessage(Role.USER, "and what comes after it?"),
    ]
    loads: list[int] = []
    original = cached.llm.load_state

    def load_state(state: llama_cpp.LlamaState) -> None:
        loads.append(state.n_tokens)
        original(state)

    cached.llm.load_state = load_state  # type: ignore[method-assign]
    try:
        with_cache = chat(cached, follow_up)
    finally:
        del cached.llm.load_state
    assert loads and loads[0] > 20, "the follow-up should resume from the cached state"

    fresh = load(gguf)
    try:
        assert fresh.llm.cache is None
        without_cache = chat(fresh, follow_up)
    finally:
        fresh.close()
    assert with_cache[1], "the model should sample something"
    assert with_cache == without_cache


def test_evicts_the_least_recently_used_state(cached: LlamaModel) -> None:
    llm = cached.llm
    bos = llm.token_bos()

    def state_after(tokens: list[int]) -> llama_cpp.LlamaState:
        llm.reset()
        llm.eval(tokens)
        return snapshot(llm)

    # the same length each, so the same size each
    a, b, c, d = ([bos, *range(300 + 10 * i, 308 + 10 * i)] for i in range(4))
    states = {tuple(t): state_after(t) for t in (a, b, c, d)}
    sizes = {len(t) * 4 + state_nbytes(s) for t, s in states.items()}
    assert len(sizes) == 1
    one = sizes.pop()
    cache = PromptCache(3 * one + one // 2, llm.n_ctx())
    for t in (a, b, c):
        cache[t] = states[tuple(t)]
    assert cache.token_keys() == [a, b, c]
    _ = cache[[*a, 99]]  # a lookup by a longer prompt uses "a": now the most recent
    cache[d] = states[tuple(d)]
    assert cache.token_keys() == [c, a, d]  # "b" went first
    assert cache.cache_size == sum(cache.entry_nbytes()) <= cache.capacity_bytes

    # a state larger than the whole cap is not kept
    small = PromptCache(one // 2, llm.n_ctx())
    small[d] = states[tuple(d)]
    assert len(small) == 0 and small.cache_size == 0
    with pytest.raises(KeyError):
        small[d]
