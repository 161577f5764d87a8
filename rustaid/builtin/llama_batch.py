"""Continuous batching for the llama.cpp plugin: several requests share one llama
context, each in a sequence of its own (its own KV cache region), and one thread
decodes them all together, one token per running sequence per step.

A request joins at the next step; its prompt is evaluated in chunks between the
steps, so the running streams keep flowing while it is read. A request that ends
(finished, stopped, cancelled) leaves at once and its sequence takes the next request.
Each sequence has its own sampler chain (temperature, top-k/p, min-p, repeat penalty,
seed, grammar) and its own stop strings. A sequence keeps its tokens' KV after its
request ends: the next request whose prompt starts the same way (a chat session's
next turn) reuses that prefix instead of evaluating it again.

A background sequence may be paused (`CancelToken.paused`, set by the request side): its
KV is copied to memory and its region serves another request; it resumes where it
stopped, in whichever region is free then.

llama_cpp and numpy are imported by the caller (the plugin, on first load), not here.
"""

from __future__ import annotations

import codecs
import contextlib
import ctypes
import logging
import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from rustaid.builtin.llama_cpp_loop import Outcome, Pieces, Sampling, Stops
from rustaid.providers import CancelToken, EmitText, FinishReason

if TYPE_CHECKING:
    import llama_cpp

log = logging.getLogger(__name__)

# Prompt tokens of each newcomer evaluated per step while other sequences generate: small
# enough that a long prompt holds a running stream up for one short step at a time,
# large enough that it is read at nearly full speed. Newcomers that arrive together are
# read in the same steps, each by its own chunk, as one batch.
PROMPT_CHUNK = 128
# How often a batch with only paused sequences looks whether one may resume.
RESUME_CHECK_S = 0.05
# An idle model waits for more requests before its first step, until none has come for
# GATHER_QUIET_S and none is on its way (`coming`: its prompt being rendered and
# tokenized), GATHER_MAX_S at most. Clients that start together reach the model a few
# milliseconds apart through HTTP or gRPC (5-14 ms for 8 chat requests, measured, with
# gaps of up to 6 ms while their prompts were made): without the wait the first read its
# prompt alone (120 ms with SmolLM2 on 1 thread) while the others waited for that step
# to end before theirs began.
GATHER_QUIET_S = 0.003
GATHER_MAX_S = 0.02
# Tokens the repeat penalty looks back on (llama-cpp-python's last_n_tokens_size).
PENALTY_LAST_N = 64


@dataclass
class BatchSequence:
    """One request in the batch."""

    prompt: list[int]
    sampling: Sampling
    max_tokens: int
    stops: Stops
    emit: EmitText
    cancel: CancelToken
    outcome: Outcome = field(default_factory=lambda: Outcome(FinishReason.LENGTH))
    done: threading.Event = field(default_factory=threading.Event)
    error: BaseException | None = None
    # Batch thread only:
    seq_id: int = -1
    sampler: Any = None
    pending: list[int] = field(default_factory=list)  # tokens to evaluate next
    n_past: int = 0  # tokens of this sequence in its KV region
    saved: bytes = b""  # its KV while paused
    saved_cells: list[int] = field(default_factory=list)
    decode: Callable[[bytes], str] = field(
        default_factory=lambda: codecs.getincrementaldecoder("utf-8")(errors="ignore").decode
    )


