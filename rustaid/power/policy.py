"""Adaptive inference: how the device's state and the power profile change a request.

`adapt()` is a pure function of (snapshot, active profile, request) and returns the
parameters to use plus every adjustment made and why. Rules, each a cap (the lowest
cap wins and names its reason):

| condition                          | max_tokens | threads    | batch | context | GPU | cache |
| ---------------------------------- | ---------- | ---------- | ----- | ------- | --- | ----- |
| the power profile                  | its max    | its        | its   | its     | its | its   |
| thermal Critical                   | <= 50      | 1          | 1     |         | off |       |
| thermal Serious                    | <= 200     | half cores |       |         |     |       |
| battery low and discharging        |            | <= 2       |       |         |     |       |
| memory pressure Warning            |            |            |       | <= 2048 |     | off   |
| memory pressure Critical           |            |            |       | <= 1024 |     | off   |
| other processes busy (>= 0.5 core) |            | free cores |       |         |     |       |

A zone heating fast enough to reach Serious or Critical within `rise_horizon_s` (5 s)
counts as there already ("thermal state critical expected (...)"), but for the refusal
below, which waits for Critical itself.

At thermal Critical no local model starts a generation (UNAVAILABLE with a retry delay,
`THERMAL_CRITICAL`); remote models still serve, and the router picks them.

"Battery low" is at or below `low_battery_percent` (20 %) or UPower's low warning; it
also sets prefer_remote (as do the PowerSaver and UltraSaver profiles).

Background-priority requests wait while the battery is low and discharging, while the
device is in a Serious or Critical thermal state, or while the profile does not allow
background inference (PowerSaver, UltraSaver).

`InferencePolicy` applies it with the monitor's current snapshot; the engine calls it
for every request (see docs/power.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

from rustaid.core.engine import LoadCaps
from rustaid.core.scheduler import Priority
from rustaid.power.config import PowerConfig
from rustaid.power.profiles import ActiveProfile
from rustaid.power.snapshot import PowerProfile, PressureLevel, ResourceSnapshot, ThermalState
from rustaid.providers import GenerationParams

if TYPE_CHECKING:
    from rustaid.power.monitor import ResourceMonitor

log = logging.getLogger(__name__)

THERMAL_CRITICAL_MAX_TOKENS = 50
THERMAL_SERIOUS_MAX_TOKENS = 200
LOW_BATTERY_MAX_THREADS = 2
# A generation still running when the device turns critically hot rests this long after
# every token (with one thread), so the heat it makes drops at once.
CRITICAL_PAUSE_S = 0.1
# Other processes using at least this many cores take a thread each from inference:
# llama.cpp's threads wait for each other at every step, so one that shares its core
# with a busy process slows them all (on 2 busy cores, 1 thread beat 2 many times over).
OTHERS_BUSY_MIN_CORES = 0.5
MEMORY_WARNING_CONTEXT = 2048
MEMORY_CRITICAL_CONTEXT = 1024
# Requests one model serves at once (continuous batching) under strain: each sequence
# adds compute per step and a KV cache.
STRAINED_PARALLEL = 2


@dataclass(frozen=True)
class Adjustment:
    setting: str
    before: str
    after: str
    reason: str

    def __str__(self) -> str:
        return f"{self.setting} {self.before} -> {self.after}: {self.reason}"


@dataclass(frozen=True)
class Adjusted:
    """What to run with. `threads`, `context_cap` and `batch_size` of 0 mean "no
    change from the engine's own setting"."""

    params: GenerationParams
    threads: int
    context_cap: int
    batch_size: int
    use_gpu: bool
    prefer_remote: bool
    caching: bool
    adjustments: tuple[Adjustment, ...]
    # Why a background request must wait now ("" when it may run).
    background_wait: str = ""
    # Why no local model may start a generation now ("" when one may): only remote
    # models serve while the device is critically hot.
    local_refused: str = ""

    @property
    def messages(self) -> tuple[str, ...]:
        """The adjustments as the strings GenerationDone.adjustments carries."""
        return tuple(str(a) for a in self.adjustments)


