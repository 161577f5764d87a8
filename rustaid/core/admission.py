"""Admission control: what a request must pass before it may use a model.

- Per-client concurrency: at most `max_requests_per_client` requests of one caller
  (`rustaid.core.caller.current().key`) are in flight at once, waiting ones included;
  the next one is refused with RESOURCE_EXHAUSTED and a retry delay. The daemon's own
  work (the internal caller) is not limited.
- Prompt size: a prompt larger than `max_prompt_bytes` is refused before anything
  tokenizes it (INVALID_ARGUMENT: the request itself is wrong, retrying cannot help).
- Grammar size: a grammar over its byte or rule limit is refused before anything
  compiles it (llama.cpp's compile time grows faster than the grammar).
- Retry delays: every "come back later" answer carries an estimate, bounded to
  [RETRY_MIN_S, RETRY_MAX_S].

Admission is re-entrant per request: an RPC admitted at the gRPC edge that then enters
the engine (once or for each turn of an agent) holds one place, not several. The place
is tracked in a context variable, which child tasks of the request inherit.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field

from rustaid.core import caller as caller_mod
from rustaid.errors import InvalidArgument, ResourceExhausted
from rustaid.providers import GrammarLimits

# Bounds of every retry delay the daemon suggests: shorter is a busy loop for the
# client, longer is a guess too far ahead to be worth anything.
RETRY_MIN_S = 0.5
RETRY_MAX_S = 60.0
# Weight of the newest duration in the recent averages.
RECENT_WEIGHT = 0.3


def retry_delay(seconds: float) -> float:
    """A suggested retry delay, bounded to something a client can act on."""
    if seconds != seconds:  # NaN
        seconds = RETRY_MIN_S
    return round(min(RETRY_MAX_S, max(RETRY_MIN_S, seconds)), 3)


class RecentDuration:
    """Exponentially weighted average of recent durations, in seconds (0: none yet)."""

    def __init__(self) -> None:
        self.seconds = 0.0
        self.samples = 0

    def add(self, seconds: float) -> None:
        seconds = max(0.0, seconds)
        if self.samples == 0:
            self.seconds = seconds
        else:
            self.seconds += RECENT_WEIGHT * (seconds - self.seconds)
        self.samples += 1


@dataclass(eq=False)
class _Hold:
    admission: Admission
    key: str
    kind: str
    started: float = field(default_factory=time.monotonic)
    active: bool = True


# The place the running request holds (None outside any admitted request).
_held: ContextVar[_Hold | None] = ContextVar("rustaid_admission", default=None)


class Admission:
    """Counts in-flight requests per caller key; `limit()` is read on every admission,
    so a configuration reload applies to the next request."""

    def __init__(self, limit: Callable[[], int]) -> None:
        self._limit = limit
        self._holds: dict[str, list[_Hold]] = {}
        # Recent duration of admitted requests, per kind ("generate", an RPC name...).
        # Kinds come from the daemon's code, never from clients: the dict stays small.
        self._durations: dict[str, RecentDuration] = {}

    def in_flight(self, key: str | None = None) -> int:
        if key is not None:
            return len(self._holds.get(key, ()))
        return sum(len(h) for h in self._holds.values())

    def clients(self) -> dict[str, int]:
        """Requests in flight per caller key."""
        return {k: len(v) for k, v in self._holds.items()}

    @contextlib.contextmanager
    def admit(self, kind: str) -> Iterator[None]:
        """Hold a place for the current caller for the duration of the block, or raise
        ResourceExhausted (reason TOO_MANY_REQUESTS) with a retry delay."""
        held = _held.get()
        if held is not None and held.active and held.admission is self:
            yield  # part of a request that already holds its place
            return
        caller = caller_mod.current()
        if caller.key == caller_mod.INTERNAL.key:
            yield  # the daemon's own work
            return
        limit = self._limit()
        holds = self._holds.setdefault(caller.key, [])
        if limit and len(holds) >= limit:
            shared = (
                " (clients without a token on this TCP host share one limit: give each a "
                "token of its own, `rustaid token add NAME`)"
                if caller.key.startswith(("peer:ipv4:", "peer:ipv6:"))
                else ""
            )
            raise ResourceExhausted(
                f"caller {caller.key!r} already has {len(holds)} requests in flight "
                f"(max_requests_per_client is {limit}); retry when one of them finishes"
                f"{shared}",
                reason="TOO_MANY_REQUESTS",
                retry_after_s=self._retry_after(holds),
            )
        hold = _Hold(self, caller.key, kind)
        holds.append(hold)
        _held.set(hold)
        try:
            yield
        finally:
            hold.active = False
            holds.remove(hold)
            if not holds and self._holds.get(caller.key) is holds:
                del self._holds[caller.key]
            self._durations.setdefault(kind, RecentDuration()).add(time.monotonic() - hold.started)

    def _retry_after(self, holds: list[_Hold]) -> float:
        """When the first of these requests is likely to finish: its kind's recent
        duration minus how long it has run. Without history, the oldest one's age."""
        now = time.monotonic()
        estimates = []
        for h in holds:
            recent = self._durations.get(h.kind)
            age = now - h.started
            estimates.append(recent.seconds - age if recent and recent.samples else age)
        return retry_delay(min(estimates, default=RETRY_MIN_S))


def text_bytes(text: str) -> int:
    """UTF-8 size of `text`; O(1) for ASCII text."""
    if text.isascii():
        return len(text)
    return len(text.encode("utf-8", "surrogatepass"))


def check_prompt_size(texts: Sequence[str], limit: int, field_name: str) -> None:
    """Refuse a prompt over `limit` bytes of UTF-8 (0: no limit) before anything
    tokenizes it. Costs O(1) per text unless the size is close to the limit."""
    if not limit:
        return
    chars = sum(len(t) for t in texts)
    if chars <= limit // 4:  # at most 4 bytes per character
        return
    ascii_only = all(t.isascii() for t in texts)
    if chars > limit and not ascii_only:  # at least 1 byte per character: no need to encode
        raise InvalidArgument(
            f"{field_name} is {chars} characters, more than the {limit} bytes the daemon "
            f"accepts (max_prompt_bytes): shorten it",
            field=field_name,
            reason="PROMPT_TOO_LARGE",
        )
    size = chars if ascii_only else sum(text_bytes(t) for t in texts)
    if size > limit:
        raise InvalidArgument(
            f"{field_name} is {size} bytes, more than the {limit} bytes the daemon accepts "
            f"(max_prompt_bytes): shorten it",
            field=field_name,
            reason="PROMPT_TOO_LARGE",
        )


def check_grammar_size(text: str, limits: GrammarLimits, field_name: str) -> None:
    """Refuse a grammar (or JSON Schema) over `limits` before anything compiles it."""
    size = text_bytes(text)
    if size > limits.max_bytes:
        raise InvalidArgument(
            f"{field_name} is {size} bytes, more than the {limits.max_bytes} bytes the "
            "daemon compiles (max_grammar_bytes): simplify it",
            field=field_name,
            reason="GRAMMAR_TOO_LARGE",
        )
    rules = text.count("::=")  # a literal holding "::=" only over-counts
    if rules > limits.max_rules:
        raise InvalidArgument(
            f"{field_name} has {rules} rules, more than the {limits.max_rules} the daemon "
            "compiles (max_grammar_rules): simplify it",
            field=field_name,
            reason="GRAMMAR_TOO_LARGE",
        )
