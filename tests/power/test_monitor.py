"""The resource monitor in this process, on a fake sysfs/proc tree and a private system
bus with dbusmock's UPower and power-profiles-daemon."""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path
from typing import Any

import pytest

from rustaid.core.scheduler import Priority
from rustaid.power.monitor import ResourceMonitor
from rustaid.power.policy import InferencePolicy
from rustaid.power.snapshot import (
    BatteryState,
    PowerProfile,
    PressureLevel,
    ProfileSource,
    ResourceSnapshot,
    ThermalState,
)
from rustaid.providers import GenerationParams
from rustaid.providers import ResourceMonitor as ResourceMonitorPlugin
from tests.power.bus import UPOWER, BusDriver, DbusMock, PrivateSystemBus
from tests.power.conftest import config_for, running_monitor, until
from tests.power.fakesys import FakeDevice

Bus = tuple[PrivateSystemBus, BusDriver]


async def test_missing_sources_are_reported_not_fatal(dev: FakeDevice) -> None:
    config = config_for(dev, udev=True, psi_trigger=True)
    async with running_monitor(config) as monitor:
        s = monitor.snapshot
        for name in ("thermal", "cpufreq", "dbus", "upower", "power-profiles-daemon",
                     "power_supply", "udev", "psi-trigger"):  # fmt: skip
            assert name in s.unavailable_sources, name
        assert s.thermal.state is ThermalState.NOMINAL
        assert s.memory.total_bytes == 8_000_000 * 1024
        assert (s.power_profile, s.profile_source) == (PowerProfile.BALANCED, ProfileSource.DEFAULT)


async def test_thermal_zones_are_polled_faster_while_generating(dev: FakeDevice) -> None:
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 110)])
    config = config_for(dev, poll_idle_s=30.0, poll_active_s=0.1)
    async with running_monitor(config) as monitor:
        changes: list[tuple[ResourceSnapshot, ResourceSnapshot]] = []
        monitor.add_listener(lambda old, new: changes.append((old, new)))
        assert monitor.poll_interval == 30.0
        dev.temp(0, 85.0)
        await asyncio.sleep(0.4)
        assert monitor.snapshot.thermal.state is ThermalState.NOMINAL  # idle: not read yet
        async with monitor.generating():
            assert monitor.poll_interval == 0.1
            await until(lambda: monitor.snapshot.thermal.state is ThermalState.SERIOUS, 1.0)
        assert monitor.poll_interval == 30.0
        assert changes and changes[-1][1].thermal.state is ThermalState.SERIOUS
        assert "passive trip 80" in changes[-1][1].thermal.reason
        # A decision reads fresh values when the last reading is older than max_age_s.
        dev.temp(0, 40.0)
        dev.temp(0, 40.0)
        await asyncio.sleep(config.max_age_s + 0.05)
        snapshot = await monitor.refresh(config.max_age_s)
        assert snapshot.thermal.state is ThermalState.NOMINAL


async def test_vanishing_zone_and_garbage_recover(dev: FakeDevice) -> None:
    dev.zone(0, "cpu-thermal", 95.0, [("passive", 80), ("critical", 100)])
    config = config_for(dev)
    async with running_monitor(config) as monitor:
        assert monitor.snapshot.thermal.state is ThermalState.CRITICAL
        dev.remove_zone(0)
        s = await monitor.refresh()
        assert s.thermal.state is ThermalState.NOMINAL and "thermal" in s.unavailable_sources
        dev.zone(0, "cpu-thermal", 85.0, [("passive", 80)])
        dev.raw("class/thermal/thermal_zone0/temp", "garbage")
        s = await monitor.refresh()
        assert s.thermal.zones == () and "thermal" in s.unavailable_sources
        dev.temp(0, 85.0)
        s = await monitor.refresh()
        assert s.thermal.state is ThermalState.SERIOUS and "thermal" not in s.unavailable_sources


async def test_sysfs_battery_when_upower_is_absent(dev: FakeDevice) -> None:
    dev.mains(False)
    dev.battery(capacity=15, power_uw=9_000_000)
    async with running_monitor(config_for(dev)) as monitor:
        p = monitor.snapshot.power
        assert (p.source, p.battery_percent, p.battery_state) == (
            "sysfs", 15.0, BatteryState.DISCHARGING,
        )  # fmt: skip
        assert monitor.snapshot.power_profile is PowerProfile.POWER_SAVER
        assert monitor.snapshot.profile_source is ProfileSource.BATTERY
        dev.mains(True)
        dev.battery(status="Charging", capacity=16)
        s = await monitor.refresh()
        assert s.power.ac_online and s.power_profile is PowerProfile.BALANCED


