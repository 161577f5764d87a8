"""The resource manager the daemon owns: the monitor, the inference policy, the
metrics, and what the daemon does when the device's state changes (stop serving
generation while critically hot, unload idle models under critical memory pressure),
plus cost estimates for a request."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from rustaid.config import Settings
from rustaid.core.engine import Energy
from rustaid.core.events import UnloadReason
from rustaid.core.metrics import Metrics
from rustaid.core.registry import ModelEntry, ModelKind, ModelState
from rustaid.core.scheduler import Priority
from rustaid.errors import InvalidArgument, NotFound
from rustaid.power.config import PowerConfig, power_config
from rustaid.power.monitor import ResourceMonitor
from rustaid.power.policy import InferencePolicy
from rustaid.power.profiles import ActiveProfile, ProfileParameters
from rustaid.power.snapshot import PowerProfile, PressureLevel, ResourceSnapshot, ThermalState
from rustaid.providers import GenerationParams

log = logging.getLogger(__name__)

# Without a measurement: generation reads every weight once per token, at roughly this
# many bytes per second on a small device; prompts go about this many times faster.
ASSUMED_BANDWIDTH_BYTES_S = 8e9
ASSUMED_PROMPT_SPEEDUP = 10.0
MAX_ASSUMED_TPS = 200.0
# Without a measured load: reading and mapping weights at about this many bytes/s.
ASSUMED_LOAD_BYTES_S = 300e6
# Without a measured or declared draw.
ASSUMED_DRAW_W = 5.0


class ModelSource(Protocol):
    def get(self, model_id: str) -> ModelEntry: ...


class ModelUnloader(Protocol):
    def loaded(self) -> list[ModelEntry]: ...
    async def unload(self, model_id: str, reason: UnloadReason = ...) -> ModelEntry: ...
    def is_remote(self, entry: ModelEntry) -> bool: ...


class PluginRecords(Protocol):
    def list(self) -> Sequence[Any]: ...


@dataclass(frozen=True)
class CostEstimate:
    duration_s: float
    energy_joules: float
    # Share of a full battery, 0 without a battery or its capacity.
    battery_percent: float
    basis: str
    max_tokens: int


class ResourceManager:
    def __init__(
        self,
        settings: Settings,
        *,
        models: ModelSource | None = None,
        engine: ModelUnloader | None = None,
        plugins: PluginRecords | None = None,
        config: PowerConfig | None = None,
    ) -> None:
        self.settings = settings
        self.config = config or power_config(settings.extra.get("power"))
        monitors = getattr(plugins, "resource_monitors", None)
        self.monitor = ResourceMonitor(
            self.config, state_dir=settings.state_dir, plugin_monitors=monitors
        )
        self.policy = InferencePolicy(self.monitor, settings.default_max_tokens)
        self.metrics = Metrics(power_draw_w=self._battery_draw)
        self.models = models
        self.engine = engine
        self.plugins = plugins
        self._serving: list[Callable[[bool], None]] = []
        self._eviction: asyncio.Task[None] | None = None

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        self.monitor.add_listener(self._changed)
        self.monitor.start()

    async def start_event_sources(self) -> None:
        await self.monitor.start_event_sources()

    async def stop(self) -> None:
        self._serving.clear()
        if self._eviction is not None:
            self._eviction.cancel()
        await self.monitor.stop()

    @property
    def snapshot(self) -> ResourceSnapshot:
        return self.monitor.snapshot

    async def fresh_snapshot(self, wait_for_sources_s: float = 5.0) -> ResourceSnapshot:
        """The device read now, after its power sources (UPower, power-profiles-daemon)
        have reported once or `wait_for_sources_s` passed: for decisions such as an
        update's power gate that must not act on a start-up default or an old reading."""
        if not await self.monitor.power_sources_read(wait_for_sources_s):
            log.warning("power sources not read after %.0f s: deciding without them",
                        wait_for_sources_s)  # fmt: skip
        return await self.monitor.refresh(0.0)

    # -- power profile -----------------------------------------------------------------------

    def set_power_profile(
        self, profile: PowerProfile | None, custom: ProfileParameters | None = None
    ) -> ActiveProfile:
        """Set `profile` until cleared (Custom with its parameters), or with None return
        to the automatic profile; what every adapter calls. InvalidArgument naming the
        field for unusable input; nothing changes then."""
        if profile is None:
            if custom is not None:
                raise InvalidArgument(
                    "returning to the automatic profile takes no custom parameters",
                    field="custom",
                )
            self.monitor.clear_profile()
        else:
            self.monitor.set_profile(profile, custom)
        return self.monitor.active_profile

    # -- reactions -------------------------------------------------------------------------

    @property
    def generate_serving(self) -> bool:
        """False while the device is critically hot: generation is refused."""
        return self.monitor.snapshot.thermal.state < ThermalState.CRITICAL

    def on_generate_serving(self, callback: Callable[[bool], None]) -> None:
        """`callback(serving)` now and whenever generation stops or resumes being served
        because of the thermal state (the daemon updates its health service)."""
        self._serving.append(callback)
        callback(self.generate_serving)

    def _changed(self, old: ResourceSnapshot, new: ResourceSnapshot) -> None:
        was = old.thermal.state < ThermalState.CRITICAL
        now = new.thermal.state < ThermalState.CRITICAL
        if was != now:
            if not now:
                log.warning("critically hot (%s): not serving generation", new.thermal.reason)
            else:
                log.info("no longer critically hot: serving generation again")
            for callback in list(self._serving):
                callback(now)
        if (
            new.memory.pressure is PressureLevel.CRITICAL
            and self.config.evict_on_critical_pressure
            and self.engine is not None
            and (self._eviction is None or self._eviction.done())
        ):
            self._eviction = asyncio.ensure_future(self._evict_while_critical())

    async def _evict_while_critical(self) -> None:
        """Unload idle models, largest first, until memory pressure is no longer
        critical (re-checked `eviction_settle_s` after each unload)."""
        assert self.engine is not None
        engine = self.engine
        busy = getattr(engine, "is_busy", None)
        done: set[str] = set()
        stuck = False
        while True:
            snapshot = await self.monitor.refresh(0.0)
            if snapshot.memory.pressure is not PressureLevel.CRITICAL:
                if done:
                    level = snapshot.memory.pressure.name.lower()
                    log.info(
                        "memory pressure %s after unloading %s", level, ", ".join(sorted(done))
                    )
                return
            candidates = [
                e for e in engine.loaded() if not e.pinned and not (callable(busy) and busy(e.id))
            ]
            if not candidates:
                # Keep watching while it lasts: a model loaded meanwhile goes too.
                if not stuck:
                    log.warning(
                        "memory pressure critical (%s) and no idle unpinned model left to unload",
                        snapshot.memory.reason,
                    )
                stuck = True
                await asyncio.sleep(self.config.eviction_settle_s)
                continue
            stuck = False
            victim = max(candidates, key=lambda e: (e.memory_bytes or e.size_bytes, e.id))
            log.warning(
                "memory pressure critical (%s): unloading idle model %s (%d MB)",
                snapshot.memory.reason,
                victim.id,
                (victim.memory_bytes or victim.size_bytes) >> 20,
            )
            try:
                await engine.unload(victim.id, UnloadReason.MEMORY_PRESSURE)
            except Exception as e:
                log.warning("could not unload %s: %s", victim.id, e)
            done.add(victim.id)
            await asyncio.sleep(self.config.eviction_settle_s)

    # -- energy ----------------------------------------------------------------------------

    def _battery_draw(self) -> float | None:
        power = self.monitor.snapshot.power
        if power.discharging and power.power_draw_w > 0:
            return power.power_draw_w
        return None

    def _declared_draw_w(self, entry: ModelEntry) -> tuple[float, str] | None:
        if self.plugins is None or not entry.provider:
            return None
        capability = f"llm:{entry.provider}"
        for record in self.plugins.list():
            if capability in getattr(record, "capabilities", ()):
                mw = record.requirements.battery_draw_mw
                if mw > 0:
                    return mw / 1000, f"{mw} mW declared by plugin {record.id}"
        return None

    def request_energy(self, entry: ModelEntry, seconds: float) -> Energy:
        """The energy of `seconds` of compute on `entry`: the battery's measured draw
        while discharging, else the engine plugin's declared draw, else an assumed one."""
        if self.engine is not None and self.engine.is_remote(entry):
            return Energy(0.0, "runs remotely: no local draw")
        draw = self._battery_draw()
        if draw is not None:
            why = f"measured draw {draw:.1f} W ({self.monitor.snapshot.power.source})"
        elif declared := self._declared_draw_w(entry):
            draw, why = declared
        else:
            draw, why = ASSUMED_DRAW_W, f"assumed draw {ASSUMED_DRAW_W:g} W"
        return Energy(draw * seconds, f"{why} x {seconds:.2f} s of compute")

    def _device_bandwidth(self, model_id: str) -> tuple[float, str]:
        """Bytes of weights this device reads per second while generating: the median
        of the other measured local models (tokens/s x size), else an assumed figure."""
        seen = []
        for m in self.metrics.models():
            if m.model_id == model_id or m.recent_tokens_per_second <= 0 or self.models is None:
                continue
            try:
                other = self.models.get(m.model_id)
            except NotFound:
                continue
            if other.path is not None and other.size_bytes:
                seen.append(m.recent_tokens_per_second * other.size_bytes)
        if not seen:
            return ASSUMED_BANDWIDTH_BYTES_S, f"an assumed {ASSUMED_BANDWIDTH_BYTES_S / 1e9:g} GB/s"
        seen.sort()
        median = seen[len(seen) // 2]
        return median, f"{median / 1e9:.2f} GB/s measured on this device ({len(seen)} models)"

    def _load_seconds(self, entry: ModelEntry) -> tuple[float, str]:
        """How long loading `entry` should take: its own last load, else the load speed
        of other models measured here, else an assumed speed."""
        own = self.metrics.model(entry.id)
        if own is not None and own.last_load_ms > 0:
            return own.last_load_ms / 1000, "its last load"
        rates = []
        for m in self.metrics.models():
            if m.last_load_ms > 0 and self.models is not None:
                try:
                    other = self.models.get(m.model_id)
                except NotFound:
                    continue
                if other.size_bytes:
                    rates.append(other.size_bytes / (m.last_load_ms / 1000))
        if rates:
            rate = sorted(rates)[len(rates) // 2]
            return entry.size_bytes / rate, f"{rate / 1e6:.0f} MB/s measured here"
        return entry.size_bytes / ASSUMED_LOAD_BYTES_S, (
            f"an assumed {ASSUMED_LOAD_BYTES_S / 1e6:.0f} MB/s"
        )

    def settings_replaced(self, _old: Settings, new: Settings) -> None:
        """A reload (SettingsSource listener): the generation limits and `[power]` apply
        at once (see `ResourceMonitor.reconfigure`)."""
        self.settings = new
        self.policy.default_max_tokens = new.default_max_tokens
        config = power_config(new.extra.get("power"))
        if config != self.config:
            self.config = config
            self.monitor.reconfigure(config)

    async def estimate_cost(
        self, model_id: str, prompt_tokens: int, max_tokens: int
    ) -> CostEstimate:
        """Time and energy of a request on this device now (see docs/power.md)."""
        if not model_id:
            raise InvalidArgument("model_id is empty: name the model to estimate", field="model_id")
        if self.models is None:
            raise InvalidArgument("no models are known", field="model_id")
        entry = self.models.get(model_id)  # NotFound names the known ids
        if entry.kind is not ModelKind.LLM:
            raise InvalidArgument(
                f"model {model_id!r} is an {entry.kind.value} model; costs are estimated "
                "for language models",
                field="model_id",
            )
        limit = self.settings.max_tokens_limit
        if max_tokens > limit:
            raise InvalidArgument(
                f"max_tokens must be at most {limit} (got {max_tokens})", field="max_tokens"
            )
        if prompt_tokens > 1 << 24:
            raise InvalidArgument(
                f"prompt_tokens is implausibly large ({prompt_tokens})", field="prompt_tokens"
            )
        basis: list[str] = []
        await self.monitor.refresh(self.config.max_age_s)
        adjusted = self.policy.adjust_now(
            GenerationParams(max_tokens=max_tokens or None), Priority.INTERACTIVE
        )
        tokens = adjusted.params.max_tokens or self.settings.default_max_tokens
        for a in adjusted.adjustments:
            if a.setting == "max_tokens":
                basis.append(f"max_tokens {a.before} -> {a.after} ({a.reason})")
        measured = self.metrics.model(model_id)
        if measured is not None and measured.recent_tokens_per_second > 0:
            tps = measured.recent_tokens_per_second
            basis.append(f"measured {tps:.1f} tokens/s over {measured.requests} requests")
            prompt_tps = measured.recent_prompt_tokens_per_second or tps * ASSUMED_PROMPT_SPEEDUP
        else:
            size = max(entry.size_bytes, 1)
            bandwidth, how = self._device_bandwidth(model_id)
            tps = min(MAX_ASSUMED_TPS, bandwidth / size)
            prompt_tps = tps * ASSUMED_PROMPT_SPEEDUP
            basis.append(
                f"not measured yet: {tps:.1f} tokens/s from its size ({size >> 20} MB) and {how}"
            )
        duration = prompt_tokens / prompt_tps + tokens / tps
        if entry.state is not ModelState.LOADED and entry.path is not None:
            load_s, how = self._load_seconds(entry)
            duration += load_s
            basis.append(f"load {load_s:.2f} s first ({how})")
        power = self.monitor.snapshot.power
        draw = self._battery_draw()
        if draw is not None:
            basis.append(f"measured draw {draw:.1f} W ({power.source})")
        elif declared := self._declared_draw_w(entry):
            draw = declared[0]
            basis.append(declared[1])
        else:
            draw = ASSUMED_DRAW_W
            basis.append(f"no measured or declared draw: assumed {ASSUMED_DRAW_W:g} W")
        energy = draw * duration
        percent = 0.0
        if power.battery_present and power.energy_full_wh > 0:
            percent = 100 * energy / (power.energy_full_wh * 3600)
        basis.append(f"{energy / 3.6:.2f} mWh")
        return CostEstimate(
            duration_s=duration,
            energy_joules=energy,
            battery_percent=percent,
            basis="; ".join(basis),
            max_tokens=tokens,
        )
