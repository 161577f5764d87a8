"""The daemon: owns every subsystem, runs start-up -> serve -> shutdown."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import signal
import time
from collections.abc import Coroutine
from pathlib import Path
from typing import TYPE_CHECKING, Any

import grpc

from rustaid import __version__
from rustaid.auth.manager import Auth
from rustaid.config import Settings, load_settings
from rustaid.core.engine import Engine
from rustaid.core.registry import ModelEvent, ModelEventType, ModelRegistry
from rustaid.core.watcher import FolderWatcher
from rustaid.dbus.service import DBusService
from rustaid.errors import RustaidError
from rustaid.plugins import PluginManager
from rustaid.power.manager import ResourceManager
from rustaid.rag.manager import Rag
from rustaid.sdnotify import Notifier
from rustaid.tools.nlu import Nlu
from rustaid.tools.registry import ToolRegistry
from rustaid.updates.gate import gate_from_state, state_from_snapshot
from rustaid.updates.manager import UpdateManager

if TYPE_CHECKING:
    from rustaid.observability.prometheus import PrometheusExporter

log = logging.getLogger(__name__)


class Daemon:
    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        self.settings = settings
        self.notifier = notifier or Notifier()
        self.plugins = PluginManager(settings, daemon=self, on_change=self._plugins_changed)
        self.registry = ModelRegistry(
            settings.models_dir,
            provider_for=self._provider_for,
            models_toml=settings.config_dir / "models.toml",
            providers=lambda: self.engine.provider_names(),
        )
        self.engine = Engine(settings, self.registry, self.plugins.llm_providers)
        # Embeddings, collections and retrieval; engines and stores load on first use.
        self.rag = Rag(
            lambda: self.settings,
            self.registry,
            self.engine,
            self.plugins,
            power_profile=lambda: self.resources.monitor.active_profile,
        )
        # Device awareness: monitor, power profiles, inference policy, metrics.
        self.resources = ResourceManager(
            settings, models=self.registry, engine=self.engine, plugins=self.plugins
        )
        self.engine.policy = self.resources.policy
        self.engine.metrics = self.resources.metrics
        # OTA updates of models and plugins; refused on a low battery or a hot device.
        self.updates = UpdateManager(self)
        self.updates.power_ok = gate_from_state(
            lambda: state_from_snapshot(self.resources.snapshot),
            min_battery=self.updates.config.min_battery,
            max_thermal=self.updates.config.max_thermal,
        )
        # Tools (plugins' and plugins/*.wasm), function calling, intents and entities.
        self.tools = ToolRegistry.for_daemon(self)
        self.nlu = Nlu(self)
        self.watcher = FolderWatcher(
            [settings.models_dir, settings.config_dir], on_change=self.rescan_async
        )
        self._scan_lock = asyncio.Lock()
        self._recheck: asyncio.TimerHandle | None = None
        self._last_problems: set[str] = set()
        self.server: grpc.aio.Server | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        # The D-Bus API (org.rustai.Daemon1): started after gRPC, stopped before it.
        self.dbus = DBusService(self)
        # Who may call what over gRPC: peer credentials, TLS, tokens (rustaid/auth).
        self.auth = Auth(lambda: self.settings)
        # Prometheus metrics on loopback, when `metrics_listen` is set (before gRPC).
        self.prometheus: PrometheusExporter | None = None

    def _provider_for(self, path: Path) -> str:
        # Files under embeddings/ and nlu/ belong to embedding engines; every other model
        # file to a language-model engine (never to an embedding engine that also reads
        # GGUF, or an unloaded llama.cpp would leave its models "served" by it).
        top = path.relative_to(self.settings.models_dir).parts[0]
        if top in ("embeddings", "nlu"):
            return self.rag.provider_for(path)
        return self.engine.provider_for(path)

    def _plugins_changed(self) -> None:
        # Plugin changes may come from worker threads; providers decide which models work.
        if self._loop is not None:
            self._loop.call_soon_threadsafe(self._after_plugin_change)

    def _after_plugin_change(self) -> None:
        async def refresh() -> None:
            await self.rescan_async()
            await self.engine.unload_orphans()

        self._spawn(refresh())

    def _handle(self, events: list[ModelEvent]) -> None:
        for event in events:
            if event.type in (ModelEventType.REMOVED, ModelEventType.CHANGED):
                # Running requests finish on the old file; new ones load the new one.
                self.engine.forget(event.model.id)

    def _report(self, problems: list[str]) -> None:
        for problem in problems:
            if problem not in self._last_problems:
                log.warning("%s", problem)
        self._last_problems = set(problems)

    def rescan(self) -> None:
        """Blocking rescan of the models folder and models.toml (start-up)."""
        found, _, problems = self.registry.scan()
        self._report(problems)
        self._handle(self.registry.apply(found))

    async def rescan_async(self) -> None:
        """Rescan off the event loop; files still being written are looked at again."""
        async with self._scan_lock:
            found, recheck, problems = await asyncio.to_thread(self.registry.scan)
            self._report(problems)
            self._handle(self.registry.apply(found))
        if self._recheck is not None:
            self._recheck.cancel()
            self._recheck = None
        if recheck is not None and self._loop is not None:
            delay = max(0.05, recheck - time.time())
            self._recheck = self._loop.call_later(delay, lambda: self._spawn(self.rescan_async()))

    async def start(self) -> None:
        t0 = time.perf_counter()
        self._loop = asyncio.get_running_loop()
        self.settings.ensure_dirs()
        # Before plugins load and models are scanned: finish or undo an interrupted update.
        self.updates.recover()
        self.notifier.notify("STATUS=loading plugins")
        self.plugins.start()
        self.rescan()
        await self.tools.start()
        self.watcher.start()
        self.resources.start()
        if self.settings.metrics_listen:  # opt-in: prometheus_client is imported only here
            from rustaid.observability.prometheus import PrometheusExporter

            self.prometheus = PrometheusExporter(self)
            await self.prometheus.start()
        from rustaid.services.server import build_server, set_generate_serving, set_serving

        self.server, self._health = build_server(self)
        await self.server.start()
        await self.auth.start()  # Unix socket relays accept once gRPC listens
        await set_serving(self._health, True)
        # While critically hot, health says NOT_SERVING for GenerateService.
        self.resources.on_generate_serving(
            lambda serving: self._spawn(set_generate_serving(self._health, serving))
        )
        await self.dbus.start()
        await self.updates.start()
        interval = self.notifier.watchdog_interval()
        if interval:
            self._spawn(self._watchdog(interval))
        n_models = len(self.registry.list())
        status = (
            f"serving {n_models} model{'s' * (n_models != 1)} on {', '.join(self.settings.listen)}"
        )
        self.notifier.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        log.info(
            "rustaid %s ready in %.0f ms: %s",
            __version__,
            (time.perf_counter() - t0) * 1000,
            status,
        )
        # D-Bus (UPower, power-profiles-daemon), udev, PSI: connected after READY=1.
        await self.resources.start_event_sources()

    def _spawn(self, coro: Coroutine[Any, Any, None]) -> None:
        task = asyncio.ensure_future(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _watchdog(self, interval: float) -> None:
        # Pinged from the event loop: if the loop wedges, systemd restarts us.
        while True:
            self.notifier.notify("WATCHDOG=1")
            await asyncio.sleep(interval)

    def reload(self) -> None:
        """SIGHUP: re-read the configuration and rescan the models folder."""
        self.notifier.notify("RELOADING=1", f"MONOTONIC_USEC={time.monotonic_ns() // 1000}")
        try:
            fresh = load_settings(
                data_dir=self.settings.data_dir,
                system=self.settings.system,
                overrides={"listen": list(self.settings.listen)},
            )
        except RustaidError as e:
            log.error("configuration not reloaded, keeping the previous one: %s", e)
        else:
            self.settings = fresh
            self.engine.settings = fresh
            logging.getLogger().setLevel(fresh.log_level.upper())
            log.info("configuration reloaded")

        async def rescan_then_ready() -> None:
            await self.rescan_async()
            await self.tools.rescan()
            self.notifier.notify("READY=1", "STATUS=reloaded")

        self._spawn(rescan_then_ready())

    def request_stop(self) -> None:
        self._stop.set()

    async def stop(self) -> None:
        grace = self.settings.shutdown_grace_s
        self.notifier.notify("STOPPING=1", "STATUS=stopping")
        log.info("stopping: in-flight requests get %.0f s to finish", grace)
        # D-Bus stops taking calls first; its running calls get the same grace, in parallel.
        dbus_stopped = asyncio.ensure_future(self.dbus.stop(grace))
        await self.resources.stop()
        if self.server is not None:
            from rustaid.services.server import remove_sockets, set_serving

            await set_serving(self._health, False)
            await self.server.stop(grace)
            remove_sockets(self.settings.listen)
        await self.auth.stop()
        if self.prometheus is not None:
            await self.prometheus.stop()
        await dbus_stopped
        await self.watcher.stop()
        if self._recheck is not None:
            self._recheck.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.updates.stop()
        await self.rag.stop()
        self.tools.stop()
        await self.engine.stop()
        self._loop = None  # plugin shutdown must not trigger rescans any more
        self.plugins.stop()
        log.info("stopped")

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads."""
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, self.request_stop)
        loop.add_signal_handler(signal.SIGHUP, self.reload)
        try:
            await self.start()
            await self._stop.wait()
        finally:
            with contextlib.suppress(Exception):
                for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
                    loop.remove_signal_handler(sig)
            await self.stop()