async def test_battery_drop_over_upower_changes_profile_and_parameters(
    dev: FakeDevice, bus: Bus, upower: DbusMock
) -> None:
    _, driver = bus
    async with running_monitor(config_for(dev, bus[0].address)) as monitor:
        policy = InferencePolicy(monitor, default_max_tokens=512)
        await until(lambda: "upower" not in monitor.snapshot.unavailable_sources, 3.0)
        assert not monitor.snapshot.power.battery_present  # the mock starts without one
        assert "power-profiles-daemon" in monitor.snapshot.unavailable_sources
        driver.battery(60)
        await until(lambda: monitor.snapshot.power.battery_percent == 60.0)
        before = policy.adjust_now(GenerationParams(max_tokens=400), Priority.INTERACTIVE)
        assert before.adjustments == ()
        driver.battery(15)
        took = await until(lambda: monitor.snapshot.power_profile is PowerProfile.POWER_SAVER)
        assert took < 1.0
        s = monitor.snapshot
        assert (s.power.source, s.power.battery_state, s.power.on_battery) == (
            "upower", BatteryState.DISCHARGING, True,
        )  # fmt: skip
        assert s.power.power_draw_w == 8.0 and s.power.time_to_empty_s == 3600
        after = policy.adjust_now(GenerationParams(max_tokens=400), Priority.INTERACTIVE)
        assert after.params.max_tokens == 256  # PowerSaver's cap
        assert after.threads == 2 and after.prefer_remote
        assert any("battery low (15 % and discharging)" in m for m in after.messages)
        driver.battery(16, discharging=False)
        await until(lambda: monitor.snapshot.power_profile is PowerProfile.BALANCED)


async def test_profile_follows_power_profiles_daemon(
    dev: FakeDevice, bus: Bus, upower: DbusMock, ppd: DbusMock
) -> None:
    _, driver = bus
    driver.battery(50)
    async with running_monitor(config_for(dev, bus[0].address)) as monitor:
        await until(lambda: monitor.snapshot.profile_source is ProfileSource.POWER_PROFILES_DAEMON,
                    3.0)  # fmt: skip
        assert monitor.snapshot.power_profile is PowerProfile.BALANCED  # the mock's default
        for system, ours in (("performance", PowerProfile.PERFORMANCE),
                             ("power-saver", PowerProfile.POWER_SAVER),
                             ("balanced", PowerProfile.BALANCED)):  # fmt: skip
            driver.system_profile(system)
            took = await until(lambda ours=ours: monitor.snapshot.power_profile is ours)
            assert took < 1.0
        # Our override beats the system; clearing it follows the system again.
        monitor.set_profile(PowerProfile.ULTRA_SAVER)
        driver.system_profile("performance")
        await asyncio.sleep(0.2)
        assert monitor.snapshot.power_profile is PowerProfile.ULTRA_SAVER
        monitor.clear_profile()
        assert monitor.snapshot.power_profile is PowerProfile.PERFORMANCE
        # A low battery does not overrule performance, which the user chose...
        driver.battery(15)
        await asyncio.sleep(0.3)
        assert monitor.snapshot.power_profile is PowerProfile.PERFORMANCE
        # ...but it does overrule balanced, within a second of the system's change.
        driver.system_profile("balanced")
        took = await until(lambda: monitor.snapshot.power_profile is PowerProfile.POWER_SAVER)
        assert took < 1.0 and monitor.snapshot.profile_source is ProfileSource.BATTERY
        # power-profiles-daemon leaves: the battery decides.
        ppd.stop()
        await until(lambda: "power-profiles-daemon" in monitor.snapshot.unavailable_sources)
        assert monitor.snapshot.profile_source is ProfileSource.BATTERY
        assert monitor.snapshot.power_profile is PowerProfile.POWER_SAVER


