"""A pull as an async stream of its events: the blocking pull runs in a worker thread,
its progress reaches the event loop through a queue, and a consumer that stops reading
(a client gone) cancels it within one chunk. Every edge (gRPC, HTTP) uses this."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator

from rustaid.pull.puller import Puller, PullEvent


async def pull_events(
    puller: Puller,
    reference: str,
    *,
    name: str = "",
    revision: str = "",
    sha256: str = "",
    force: bool = False,
) -> AsyncIterator[PullEvent]:
    """The pull's events, ending with its `done` event; its error is raised here."""
    loop = asyncio.get_running_loop()
    events: asyncio.Queue[PullEvent | BaseException] = asyncio.Queue()
    cancel = threading.Event()

    def report(event: PullEvent) -> None:
        loop.call_soon_threadsafe(events.put_nowait, event)

    def pull() -> None:
        try:
            puller.pull(
                reference,
                name=name,
                revision=revision,
                sha256=sha256,
                force=force,
                report=report,
                cancel=cancel,
            )
        except BaseException as e:  # handed to the stream, raised there
            loop.call_soon_threadsafe(events.put_nowait, e)

    worker = asyncio.ensure_future(asyncio.to_thread(pull))
    try:
        while True:
            item = await events.get()
            if isinstance(item, BaseException):
                raise item
            yield item
            if item.stage == "done":
                return
    finally:
        cancel.set()
        await asyncio.shield(worker)
