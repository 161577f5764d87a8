"""Continuous batching in the llama.cpp plugin, in-process with real llama.cpp and the
real SmolLM2 model: several requests share one context, each in its own sequence, and
each gets what it would get alone."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from rustaid.builtin.llama_batch import BatchEngine
from rustaid.builtin.llama_cpp import LlamaCppProvider, LlamaModel
from rustaid.providers import (
    CancelToken,
    ChatMessage,
    FinishReason,
    GenerationParams,
    LoadOptions,
    ModelSpec,
    Role,
)

PARALLEL = 4
# Greedy SmolLM2 keeps counting far past what a test waits for.
ENDLESS = "Count from one to one thousand, one number per line: 1, 2, 3,"


def load(path: Path, parallel: int) -> LlamaModel:
    # Flash attention as batching has it, also alone: the same numbers on both paths.
    model = LlamaCppProvider().load(
        ModelSpec(path.stem, path),
        LoadOptions(context_length=1024, threads=1, parallel=parallel, flash_attention=True),
    )
    assert isinstance(model, LlamaModel)
    return model


@pytest.fixture(scope="module")
def batched(real_model: Path) -> Iterator[LlamaModel]:
    m = load(real_model, PARALLEL)
    assert m.batch is not None and m.parallel == PARALLEL
    yield m
    m.close()


@pytest.fixture(scope="module")
def single(real_model: Path) -> Iterator[LlamaModel]:
    m = load(real_model, 1)
    assert m.batch is None
    yield m
    m.close()


@dataclass
class Call:
    """One request on its own thread; `texts` grows as text arrives."""

    model: LlamaModel
    prompt: str
    params: GenerationParams
    cancel: CancelToken = field(default_factory=CancelToken)
    texts: list[str] = field(default_factory=list)
    first_text: threading.Event = field(default_factory=threading.Event)
    finish: FinishReason | None = None
    error: BaseException | None = None
    thread: threading.Thread | None = None

    def emit(self, text: str) -> None:
        self.texts.append(text)
        self.first_text.set()

    def run(self) -> None:
        try:
            self.finish = self.model.complete(
                self.prompt, self.params, self.emit, self.cancel
            ).finish_reason
        except BaseException as e:
            self.error = e

    def start(self) -> Call:
        self.thread = threading.Thread(target=self.run)
        self.thread.start()
        return self

    def join(self) -> str:
        assert self.thread is not None
        self.thread.join(120)
        assert not self.thread.is_alive()
        assert self.error is None, self.error
        return self.text

    @property
    def done(self) -> bool:
        return self.thread is not None and not self.thread.is_alive()

    @property
    def text(self) -> str:
        return "".join(self.texts)


def solo(model: LlamaModel, prompt: str, params: GenerationParams) -> str:
    return Call(model, prompt, params).start().join()


# Eight requests with different settings: each setting applies to its own sequence only.
REQUESTS = [
    ("The capital of France is", GenerationParams(max_tokens=40, temperature=0)),
    ("Once upon a time", GenerationParams(max_tokens=48, temperature=0, stop=("\n",))),
    ("def fibonacci(n):", GenerationParams(max_tokens=40, temperature=0, stop=("return",))),
    (
        "My favourite colour is",
        GenerationParams(max_tokens=24, temperature=0, grammar='root ::= " " [a-z]+ "."'),
    ),
    (
        "A JSON object for a cat:",
        GenerationParams(
            max_tokens=60,
            temperature=0,
            json_schema='{"type":"object","properties":{"name":{"type":"string"}},'
            '"required":["name"]}',
        ),
    ),
    ("List three fruits:", GenerationParams(max_tokens=40, temperature=0.9, seed=7)),
    ("The weather today", GenerationParams(max_tokens=40, temperature=0.7, top_k=5, seed=3)),
    ("Write a haiku about rain", GenerationParams(max_tokens=40, repeat_penalty=1.3, seed=11)),
]


def test_concurrent_streams_each_match_their_solo_output(
    batched: LlamaModel, single: LlamaModel
) -> None:
    alone = [solo(batched, p, params) for p, params in REQUESTS]
    together = [Call(batched, p, params).start() for p, params in REQUESTS]
    assert [c.join() for c in together] == alone
    # The one-at-a-time path (llama-cpp-python's own sampling) gives the same text too.
    assert [solo(single, p, params) for p, params in REQUESTS] == alone
    grammar_reply = alone[3]
    assert grammar_reply.startswith(" ") and grammar_reply.endswith(".")
    assert '"name"' in alone[4]


@contextlib.contextmanager
def gather_window(model: LlamaModel, quiet_s: float, max_s: float) -> Iterator[BatchEngine]:
    """The model's batch engine with its burst wait set for a test, then restored."""
    engine = model.batch
    assert engine is not None
    saved = engine.gather_quiet_s, engine.gather_max_s
    engine.gather_quiet_s, engine.gather_max_s = quiet_s, max_s
    try:
        yield engine
    finally:
        engine.gather_quiet_s, engine.gather_max_s = saved


