"""Per-model admission: a loaded model serves one request at a time; waiting requests
are served interactive before background, first come first served within a priority."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from rustaid.core.admission import RecentDuration, retry_delay
from rustaid.errors import ResourceExhausted


class Priority(IntEnum):
    # Lower sorts first.
    INTERACTIVE = 1
    BACKGROUND = 2


@dataclass(order=True)
class Ticket:
    priority: int
    seq: int
    granted: asyncio.Future[None] = field(compare=False)
    # When its turn came (monotonic seconds; 0 while waiting).
    started: float = field(default=0.0, compare=False)


class ModelQueue:
    def __init__(
        self,
        model_id: str,
        max_waiting: int,
        on_change: Callable[[], None] | None = None,
        turns: RecentDuration | None = None,
    ) -> None:
        self.model_id = model_id
        self.max_waiting = max_waiting
        self._holder: Ticket | None = None
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()
        # Called after every join and leave (the engine publishes its activity from it).
        self._on_change = on_change
        # How long a turn takes lately (kept by the engine across loads of the model).
        self.turns = turns if turns is not None else RecentDuration()
        # Resolved (and replaced) whenever positions may have changed.
        self._moved: asyncio.Future[None] | None = None

    @property
    def busy(self) -> bool:
        return self._holder is not None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def join(self, priority: int) -> Ticket:
        """Take a place; the ticket's `granted` future resolves when it is this one's turn."""
        must_wait = self._holder is not None or bool(self._waiting)
        if must_wait and len(self._waiting) >= self.max_waiting:
            raise ResourceExhausted(
                f"model {self.model_id!r} has {len(self._waiting)} requests waiting "
                f"(limit {self.max_waiting}); retry later",
                reason="QUEUE_FULL",
                retry_after_s=self.drain_estimate(),
            )
        ticket = Ticket(priority, next(self._seq), asyncio.get_running_loop().create_future())
        if self._holder is None and not self._waiting:
            self._grant(ticket)
        else:
            heapq.heappush(self._waiting, ticket)
        self._changed()
        return ticket

    def drain_estimate(self) -> float:
        """Seconds until the requests waiting now are served, as a bounded retry delay:
        what is left of the running turn plus one recent turn per waiting request. Before
        any turn has finished, the running turn's age stands in for a turn's length."""
        now = time.monotonic()
        running = now - self._holder.started if self._holder is not None else 0.0
        turn = self.turns.seconds if self.turns.samples else running
        left = max(0.0, turn - running) if self._holder is not None else 0.0
        return retry_delay(left + turn * len(self._waiting))

    def moved(self) -> asyncio.Future[None]:
        """Resolves when positions may have changed (a request joined or left); shared by
        every waiter, so wait on it (asyncio.wait) rather than cancel it."""
        if self._moved is None:
            self._moved = asyncio.get_running_loop().create_future()
        return self._moved

    def _grant(self, ticket: Ticket) -> None:
        self._holder = ticket
        ticket.started = time.monotonic()
        ticket.granted.set_result(None)

    def _changed(self) -> None:
        if self._moved is not None:
            if not self._moved.done():
                self._moved.set_result(None)
            self._moved = None
        if self._on_change is not None:
            self._on_change()

    def position(self, ticket: Ticket) -> int:
        """How many requests are ahead of this one (0: next), counting the running one."""
        if ticket is self._holder:
            return 0
        return sum(1 for t in self._waiting if t < ticket) + (1 if self._holder else 0)

    def leave(self, ticket: Ticket) -> None:
        """Give the place back: after the turn, or when a waiting client goes away."""
        if ticket is self._holder:
            self._holder = None
            self.turns.add(time.monotonic() - ticket.started)
            while self._waiting:
                nxt = heapq.heappop(self._waiting)
                if not nxt.granted.done():
                    self._grant(nxt)
                    break
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
            heapq.heapify(self._waiting)
            ticket.granted.cancel()
        self._changed()
