"""ModelQueue: one request at a time per model, interactive first, FIFO within a priority."""

from __future__ import annotations

import asyncio

import pytest

from rustaid.core.scheduler import ModelQueue, Priority
from rustaid.errors import ResourceExhausted


async def test_order_positions_and_leaving() -> None:
    q = ModelQueue("m", max_waiting=10)
    running = q.join(Priority.INTERACTIVE)
    assert running.granted.done()
    bg = q.join(Priority.BACKGROUND)
    i1 = q.join(Priority.INTERACTIVE)
    i2 = q.join(Priority.INTERACTIVE)
    assert (q.position(i1), q.position(i2), q.position(bg)) == (1, 2, 3)
    q.leave(i1)  # a waiting client gives up: the ones behind move up
    assert i1.granted.cancelled()
    assert (q.position(i2), q.position(bg)) == (1, 2)
    q.leave(running)
    assert i2.granted.done() and not bg.granted.done()
    q.leave(i2)
    assert bg.granted.done()
    q.leave(bg)
    assert not q.busy
    again = q.join(Priority.BACKGROUND)
    assert again.granted.done()
    await asyncio.sleep(0)


async def test_full_queue_is_resource_exhausted() -> None:
    q = ModelQueue("m", max_waiting=2)
    q.join(Priority.INTERACTIVE)
    q.join(Priority.INTERACTIVE)
    q.join(Priority.INTERACTIVE)
    with pytest.raises(ResourceExhausted, match="limit 2"):
        q.join(Priority.INTERACTIVE)
