"""Turns on one loaded embedding model: interactive work never waits behind bulk work.

A model runs one batch at a time (a batch uses all of the model's threads). Waiting work
is taken interactive first (Embed requests, the query of a Search or Ask), then
background (indexing), first come first served within a priority. Indexing hands its
texts over in slices sized from the measured speed of the model to take about
BACKGROUND_TURN_MS each, so an interactive request waits for at most one such slice.
Interactive embeddings that wait together share one run, up to the model's batch size
and unless padding to a much longer text would cost more than separate runs:
eight one-sentence queries took 38 ms in one run of all-MiniLM-L6-v2 (fp32, 2 threads)
against 50 ms one by one, and every caller gets its answer when the shared run ends.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import heapq
import itertools
import time
from collections.abc import Callable, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from enum import IntEnum
from typing import Any, TypeVar

from rustaid.providers import LoadedEmbedder

T = TypeVar("T")

# How long one background slice should take. On the busy 2-core test machine a run of
# all-MiniLM-L6-v2 with 2 threads took 6-9 ms for one sentence, 40-45 ms for eight and
# 30-60 ms for one 256-token chunk (a quiet machine: about 1 ms per sentence in batches):
# 20 ms makes slices of a few sentences or one long chunk, where a search used to wait
# for all the chunks of an indexing flush (128 or more, a whole document: seconds).
# Smaller slices cost indexing throughput: on the busy machine, slices of 20 ms embedded
# 1000 sentences at 0.86-0.94x the speed of one call over all of them.
BACKGROUND_TURN_MS = 20.0
# Background slices of one job waiting at once: one runs, the next waits to follow it.
QUEUED_SLICES = 2
# Calls share a run while padding to the longest text adds at most a quarter to its work.
PADDING_LIMIT = 1.25
# A text costs at least about this many characters' work (special tokens, the per-text
# part of a run): one-word and one-line queries count alike.
MIN_TEXT_CHARS = 64
# Weight of the newest run in the speed estimate.
_SPEED_WEIGHT = 0.3


def _length(text: str) -> int:
    return max(len(text), MIN_TEXT_CHARS)


def _work_of(texts: Sequence[str]) -> int:
    return sum(map(_length, texts))


class Priority(IntEnum):
    INTERACTIVE = 0
    BACKGROUND = 1


@dataclass
class _Turn:
    priority: Priority
    seq: int
    future: asyncio.Future[Any]
    # Either a call on the model, or texts to embed (which may share a run).
    fn: Callable[[LoadedEmbedder], Any] | None = None
    texts: list[str] = field(default_factory=list)

    def __lt__(self, other: _Turn) -> bool:
        return (self.priority, self.seq) < (other.priority, other.seq)


@dataclass(frozen=True)
class _Ran:
    packed: bytes
    truncated: list[int]
    dimension: int
    ms: float


class ModelTurns:
    """Who runs on one embedding model next. Methods are called on the event loop."""

    def __init__(
        self,
        embedder: LoadedEmbedder,
        executor: Executor,
        batch_size: int,
        *,
        interactive: Executor | None = None,
    ) -> None:
        self.embedder = embedder
        self._executor = executor
        # Interactive runs need not find a thread free among those indexing keeps busy.
        self._interactive = interactive or executor
        # 0: the provider's default; 32 is the built-in providers' default.
        self._batch_size = batch_size if batch_size > 0 else 32
        self._waiting: list[_Turn] = []  # a heap
        self._seq = itertools.count()
        self._running = False
        # Measured background cost in milliseconds per character (None: not measured yet).
        self.ms_per_char: float | None = None
        # Runs made and the turns they served (a shared run serves several).
        self.runs = 0
        self.served = 0

    @property
    def waiting(self) -> int:
        """Turns waiting for the model (not the running one)."""
        return sum(not t.future.done() for t in self._waiting)

    async def call(self, fn: Callable[[LoadedEmbedder], T], priority: Priority) -> T:
        """Run `fn` on the model in a worker thread when its turn comes."""
        result: T = await self._enqueue(priority, fn=fn)
        return result

    async def embed(self, texts: Sequence[str], priority: Priority) -> tuple[bytes, list[int]]:
        """Vectors of `texts` as packed little-endian float32 rows, and the indexes of
        the texts that were truncated (LoadedEmbedder.embed_packed)."""
        ran: _Ran = await self._enqueue(priority, texts=list(texts))
        return ran.packed, ran.truncated

    async def embed_background(
        self, texts: Sequence[str], progress: Callable[[int], None] | None = None
    ) -> list[bytes]:
        """Vectors of `texts` (one packed row each), embedded in background slices of
        about BACKGROUND_TURN_MS. Texts are taken shortest first, so a slice pads little.
        `progress` hears how many texts are embedded after every slice.

        The next slice waits in the queue while one runs, so the model starts it as soon
        as the running one ends instead of after a round trip through this coroutine
        (one-line documents, 5,000 per stream, two streams per daemon, alternating
        daemons: 748-779 chunks/s with one slice at a time, 779-793 with two);
        interactive turns still go before it."""
        order = sorted(range(len(texts)), key=lambda i: len(texts[i]))
        rows: list[bytes] = [b""] * len(texts)
        queued: collections.deque[tuple[list[int], asyncio.Future[Any]]] = collections.deque()
        start = done = 0
        try:
            while start < len(order) or queued:
                while start < len(order) and len(queued) < QUEUED_SLICES:
                    end = self._slice_end(texts, order, start)
                    part = order[start:end]
                    slice_texts = [texts[i] for i in part]
                    queued.append(
                        (
                            part,
                            asyncio.ensure_future(
                                self._enqueue(Priority.BACKGROUND, texts=slice_texts)
                            ),
                        )
                    )
                    start = end
                part, pending = queued.popleft()
                ran: _Ran = await pending
                self._measured(ran.ms, sum(len(texts[i]) for i in part))
                width = ran.dimension * 4
                for k, i in enumerate(part):
                    rows[i] = ran.packed[k * width : (k + 1) * width]
                done += len(part)
                if progress is not None:
                    progress(done)
        finally:
            for _, pending in queued:
                pending.cancel()
        return rows

    def _slice_end(self, texts: Sequence[str], order: Sequence[int], start: int) -> int:
        if self.ms_per_char is None:
            return start + 1  # measure on one text first
        budget = BACKGROUND_TURN_MS / self.ms_per_char
        end, chars = start + 1, len(texts[order[start]])
        while end < len(order) and end - start < self._batch_size:
            chars += len(texts[order[end]])
            if chars > budget:
                break
            end += 1
        return end

    def _measured(self, ms: float, chars: int) -> None:
        rate = ms / max(chars, 1)
        old = self.ms_per_char
        self.ms_per_char = rate if old is None else old + _SPEED_WEIGHT * (rate - old)

    # -- the queue ----------------------------------------------------------------------

    async def _enqueue(
        self,
        priority: Priority,
        fn: Callable[[LoadedEmbedder], Any] | None = None,
        texts: list[str] | None = None,
    ) -> Any:
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        turn = _Turn(priority, next(self._seq), future, fn, texts or [])
        heapq.heappush(self._waiting, turn)
        self._dispatch()
        # A caller cancelled while waiting cancels its future: its turn is skipped.
        return await future

    def _dispatch(self) -> None:
        while not self._running and self._waiting:
            first = heapq.heappop(self._waiting)
            if first.future.done():
                continue
            group = [first]
            if first.fn is None and first.priority is Priority.INTERACTIVE:
                group += self._take_companions(first.texts)
            self._running = True
            self.runs += 1
            self.served += len(group)
            pool = self._interactive if first.priority is Priority.INTERACTIVE else self._executor
            running = asyncio.get_running_loop().run_in_executor(
                pool, functools.partial(self._work, group)
            )
            running.add_done_callback(functools.partial(self._finished, group))

    def _take_companions(self, first: list[str]) -> list[_Turn]:
        """Other waiting interactive embeddings that fit in the same run and make it
        faster than runs of their own: a run pads every text to its longest, so texts much
        longer or shorter than the others run apart."""
        companions: list[_Turn] = []
        count, chars, longest = len(first), _work_of(first), max(map(_length, first))
        for turn in sorted(self._waiting):
            if turn.priority is not Priority.INTERACTIVE:
                break
            if turn.fn is not None or turn.future.done():
                continue
            n, c, m = len(turn.texts), _work_of(turn.texts), max(map(_length, turn.texts))
            padded = (count + n) * max(longest, m)
            if count + n > self._batch_size or padded > PADDING_LIMIT * (chars + c):
                continue
            count, chars, longest = count + n, chars + c, max(longest, m)
            companions.append(turn)
        if companions:
            chosen = {id(t) for t in companions}
            self._waiting = [t for t in self._waiting if id(t) not in chosen]
            heapq.heapify(self._waiting)
        return companions

    def _work(self, group: list[_Turn]) -> Any:
        """In a worker thread: the call, or one run over the texts of every turn."""
        first = group[0]
        if first.fn is not None:
            return first.fn(self.embedder)
        texts = [text for turn in group for text in turn.texts]
        t0 = time.perf_counter()
        packed, truncated = self.embedder.embed_packed(texts)
        ms = (time.perf_counter() - t0) * 1000
        return _Ran(packed, truncated, self.embedder.dimension, ms)

    def _finished(self, group: list[_Turn], running: asyncio.Future[Any]) -> None:
        self._running = False
        try:
            if running.cancelled():
                error: BaseException | None = asyncio.CancelledError()
            else:
                error = running.exception()
            if error is not None:
                for turn in group:
                    if not turn.future.done():
                        turn.future.set_exception(error)
                return
            result = running.result()
            if group[0].fn is not None:
                if not group[0].future.done():
                    group[0].future.set_result(result)
                return
            self._share(group, result)
        finally:
            self._dispatch()

    @staticmethod
    def _share(group: list[_Turn], ran: _Ran) -> None:
        """Give each turn of a shared run its own rows and truncated indexes."""
        width = ran.dimension * 4
        truncated = set(ran.truncated)
        at = 0
        for turn in group:
            n = len(turn.texts)
            if not turn.future.done():
                own = [i - at for i in range(at, at + n) if i in truncated]
                packed = ran.packed[at * width : (at + n) * width]
                turn.future.set_result(_Ran(packed, own, ran.dimension, ran.ms))
            at += n
