"""A small asyncio publish/subscribe bus for daemon events (model changes, ...)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Generic, TypeVar

T = TypeVar("T")


class EventBus(Generic[T]):
    """Fan-out to subscribers; a slow subscriber drops its oldest events rather than
    growing without bound or blocking the publisher."""

    def __init__(self, maxsize: int = 256) -> None:
        self._subscribers: set[asyncio.Queue[T]] = set()
        self._maxsize = maxsize

    def publish(self, event: T) -> None:
        for q in list(self._subscribers):
            if q.full():
                q.get_nowait()
            q.put_nowait(event)

    @asynccontextmanager
    async def subscribe(self) -> AsyncIterator[asyncio.Queue[T]]:
        q: asyncio.Queue[T] = asyncio.Queue(self._maxsize)
        self._subscribers.add(q)
        try:
            yield q
        finally:
            self._subscribers.discard(q)