async def test_plugging_in_publishes_one_consistent_state(
    dev: FakeDevice, bus: Bus, upower: DbusMock
) -> None:
    """UPower tells a charger plug in several signals (State, then OnBattery): watchers
    get one snapshot with all of it, never the mix in between, and get it at once."""
    _, driver = bus
    driver.battery(50)
    async with running_monitor(config_for(dev, bus[0].address)) as monitor:
        await until(lambda: monitor.snapshot.power.on_battery, 3.0)
        async with monitor.events.subscribe() as changes:
            driver.battery(50, discharging=False)
            t0 = asyncio.get_running_loop().time()
            first = await asyncio.wait_for(changes.get(), 2.0)
            took = asyncio.get_running_loop().time() - t0
            await asyncio.sleep(0.3)
            later = []
            with contextlib.suppress(asyncio.QueueEmpty):
                while True:
                    later.append(changes.get_nowait())
        assert not first.power.on_battery and not first.power.discharging, first.power
        assert later == [], [s.power for s in later]
        assert took < 0.1


async def test_upower_leaves_and_comes_back(dev: FakeDevice, bus: Bus, upower: DbusMock) -> None:
    _, driver = bus
    dev.mains(True)
    dev.battery(status="Charging", capacity=70)
    driver.battery(15)
    async with running_monitor(config_for(dev, bus[0].address)) as monitor:
        await until(lambda: monitor.snapshot.power.source == "upower", 3.0)
        assert monitor.snapshot.power.battery_percent == 15.0
        upower.stop()
        # UPower is gone: sysfs speaks for the battery until it returns.
        await until(lambda: monitor.snapshot.power.source == "sysfs")
        assert "upower" in monitor.snapshot.unavailable_sources
        assert monitor.snapshot.power.battery_percent == 70.0
        upower.start(driver)
        await until(lambda: monitor.snapshot.power.source == "upower")
        assert "upower" not in monitor.snapshot.unavailable_sources
        driver.battery(42)
        await until(lambda: monitor.snapshot.power.battery_percent == 42.0)


async def test_system_bus_restart_reconnects(dev: FakeDevice, bus: Bus) -> None:
    system_bus, driver = bus
    mock = DbusMock(system_bus, "upower", UPOWER)
    mock.start(driver)
    async with running_monitor(config_for(dev, system_bus.address)) as monitor:
        await until(lambda: "upower" not in monitor.snapshot.unavailable_sources, 3.0)
        mock.stop()
        system_bus.stop()
        await until(lambda: "dbus" in monitor.snapshot.unavailable_sources, 3.0)
        assert monitor.bus is not None and "lost" in monitor.bus.error
        system_bus.start()  # same socket path, as after a restart of dbus.service
        mock.start(driver)
        driver.battery(33)
        await until(lambda: monitor.snapshot.power.battery_percent == 33.0, 5.0)
        assert "dbus" not in monitor.snapshot.unavailable_sources
        mock.stop()


async def test_no_system_bus_at_all(dev: FakeDevice, tmp_path: Path) -> None:
    config = config_for(dev, f"unix:path={tmp_path}/no-bus-here")
    config = type(config)(**{**config.__dict__, "dbus": True})
    async with running_monitor(config) as monitor:
        await until(lambda: monitor.bus is not None and "cannot connect" in monitor.bus.error)
        assert {"dbus", "upower", "power-profiles-daemon"} <= set(
            monitor.snapshot.unavailable_sources
        )


async def test_hold_performance_during_a_long_interactive_generation(
    dev: FakeDevice, bus: Bus, upower: DbusMock, ppd: DbusMock
) -> None:
    _, driver = bus
    config = config_for(dev, bus[0].address, hold_performance=True, hold_min_tokens=256)
    async with running_monitor(config) as monitor:
        await until(lambda: monitor.ppd.present, 3.0)
        async with monitor.generating(interactive=True, max_tokens=64):
            assert driver.ppd_props()["ActiveProfileHolds"] == []  # short: no hold
        async with monitor.generating(interactive=True, max_tokens=1000):
            holds = driver.ppd_props()["ActiveProfileHolds"]
            assert [(h["Profile"], h["ApplicationId"]) for h in holds] == [
                ("performance", "rustaid")
            ]
        assert driver.ppd_props()["ActiveProfileHolds"] == []
        async with monitor.generating(interactive=False, max_tokens=1000):
            assert driver.ppd_props()["ActiveProfileHolds"] == []  # background: no hold
        driver.battery(50)  # on battery: no hold either
        await until(lambda: monitor.snapshot.power.on_battery)
        async with monitor.generating(interactive=True, max_tokens=1000):
            assert driver.ppd_props()["ActiveProfileHolds"] == []


