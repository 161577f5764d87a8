"""Per-model admission: a loaded model serves one request at a time; waiting requests
are served interactive before background, first come first served within a priority."""

from __future__ import annotations

import asyncio
import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

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


class ModelQueue:
    def __init__(
        self, model_id: str, max_waiting: int, on_change: Callable[[], None] | None = None
    ) -> None:
        self.model_id = model_id
        self.max_waiting = max_waiting
        self._holder: Ticket | None = None
        self._waiting: list[Ticket] = []
        self._seq = itertools.count()
        # Called after every join and leave (the engine publishes its activity from it).
        self._on_change = on_change

    @property
    def busy(self) -> bool:
        return self._holder is not None

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def join(self, priority: int) -> Ticket:
        """Take a place; the ticket's `granted` future resolves when it is this one's turn."""
        if len(self._waiting) >= self.max_waiting:
            raise ResourceExhausted(
                f"model {self.model_id!r} has {len(self._waiting)} requests waiting "
                f"(limit {self.max_waiting}); retry later",
                reason="QUEUE_FULL",
            )
        ticket = Ticket(priority, next(self._seq), asyncio.get_running_loop().create_future())
        if self._holder is None and not self._waiting:
            self._holder = ticket
            ticket.granted.set_result(None)
        else:
            heapq.heappush(self._waiting, ticket)
        if self._on_change is not None:
            self._on_change()
        return ticket

    def position(self, ticket: Ticket) -> int:
        """How many requests are ahead of this one (0: next), counting the running one."""
        if ticket is self._holder:
            return 0
        return sum(1 for t in self._waiting if t < ticket) + (1 if self._holder else 0)

    def leave(self, ticket: Ticket) -> None:
        """Give the place back: after the turn, or when a waiting client goes away."""
        if ticket is self._holder:
            self._holder = None
            while self._waiting:
                nxt = heapq.heappop(self._waiting)
                if not nxt.granted.done():
                    self._holder = nxt
                    nxt.granted.set_result(None)
                    break
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
            heapq.heapify(self._waiting)
            ticket.granted.cancel()
        if self._on_change is not None:
            self._on_change()
