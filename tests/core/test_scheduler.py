"""ModelQueue: up to `slots` requests at a time per model, interactive first, FIFO within a
priority, background work paused for interactive requests, exclusive turns."""

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


async def test_slots_serve_several_at_once_and_positions_count_the_full_model() -> None:
    q = ModelQueue("m", max_waiting=10, slots=2)
    a, b = q.join(Priority.INTERACTIVE), q.join(Priority.BACKGROUND)
    assert a.granted.done() and b.granted.done() and q.running == 2
    c, d = q.join(Priority.BACKGROUND), q.join(Priority.INTERACTIVE)
    assert not c.granted.done() and (q.position(d), q.position(c)) == (1, 2)
    q.leave(a)  # the interactive one goes first
    assert d.granted.done() and not c.granted.done() and q.position(c) == 1
    q.leave(b)
    assert c.granted.done()


async def test_an_exclusive_turn_waits_for_all_and_runs_alone() -> None:
    q = ModelQueue("m", max_waiting=10, slots=2)
    a = q.join(Priority.INTERACTIVE)
    unload = q.join(Priority.INTERACTIVE - 1, exclusive=True)
    later = q.join(Priority.INTERACTIVE)  # a slot is free, but the exclusive one is first
    assert not unload.granted.done() and not later.granted.done()
    q.leave(a)
    assert unload.granted.done() and not later.granted.done()
    q.leave(unload)
    assert later.granted.done()


async def test_an_interactive_request_pauses_a_background_one_which_resumes_first() -> None:
    q = ModelQueue("m", max_waiting=10, slots=1)
    calls: list[bool] = []
    bg = q.join(Priority.BACKGROUND)
    q.pausable(bg, calls.append)
    later_bg = q.join(Priority.BACKGROUND)
    interactive = q.join(Priority.INTERACTIVE)
    assert interactive.granted.done() and bg.paused and calls == [True]
    assert q.busy and q.running == 1 and q.position(later_bg) == 2
    q.leave(interactive)
    assert calls == [True, False] and not bg.paused and not later_bg.granted.done()
    q.leave(bg)
    assert later_bg.granted.done()


async def test_a_request_that_cannot_be_paused_is_waited_for() -> None:
    q = ModelQueue("m", max_waiting=10, slots=1)
    bg = q.join(Priority.BACKGROUND)  # never declared pausable
    interactive = q.join(Priority.INTERACTIVE)
    assert not interactive.granted.done() and q.position(interactive) == 1
    q.leave(bg)
    assert interactive.granted.done()


async def test_fewer_slots_take_effect_for_the_next_requests() -> None:
    q = ModelQueue("m", max_waiting=10, slots=3)
    a, b = q.join(Priority.INTERACTIVE), q.join(Priority.INTERACTIVE)
    q.resize(1)
    c = q.join(Priority.INTERACTIVE)
    assert a.granted.done() and b.granted.done() and not c.granted.done()
    q.leave(a)
    assert not c.granted.done()  # still one over the new size
    q.leave(b)
    assert c.granted.done()
    d = q.join(Priority.INTERACTIVE)
    q.resize(2)  # room again: the waiting one starts
    assert d.granted.done()