class BatchEngine:
    """Decodes up to `parallel` sequences of one model together, on a thread of its own."""

    def __init__(
        self,
        llm: llama_cpp.Llama,
        pieces: Pieces,
        *,
        parallel: int,
        context_length: int,
        batch_size: int,
        threads: int,
    ) -> None:
        import llama_cpp as lc
        import numpy as np

        self._lc = lc
        self._logits_of = np.ctypeslib.as_array
        self._llm = llm
        self._pieces = pieces
        self.parallel = parallel
        self.context_length = context_length
        self.batch_size = batch_size
        # The settings of the model's own context (flash attention, KV types...), so a
        # sequence computes exactly what a request alone computes there.
        params = type(llm.context_params).from_buffer_copy(llm.context_params)
        params.n_ctx = context_length * parallel
        params.n_batch = params.n_ubatch = batch_size
        params.n_seq_max = parallel
        params.n_threads = params.n_threads_batch = threads
        # One KV region per sequence: attention reads only its own sequence's cells.
        params.kv_unified = False
        params.no_perf = True
        ctx = lc.llama_init_from_model(llm._model.model, params)
        if not ctx:
            raise MemoryError(
                f"llama.cpp could not make a context of {parallel} x {context_length} tokens"
            )
        self._ctx = ctx
        self._mem = lc.llama_get_memory(ctx)
        self._batch = lc.llama_batch_init(batch_size, 0, 1)
        self._threads = threads
        self.default_threads = threads
        self._seed: int = llm._seed
        self._n_vocab = llm.n_vocab()
        # Tokens in each region's KV (kept after its request ends, for prefix reuse).
        self._cells: list[list[int]] = [[] for _ in range(parallel)]
        self._owner: list[BatchSequence | None] = [None] * parallel
        self._last_used = [0.0] * parallel
        self._arrivals: list[BatchSequence] = []
        self._coming: set[int] = set()  # threads making a request's prompt (`coming`)
        self._running: list[BatchSequence] = []
        self._paused: list[BatchSequence] = []
        self._wake = threading.Condition()
        self._stopping = False
        self.gather_quiet_s, self.gather_max_s = GATHER_QUIET_S, GATHER_MAX_S
        # Prompt tokens evaluated so far (those a reused prefix spared are not), and
        # llama_decode calls.
        self.prompt_tokens_evaluated = 0
        self.steps = 0
        self._thread = threading.Thread(target=self._loop, name="rustaid-batch", daemon=True)
        self._thread.start()

    # -- request side -------------------------------------------------------------------

    @contextlib.contextmanager
    def coming(self) -> Iterator[None]:
        """Around the making of a request's prompt, up to `run`: an idle model waits
        for the request before its first step."""
        me = threading.get_ident()
        with self._wake:
            self._coming.add(me)
        try:
            yield
        finally:
            with self._wake:
                self._coming.discard(me)  # the request failed before it arrived

    def run(self, seq: BatchSequence) -> Outcome:
        """Add a sequence and wait until it ends (called from the request's own thread)."""
        seq.outcome.t_start = time.perf_counter()
        with self._wake:
            if self._stopping:
                raise RuntimeError("the model is closed")
            self._coming.discard(threading.get_ident())
            self._arrivals.append(seq)
            self._wake.notify()
        while not seq.done.wait(0.5):
            if seq.cancel.cancelled:
                self.poke()
        if seq.error is not None:
            raise seq.error
        return seq.outcome

    def poke(self) -> None:
        """Wake the batch thread (a request was cancelled, paused or resumed)."""
        with self._wake:
            self._wake.notify()

    def close(self) -> None:
        with self._wake:
            self._stopping = True
            self._wake.notify()
        self._thread.join()
        self._lc.llama_batch_free(self._batch)
        self._lc.llama_free(self._ctx)

    # -- batch thread ------------------------------------------------------------------

    def _loop(self) -> None:
        try:
            while self._step():
                pass
        except BaseException as e:  # a llama.cpp failure ends every sequence with it
            log.exception("batch decoding failed")
            with self._wake:
                self._stopping = True
                everyone = self._running + self._paused + self._arrivals
                self._arrivals.clear()
            for seq in everyone:
                seq.error = e
                seq.done.set()

    def _step(self) -> bool:
        with self._wake:
            while not (self._stopping or self._arrivals or self._running or self._paused):
                self._wake.wait()
            if not (self._running or self._paused):
                self._gather()
            stopping = self._stopping
            if stopping:
                for seq in self._running + self._paused + self._arrivals:
                    seq.cancel.cancel()
        for seq in self._running + self._paused:
            if seq.cancel.cancelled:
                seq.outcome.finish = FinishReason.CANCELLED
                self._finish(seq)
        if stopping:
            with self._wake:
                arrivals, self._arrivals = self._arrivals, []
            for seq in arrivals:
                seq.outcome.finish = FinishReason.CANCELLED
                seq.done.set()
            return bool(self._running or self._paused)
        self._pause_and_resume()
        with self._wake:  # newcomers take the regions that are free now
            while self._arrivals and self._free_region() >= 0:
                self._admit(self._arrivals.pop(0))
        if not self._running:
            with self._wake:  # only paused sequences: look again shortly
                self._wake.wait(RESUME_CHECK_S)
            return True
        self._apply_device_caps()
        self._decode()
        return True

    def _gather(self) -> None:
        """Wait (holding the lock's condition) while requests keep arriving at an idle
        model, so that a burst reads its prompts in one step."""
        deadline = time.monotonic() + self.gather_max_s
        seen = len(self._arrivals)
        while not self._stopping and seen < self.parallel:
            left = deadline - time.monotonic()
            if left <= 0:
                return
            self._wake.wait(min(self.gather_quiet_s, left))
            if len(self._arrivals) == seen and not self._coming:
                return  # quiet
            seen = len(self._arrivals)

    def _free_region(self) -> int:
        """The least recently used free region, or -1."""
        free = [i for i in range(self.parallel) if self._owner[i] is None]
        return min(free, key=lambda i: self._last_used[i]) if free else -1

    def _admit(self, seq: BatchSequence) -> None:
        free = [i for i in range(self.parallel) if self._owner[i] is None]
        # The region whose cached tokens share the longest prefix with the prompt.
        best, keep = -1, -1
        for i in free:
            n = _common_prefix(self._cells[i], seq.prompt)
            if n > keep or (n == keep and self._last_used[i] < self._last_used[best]):
                best, keep = i, n
        keep = min(keep, len(seq.prompt) - 1)  # the last prompt token gives the logits
        self._lc.llama_memory_seq_rm(self._mem, best, keep, -1)
        del self._cells[best][keep:]
        seq.seq_id, seq.n_past = best, keep
        seq.pending = seq.prompt[keep:]
        self._owner[best] = seq
        seq.sampler = self._make_sampler(seq.sampling)
        self._running.append(seq)

    def _make_sampler(self, s: Sampling) -> Any:
        """The chain llama-cpp-python's Llama.generate builds, per sequence; None for
        plain greedy (no penalty, no grammar), which `_sample` does itself."""
        # As llama-cpp-python: a request's seed, else one derived from the last seed used.
        seed = s.seed if s.seed is not None else random.Random(self._seed).randint(0, 2**32)
        self._seed = seed
        if s.temperature == 0.0 and s.repeat_penalty == 1.0 and s.grammar is None:
            return None
        lc = self._lc
        chain = lc.llama_sampler_chain_init(lc.llama_sampler_chain_default_params())
        add = lc.llama_sampler_chain_add
        if s.repeat_penalty != 1.0:
            penalties = lc.llama_sampler_init_penalties(
                self._n_vocab, PENALTY_LAST_N, s.repeat_penalty, 0.0, 0.0
            )
            add(chain, penalties)
        if s.grammar is not None:
            g = s.grammar
            add(
                chain,
                lc.llama_sampler_init_grammar(
                    self._llm._model.vocab, g._grammar.encode("utf-8"), g._root.encode("utf-8")
                ),
            )
        if s.temperature == 0.0:
            add(chain, lc.llama_sampler_init_greedy())
        elif s.temperature < 0.0:
            add(chain, lc.llama_sampler_init_dist(seed))
        else:
            add(chain, lc.llama_sampler_init_top_k(s.top_k))
            add(chain, lc.llama_sampler_init_typical(1.0, 1))
            add(chain, lc.llama_sampler_init_top_p(s.top_p, 1))
            add(chain, lc.llama_sampler_init_min_p(s.min_p, 1))
            add(chain, lc.llama_sampler_init_temp(s.temperature))
            add(chain, lc.llama_sampler_init_dist(seed))
        return chain

    def _pause_and_resume(self) -> None:
        lc = self._lc
        for seq in [s for s in self._running if s.cancel.paused]:
            # Keep its KV in memory and give its region to someone else.
            size = lc.llama_state_seq_get_size(self._ctx, seq.seq_id)
            buf = (ctypes.c_uint8 * size)()
            n = lc.llama_state_seq_get_data(self._ctx, buf, size, seq.seq_id)
            seq.saved = bytes(buf[:n])
            seq.saved_cells = self._cells[seq.seq_id]
            self._cells[seq.seq_id] = []
            self._lc.llama_memory_seq_rm(self._mem, seq.seq_id, -1, -1)
            self._release(seq)
            self._running.remove(seq)
            self._paused.append(seq)
            log.debug("paused a sequence (%d bytes of KV kept)", len(seq.saved))
        for seq in [s for s in self._paused if not s.cancel.paused]:
            region = self._free_region()
            if region < 0:
                break
            lc.llama_memory_seq_rm(self._mem, region, -1, -1)
            data = (ctypes.c_uint8 * len(seq.saved)).from_buffer_copy(seq.saved)
            if lc.llama_state_seq_set_data(self._ctx, data, len(seq.saved), region) == 0:
                raise RuntimeError("llama.cpp could not restore a paused sequence")
            seq.saved = b""
            self._cells[region], seq.saved_cells = seq.saved_cells, []
            seq.seq_id = region
            self._owner[region] = seq
            self._paused.remove(seq)
            self._running.append(seq)

    def _apply_device_caps(self) -> None:
        # One thread count for the whole batch: the strictest any running request asks.
        caps = [s.cancel.threads for s in self._running if s.cancel.threads]
        wanted = min(caps) if caps else self.default_threads
        if wanted != self._threads:
            self._lc.llama_set_n_threads(self._ctx, wanted, wanted)
            self._threads = wanted
        rest = max((s.cancel.pause_s for s in self._running), default=0.0)
        if rest > 0:
            with self._wake:
                self._wake.wait(rest)

    def _decode(self) -> None:
        """One step: the next token of every generating sequence, plus prompt chunks."""
        b = self._batch
        n = 0
        sample: list[tuple[BatchSequence, int]] = []
        generating = any(s.outcome.sampled for s in self._running)
        budget = self.batch_size
        chunk = PROMPT_CHUNK if generating else self.batch_size
        # Generating sequences first (one token each), then prompts in arrival order.
        order = sorted(self._running, key=lambda s: s.outcome.sampled == 0)
        for seq in order:
            if budget <= 0:
                break
            reading = seq.outcome.sampled == 0
            take = min(len(seq.pending), budget, chunk if reading else 1)
            if take <= 0:
                continue
            for k in range(take):
                b.token[n] = seq.pending[k]
                b.pos[n] = seq.n_past + k
                b.n_seq_id[n] = 1
                b.seq_id[n][0] = seq.seq_id
                b.logits[n] = 0
                n += 1
            last = take == len(seq.pending)
            if last:
                b.logits[n - 1] = 1
                sample.append((seq, n - 1))
            self._cells[seq.seq_id].extend(seq.pending[:take])
            seq.n_past += take
            del seq.pending[:take]
            if reading:
                self.prompt_tokens_evaluated += take
            budget -= take
        b.n_tokens = n
        self.steps += 1
        rc = self._lc.llama_decode(self._ctx, b)
        if rc != 0:
            raise RuntimeError(f"llama_decode failed ({rc})")
        # Every sequence's token first, then their text: each text wakes the event loop,
        # which would otherwise hold the GIL while the next sampler call waits for it.
        tokens = [self._sample(seq, index) for seq, index in sample]
        for (seq, _), token in zip(sample, tokens, strict=True):
            self._sampled(seq, token)

    def _sample(self, seq: BatchSequence, index: int) -> int:
        if seq.sampler is not None:
            return int(self._lc.llama_sampler_sample(seq.sampler, self._ctx, index))
        # Plain greedy: the most likely token, the first of equal ones as llama.cpp's greedy
        # sampler picks it, without copying the vocabulary's logits into candidates first.
        logits = self._lc.llama_get_logits_ith(self._ctx, index)
        return int(self._logits_of(logits, shape=(self._n_vocab,)).argmax())

    def _sampled(self, seq: BatchSequence, token: int) -> None:
        out = seq.outcome
        out.sampled += 1
        if out.sampled == 1:
            out.t_first = time.perf_counter()
        piece, eog = self._pieces.get(token)
        if eog:
            out.finish = FinishReason.STOP
            self._finish(seq)
            return
        out.tokens.append(token)
        if piece and (text := seq.decode(piece)):
            safe, hit = seq.stops.feed(text)
            if safe:
                seq.emit(safe)
            if hit:
                out.finish = FinishReason.STOP_SEQUENCE
                self._finish(seq)
                return
        if len(out.tokens) >= seq.max_tokens:
            self._finish(seq)
            return
        seq.pending = [token]

    def _release(self, seq: BatchSequence) -> None:
        self._owner[seq.seq_id] = None
        self._last_used[seq.seq_id] = time.monotonic()

    def _finish(self, seq: BatchSequence) -> None:
        out = seq.outcome
        out.t_end = time.perf_counter()
        out.t_first = out.t_first or out.t_end
        ran_out = out.finish in (FinishReason.STOP, FinishReason.LENGTH)
        if ran_out and (rest := seq.stops.flush()):
            seq.emit(rest)
        if seq in self._running:
            self._running.remove(seq)
            self._release(seq)
        elif seq in self._paused:
            self._paused.remove(seq)
        if seq.sampler is not None:
            self._lc.llama_sampler_free(seq.sampler)
            seq.sampler = None
        seq.done.set()


def _common_prefix(a: list[int], b: list[int]) -> int:
    n = min(len(a), len(b))
    i = 0
    while i < n and a[i] == b[i]:
        i += 1
    return i
