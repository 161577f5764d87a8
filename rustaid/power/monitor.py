"""The resource monitor: one snapshot of the device, kept current by events.

Sources and how each one is followed:

| source                          | how                                                     |
| ------------------------------- | ------------------------------------------------------- |
| UPower (battery, on battery)    | PropertiesChanged signals on the system bus             |
| power-profiles-daemon           | PropertiesChanged signals on the system bus             |
| power supplies, thermal (udev)  | udev events when udevd runs: re-read sysfs at once      |
| memory pressure                 | a PSI trigger on /proc/pressure/memory: re-read at once |
| temperatures, throttling,       | a quick read every `poll_quick_s` (1 s): a change in a  |
| memory pressure                 | whole degree, a throttling bit or the pressure level    |
|                                 | re-reads everything at once                             |
| thermal zones, memory, CPU      | read every `poll_active_s` (2 s) while generating,      |
|                                 | every `poll_idle_s` (30 s) otherwise, and before a      |
|                                 | decision when the last reading is older than 1 s        |
| power supplies (sysfs)          | with the thermal zones, only while UPower is absent     |

A source that is missing (no system bus, no UPower, no udevd, no thermal zones) is
listed in the snapshot's `unavailable_sources`; the rest keeps working. A snapshot is
published to subscribers (and listeners are called) when its `state_key()` changes.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import os
import time
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from rustaid.core.events import EventBus
from rustaid.power.config import EVENT_SOURCE_KEYS, PowerConfig
from rustaid.power.dbus import BusError, SystemBusClient
from rustaid.power.memory import PressureTrigger, read_memory
from rustaid.power.ppd import PowerProfilesWatcher
from rustaid.power.profiles import ActiveProfile, ProfileManager, ProfileParameters
from rustaid.power.snapshot import (
    CpuStatus,
    GpuStatus,
    MemoryStatus,
    PowerProfile,
    PowerStatus,
    ResourceSnapshot,
    ThermalState,
    ThermalStatus,
    ThermalZone,
    Throttling,
)
from rustaid.power.sysfs import (
    FileReader,
    read_cpu_frequency,
    read_gpus,
    read_power_supplies,
    read_thermal_zones,
    read_throttling,
)
from rustaid.power.thermal import rising_state, thermal_state
from rustaid.power.trend import ThermalTrend
from rustaid.power.udev import UdevWatcher
from rustaid.power.upower import UPowerWatcher
from rustaid.providers import ResourceMonitor as MonitorPlugin

log = logging.getLogger(__name__)

# How long a burst of D-Bus signals may take to arrive before the snapshot is rebuilt.
SETTLE_S = 0.03
# Other processes count as busy when every one of this many quick samples says so.
OTHERS_SAMPLES = 3

Listener = Callable[[ResourceSnapshot, ResourceSnapshot], None]


@dataclass(frozen=True)
class LocalReadings:
    """What the kernel's files said at one moment."""

    monotonic: float = 0.0
    time: float = 0.0
    memory: MemoryStatus = field(default_factory=MemoryStatus)
    cpu: CpuStatus = field(default_factory=CpuStatus)
    zones: tuple[ThermalZone, ...] = ()
    throttling: Throttling | None = None
    power: PowerStatus | None = None
    gpus: tuple[GpuStatus, ...] = ()
    unavailable: tuple[str, ...] = ()


def physical_cores() -> int:
    import psutil

    return psutil.cpu_count(logical=False) or os.cpu_count() or 1