@pytest.mark.parametrize("gather", [True, False])
def test_requests_arriving_together_read_their_prompts_in_one_step(
    batched: LlamaModel, gather: bool
) -> None:
    # Arrivals 50 ms apart stand for a burst (a few ms apart), with room for a busy
    # machine; without the wait the first request reads its prompt alone.
    with gather_window(batched, *((1.0, 5.0) if gather else (0.0, 0.0))) as engine:
        steps = engine.steps
        calls = []
        for i in range(PARALLEL):
            prompt = f"Name a colour ({i}):"
            calls.append(Call(batched, prompt, GenerationParams(max_tokens=1, temperature=0)))
            calls[-1].start()
            time.sleep(0.05)
        for call in calls:
            call.join()
        # One token each, sampled right after its prompt: one step if read together.
        if gather:
            assert engine.steps - steps == 1
        else:
            assert engine.steps - steps > 1


@pytest.mark.parametrize("announced", [True, False])
def test_an_idle_model_waits_for_a_request_whose_prompt_is_being_made(
    batched: LlamaModel, announced: bool
) -> None:
    # No quiet window to speak of: only the request on its way holds the first step.
    with gather_window(batched, 0.001, 10.0) as engine:
        steps = engine.steps
        params = GenerationParams(max_tokens=1, temperature=0)
        slow = Call(batched, "Name a fruit:", params)

        def made_slowly() -> None:
            # A prompt that takes long to render (a big template, a busy machine).
            with engine.coming() if announced else contextlib.nullcontext():
                time.sleep(0.5)
                slow.run()

        thread = threading.Thread(target=made_slowly)
        thread.start()
        time.sleep(0.05)
        quick = Call(batched, "Name a tree:", params).start()
        quick.join()
        thread.join(60)
        assert slow.error is None and slow.finish is not None
        if announced:
            assert engine.steps - steps == 1  # both prompts read in one step
        else:
            assert engine.steps - steps == 2


def test_a_late_joiner_gets_its_first_token_while_others_run(batched: LlamaModel) -> None:
    long = [
        Call(batched, ENDLESS, GenerationParams(max_tokens=1000, temperature=0)).start()
        for _ in range(PARALLEL - 1)
    ]
    for call in long:
        assert call.first_text.wait(60)
    late = Call(batched, "Hello", GenerationParams(max_tokens=3, temperature=0)).start()
    late.join()
    assert late.texts and late.finish is not None
    assert not any(c.done for c in long)  # it did not wait for them
    for call in long:
        call.cancel.cancel()
        call.join()
        assert call.finish is FinishReason.CANCELLED


def test_cancelling_frees_its_sequence_at_once(batched: LlamaModel) -> None:
    long = [
        Call(batched, ENDLESS, GenerationParams(max_tokens=1000, temperature=0)).start()
        for _ in range(PARALLEL)
    ]
    for call in long:
        assert call.first_text.wait(60)
    waiting = Call(batched, "Hello", GenerationParams(max_tokens=3, temperature=0)).start()
    # Every sequence is taken: the newcomer waits without a token ...
    assert not waiting.first_text.wait(0.5)
    long[0].cancel.cancel()
    long[0].join()
    assert long[0].finish is FinishReason.CANCELLED
    # ... and takes the cancelled one's place while the others still run.
    waiting.join()
    assert waiting.texts and not any(c.done for c in long[1:])
    for call in long[1:]:
        call.cancel.cancel()
        call.join()