def low_battery(snapshot: ResourceSnapshot, config: PowerConfig) -> str:
    """Why the battery counts as low ("" when it does not)."""
    p = snapshot.power
    if not p.discharging:
        return ""
    if p.battery_percent <= config.low_battery_percent or p.warning_level >= 3:
        return f"battery low ({p.battery_percent:.0f} % and discharging)"
    return ""


def background_wait_reason(
    snapshot: ResourceSnapshot, active: ActiveProfile, config: PowerConfig
) -> str:
    if battery := low_battery(snapshot, config):
        return battery
    thermal, thermal_why = snapshot.thermal.effective()
    if thermal >= ThermalState.SERIOUS:
        return thermal_why
    if not active.parameters.background_inference:
        return f"power profile {active.profile.value} runs no background inference"
    return ""


def prefer_small_reason(snapshot: ResourceSnapshot, active: ActiveProfile) -> str:
    """Why the router should prefer smaller local models now ("" when not): a saving
    profile, a Serious or Critical thermal state (or one a fast rise is heading for), or
    memory pressure."""
    thermal, thermal_why = snapshot.thermal.effective()
    if thermal >= ThermalState.SERIOUS:
        return thermal_why
    if snapshot.memory.pressure >= PressureLevel.WARNING:
        return f"memory pressure {snapshot.memory.pressure.name.lower()}"
    if active.profile in (PowerProfile.POWER_SAVER, PowerProfile.ULTRA_SAVER):
        return f"power profile {active.profile.value}"
    return ""


def parallel_cap(
    snapshot: ResourceSnapshot, active: ActiveProfile, config: PowerConfig
) -> tuple[int, str]:
    """How many requests a model may serve at once now (0: no cap), and why: one when
    critically hot, short of memory, on a low battery or in ultra-saver; two when hot,
    under memory pressure, on battery or in power-saver."""
    (thermal, thermal_why), pressure = snapshot.thermal.effective(), snapshot.memory.pressure
    if thermal is ThermalState.CRITICAL or thermal is ThermalState.SERIOUS:
        n = 1 if thermal is ThermalState.CRITICAL else STRAINED_PARALLEL
        return n, thermal_why
    if pressure >= PressureLevel.WARNING:
        n = 1 if pressure is PressureLevel.CRITICAL else STRAINED_PARALLEL
        return n, f"memory pressure {pressure.name.lower()} ({snapshot.memory.reason})"
    if battery := low_battery(snapshot, config):
        return 1, battery
    if active.profile is PowerProfile.ULTRA_SAVER:
        return 1, f"power profile {active.profile.value}"
    if snapshot.power.discharging:
        return STRAINED_PARALLEL, "on battery"
    if active.profile is PowerProfile.POWER_SAVER:
        return STRAINED_PARALLEL, f"power profile {active.profile.value}"
    return 0, ""


