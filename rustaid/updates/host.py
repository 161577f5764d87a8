"""What the update subsystem uses of the daemon it updates (the daemon implements it).

A protocol, not the Daemon class, so that updates/ does not depend on the composition
root: it reads the settings in force, asks the engine and the plugin manager what is in
use, and has the models folder rescanned after a switch."""

from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

if TYPE_CHECKING:
    from rustaid.config import Settings
    from rustaid.core.engine import Engine
    from rustaid.core.registry import ModelRegistry
    from rustaid.plugins import PluginManager


class UpdateHost(Protocol):
    @property
    def settings(self) -> Settings: ...

    @property
    def engine(self) -> Engine: ...

    @property
    def registry(self) -> ModelRegistry: ...

    @property
    def plugins(self) -> PluginManager: ...

    async def rescan_async(self) -> None: ...
