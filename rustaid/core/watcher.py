"""Notices new, replaced and removed model files within a second (inotify through
watchfiles; polling when that is unavailable) and asks the daemon to rescan."""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Awaitable, Callable
from pathlib import Path

log = logging.getLogger(__name__)

POLL_INTERVAL_S = 1.0


class FolderWatcher:
    def __init__(self, folders: list[Path], on_change: Callable[[], Awaitable[None]]) -> None:
        self.folders = folders
        self.on_change = on_change
        self._task: asyncio.Task[None] | None = None
        self.mode = "stopped"

    def start(self) -> None:
        self._task = asyncio.ensure_future(self._run())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        self.mode = "stopped"

    async def _run(self) -> None:
        try:
            await self._watch()
        except asyncio.CancelledError:
            raise
        except Exception as e:  # no inotify (limits, unsupported fs): poll instead
            log.warning("file watching unavailable (%s); polling every %.0f s", e, POLL_INTERVAL_S)
        self.mode = "polling"
        while True:
            await asyncio.sleep(POLL_INTERVAL_S)
            await self.on_change()

    async def _watch(self) -> None:
        from watchfiles import awatch

        existing = [str(f) for f in self.folders if f.is_dir()]
        self.mode = "inotify"
        stop = asyncio.Event()
        async for _changes in awatch(*existing, debounce=100, step=250, stop_event=stop):
            await self.on_change()
