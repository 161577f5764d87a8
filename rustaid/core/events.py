"""A small asyncio publish/subscribe bus for daemon events (model changes, ...)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from enum import StrEnum
from typing import Generic, TypeVar

T = TypeVar("T")

log = logging.getLogger(__name__)


class EventBus(Generic[T]):
    """Fan-out to subscribers; a slow subscriber drops its oldest events rather than
    growing without bound or blocking the publisher.

    Two kinds of subscriber: `subscribe()` gives a queue to read on the event loop (a
    stream to a client may lag and lose old events); `listen(callback)` calls back at
    once, in the publisher's thread, and never loses one (counters that must be exact).
    A listener that raises is logged and stays subscribed; the publisher never sees it.
    """

    def __init__(self, maxsize: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[T]] = set()
        self._listeners: list[Callable[[T], None]] = []
        self._maxsize = maxsize

    def publish(self, event: T) -> None:
        for listener in list(self._listeners):
            try:
                listener(event)
            except Exception:
                log.exception("an event listener failed on %r", event)
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    def listen(self, callback: Callable[[T], None]) -> Callable[[], None]:
        """Call `callback(event)` on every publish; returns the function that stops it."""
        self._listeners.append(callback)

        def stop() -> None:
            if callback in self._listeners:
                self._listeners.remove(callback)

        return stop

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[T]]:
        q: asyncio.Queue[T] = asyncio.Queue(self._maxsize)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)


class UnloadReason(StrEnum):
    """Why a model was unloaded (`ModelEvent.reason` of an UNLOADED event)."""

    REQUESTED = "requested"  # UnloadModel, or a reload with other load options
    IDLE = "idle"  # its keep-alive expired
    EVICTED = "evicted"  # the memory budget needed room for another model
    MEMORY_PRESSURE = "memory_pressure"  # the device ran critically short of memory
    ENGINE_GONE = "engine_gone"  # its engine plugin was unloaded
    STOPPING = "stopping"  # the daemon stops