def test_a_paused_sequence_keeps_its_state_and_resumes(batched: LlamaModel) -> None:
    params = GenerationParams(max_tokens=60, temperature=0)
    expected = solo(batched, ENDLESS, params)
    background = Call(batched, ENDLESS, params).start()
    assert background.first_text.wait(60)
    background.cancel.paused = True
    # Other requests fill every sequence meanwhile (the paused one's too) and finish.
    others = [
        Call(batched, f"Say {i}", GenerationParams(max_tokens=8, temperature=0)).start()
        for i in range(PARALLEL)
    ]
    for call in others:
        call.join()
    held = len(background.texts)
    assert not background.done
    for call in others:  # still nothing from the paused one
        call.start().join()
    assert len(background.texts) == held
    background.cancel.paused = False
    assert background.join() == expected


def test_a_conversation_reuses_its_prefix_in_its_sequence(batched: LlamaModel) -> None:
    assert batched.batch is not None
    first = [ChatMessage(Role.USER, "Name a planet.")]
    params = GenerationParams(max_tokens=16, temperature=0)
    answer: list[str] = []
    batched.chat(first, params, answer.append, CancelToken())
    turn = [
        *first,
        ChatMessage(Role.ASSISTANT, "".join(answer)),
        ChatMessage(Role.USER, "And a moon?"),
    ]
    before = batched.batch.prompt_tokens_evaluated
    batched.chat(turn, params, lambda _: None, CancelToken())
    evaluated = batched.batch.prompt_tokens_evaluated - before
    assert evaluated < batched.count_chat_tokens(turn) // 2


def test_without_a_seed_requests_sample_as_one_at_a_time_does(real_model: Path) -> None:
    free = GenerationParams(max_tokens=24, temperature=1.0)
    seeded = GenerationParams(max_tokens=24, temperature=1.0, seed=5)
    texts = []
    for parallel in (PARALLEL, 1):
        model = load(real_model, parallel)
        try:  # a seeded request sets the seed the next ones derive from
            texts.append([solo(model, "Tell me a story.", p) for p in (free, free, seeded, free)])
        finally:
            model.close()
    assert texts[0] == texts[1]  # the same seeds, one after the other
    assert len(set(texts[0])) > 1  # each request a seed of its own


def test_a_long_prompt_is_read_in_chunks_while_others_keep_streaming(
    batched: LlamaModel, single: LlamaModel
) -> None:
    long_prompt = " ".join(f"item {i}," for i in range(100)) + " The last item is"
    params = GenerationParams(max_tokens=8, temperature=0)
    # (From the other model: this one must not have the prompt's KV kept already.)
    expected = solo(single, long_prompt, params)
    running = Call(batched, ENDLESS, GenerationParams(max_tokens=1000, temperature=0)).start()
    assert running.first_text.wait(60)
    newcomer = Call(batched, long_prompt, params)
    seen_before_first = []
    newcomer.emit = lambda text: (  # type: ignore[method-assign]
        seen_before_first.append(len(running.texts)) if not newcomer.texts else None,
        Call.emit(newcomer, text),
    )
    at_start = len(running.texts)
    assert newcomer.start().join() == expected  # the chunks add up to the same prompt
    n_prompt = len(batched.tokenize(long_prompt, True))
    assert n_prompt > 3 * 128
    # The running stream got a token at every step while the prompt was being read.
    assert seen_before_first[0] - at_start >= n_prompt // 128
    running.cancel.cancel()
    running.join()


@pytest.mark.parametrize("path", ["batched", "single"])
def test_a_chat_reply_streams_from_its_first_token(
    path: str, request: pytest.FixtureRequest
) -> None:
    """The chat template's end marker ("<|im_end|>") is a stop string; text that cannot
    begin it goes out as soon as it is made: one piece per token, from the first on."""
    model: LlamaModel = request.getfixturevalue(path)
    messages = [ChatMessage(Role.USER, "Tell a story about a dragon.")]

    def pieces(max_tokens: int) -> list[str]:
        texts: list[str] = []
        params = GenerationParams(max_tokens=max_tokens, temperature=0.0)
        stats = model.chat(messages, params, texts.append, CancelToken())
        assert stats.completion_tokens == max_tokens
        return texts

    first = "".join(pieces(1))
    texts = pieces(8)
    assert texts[0] == first, texts
    assert len(texts) == 8, texts
