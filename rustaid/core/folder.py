"""The models folder as the edges see it: rescanned after a pull or a delete.

The daemon implements it (it owns the scan lock, the watcher and the engine's reaction
to changed files); gRPC and HTTP depend on this protocol only."""

from __future__ import annotations

from typing import Protocol

from rustaid.core.registry import ModelEntry


class ModelFolder(Protocol):
    async def rescan_async(self) -> None:
        """Rescan the models folder and models.toml (off the event loop)."""
        ...

    async def register_pulled(self, file_name: str) -> ModelEntry | None:
        """The registry's entry for a file a pull just placed in the models folder."""
        ...
