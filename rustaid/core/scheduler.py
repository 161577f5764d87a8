"""Per-model admission: a loaded model serves up to `slots` requests at a time (1 unless
its engine batches several sequences); waiting requests are served interactive before
background, first come first served within a priority. An interactive request that
finds every slot taken may pause a background one that can be paused (its engine keeps
its state); the paused request resumes before the background requests that came after
it. An exclusive turn (unloading) waits until no request runs, and nothing starts
before it. An eighth of the waiting places is kept for administrators (and the
daemon's own work), so ordinary callers filling a queue cannot lock root out of a
model."""

from __future__ import annotations

import asyncio
import heapq
import itertools
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from enum import IntEnum

from rustaid.core import caller as caller_mod
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
    # Runs alone (no other request at the same time).
    exclusive: bool = field(default=False, compare=False)
    # Set by the holder when its work can be paused and resumed: called with True to
    # pause (its slot goes to an interactive request), False to resume.
    on_pause: Callable[[bool], None] | None = field(default=None, compare=False)
    paused: bool = field(default=False, compare=False)


class ModelQueue:
    def __init__(
        self,
        model_id: str,
        max_waiting: int,
        on_change: Callable[[], None] | None = None,
        turns: RecentDuration | None = None,
        slots: int = 1,
    ) -> None:
        self.model_id = model_id
        self.max_waiting = max_waiting
        self.slots = max(1, slots)
        self._holders: list[Ticket] = []
        self._paused: list[Ticket] = []
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
        """A request runs (or is paused) on the model."""
        return bool(self._holders or self._paused)

    @property
    def running(self) -> int:
        """Requests running on the model now (paused ones not counted)."""
        return len(self._holders)

    @property
    def waiting(self) -> int:
        return len(self._waiting)

    def _full(self) -> bool:
        return len(self._holders) >= self.slots or any(t.exclusive for t in self._holders)

    def _may_start(self, ticket: Ticket) -> bool:
        if ticket.exclusive:
            return not self._holders
        return not self._full()

    def join(self, priority: int, exclusive: bool = False) -> Ticket:
        """Take a place; the ticket's `granted` future resolves when it is this one's turn.
        An exclusive ticket runs alone: it waits for the running requests to end."""
        must_wait = self._full() or bool(self._waiting) or (exclusive and self.busy)
        limit = self.max_waiting
        if not caller_mod.current().admin:
            limit -= self.max_waiting // 8  # kept for administrators
        if must_wait and len(self._waiting) >= limit:
            kept = (
                ""
                if limit == self.max_waiting
                else f", {self.max_waiting - limit} kept for administrators"
            )
            raise ResourceExhausted(
                f"model {self.model_id!r} has {len(self._waiting)} requests waiting "
                f"(limit {self.max_waiting}{kept}); retry later",
                reason="QUEUE_FULL",
                retry_after_s=self.drain_estimate(),
            )
        granted = asyncio.get_running_loop().create_future()
        ticket = Ticket(priority, next(self._seq), granted, exclusive=exclusive)
        if not must_wait:
            self._grant(ticket)
        else:
            heapq.heappush(self._waiting, ticket)
            self._preempt()
        self._changed()
        return ticket

    def drain_estimate(self) -> float:
        """Seconds until the requests waiting now are served, as a bounded retry delay:
        what is left of the running turn plus one recent turn per waiting request. Before
        any turn has finished, the running turn's age stands in for a turn's length."""
        now = time.monotonic()
        oldest = min((t.started for t in self._holders), default=now)
        running = now - oldest
        turn = self.turns.seconds if self.turns.samples else running
        left = max(0.0, turn - running) if self._holders else 0.0
        return retry_delay(left + turn * len(self._waiting) / self.slots)

    def moved(self) -> asyncio.Future[None]:
        """Resolves when positions may have changed (a request joined or left); shared by
        every waiter, so wait on it (asyncio.wait) rather than cancel it."""
        if self._moved is None:
            self._moved = asyncio.get_running_loop().create_future()
        return self._moved

    def _grant(self, ticket: Ticket) -> None:
        self._holders.append(ticket)
        ticket.started = time.monotonic()
        ticket.granted.set_result(None)

    def _preempt(self) -> None:
        """Interactive requests waiting while background ones hold every slot: pause
        background holders that can be paused (the latest first) and let them in."""
        while self._waiting and self._full():
            first = self._waiting[0]
            if first.exclusive or first.priority >= Priority.BACKGROUND:
                return
            victims = [
                t
                for t in self._holders
                if t.priority >= Priority.BACKGROUND and t.on_pause is not None
            ]
            if not victims:
                return
            victim = max(victims, key=lambda t: t.seq)
            self._holders.remove(victim)
            victim.paused = True
            self._paused.append(victim)
            assert victim.on_pause is not None
            victim.on_pause(True)
            heapq.heappop(self._waiting)
            if not first.granted.done():
                self._grant(first)

    def resize(self, slots: int) -> None:
        """Serve up to `slots` requests at once from now on (running ones go on)."""
        slots = max(1, slots)
        if slots != self.slots:
            self.slots = slots
            self._fill()
            self._changed()

    def pausable(self, ticket: Ticket, on_pause: Callable[[bool], None]) -> None:
        """The holder of `ticket` can be paused (see Ticket.on_pause)."""
        ticket.on_pause = on_pause
        self._preempt()
        self._changed()

    def _next(self) -> Ticket | None:
        """Who goes next: the first waiting request, or a paused one that came earlier."""
        while self._waiting and self._waiting[0].granted.done():
            heapq.heappop(self._waiting)  # cancelled
        head = self._waiting[0] if self._waiting else None
        paused = min(self._paused, default=None)
        if paused is not None and (head is None or paused < head):
            return paused
        return head

    def _fill(self) -> None:
        while (nxt := self._next()) is not None and self._may_start(nxt):
            if nxt.paused:
                self._paused.remove(nxt)
                nxt.paused = False
                self._holders.append(nxt)
                assert nxt.on_pause is not None
                nxt.on_pause(False)
            else:
                heapq.heappop(self._waiting)
                self._grant(nxt)

    def _changed(self) -> None:
        if self._moved is not None:
            if not self._moved.done():
                self._moved.set_result(None)
            self._moved = None
        if self._on_change is not None:
            self._on_change()

    def position(self, ticket: Ticket) -> int:
        """How many requests are ahead of this one (0: next), counting one running
        request when every slot is taken."""
        if ticket in self._holders:
            return 0
        ahead = sum(1 for t in self._waiting if t < ticket)
        ahead += sum(1 for t in self._paused if t < ticket and t is not ticket)
        return ahead + (1 if self._full() else 0)

    def leave(self, ticket: Ticket) -> None:
        """Give the place back: after the turn, or when a waiting client goes away."""
        if ticket in self._holders or ticket in self._paused:
            if ticket in self._holders:
                self._holders.remove(ticket)
            else:
                self._paused.remove(ticket)
            self.turns.add(time.monotonic() - ticket.started)
            self._fill()
        elif ticket in self._waiting:
            self._waiting.remove(ticket)
            heapq.heapify(self._waiting)
            ticket.granted.cancel()
            self._fill()  # an exclusive ticket that left may have held the others back
        self._changed()
