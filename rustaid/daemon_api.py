"""What plugins receive in `startup(daemon)` and `shutdown(daemon)`: `DaemonAPI`.

A small, typed and versioned view of the running daemon, the way pytest hands its
plugins a `Config`: plugins depend on this protocol, never on the `Daemon` class and
its subsystems, which change from release to release.

Stability: `API_VERSION` counts incompatible changes. Within one version, members are
only added, never renamed, removed or given another meaning; a plugin that needs a
member added later checks `daemon.api_version` first.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Protocol, runtime_checkable

from rustaid import __version__
from rustaid.config import Settings
from rustaid.core.events import EventBus
from rustaid.core.generation_types import RequestRecord
from rustaid.core.registry import ModelEntry, ModelEvent

API_VERSION = 1


@runtime_checkable
class DaemonAPI(Protocol):
    """The daemon as a plugin sees it (version 1).

    Hooks run on the event loop thread at start-up and stop, and in a worker thread
    for LoadPlugin/UnloadPlugin/ReloadPlugin. The callbacks registered below run on the
    event loop, when the event happens. Keep both short and non-blocking."""

    @property
    def api_version(self) -> int:
        """`API_VERSION` of the daemon the plugin runs in."""
        ...

    @property
    def version(self) -> str:
        """The daemon's release, e.g. "0.9.0"."""
        ...

    @property
    def settings(self) -> Settings:
        """The settings in force now (a SIGHUP reload may replace them; read them when
        needed rather than keeping a copy). Plugin sections of rustaid.toml are in
        `settings.extra`."""
        ...

    @property
    def data_dir(self) -> Path:
        """The daemon's data folder (models/, plugins/, config/ ...)."""
        ...

    def models(self) -> list[ModelEntry]:
        """Every model the daemon knows, with its state (loaded, available ...)."""
        ...

    def on_model_event(self, callback: Callable[[ModelEvent], None]) -> Callable[[], None]:
        """Call `callback` on every model event (added, changed, removed, loaded,
        unloaded with its reason, failed); returns the function that stops it. Stop it
        in `shutdown`."""
        ...

    def on_request(self, callback: Callable[[RequestRecord], None]) -> Callable[[], None]:
        """Call `callback` when a generation ends (its figures, or `failed`); returns
        the function that stops it. Stop it in `shutdown`."""
        ...


class PluginHost:
    """The daemon's `DaemonAPI`, built by the composition root from the parts it
    exposes. The parts are read through callables, so the host can be handed to the
    plugin manager before the registry and engine exist."""

    def __init__(
        self,
        settings: Callable[[], Settings],
        models: Callable[[], list[ModelEntry]],
        model_events: Callable[[], EventBus[ModelEvent]],
        requests: Callable[[], EventBus[RequestRecord]],
    ) -> None:
        self._settings = settings
        self._models = models
        self._model_events = model_events
        self._requests = requests

    @property
    def api_version(self) -> int:
        return API_VERSION

    @property
    def version(self) -> str:
        return __version__

    @property
    def settings(self) -> Settings:
        return self._settings()

    @property
    def data_dir(self) -> Path:
        return self._settings().data_dir

    def models(self) -> list[ModelEntry]:
        return self._models()

    def on_model_event(self, callback: Callable[[ModelEvent], None]) -> Callable[[], None]:
        return self._model_events().listen(callback)

    def on_request(self, callback: Callable[[RequestRecord], None]) -> Callable[[], None]:
        return self._requests().listen(callback)
