"""The Prometheus endpoint: `GET /metrics` on a loopback address (`metrics_listen`).

Imported only when the setting is on. What each metric means: docs/metrics.md.

Where the figures come from, so a scrape costs the daemon's hot paths nothing:
- gRPC calls: an interceptor (rustaid.observability.grpc_metrics);
- generation histograms (time to first token, tokens/s): observed once per finished
  generation, by a sink placed in front of the engine's per-model metrics;
- per-model totals (requests, errors, tokens, energy): read from those metrics
  (rustaid.core.metrics) at scrape time;
- model loads, unloads and failures: the registry's model events; evictions: counted
  where the engine plans them;
- queues, running requests, loaded models, update phase: read on the event loop when a
  scrape arrives (plain values, microseconds);
- device state: the resource monitor's latest snapshot (an immutable object);
- update attempts: the update history file, re-read only when it changed.

The HTTP side is a small asyncio server: one request per connection, bounded header
size, read/write timeouts, a few clients at a time, and a Host check so that a web page
cannot read the metrics through DNS rebinding. The text is rendered in a worker thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import gzip
import logging
import time
from collections import Counter as Tally
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING

import psutil
from prometheus_client import CollectorRegistry, Gauge, Histogram, disable_created_metrics
from prometheus_client import Counter as PromCounter
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder, gzip_accepted
from prometheus_client.process_collector import ProcessCollector

from rustaid import __version__
from rustaid.addresses import METRICS_KEY, parse_metrics_listen
from rustaid.core.events import UnloadReason
from rustaid.core.registry import ModelEvent, ModelEventType
from rustaid.errors import InvalidArgument, Unavailable
from rustaid.observability.grpc_metrics import GrpcMetrics, MetricsInterceptor
from rustaid.power.snapshot import PressureLevel, ResourceSnapshot, ThermalState
from rustaid.updates.journal import Outcome

if TYPE_CHECKING:
    from rustaid.config import Settings
    from rustaid.core.engine import Engine
    from rustaid.core.generation_types import RequestRecord
    from rustaid.power.manager import ResourceManager
    from rustaid.updates.manager import UpdateManager

log = logging.getLogger(__name__)

PATH = "/metrics"
MAX_CLIENTS = 4
MAX_HEADER_BYTES = 8192
READ_TIMEOUT_S = 5.0
WRITE_TIMEOUT_S = 10.0

TTFT_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
TPS_BUCKETS = (1.0, 2.0, 5.0, 10.0, 20.0, 50.0, 100.0, 200.0, 500.0, 1000.0, 2000.0)

_THERMAL = {s: s.name.lower() for s in ThermalState}
_PRESSURE = {p: p.name.lower() for p in PressureLevel}
# Host headers a scraper on this machine sends (anything else: a page in a browser
# reaching us through a rebound DNS name).
_LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1", "[::1]"}


@dataclass(frozen=True)
class LoopState:
    """What belongs to the event loop, copied on it when a scrape arrives."""

    # (model id, waiting requests, generating now, estimated memory bytes)
    loaded: tuple[tuple[str, int, bool, int], ...] = ()
    running: int = 0
    # (kind, state) -> number of models in the registry
    registry: tuple[tuple[tuple[str, str], int], ...] = ()
    update_phase: str = ""


class _UpdateAttempts:
    """Update attempts finished since this process started, by outcome, from the
    history file (compaction drops old lines, never these counts)."""

    def __init__(self, updates: UpdateManager) -> None:
        self._history = updates.history
        self._since = psutil.Process().create_time()
        self._seen: set[str] = set()
        self._counts: Tally[str] = Tally()
        self._signature: tuple[int, int] | None = None

    def counts(self) -> Tally[str]:
        try:
            st = self._history.path.stat()
        except OSError:
            return self._counts
        signature = (st.st_mtime_ns, st.st_size)
        if signature != self._signature:
            self._signature = signature
            for r in self._history.records():
                if r.finished >= self._since and r.update_id not in self._seen:
                    self._seen.add(r.update_id)
                    self._counts[r.outcome] += 1
        return self._counts


def _flag(value: bool) -> float:
    return 1.0 if value else 0.0


class _DaemonCollector:
    """Reads the daemon's own bookkeeping at scrape time (in the rendering thread)."""

    def __init__(self, resources: ResourceManager, updates: UpdateManager) -> None:
        self.resources = resources
        self.state = LoopState()
        self.updates = _UpdateAttempts(updates)

    def describe(self) -> list[Metric]:
        return []  # no collect() at registration; names are checked by tests

    def collect(self) -> Iterator[Metric]:
        yield from self._generation()
        yield from self._engine(self.state)
        yield from self._updates(self.state)
        yield from self._device(self.resources.snapshot)

    def _generation(self) -> Iterator[Metric]:
        metrics = self.resources.metrics
        models = metrics.models()
        families = {
            "requests": CounterMetricFamily(
                "rustaid_generation_requests",
                "Generations finished or failed, by model (since start or ResetMetrics).",
                labels=["model"],
            ),
            "errors": CounterMetricFamily(
                "rustaid_generation_errors",
                "Generations that failed through the daemon's or the engine's fault, by "
                "model (bad requests are not counted).",
                labels=["model"],
            ),
            "prompt_tokens": CounterMetricFamily(
                "rustaid_generation_prompt_tokens",
                "Prompt tokens evaluated, by model.",
                labels=["model"],
            ),
            "completion_tokens": CounterMetricFamily(
                "rustaid_generation_completion_tokens",
                "Tokens generated, by model.",
                labels=["model"],
            ),
            "energy_joules": CounterMetricFamily(
                "rustaid_generation_energy_joules",
                "Energy measured during generations on battery (the whole device's draw "
                "times the generation time), by model.",
                labels=["model"],
            ),
            "measured_tokens": CounterMetricFamily(
                "rustaid_generation_energy_measured_tokens",
                "Tokens generated while energy was measured (on battery), by model.",
                labels=["model"],
            ),
        }
        per_token = GaugeMetricFamily(
            "rustaid_generation_energy_joules_per_token",
            "Measured energy per generated token, by model (only models measured on battery).",
            labels=["model"],
        )
        for m in models:
            label = [m.model_id]
            families["requests"].add_metric(label, m.requests)
            families["errors"].add_metric(label, m.errors)
            families["prompt_tokens"].add_metric(label, m.prompt_tokens)
            families["completion_tokens"].add_metric(label, m.completion_tokens)
            families["energy_joules"].add_metric(label, m.energy_joules)
            families["measured_tokens"].add_metric(label, m.measured_tokens)
            if m.measured_tokens:
                per_token.add_metric(label, m.joules_per_token)
        yield from families.values()
        yield per_token

    def _engine(self, state: LoopState) -> Iterator[Metric]:
        loaded = GaugeMetricFamily("rustaid_models_loaded", "Language models loaded now.")
        loaded.add_metric([], len(state.loaded))
        yield loaded
        running = GaugeMetricFamily(
            "rustaid_requests_running", "Requests generating (or tokenizing) right now."
        )
        running.add_metric([], state.running)
        yield running
        queue = GaugeMetricFamily(
            "rustaid_model_queue_depth",
            "Requests waiting for their turn on a loaded model.",
            labels=["model"],
        )
        memory = GaugeMetricFamily(
            "rustaid_model_memory_bytes",
            "Estimated memory of a loaded model (weights and context).",
            labels=["model"],
        )
        for model_id, waiting, _, memory_bytes in state.loaded:
            queue.add_metric([model_id], waiting)
            memory.add_metric([model_id], memory_bytes)
        yield queue
        yield memory
        registry = GaugeMetricFamily(
            "rustaid_registry_models",
            "Models the daemon knows, by kind (llm, embedding, nlu) and state.",
            labels=["kind", "state"],
        )
        for (kind, model_state), n in state.registry:
            registry.add_metric([kind, model_state], n)
        yield registry

    def _updates(self, state: LoopState) -> Iterator[Metric]:
        attempts = CounterMetricFamily(
            "rustaid_update_attempts",
            "Update attempts finished since the daemon started, by outcome.",
            labels=["outcome"],
        )
        counts = self.updates.counts()
        for outcome in Outcome:
            attempts.add_metric([outcome.value], counts.get(outcome.value, 0))
        yield attempts
        if state.update_phase:
            phase = GaugeMetricFamily(
                "rustaid_update_phase",
                "The update subsystem's current phase (1 for the current one).",
                labels=["phase"],
            )
            phase.add_metric([state.update_phase], 1)
            yield phase

    def _device(self, s: ResourceSnapshot) -> Iterator[Metric]:
        def gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
            g = GaugeMetricFamily(name, doc)
            g.add_metric([], value)
            return g

        def enum(name: str, doc: str, label: str, values: list[str], now: str) -> Metric:
            g = GaugeMetricFamily(name, doc, labels=[label])
            for v in values:
                g.add_metric([v], _flag(v == now))
            return g

        if s.time:
            yield gauge(
                "rustaid_device_snapshot_timestamp_seconds",
                "When the device state below was read (Unix time).",
                s.time,
            )
        yield enum(
            "rustaid_device_thermal_state",
            "Thermal state from trip points and firmware throttling (1 for the current one).",
            "state",
            list(_THERMAL.values()),
            _THERMAL[s.thermal.state],
        )
        temps = GaugeMetricFamily(
            "rustaid_device_temperature_celsius",
            "Temperature of each thermal zone.",
            labels=["zone", "type"],
        )
        for z in s.thermal.zones:
            temps.add_metric([z.name, z.type], z.temperature_c)
        yield temps
        yield gauge(
            "rustaid_device_throttled",
            "1 while the firmware caps frequency, throttles or reports under-voltage.",
            _flag(s.thermal.throttling.active),
        )
        p = s.power
        yield gauge(
            "rustaid_device_battery_present",
            "1 when the device has a battery.",
            _flag(p.battery_present),
        )
        yield gauge(
            "rustaid_device_on_battery", "1 while running on battery power.", _flag(p.on_battery)
        )
        if p.battery_present:
            yield gauge(
                "rustaid_device_battery_charge_ratio",
                "Battery charge, 0 to 1.",
                p.battery_percent / 100,
            )
        if p.power_draw_w > 0:
            yield gauge(
                "rustaid_device_power_draw_watts",
                "Power drawn from the battery (whole device).",
                p.power_draw_w,
            )
        yield enum(
            "rustaid_device_power_profile",
            "The daemon's active power profile (1 for the current one).",
            "profile",
            [str(v) for v in type(s.power_profile)],
            str(s.power_profile),
        )
        m = s.memory
        yield enum(
            "rustaid_device_memory_pressure",
            "Memory pressure level (1 for the current one).",
            "level",
            list(_PRESSURE.values()),
            _PRESSURE[m.pressure],
        )
        if m.total_bytes:
            yield gauge("rustaid_device_memory_total_bytes", "Memory installed.", m.total_bytes)
            yield gauge(
                "rustaid_device_memory_available_bytes",
                "Memory available without swapping.",
                m.available_bytes,
            )
        stall = GaugeMetricFamily(
            "rustaid_device_memory_stall_ratio",
            "Share of the last 10 s in which some / all tasks stalled on memory (PSI avg10).",
            labels=["kind"],
        )
        stall.add_metric(["some"], m.psi_some_avg10 / 100)
        stall.add_metric(["full"], m.psi_full_avg10 / 100)
        yield stall
        yield gauge(
            "rustaid_device_cpu_usage_ratio", "CPU busy share, 0 to 1.", s.cpu.usage_percent / 100
        )


