"""The generation loop of the llama.cpp plugin: tokens from `Llama.generate`, turned
into text one token at a time.

`Llama.create_completion(stream=True)` detokenizes the whole completion again after
every token (twice, plus a scan of it for stop strings), so each token costs time in
proportion to the text generated so far and long generations slow down quadratically.
This loop samples exactly as create_completion does (the same prompt-cache lookup, seed,
sampler chain, and prompt-prefix reuse through `Llama.generate`), so a seed gives the
same tokens, and decodes each token once: its piece bytes (cached per token id) go
through an incremental UTF-8 decoder.

llama_cpp is imported by the caller (the plugin, on first load), not here.
"""

from __future__ import annotations

import codecs
import ctypes
import random
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

from rustaid.providers import CancelToken, EmitText, FinishReason

if TYPE_CHECKING:
    import llama_cpp
    from llama_cpp.llama_grammar import LlamaGrammar


class Stops(Protocol):
    """Holds back text that may begin a stop string (see llama_cpp.StopScanner)."""

    def feed(self, text: str) -> tuple[str, bool]: ...

    def flush(self) -> str: ...


class Pieces:
    """Token id -> (the bytes it adds to generated text, whether it ends generation).

    The bytes are llama.cpp's piece with special tokens rendered as nothing, as
    create_completion shows them: no leading space is removed (a SentencePiece word
    token keeps its space, also at the start of a completion). Pieces are cached: a
    loaded vocabulary never changes. Not thread-safe: used by the model's own thread.
    """

    def __init__(self, llm: llama_cpp.Llama) -> None:
        import llama_cpp

        self._to_piece = llama_cpp.llama_token_to_piece
        self._is_eog = llama_cpp.llama_vocab_is_eog
        self._vocab = llm._model.vocab
        self._buf = ctypes.create_string_buffer(64)
        self._cache: dict[int, tuple[bytes, bool]] = {}

    def get(self, token: int) -> tuple[bytes, bool]:
        hit = self._cache.get(token)
        if hit is None:
            hit = self._cache[token] = (self._piece(token), bool(self._is_eog(self._vocab, token)))
        return hit

    def _piece(self, token: int) -> bytes:
        n = self._to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        if n < 0:  # longer than the buffer: -n is the length needed
            self._buf = ctypes.create_string_buffer(-n)
            n = self._to_piece(self._vocab, token, self._buf, len(self._buf), 0, False)
        return self._buf.raw[: max(n, 0)]


@dataclass(frozen=True)
class Sampling:
    """Sampler settings, defaults already applied."""

    temperature: float
    top_p: float
    top_k: int
    min_p: float
    repeat_penalty: float
    seed: int | None
    grammar: LlamaGrammar | None = None


@dataclass
class Outcome:
    finish: FinishReason
    # The completion's tokens, without the end-of-generation token.
    tokens: list[int] = field(default_factory=list)
    # Tokens sampled: the end-of-generation token counts (the model did generate it).
    sampled: int = 0
    t_start: float = 0.0
    t_first: float = 0.0
    t_end: float = 0.0


def generate(
    llm: llama_cpp.Llama,
    prompt: list[int],
    sampling: Sampling,
    max_tokens: int,
    pieces: Pieces,
    stops: Stops,
    emit: EmitText,
    cancel: CancelToken,
    between: Callable[[], None] = lambda: None,
) -> Outcome:
    """Sample up to `max_tokens` tokens after `prompt` and emit their text as it comes.

    Ends at an end-of-generation token (STOP), a stop string (STOP_SEQUENCE: the text
    before it is emitted, the string is not), `max_tokens` (LENGTH) or `cancel`
    (CANCELLED, checked after every token). The caller checks that the prompt leaves
    room for `max_tokens` in the context. Text: a character whose bytes come in several
    tokens is emitted with its last byte; bytes that cannot form UTF-8 are dropped, and
    so is an unfinished character at the end.
    """
    out = Outcome(FinishReason.LENGTH, t_start=time.perf_counter())
    if cancel.cancelled:
        out.finish = FinishReason.CANCELLED
        out.t_first = out.t_end = time.perf_counter()
        return out
    _restore_cached_state(llm, prompt)
    # As create_completion: without a seed, the next one derives from the current one.
    llm.set_seed(
        sampling.seed if sampling.seed is not None else random.Random(llm._seed).randint(0, 2**32)
    )
    decode = codecs.getincrementaldecoder("utf-8")(errors="ignore").decode
    completion = out.tokens
    tokens = llm.generate(
        prompt,
        top_k=sampling.top_k,
        top_p=sampling.top_p,
        min_p=sampling.min_p,
        temp=sampling.temperature,
        repeat_penalty=sampling.repeat_penalty,
        grammar=sampling.grammar,
    )
    try:
        for token in tokens:
            out.sampled += 1
            if out.sampled == 1:
                out.t_first = time.perf_counter()
            if cancel.cancelled:
                out.finish = FinishReason.CANCELLED
                break
            piece, eog = pieces.get(token)
            if eog:
                out.finish = FinishReason.STOP
                break
            completion.append(token)
            if piece and (text := decode(piece)):
                safe, hit = stops.feed(text)
                if safe:
                    emit(safe)
                if hit:
                    out.finish = FinishReason.STOP_SEQUENCE
                    break
            if len(completion) >= max_tokens:
                break
            between()  # what the device asks now: fewer threads, a rest
    finally:
        tokens.close()
    out.t_end = time.perf_counter()
    out.t_first = out.t_first or out.t_end
    if out.finish in (FinishReason.STOP, FinishReason.LENGTH):
        if rest := stops.flush():
            emit(rest)
        # create_completion keeps the state of a generation that ran to its end.
        if llm.cache is not None:
            llm.cache[prompt + completion] = llm.save_state()
    return out


def _restore_cached_state(llm: llama_cpp.Llama, prompt: list[int]) -> None:
    """With a prompt cache, load the cached state that shares the longest prefix with
    `prompt` when it shares more than the state in the context (as create_completion)."""
    if llm.cache is None:
        return
    try:
        item = llm.cache[prompt]
    except KeyError:
        return
    longest = type(llm).longest_token_prefix
    if longest(item.input_ids.tolist(), prompt) > longest(llm._input_ids.tolist(), prompt):
        llm.load_state(item)