async def test_background_requests_wait_for_the_battery(
    dev: FakeDevice, bus: Bus, upower: DbusMock
) -> None:
    _, driver = bus
    driver.battery(15)
    async with running_monitor(config_for(dev, bus[0].address)) as monitor:
        policy = InferencePolicy(monitor, default_max_tokens=512)
        await until(lambda: monitor.snapshot.power.source == "upower", 3.0)
        waiting = asyncio.ensure_future(policy.wait_for_background_allowed())
        await asyncio.sleep(0.3)
        assert not waiting.done()
        assert "battery low" in policy.background_wait()
        driver.battery(15, discharging=False)  # plugged in
        waited = await asyncio.wait_for(waiting, 1.0)
        assert waited >= 0.3
        assert await policy.wait_for_background_allowed() == 0.0
        # A client that goes away cancels its wait.
        driver.battery(10)
        await until(lambda: policy.background_wait() != "")
        waiting = asyncio.ensure_future(policy.wait_for_background_allowed())
        await asyncio.sleep(0.05)
        waiting.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await waiting


async def test_memory_pressure_from_psi(dev: FakeDevice) -> None:
    async with running_monitor(config_for(dev)) as monitor:
        assert monitor.snapshot.memory.pressure is PressureLevel.NORMAL
        dev.psi(some=55.0, full=3.0)
        s = await monitor.refresh()
        assert s.memory.pressure is PressureLevel.CRITICAL
        assert "stalled on memory 55.0 %" in s.memory.reason
        dev.psi(some=0.0, full=0.0)
        dev.meminfo(total_kib=8_000_000, available_kib=1_000_000)  # 12.5 % available
        s = await monitor.refresh()
        assert s.memory.pressure is PressureLevel.WARNING and "12.5 %" in s.memory.reason


@pytest.mark.skipif(os.geteuid() != 0, reason="PSI triggers with a 2 s window need root here")
async def test_psi_trigger_arms_on_the_real_proc(dev: FakeDevice) -> None:
    config = config_for(dev, proc_root=Path("/proc"))
    async with running_monitor(config) as monitor:
        assert monitor.psi is not None and monitor.psi.armed, monitor.psi and monitor.psi.error
        assert "psi-trigger" not in monitor.snapshot.unavailable_sources
        assert monitor.snapshot.memory.total_bytes > 0
    assert not monitor.psi.armed  # released on stop


async def test_monitor_state_survives_restart(dev: FakeDevice, tmp_path: Path) -> None:
    async with running_monitor(config_for(dev), state_dir=tmp_path) as monitor:
        monitor.set_profile(PowerProfile.POWER_SAVER)
    monitor = ResourceMonitor(config_for(dev), state_dir=tmp_path, cores=4)
    monitor.start()
    try:
        assert monitor.snapshot.power_profile is PowerProfile.POWER_SAVER
        assert monitor.snapshot.profile_source is ProfileSource.OVERRIDE
    finally:
        await monitor.stop()


class NvidiaLikeMonitor(ResourceMonitorPlugin):
    """A resource-monitor plugin as a GPU vendor's would be (see docs/plugins.md)."""

    name = "gpu-vendor"

    def __init__(self) -> None:
        self.readings: Any = {"gpus": [{"name": "GPU 0", "memory_total_bytes": 8 << 30,
                                        "memory_used_bytes": 3 << 30,
                                        "utilization_percent": 40.0}]}  # fmt: skip

    def read(self) -> Any:
        if isinstance(self.readings, Exception):
            raise self.readings
        return self.readings


async def test_gpus_from_resource_monitor_plugins(dev: FakeDevice) -> None:
    plugin = NvidiaLikeMonitor()
    monitor = ResourceMonitor(config_for(dev), cores=4, plugin_monitors=lambda: {"gpu": plugin})
    monitor.start()
    try:
        [gpu] = monitor.snapshot.gpus
        assert (gpu.name, gpu.memory_used_bytes, gpu.utilization_percent) == (
            "GPU 0",
            3 << 30,
            40.0,
        )
        plugin.readings = OSError("no driver loaded")
        s = await monitor.refresh()
        assert s.gpus == () and "gpu" in s.unavailable_sources
        plugin.readings = {"gpus": [{"name": "GPU 0", "utilization_percent": 900}]}
        s = await monitor.refresh()
        assert s.gpus == () and "gpu" in s.unavailable_sources
        plugin.readings = RuntimeError("driver bug")
        s = await monitor.refresh()
        assert s.gpus == () and "gpu" in s.unavailable_sources
    finally:
        await monitor.stop()