def adapt(
    snapshot: ResourceSnapshot,
    active: ActiveProfile,
    params: GenerationParams,
    priority: Priority,
    *,
    threads: int,
    cores: int,
    default_max_tokens: int,
    config: PowerConfig,
) -> Adjusted:
    """The request's parameters under the current state; see the module's table."""
    prof = active.parameters
    profile_why = f"power profile {active.profile.value} ({active.reason})"
    # A zone heating fast counts as at the state it is about to reach.
    thermal, thermal_why = snapshot.thermal.effective()
    pressure = snapshot.memory.pressure
    memory_why = f"memory pressure {pressure.name.lower()} ({snapshot.memory.reason})"
    battery_why = low_battery(snapshot, config)
    adjustments: list[Adjustment] = []

    def cap(name: str, value: int, caps: list[tuple[int, str]], shown: str = "") -> int:
        """The lowest applicable cap, recorded when it lowers `value`; on a tie the
        device's state (listed first) names the reason, not the profile."""
        limit, why = min(caps, key=lambda c: c[0])
        if value > limit:
            adjustments.append(Adjustment(name, shown or str(value), str(limit), why))
            return limit
        return value

    # max_tokens
    token_caps = []
    if thermal is ThermalState.CRITICAL:
        token_caps.append((THERMAL_CRITICAL_MAX_TOKENS, thermal_why))
    elif thermal is ThermalState.SERIOUS:
        token_caps.append((THERMAL_SERIOUS_MAX_TOKENS, thermal_why))
    token_caps.append((prof.max_local_tokens, profile_why))
    requested = params.max_tokens if params.max_tokens is not None else default_max_tokens
    shown = "" if params.max_tokens is not None else f"{requested} (default)"
    max_tokens = cap("max_tokens", requested, token_caps, shown)
    if max_tokens != requested or params.max_tokens is None:
        params = replace(params, max_tokens=max_tokens)

    # threads (0: the engine's default, one per physical core)
    thread_caps = []
    if thermal is ThermalState.CRITICAL:
        thread_caps.append((1, thermal_why))
    elif thermal is ThermalState.SERIOUS:
        thread_caps.append((max(1, cores // 2), thermal_why))
    if battery_why:
        thread_caps.append((LOW_BATTERY_MAX_THREADS, battery_why))
    others = snapshot.cpu.others_busy_cores
    if config.share_cpu and others >= OTHERS_BUSY_MIN_CORES:
        free = max(1, round(cores - others))
        thread_caps.append((free, f"other processes busy ({others:.1f} cores)"))
    thread_caps.append((prof.threads, profile_why))
    effective = threads or max(1, cores)
    capped = cap("threads", effective, thread_caps, f"{effective}" if threads else "")
    out_threads = capped if capped != effective else threads

    # context length (applies when the model is loaded)
    context_caps = []
    if pressure is PressureLevel.CRITICAL:
        context_caps.append((MEMORY_CRITICAL_CONTEXT, memory_why))
    elif pressure is PressureLevel.WARNING:
        context_caps.append((MEMORY_WARNING_CONTEXT, memory_why))
    context_caps.append((prof.context_length, profile_why))
    context_cap, context_why = min(context_caps, key=lambda c: c[0])
    if context_why != profile_why:
        adjustments.append(
            Adjustment("context_length", "model's", f"<= {context_cap} when it loads", memory_why)
        )

    # batch size
    batch, batch_why = prof.batch_size, profile_why
    if thermal is ThermalState.CRITICAL:
        batch, batch_why = 1, thermal_why
        adjustments.append(
            Adjustment("batch_size", str(prof.batch_size), "1 when it loads", batch_why)
        )

    # switches
    use_gpu = prof.use_gpu
    if use_gpu and thermal is ThermalState.CRITICAL:
        use_gpu = False
        adjustments.append(Adjustment("use_gpu", "yes", "no", thermal_why))
    prefer_remote = prof.prefer_remote
    if not prefer_remote and battery_why:
        prefer_remote = True
        adjustments.append(Adjustment("prefer_remote", "no", "yes", battery_why))
    caching = prof.caching
    if caching and pressure >= PressureLevel.WARNING:
        caching = False
        adjustments.append(Adjustment("caching", "on", "off", memory_why))

    wait = ""
    if priority is Priority.BACKGROUND:
        wait = background_wait_reason(snapshot, active, config)
    # Refused only at Critical itself (as health says), not on the way there.
    actual = snapshot.thermal.state
    local_refused = thermal_why if actual is ThermalState.CRITICAL else ""
    return Adjusted(
        params=params,
        threads=out_threads,
        context_cap=context_cap,
        batch_size=batch,
        use_gpu=use_gpu,
        prefer_remote=prefer_remote,
        caching=caching,
        adjustments=tuple(adjustments),
        background_wait=wait,
        local_refused=local_refused,
    )


class InferencePolicy:
    """What the engine calls for every request (see docs/power.md):

    adjusted = await policy.adjust(params, priority, threads)
    if priority is Priority.BACKGROUND:
        await policy.wait_for_background_allowed()
    async with policy.generating():
        ...  # run with adjusted.params / adjusted.threads
    """

    def __init__(self, monitor: ResourceMonitor, default_max_tokens: int) -> None:
        self.monitor = monitor
        self.default_max_tokens = default_max_tokens

    async def adjust(
        self, params: GenerationParams, priority: Priority, threads: int = 0
    ) -> Adjusted:
        """The request's parameters under the current state (read fresh when the last
        reading is older than `max_age_s`)."""
        snapshot = await self.monitor.refresh(self.monitor.config.max_age_s)
        return self.adjust_now(params, priority, threads, snapshot)

    def adjust_now(
        self,
        params: GenerationParams,
        priority: Priority,
        threads: int = 0,
        snapshot: ResourceSnapshot | None = None,
    ) -> Adjusted:
        """Like `adjust`, with the last reading (no I/O)."""
        snapshot = snapshot or self.monitor.snapshot
        adjusted = adapt(
            snapshot,
            self.monitor.active_profile,
            params,
            priority,
            threads=threads,
            cores=self.monitor.cores,
            default_max_tokens=self.default_max_tokens,
            config=self.monitor.config,
        )
        for a in adjusted.adjustments:
            log.debug("request adjusted: %s", a)
        return adjusted

    def running_caps(self, threads: int = 0) -> tuple[int, float]:
        """For generations already running, under the current state: the threads to
        compute with (0: the model's own) and a rest after every token in seconds."""
        snapshot = self.monitor.snapshot
        adjusted = self.adjust_now(GenerationParams(), Priority.INTERACTIVE, threads, snapshot)
        critical = snapshot.thermal.effective()[0] is ThermalState.CRITICAL
        return adjusted.threads, CRITICAL_PAUSE_S if critical else 0.0

    def load_caps(self) -> LoadCaps:
        """Context, batch and GPU for a model loaded now (the profile, memory pressure,
        heat), and why."""
        adjusted = self.adjust_now(GenerationParams(), Priority.INTERACTIVE)
        why = (
            "; ".join(
                str(a)
                for a in adjusted.adjustments
                if a.setting in ("context_length", "batch_size", "use_gpu")
            )
            or f"power profile {self.monitor.active_profile.profile.value}"
        )
        parallel, parallel_why = self.parallel_cap()
        if parallel:
            why += f"; at most {parallel} requests at once: {parallel_why}"
        return LoadCaps(
            adjusted.context_cap, adjusted.batch_size, adjusted.use_gpu, why, parallel=parallel
        )

    def parallel_cap(self) -> tuple[int, str]:
        """Requests a model may serve at once now (0: no cap), and why."""
        return parallel_cap(self.monitor.snapshot, self.monitor.active_profile, self.monitor.config)

    def prefer_small(self) -> str:
        return prefer_small_reason(self.monitor.snapshot, self.monitor.active_profile)

    def background_wait(self) -> str:
        """Why a background request must wait now ("" when it may run)."""
        return background_wait_reason(
            self.monitor.snapshot, self.monitor.active_profile, self.monitor.config
        )

    async def wait_for_background_allowed(self) -> float:
        """Return once a background request may run; the seconds it waited. Cancel the
        awaiting task (client gone, deadline) to give up."""
        await self.monitor.refresh(self.monitor.config.max_age_s)
        reason = self.background_wait()
        if not reason:
            return 0.0
        loop = asyncio.get_running_loop()
        t0 = loop.time()
        log.info("background request waits: %s", reason)
        async with self.monitor.events.subscribe() as changes:
            while self.background_wait():
                # A change is published as soon as it is seen; re-check at least at
                # every poll in case a profile or threshold changed without one.
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self.monitor.poll_interval):
                        await changes.get()
        waited = loop.time() - t0
        log.info("background request resumes after %.1f s", waited)
        return waited

    @contextlib.asynccontextmanager
    async def generating(
        self, *, interactive: bool = True, max_tokens: int = 0
    ) -> AsyncIterator[None]:
        """Mark a generation as running: thermal zones are read every `poll_active_s`
        instead of `poll_idle_s`, and with `hold_performance` a long interactive
        generation on AC holds the system's performance profile."""
        async with self.monitor.generating(interactive=interactive, max_tokens=max_tokens):
            yield