class PrometheusExporter:
    """Owned by the daemon while `metrics_listen` is set: `start()` before the gRPC
    server is built (its interceptor is `self.interceptor`), `stop()` at shutdown."""

    def __init__(
        self,
        settings: Settings,
        engine: Engine,
        resources: ResourceManager,
        updates: UpdateManager,
    ) -> None:
        self.engine = engine
        self.updates = updates
        address = parse_metrics_listen(settings.metrics_listen)
        if address is None:
            raise InvalidArgument("metrics_listen is empty: metrics are off", field=METRICS_KEY)
        self.host, self.port = address
        # No *_created series: they double the output and Prometheus ignores them.
        disable_created_metrics()  # type: ignore[no-untyped-call]
        self.registry = CollectorRegistry()
        ProcessCollector(registry=self.registry)
        info = Gauge(
            "rustaid_build_info", "The daemon's version (always 1).", ["version"],
            registry=self.registry,
        )  # fmt: skip
        info.labels(__version__).set(1)
        self.grpc = GrpcMetrics(self.registry)
        self.interceptor = MetricsInterceptor(self.grpc)
        self.ttft = Histogram(
            "rustaid_generation_time_to_first_token_seconds",
            "Time from a generation request to its first token (queue and load included).",
            ["model"],
            buckets=TTFT_BUCKETS,
            registry=self.registry,
        )
        self.tps = Histogram(
            "rustaid_generation_tokens_per_second",
            "Generation speed of each finished generation (tokens after the first, per "
            "second of generation).",
            ["model"],
            buckets=TPS_BUCKETS,
            registry=self.registry,
        )
        model = ["model"]
        self.loads = PromCounter(
            "rustaid_model_loads", "Model loads that succeeded.", model, registry=self.registry
        )
        self.load_failures = PromCounter(
            "rustaid_model_load_failures", "Model loads that failed.", model,
            registry=self.registry,
        )  # fmt: skip
        self.unloads = PromCounter(
            "rustaid_model_unloads",
            "Models unloaded (idle keep-alive, UnloadModel, memory pressure, evictions).",
            model,
            registry=self.registry,
        )
        self.evictions = PromCounter(
            "rustaid_model_evictions",
            "Models unloaded to make room in the memory budget for another one.",
            model,
            registry=self.registry,
        )
        self.collector = _DaemonCollector(resources, updates)
        self.registry.register(self.collector)
        self._unsubscribe: list[Callable[[], None]] = []
        self._server: asyncio.Server | None = None
        self._clients = 0
        self._render_lock = asyncio.Lock()

    @property
    def address(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"{host}:{self.port}"

    # -- life cycle ------------------------------------------------------------------------

    async def start(self) -> None:
        try:
            self._server = await asyncio.start_server(
                self._serve, self.host, self.port, limit=MAX_HEADER_BYTES
            )
        except OSError as e:
            raise Unavailable(
                f"metrics_listen {self.address}: cannot listen ({e.strerror or e}); "
                'choose a free port or set it to "" to turn metrics off'
            ) from e
        self.port = self._server.sockets[0].getsockname()[1]
        # Listeners, not queues: a burst of events must not lose a count.
        self._unsubscribe = [
            self.engine.requests.listen(self._on_request),
            self.engine.registry.events.listen(self._on_model_event),
        ]
        log.info("Prometheus metrics on http://%s%s", self.address, PATH)

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(2):
                    await self._server.wait_closed()
            self._server = None
        for unsubscribe in self._unsubscribe:
            unsubscribe()
        self._unsubscribe = []

    def _on_request(self, record: RequestRecord) -> None:
        timings = record.timings
        if timings is None:
            return
        if timings.time_to_first_token_ms > 0:
            self.ttft.labels(record.model_id).observe(timings.time_to_first_token_ms / 1000)
        if timings.tokens_per_second > 0:
            self.tps.labels(record.model_id).observe(timings.tokens_per_second)

    def _on_model_event(self, event: ModelEvent) -> None:
        counter = {
            ModelEventType.LOADED: self.loads,
            ModelEventType.FAILED: self.load_failures,
            ModelEventType.UNLOADED: self.unloads,
        }.get(event.type)
        if counter is not None:
            counter.labels(event.model.id).inc()
        if event.type is ModelEventType.UNLOADED and event.reason == UnloadReason.EVICTED:
            self.evictions.labels(event.model.id).inc()

    # -- scrapes ---------------------------------------------------------------------------

    def loop_state(self) -> LoopState:
        """Copy the loop-owned figures (call on the event loop)."""
        engine = self.engine
        slots = engine.pool.slots()
        loaded = tuple(
            (model_id, s.queue.waiting, s.queue.busy, s.estimate_bytes)
            for model_id, s in sorted(slots.items())
        )
        tally = Tally((e.kind.value, e.state.value) for e in self.engine.registry.list())
        return LoopState(
            loaded=loaded,
            running=engine.running(),
            registry=tuple(sorted(tally.items())),
            update_phase=self.updates.status().phase.value,
        )

    def _render(self, state: LoopState, accept: str, gzip_ok: bool) -> tuple[bytes, str]:
        self.collector.state = state
        encoder, content_type = choose_encoder(accept)
        body = encoder(self.registry)
        return (gzip.compress(body) if gzip_ok else body), content_type

    async def scrape(self, accept: str = "", accept_encoding: str = "") -> tuple[bytes, str, bool]:
        """The exposition text (gzipped when accepted), its content type, and whether
        it is gzipped."""
        gzip_ok = gzip_accepted(accept_encoding)
        async with self._render_lock:
            state = self.loop_state()
            body, content_type = await asyncio.to_thread(self._render, state, accept, gzip_ok)
        return body, content_type, gzip_ok

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        if self._clients >= MAX_CLIENTS:
            writer.close()
            return
        self._clients += 1
        try:
            async with asyncio.timeout(READ_TIMEOUT_S):
                head = await reader.readuntil(b"\r\n\r\n")
            status, headers, body = await self._respond(head)
            lines = [f"HTTP/1.1 {status}", *(f"{k}: {v}" for k, v in headers)]
            lines += [f"Content-Length: {len(body)}", "Connection: close", "", ""]
            writer.write("\r\n".join(lines).encode("latin-1"))
            if not head.startswith(b"HEAD "):
                writer.write(body)
            async with asyncio.timeout(WRITE_TIMEOUT_S):
                await writer.drain()
        except (TimeoutError, asyncio.IncompleteReadError, asyncio.LimitOverrunError):
            pass
        except ConnectionError:
            pass
        except Exception:
            log.exception("metrics request failed")
        finally:
            self._clients -= 1
            writer.close()
            with contextlib.suppress(Exception):
                async with asyncio.timeout(WRITE_TIMEOUT_S):
                    await writer.wait_closed()

    async def _respond(self, head: bytes) -> tuple[str, list[tuple[str, str]], bytes]:
        text = head.decode("latin-1")
        request_line, *header_lines = text.split("\r\n")
        parts = request_line.split(" ")
        if len(parts) != 3 or not parts[2].startswith("HTTP/1."):
            return _plain("400 Bad Request", "malformed request line\n")
        method, target, _ = parts
        headers: dict[str, str] = {}
        for line in header_lines:
            name, sep, value = line.partition(":")
            if sep:
                headers[name.strip().lower()] = value.strip()
        host = headers.get("host")
        if host is not None and not self._host_ok(host):
            return _plain(
                "403 Forbidden", "the metrics are served to this machine only: use Host "
                f"{self.address}\n"
            )  # fmt: skip
        if method not in ("GET", "HEAD"):
            status, hdrs, body = _plain("405 Method Not Allowed", "use GET\n")
            return status, [*hdrs, ("Allow", "GET, HEAD")], body
        if target.split("?", 1)[0] != PATH:
            return _plain("404 Not Found", f"the metrics are at {PATH}\n")
        t0 = time.perf_counter()
        body, content_type, gzipped = await self.scrape(
            headers.get("accept", ""), headers.get("accept-encoding", "")
        )
        log.debug("metrics scraped in %.1f ms", (time.perf_counter() - t0) * 1000)
        out = [("Content-Type", content_type)]
        if gzipped:
            out.append(("Content-Encoding", "gzip"))
        return "200 OK", out, body

    def _host_ok(self, host: str) -> bool:
        host = host.lower()
        name = host if host.endswith("]") else host.rsplit(":", 1)[0]
        return name in _LOOPBACK_HOSTS or name.strip("[]") == self.host


def _plain(status: str, message: str) -> tuple[str, list[tuple[str, str]], bytes]:
    return status, [("Content-Type", "text/plain; charset=utf-8")], message.encode()