class ResourceMonitor:
    def __init__(
        self,
        config: PowerConfig,
        *,
        state_dir: Path | None = None,
        cores: int | None = None,
        plugin_monitors: Callable[[], Mapping[str, MonitorPlugin]] | None = None,
    ) -> None:
        self.config = config
        self.plugin_monitors = plugin_monitors or dict
        self.cores = cores or physical_cores()
        self.reader = FileReader()
        # How fast each zone heats, from every reading (quick ones too).
        self.trend = ThermalTrend()
        self.profiles = ProfileManager(
            config, self.cores, state_dir / "power-profile.json" if state_dir else None
        )
        self.events: EventBus[ResourceSnapshot] = EventBus(maxsize=16)
        self.upower = UPowerWatcher()
        self.ppd = PowerProfilesWatcher()
        self.bus: SystemBusClient | None = None
        self.udev: UdevWatcher | None = None
        self.psi: PressureTrigger | None = None
        self._listeners: list[Listener] = []
        self._local = LocalReadings()
        self._event_sources_started = False
        self.snapshot = ResourceSnapshot()
        self.active_profile: ActiveProfile = self.profiles.resolve(PowerStatus(), "")
        self._generations = 0
        self._holds = 0
        self._wake: asyncio.Event | None = None
        self._read_lock: asyncio.Lock | None = None
        self._poll_task: asyncio.Task[None] | None = None
        self._quick_task: asyncio.Task[None] | None = None
        self._restart: asyncio.Task[None] | None = None
        self._settle: asyncio.TimerHandle | None = None
        self._sources_started = asyncio.Event()
        import psutil

        self._own_process = psutil.Process()
        self._cpu_mark: tuple[float, float, float] | None = None
        self._cpu_samples: collections.deque[float] = collections.deque(maxlen=OTHERS_SAMPLES)
        self._stopped = False

    # -- life cycle ------------------------------------------------------------------------

    def start(self) -> None:
        """Read everything once (cheap file reads) and start the thermal poll."""
        self._wake = asyncio.Event()
        self._read_lock = asyncio.Lock()
        self._local = self._read_local()
        self._rebuild()
        self._poll_task = asyncio.ensure_future(self._poll())
        self._quick_task = asyncio.ensure_future(self._quick_watch())
        s = self.snapshot
        log.info(
            "device: thermal %s, memory pressure %s, %s, power profile %s (%s)%s",
            s.thermal.state.name.lower(),
            s.memory.pressure.name.lower(),
            _describe_power(s.power),
            s.power_profile.value,
            self.active_profile.reason,
            f"; unavailable: {', '.join(s.unavailable_sources)}" if s.unavailable_sources else "",
        )

    async def start_event_sources(self) -> None:
        """D-Bus (UPower, power-profiles-daemon), udev and the PSI trigger. Called once
        the daemon is ready: connecting never delays start-up."""
        c = self.config
        if c.dbus:
            self.bus = SystemBusClient(
                c.bus_address, [self.upower, self.ppd], self._rebuild_settled
            )
            self.bus.start()
        if c.udev:
            self.udev = UdevWatcher(c.sys_root, self._udev_event)
            if not self.udev.start():
                log.info("no udev events (%s): power supplies and thermal zones are polled",
                         self.udev.error)  # fmt: skip
        if c.psi_trigger:
            self.psi = PressureTrigger(c.proc_root / "pressure" / "memory", self._pressure_event)
            if not self.psi.start():
                log.info("no memory pressure events (%s): memory is polled", self.psi.error)
        self._event_sources_started = True
        self._sources_started.set()
        self._rebuild()

    async def power_sources_read(self, within_s: float) -> bool:
        """Wait (at most `within_s`) until the event sources have started and UPower and
        power-profiles-daemon were read, or found missing; True when they were."""
        try:
            async with asyncio.timeout(within_s):
                await self._sources_started.wait()
                if self.bus is not None:
                    await self.bus.first_read.wait()
        except TimeoutError:
            return False
        return True

    async def stop(self) -> None:
        self._stopped = True
        if self._settle is not None:
            self._settle.cancel()
        for task in (self._poll_task, self._quick_task):
            if task is not None:
                task.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await task
        if self._restart is not None:
            self._restart.cancel()
        await self._stop_event_sources()
        self._listeners.clear()

    async def _stop_event_sources(self) -> None:
        """Stopped, they report themselves unavailable until started again."""
        if self.bus is not None:
            await self.bus.stop()  # UPower and power-profiles-daemon count as gone
        if self.udev is not None:
            self.udev.stop()
        if self.psi is not None:
            self.psi.stop()

    def reconfigure(self, config: PowerConfig) -> None:
        """New settings (a reload): the polls re-time to them, the event sources whose
        settings changed (bus, udev, PSI trigger, roots) are restarted, and the device
        is read again at once, so a state the new thresholds change is published now."""
        old, self.config = self.config, config
        self.profiles.config = config
        log.info("power settings applied")
        if self._quick_task is not None and config.poll_quick_s != old.poll_quick_s:
            self._quick_task.cancel()
            self._quick_task = asyncio.ensure_future(self._quick_watch())
        if self._event_sources_started and any(
            getattr(old, k) != getattr(config, k) for k in EVENT_SOURCE_KEYS
        ):
            self._restart = asyncio.ensure_future(self._restart_event_sources())
        self._rebuild()  # the new thresholds and profile rules on the last reading
        self._wake_up()  # the full poll reads now and waits its new interval after

    async def _restart_event_sources(self) -> None:
        await self._stop_event_sources()
        if not self._stopped:
            await self.start_event_sources()

    def add_listener(self, listener: Listener) -> None:
        """Called (old, new) on the event loop whenever the published state changes."""
        self._listeners.append(listener)

    # -- readings --------------------------------------------------------------------------

    @property
    def poll_interval(self) -> float:
        return self.config.poll_active_s if self._generations else self.config.poll_idle_s

    def _read_local(self) -> LocalReadings:
        """Every file-based source (blocking; runs in a worker thread after start)."""
        import psutil

        c, reader = self.config, self.reader
        unavailable: list[str] = []
        memory, missing = read_memory(c.proc_root, reader, c)
        unavailable += missing
        freq = read_cpu_frequency(c.sys_root, reader)
        if freq is None:
            unavailable.append("cpufreq")
        usage = psutil.cpu_percent(interval=None)
        cpu = CpuStatus(
            usage_percent=usage,
            frequency_mhz=freq[0] if freq else 0.0,
            max_frequency_mhz=freq[1] if freq else 0.0,
            cores=self.cores,
            others_busy_cores=self._others_busy(),
        )
        zones, has_thermal = read_thermal_zones(c.sys_root, reader)
        self.trend.add(time.monotonic(), zones)
        if not zones or not has_thermal:
            unavailable.append("thermal")
        # sysfs power supplies only matter while UPower does not speak for them.
        power = None if self.upower.present else read_power_supplies(c.sys_root, reader)
        gpus = read_gpus(c.sys_root, reader)
        gpus += self._plugin_gpus(unavailable)
        return LocalReadings(
            monotonic=time.monotonic(),
            time=time.time(),
            memory=memory,
            cpu=cpu,
            zones=tuple(zones),
            throttling=read_throttling(c.sys_root, reader),
            power=power,
            gpus=tuple(gpus),
            unavailable=tuple(unavailable),
        )

    def _others_busy(self) -> float:
        """Cores' worth of CPU other processes kept busy, sustained: the least of the last
        OTHERS_SAMPLES one-second samples (a short burst, or a benchmark's direct arm a
        moment ago, is not a busy neighbour)."""
        samples = self._cpu_samples
        return min(samples) if len(samples) == samples.maxlen else 0.0

    def _quick_read(self) -> tuple[object, ...]:
        self._sample_cpu()
        return self._quick_key()

    def _sample_cpu(self) -> None:
        """One sample of the CPU other processes used since the previous one."""
        import psutil

        t = psutil.cpu_times()
        busy = t.user + t.nice + t.system + getattr(t, "irq", 0.0) + getattr(t, "softirq", 0.0)
        own = self._own_process.cpu_times()
        now = time.monotonic()
        mark = (now, busy, own.user + own.system)
        if self._cpu_mark is not None:
            then, busy0, own0 = self._cpu_mark
            if now > then:
                others = ((busy - busy0) - (mark[2] - own0)) / (now - then)
                self._cpu_samples.append(max(0.0, others))
        self._cpu_mark = mark

    def _plugin_gpus(self, unavailable: list[str]) -> list[GpuStatus]:
        """GPUs reported by resource-monitor plugins: `read()` returns
        {"gpus": [{"name", "memory_total_bytes", "memory_used_bytes",
        "utilization_percent"}, ...]}; OSError means "unavailable here"."""
        gpus: list[GpuStatus] = []
        for name, plugin in self.plugin_monitors().items():
            try:
                data = plugin.read()
                entries = data.get("gpus", [])
                for g in entries:
                    total = int(g.get("memory_total_bytes", 0))
                    used = int(g.get("memory_used_bytes", 0))
                    busy = float(g.get("utilization_percent", 0.0))
                    if total < 0 or used < 0 or not 0 <= busy <= 100:
                        raise ValueError(f"implausible reading {g!r}")
                    gpus.append(GpuStatus(str(g.get("name", name)), total, min(used, total), busy))
            except OSError:
                unavailable.append(name)
            except Exception as e:
                unavailable.append(name)
                self.reader.problem(Path(f"<plugin {name}>"), f"bad reading: {e}")
        return gpus

    async def refresh(self, max_age: float = 0.0) -> ResourceSnapshot:
        """The snapshot, re-reading the kernel's files first when the last reading is
        older than `max_age` seconds. Bus signals still settling are taken in first: a
        decision uses everything the daemon has heard."""
        if self._settle is not None:
            self._settle.cancel()
            self._settled()
        if self._read_lock is None:  # not started: read inline
            self._local = self._read_local()
            self._rebuild()
            return self.snapshot
        if time.monotonic() - self._local.monotonic <= max_age:
            return self.snapshot
        async with self._read_lock:
            if time.monotonic() - self._local.monotonic > max_age:
                loop = asyncio.get_running_loop()
                self._local = await loop.run_in_executor(None, self._read_local)
                self._rebuild()
        return self.snapshot

    async def _poll(self) -> None:
        assert self._wake is not None
        while True:
            # (asyncio.timeout, not wait_for: 3.11's wait_for can swallow a cancellation)
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(self.poll_interval):
                    await self._wake.wait()
            self._wake.clear()
            try:
                await self.refresh(0.0)
            except Exception:
                log.exception("reading the device's state failed; trying again later")

    def _quick_key(self, local: LocalReadings | None = None) -> tuple[object, ...]:
        """What the quick read compares: whole degrees, throttling bits, pressure level."""
        if local is None:
            c = self.config
            zones, _ = read_thermal_zones(c.sys_root, self.reader)
            self.trend.add(time.monotonic(), zones)
            memory, _ = read_memory(c.proc_root, self.reader, c)
            throttling = read_throttling(c.sys_root, self.reader)
        else:
            zones, memory, throttling = list(local.zones), local.memory, local.throttling
        temps = tuple((z.name, round(z.temperature_c)) for z in zones)
        return temps, throttling, memory.pressure

    async def _quick_watch(self) -> None:
        """Heat, throttling and memory pressure seen within `poll_quick_s`, idle or not:
        a few small files per read; a change triggers the full reading and publication."""
        loop = asyncio.get_running_loop()
        while True:
            await asyncio.sleep(self.config.poll_quick_s)
            try:
                key = await loop.run_in_executor(None, self._quick_read)
                if key != self._quick_key(self._local):
                    await self.refresh(0.0)
            except Exception:
                log.exception("the quick reading of the device failed; trying again later")

    def _wake_up(self) -> None:
        if self._wake is not None:
            self._wake.set()

    def _udev_event(self, subsystem: str) -> None:
        self._wake_up()

    def _pressure_event(self) -> None:
        log.debug("memory pressure trigger fired")
        self._wake_up()

    # -- the snapshot ----------------------------------------------------------------------

    def _unavailable(self) -> list[str]:
        names = list(self._local.unavailable)
        if not self._event_sources_started:
            return names
        c = self.config
        if not c.dbus or self.bus is None or not self.bus.connected:
            names.append("dbus")
        if not self.upower.present:
            names.append("upower")
            if self._local.power is None:
                names.append("power_supply")
        if not self.ppd.present:
            names.append("power-profiles-daemon")
        if self.udev is None or not self.udev.active:
            names.append("udev")
        if self.psi is None or not self.psi.armed:
            names.append("psi-trigger")
        return names

    def _rebuild_settled(self) -> None:
        """A D-Bus change: rebuild once the burst it belongs to has arrived. Plugging in
        the charger changes OnBattery, State and Percentage in separate signals; taken one
        by one they would publish a state that never was (on AC yet discharging)."""
        if self._settle is None or self._settle.cancelled():
            loop = asyncio.get_running_loop()
            self._settle = loop.call_later(SETTLE_S, self._settled)

    def _settled(self) -> None:
        self._settle = None
        self._rebuild()

    def _rebuild(self) -> None:
        if self._stopped:
            return
        local = self._local
        power = self.upower.status() or local.power or PowerStatus()
        state, reason = thermal_state(
            local.zones, local.throttling, self.config, self.snapshot.thermal.state
        )
        rising, rising_why = rising_state(local.zones, self.trend.slopes(), self.config)
        if rising <= state:
            rising, rising_why = ThermalState.NOMINAL, ""
        active = self.profiles.resolve(power, self.ppd.active_profile)
        snapshot = ResourceSnapshot(
            time=local.time or time.time(),
            memory=local.memory,
            cpu=local.cpu,
            thermal=ThermalStatus(
                state=state,
                zones=local.zones,
                throttling=local.throttling or Throttling(),
                reason=reason,
                rising_state=rising,
                rising_reason=rising_why,
            ),
            power=power,
            gpus=local.gpus,
            power_profile=active.profile,
            profile_source=active.source,
            unavailable_sources=tuple(sorted(set(self._unavailable()))),
        )
        old, self.snapshot, self.active_profile = self.snapshot, snapshot, active
        if old.state_key() == snapshot.state_key():
            return
        _log_changes(old, snapshot, active)
        self.events.publish(snapshot)
        for listener in list(self._listeners):
            try:
                listener(old, snapshot)
            except Exception:
                log.exception("a resource listener failed")

    # -- profiles --------------------------------------------------------------------------

    def set_profile(self, profile: PowerProfile, custom: ProfileParameters | None = None) -> None:
        self.profiles.set_override(profile, custom)
        self._rebuild()

    def clear_profile(self) -> None:
        self.profiles.clear_override()
        self._rebuild()

    # -- generations -------------------------------------------------------------------------

    @contextlib.asynccontextmanager
    async def generating(
        self, *, interactive: bool = True, max_tokens: int = 0
    ) -> AsyncIterator[None]:
        self._generations += 1
        if self._generations == 1:
            self._wake_up()  # re-time the poll to the active interval
        hold: tuple[str, int] | None = None
        c = self.config
        if (
            c.hold_performance
            and interactive
            and max_tokens >= c.hold_min_tokens
            and not self.snapshot.power.on_battery
            and self.ppd.present
        ):
            try:
                hold = await self.ppd.hold("performance", "long interactive generation")
                self._holds += 1
                log.info("holding the performance profile during a generation")
            except BusError as e:
                log.warning("could not hold the performance profile: %s", e)
        try:
            yield
        finally:
            self._generations -= 1
            if hold is not None:
                self._holds -= 1
                try:
                    await self.ppd.release(*hold)
                except BusError as e:
                    log.warning("could not release the performance profile: %s", e)


