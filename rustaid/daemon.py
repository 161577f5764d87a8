"""The daemon and composition root: builds every subsystem, hands each adapter and
subsystem the typed parts it uses (docs/architecture.md, "Layers, the composition root
and the seams"), and runs start-up -> serve -> shutdown. Nothing imports this module
but the entry points."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import signal
import sys
import time
from collections.abc import Coroutine
from typing import TYPE_CHECKING, Any

import grpc

from rustaid import __version__
from rustaid.auth.manager import Auth
from rustaid.config import Section, Settings, SettingsSource, load_settings
from rustaid.core.engine import Engine
from rustaid.core.registry import ModelEntry, ModelEvent, ModelEventType, ModelRegistry
from rustaid.core.watcher import FolderWatcher
from rustaid.daemon_api import PluginHost
from rustaid.dbus.parts import DBusParts
from rustaid.dbus.service import DBusService, dbus_config
from rustaid.errors import RustaidError
from rustaid.memory import tune_allocator
from rustaid.plugins import PluginManager
from rustaid.power.config import power_config
from rustaid.power.manager import ResourceManager
from rustaid.pull.puller import Puller
from rustaid.rag.config import rag_config
from rustaid.rag.manager import Rag
from rustaid.sdnotify import Notifier
from rustaid.sockets import remove_sockets
from rustaid.tools.config import ToolsConfig
from rustaid.tools.host import DaemonToolHost
from rustaid.tools.nlu import Nlu
from rustaid.tools.registry import ToolRegistry, tool_plugins
from rustaid.updates.config import load_config
from rustaid.updates.gate import gate_from_config, state_from_snapshot
from rustaid.updates.manager import UpdateManager

if TYPE_CHECKING:
    from rustaid.http.server import HttpFrontEnd
    from rustaid.observability.prometheus import PrometheusExporter

log = logging.getLogger(__name__)
# How often a thread running Python code offers the interpreter lock to others.
SWITCH_INTERVAL_S = 0.001


# Every [section] of rustaid.toml the daemon's subsystems read: checked whenever settings
# are accepted (start, reload). Live sections are read again from the current settings;
# the others configure subsystems that start once, so a change needs a restart.
SECTIONS = (
    Section("rag", rag_config, live=True),
    Section("tools", ToolsConfig.from_settings, live=True),
    Section("power", lambda s: power_config(s.extra.get("power")), live=True),
    Section("updates", lambda s: load_config(s.extra.get("updates"), s.config_dir), live=True),
    Section("dbus", dbus_config, live=False),
)


class Daemon:
    def __init__(self, settings: Settings, notifier: Notifier | None = None) -> None:
        # The one settings source: subsystems read the current settings through it (or
        # listen to it); a reload replaces them there and nowhere else.
        self.config = SettingsSource(settings, SECTIONS)
        self.notifier = notifier or Notifier()
        # What plugins see of the daemon in startup()/shutdown(): a stable, typed API.
        self.plugin_host = PluginHost(
            settings=self.config,
            models=lambda: self.registry.list(),
            model_events=lambda: self.registry.events,
            requests=lambda: self.engine.requests,
        )
        self.plugins = PluginManager(
            settings, daemon=self.plugin_host, on_change=self._plugins_changed
        )
        # Engines declare the model files they serve; the registry knows no format.
        self.registry = ModelRegistry(
            settings.models_dir,
            llm_engines=self.plugins.llm_providers,
            embedding_engines=self.plugins.embedding_providers,
            models_toml=settings.config_dir / "models.toml",
        )
        self.engine = Engine(settings, self.registry, self.plugins.llm_providers)
        self.config.listen(self._settings_replaced)
        # `models pull`: downloads into the models folder, renamed into place when checked.
        self.puller = Puller(settings.models_dir)
        # Embeddings, collections and retrieval; engines and stores load on first use.
        self.rag = Rag(
            self.config,
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
        self.config.listen(self.resources.settings_replaced)
        self.resources.monitor.add_listener(lambda _old, _new: self._device_changed())
        self.engine.requests.listen(self.resources.metrics.observe)
        self.engine.energy_meter = self.resources.request_energy
        # OTA updates of models and plugins; refused on a low battery or a hot device.
        self.updates = UpdateManager(self)
        self.updates.refresh_device = self.resources.fresh_snapshot
        self.updates.power_ok = gate_from_config(
            lambda: state_from_snapshot(self.resources.snapshot), lambda: self.updates.config
        )
        self.config.listen(self.updates.settings_replaced)
        # Tools (plugins' and plugins/*.wasm), function calling, intents and entities.
        self.tools = ToolRegistry(
            settings=self.config,
            plugin_tools=self.plugins.tools,
            plugin_names=lambda: tool_plugins(self.plugins.list()),
            # What every tool (built-in or a plugin's) sees of the daemon: a typed ToolHost.
            host=DaemonToolHost(
                settings=self.config,
                snapshot=lambda: self.resources.snapshot,
                models=self.registry.list,
                plugins=self.plugins.list,
                search=self.rag.search,
            ),
        )
        self.nlu = Nlu(self.engine, self.config)
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
        self.dbus = DBusService(
            DBusParts(
                settings=self.config,
                engine=self.engine,
                rag=self.rag,
                resources=self.resources,
                updates=self.updates,
            )
        )
        # Who may call what over gRPC: peer credentials, TLS, tokens (rustaid/auth).
        self.auth = Auth(self.config)
        # Prometheus metrics on loopback, when `metrics_listen` is set (before gRPC).
        self.prometheus: PrometheusExporter | None = None
        # OpenAI- and Ollama-compatible HTTP routes, when `http_listen` is set.
        self.http: HttpFrontEnd | None = None

    @property
    def settings(self) -> Settings:
        """The settings in force (`self.config()`)."""
        return self.config()

    def _settings_replaced(self, _old: Settings, new: Settings) -> None:
        self.engine.settings = new  # the engine reads its limits and budget from here
        logging.getLogger().setLevel(new.log_level.upper())

    def _device_changed(self) -> None:
        # Running generations take the new caps; a deferred update starts if it may now.
        self.engine.device_changed()
        self.updates.device_changed()

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

    async def register_pulled(self, file_name: str) -> ModelEntry | None:
        """The registry's entry for a file a pull just placed in the models folder."""
        await self.rescan_async()
        path = self.settings.models_dir / file_name
        return next((e for e in self.registry.list() if e.path == path), None)

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

            self.prometheus = PrometheusExporter(
                self.settings, self.engine, self.resources, self.updates
            )
            await self.prometheus.start()
        from rustaid.services.server import (
            GrpcParts,
            build_server,
            set_generate_serving,
            set_serving,
        )

        self.server, self._health = build_server(
            GrpcParts(
                settings=self.config,
                engine=self.engine,
                plugins=self.plugins,
                rag=self.rag,
                tools=self.tools,
                nlu=self.nlu,
                updates=self.updates,
                resources=self.resources,
                puller=self.puller,
                folder=self,
                auth=self.auth,
                interceptors=[self.prometheus.interceptor] if self.prometheus else [],
            )
        )
        await self.server.start()
        await self.auth.start()  # Unix socket relays accept once gRPC listens
        if self.settings.http_listen:  # opt-in: Starlette and uvicorn are imported only here
            from rustaid.http.parts import HttpParts
            from rustaid.http.server import HttpFrontEnd

            self.http = HttpFrontEnd(
                HttpParts(
                    settings=self.config,
                    engine=self.engine,
                    rag=self.rag,
                    resources=self.resources,
                    puller=self.puller,
                    folder=self,
                    auth=self.auth,
                )
            )
            await self.http.start()
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
        addresses = [*self.settings.listen, *(self.http.bound if self.http else ())]
        status = f"serving {n_models} model{'s' * (n_models != 1)} on {', '.join(addresses)}"
        self.notifier.notify("READY=1", f"STATUS={status}", f"MAINPID={os.getpid()}")
        log.info(
            "rustaid %s ready in %.0f ms: %s",
            __version__,
            (time.perf_counter() - t0) * 1000,
            status,
        )
        # D-Bus (UPower, power-profiles-daemon), udev, PSI: connected after READY=1.
        await self.resources.start_event_sources()
        # What start-up created lives as long as the daemon: keep it out of the garbage
        # collector's full passes, which hold the interpreter lock (the loop) meanwhile.
        gc.collect()
        gc.freeze()

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
            later = self.config.replace(fresh)
        except RustaidError as e:
            log.error("configuration not reloaded, keeping the previous one: %s", e)
        else:
            if later:
                log.warning(
                    "configuration reloaded; these changes apply after a restart "
                    "(systemctl restart rustaid): %s", ", ".join(later),
                )  # fmt: skip
            else:
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
        # HTTP too: no new connections; running requests get the grace period (the
        # engine then stops what still runs, and the streams tell their clients).
        http_drained = asyncio.ensure_future(
            self.http.drain(grace) if self.http else asyncio.sleep(0)
        )
        await self.resources.stop()
        if self.server is not None:
            from rustaid.services.server import set_serving

            await set_serving(self._health, False)
            await self.server.stop(grace)
            remove_sockets(self.settings.listen)
        await self.auth.stop()
        if self.prometheus is not None:
            await self.prometheus.stop()
        await dbus_stopped
        await http_drained  # before the subsystems its requests use stop
        await self.watcher.stop()
        if self._recheck is not None:
            self._recheck.cancel()
        for task in list(self._tasks):
            task.cancel()
        await self.updates.stop()
        await self.rag.stop()
        self.tools.stop()
        await self.engine.stop()
        if self.http is not None:
            await self.http.stop()
        self._loop = None  # plugin shutdown must not trigger rescans any more
        self.plugins.stop()
        log.info("stopped")

    async def run(self) -> None:
        """Serve until SIGTERM/SIGINT; SIGHUP reloads."""
        # Worker threads doing Python work (schemas, parsing) hand the interpreter lock
        # back to the event loop within this long (Python's default is 5 ms, which lets a
        # busy thread stretch a health check past 100 ms).
        sys.setswitchinterval(SWITCH_INTERVAL_S)
        tune_allocator()  # before the worker threads make their malloc arenas
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