def _describe_power(p: PowerStatus) -> str:
    if not p.battery_present:
        return "no battery" if p.source else "power source unknown"
    return f"battery {p.battery_percent:.0f} % {p.battery_state.value} (from {p.source})"


def _log_changes(old: ResourceSnapshot, new: ResourceSnapshot, active: ActiveProfile) -> None:
    if new.thermal.rising_state > max(new.thermal.state, old.thermal.rising_state):
        log.warning("heating fast: acting as if %s (%s)", new.thermal.rising_state.name.lower(),
                    new.thermal.rising_reason)  # fmt: skip
    if new.thermal.state != old.thermal.state:
        level = logging.WARNING if new.thermal.state >= ThermalState.SERIOUS else logging.INFO
        log.log(level, "thermal state %s: %s", new.thermal.state.name.lower(),
                new.thermal.reason or "all zones cool")  # fmt: skip
    if new.memory.pressure != old.memory.pressure:
        level = logging.WARNING if new.memory.pressure > old.memory.pressure else logging.INFO
        log.log(level, "memory pressure %s%s", new.memory.pressure.name.lower(),
                f": {new.memory.reason}" if new.memory.reason else "")  # fmt: skip
    if (new.power_profile, new.profile_source) != (old.power_profile, old.profile_source):
        log.info("power profile %s (%s)", new.power_profile.value, active.reason)
    if (new.power.battery_state, new.power.on_battery, new.power.source) != (
        old.power.battery_state,
        old.power.on_battery,
        old.power.source,
    ):
        log.info("power: %s", _describe_power(new.power))
    if new.unavailable_sources != old.unavailable_sources:
        gone = sorted(set(new.unavailable_sources) - set(old.unavailable_sources))
        back = sorted(set(old.unavailable_sources) - set(new.unavailable_sources))
        if back and old.time:
            log.info("sources available again: %s", ", ".join(back))
        if gone and old.time:
            log.info("sources unavailable: %s", ", ".join(gone))
