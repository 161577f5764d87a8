"""Power profiles, the adaptive inference policy (a pure function), metrics and the
[power] settings."""

from __future__ import annotations

import itertools
from dataclasses import replace
from pathlib import Path

import pytest

from rustaid.core.metrics import Metrics
from rustaid.core.scheduler import Priority
from rustaid.errors import InvalidArgument
from rustaid.power.config import PowerConfig, power_config
from rustaid.power.policy import Adjusted, adapt
from rustaid.power.profiles import ProfileManager, ProfileParameters, profile_parameters
from rustaid.power.snapshot import (
    BatteryState,
    MemoryStatus,
    PowerProfile,
    PowerStatus,
    PressureLevel,
    ProfileSource,
    ResourceSnapshot,
    ThermalState,
    ThermalStatus,
)
from rustaid.providers import CompletionStats, FinishReason, GenerationParams

CONFIG = PowerConfig()
CORES = 4
ON_AC = PowerStatus(battery_present=True, ac_online=True, battery_percent=90,
                    battery_state=BatteryState.CHARGING, source="upower")  # fmt: skip


def battery(percent: float, warning: int = 1) -> PowerStatus:
    return PowerStatus(
        battery_present=True,
        on_battery=True,
        battery_percent=percent,
        battery_state=BatteryState.DISCHARGING,
        warning_level=warning,
        power_draw_w=8.0,
        source="upower",
    )


def manager(tmp_path: Path | None = None) -> ProfileManager:
    return ProfileManager(CONFIG, CORES, tmp_path / "power-profile.json" if tmp_path else None)


# -- profiles ---------------------------------------------------------------------------------


def test_profile_table() -> None:
    perf = profile_parameters(PowerProfile.PERFORMANCE, 8)
    ultra = profile_parameters(PowerProfile.ULTRA_SAVER, 8)
    assert (perf.threads, perf.use_gpu, perf.prefer_remote) == (8, True, False)
    assert profile_parameters(PowerProfile.BALANCED, 8).threads == 8
    assert profile_parameters(PowerProfile.POWER_SAVER, 8).threads == 4
    assert (ultra.threads, ultra.use_gpu, ultra.caching, ultra.background_inference) == (
        1, False, False, False,
    )  # fmt: skip
    # Every profile saves more than the one before it.
    order = [PowerProfile.PERFORMANCE, PowerProfile.BALANCED, PowerProfile.POWER_SAVER,
             PowerProfile.ULTRA_SAVER]  # fmt: skip
    for a, b in itertools.pairwise(order):
        pa, pb = profile_parameters(a, 8), profile_parameters(b, 8)
        assert pb.threads <= pa.threads and pb.max_local_tokens < pa.max_local_tokens
        assert pb.context_length < pa.context_length and pb.batch_size < pa.batch_size
    assert profile_parameters(PowerProfile.POWER_SAVER, 1).threads == 1


@pytest.mark.parametrize(
    ("power", "profile", "source"),
    [
        (PowerStatus(), PowerProfile.BALANCED, ProfileSource.DEFAULT),
        (ON_AC, PowerProfile.BALANCED, ProfileSource.BATTERY),
        (battery(60), PowerProfile.BALANCED, ProfileSource.BATTERY),
        (battery(20), PowerProfile.POWER_SAVER, ProfileSource.BATTERY),
        (battery(15), PowerProfile.POWER_SAVER, ProfileSource.BATTERY),
        (battery(50, warning=3), PowerProfile.POWER_SAVER, ProfileSource.BATTERY),
        (battery(9), PowerProfile.ULTRA_SAVER, ProfileSource.BATTERY),
        (battery(40, warning=4), PowerProfile.ULTRA_SAVER, ProfileSource.BATTERY),
    ],
)
def test_profile_follows_the_battery_without_power_profiles_daemon(
    power: PowerStatus, profile: PowerProfile, source: ProfileSource
) -> None:
    active = manager().resolve(power, "")
    assert (active.profile, active.source) == (profile, source)
    assert active.reason


def test_profile_follows_power_profiles_daemon_then_override(tmp_path: Path) -> None:
    m = manager(tmp_path)
    assert m.resolve(battery(15), "performance").profile is PowerProfile.PERFORMANCE
    assert m.resolve(ON_AC, "power-saver").profile is PowerProfile.POWER_SAVER
    # An unknown system profile is ignored (battery rules apply).
    assert m.resolve(battery(15), "turbo").source is ProfileSource.BATTERY
    m.set_override(PowerProfile.ULTRA_SAVER)
    active = m.resolve(ON_AC, "performance")
    assert (active.profile, active.source) == (PowerProfile.ULTRA_SAVER, ProfileSource.OVERRIDE)
    # The override survives a restart, until cleared.
    assert manager(tmp_path).resolve(ON_AC, "").profile is PowerProfile.ULTRA_SAVER
    m.clear_override()
    assert manager(tmp_path).resolve(ON_AC, "performance").source is (
        ProfileSource.POWER_PROFILES_DAEMON
    )


@pytest.mark.parametrize(
    ("power", "ppd", "profile", "source"),
    [
        # A low battery outranks the system's balanced profile...
        (battery(5), "balanced", PowerProfile.ULTRA_SAVER, ProfileSource.BATTERY),
        (battery(15), "balanced", PowerProfile.POWER_SAVER, ProfileSource.BATTERY),
        (battery(5), "power-saver", PowerProfile.ULTRA_SAVER, ProfileSource.BATTERY),
        # ...not a profile that saves as much, nor performance the user asked for...
        (battery(15), "power-saver", PowerProfile.POWER_SAVER, ProfileSource.POWER_PROFILES_DAEMON),
        (battery(5), "performance", PowerProfile.PERFORMANCE, ProfileSource.POWER_PROFILES_DAEMON),
        # ...and only while it discharges.
        (replace(battery(5), on_battery=False, battery_state=BatteryState.CHARGING),
         "balanced", PowerProfile.BALANCED, ProfileSource.POWER_PROFILES_DAEMON),
    ],
)  # fmt: skip
def test_low_battery_wins_over_the_system_profile_unless_performance(
    power: PowerStatus, ppd: str, profile: PowerProfile, source: ProfileSource
) -> None:
    active = manager().resolve(power, ppd)
    assert (active.profile, active.source) == (profile, source), active.reason
    if source is ProfileSource.BATTERY:
        assert f"over the system profile {ppd}" in active.reason


def test_custom_profile_validation(tmp_path: Path) -> None:
    m = manager(tmp_path)
    good = ProfileParameters(3, False, True, 100, 16, 512, False, False)
    m.set_override(PowerProfile.CUSTOM, good)
    assert manager(tmp_path).resolve(ON_AC, "").parameters == good
    with pytest.raises(InvalidArgument) as e:
        m.set_override(PowerProfile.CUSTOM, replace(good, threads=0))
    assert e.value.field == "custom.threads" and "between 1" in e.value.message
    for name, value in (("max_local_tokens", 0), ("batch_size", 0), ("context_length", 8)):
        with pytest.raises(InvalidArgument) as e:
            m.set_override(PowerProfile.CUSTOM, replace(good, **{name: value}))
        assert e.value.field == f"custom.{name}"
    with pytest.raises(InvalidArgument, match="needs its parameters"):
        m.set_override(PowerProfile.CUSTOM, None)
    with pytest.raises(InvalidArgument, match="only apply to POWER_PROFILE_CUSTOM"):
        m.set_override(PowerProfile.BALANCED, good)
    # The failed calls left the earlier override alone.
    assert manager(tmp_path).resolve(ON_AC, "").parameters == good


def test_corrupt_saved_profile_is_ignored(tmp_path: Path) -> None:
    (tmp_path / "power-profile.json").write_text('{"profile": "custom", "custom": {"threads": 0')
    assert manager(tmp_path).override is None
    (tmp_path / "power-profile.json").write_text('{"profile": "warp-speed"}')
    assert manager(tmp_path).resolve(ON_AC, "").source is ProfileSource.BATTERY


# -- policy -----------------------------------------------------------------------------------


def snap(
    thermal: ThermalState = ThermalState.NOMINAL,
    power: PowerStatus = ON_AC,
    pressure: PressureLevel = PressureLevel.NORMAL,
) -> ResourceSnapshot:
    return ResourceSnapshot(
        time=1.0,
        thermal=ThermalStatus(state=thermal, reason="cpu-thermal at 99.0 C"),
        power=power,
        memory=MemoryStatus(pressure=pressure, reason="tasks stalled"),
    )


def run(
    s: ResourceSnapshot,
    max_tokens: int | None = 400,
    priority: Priority = Priority.INTERACTIVE,
    threads: int = 0,
    profile: PowerProfile | None = None,
) -> Adjusted:
    m = manager()
    if profile is not None:
        m.set_override(profile)
    active = m.resolve(s.power, "")
    return adapt(
        s,
        active,
        GenerationParams(max_tokens=max_tokens, temperature=0.5),
        priority,
        threads=threads,
        cores=CORES,
        default_max_tokens=512,
        config=CONFIG,
    )


def test_nothing_changes_on_a_healthy_device() -> None:
    a = run(snap())
    assert a.adjustments == ()
    assert a.params.max_tokens == 400 and a.params.temperature == 0.5
    assert a.threads == 0  # the engine's own default stays
    assert a.background_wait == "" and a.local_refused == ""


def test_thermal_critical() -> None:
    a = run(snap(ThermalState.CRITICAL))
    assert a.params.max_tokens == 50
    assert (a.batch_size, a.use_gpu, a.threads) == (1, False, 1)
    messages = a.messages
    assert any(
        m.startswith("max_tokens 400 -> 50: thermal state critical (cpu-thermal") for m in messages
    )
    assert any(m.startswith("use_gpu yes -> no") for m in messages)
    # Only remote models may start now.
    assert a.local_refused.startswith("thermal state critical (cpu-thermal")


def test_thermal_serious_keeps_small_requests() -> None:
    a = run(snap(ThermalState.SERIOUS))
    assert a.params.max_tokens == 200 and a.threads == 2
    small = run(snap(ThermalState.SERIOUS), max_tokens=20, threads=1)
    assert small.params.max_tokens == 20 and small.threads == 1
    assert small.adjustments == ()
    assert a.local_refused == small.local_refused == ""


def test_default_max_tokens_is_capped_and_said_so() -> None:
    a = run(snap(ThermalState.SERIOUS), max_tokens=None)
    assert a.params.max_tokens == 200
    assert "max_tokens 512 (default) -> 200" in a.messages[0]
    plain = run(snap(), max_tokens=None)
    assert plain.params.max_tokens == 512 and plain.adjustments == ()


def test_low_battery_discharging() -> None:
    a = run(snap(power=battery(15)), max_tokens=100)
    assert a.threads == 2 and a.prefer_remote
    # PowerSaver (from the battery) also caps tokens at 256; 100 is below.
    assert a.params.max_tokens == 100
    assert any("battery low (15 % and discharging)" in m for m in a.messages)
    # Same charge while charging: no battery rule.
    charging = replace(battery(15), on_battery=False, battery_state=BatteryState.CHARGING)
    assert run(snap(power=charging), max_tokens=100).threads == 0


def test_memory_pressure() -> None:
    warning = run(snap(pressure=PressureLevel.WARNING))
    assert warning.context_cap == 2048 and not warning.caching
    critical = run(snap(pressure=PressureLevel.CRITICAL))
    assert critical.context_cap == 1024
    assert any(m.startswith("caching on -> off: memory pressure critical")
               for m in critical.messages)  # fmt: skip
    assert run(snap()).context_cap == 4096  # Balanced's


def test_profile_caps() -> None:
    a = run(snap(), max_tokens=5000, profile=PowerProfile.ULTRA_SAVER)
    assert a.params.max_tokens == 64 and a.threads == 1 and a.context_cap == 1024
    assert "power profile ultra_saver" in a.messages[0]
    # The lowest cap names its reason.
    b = run(snap(ThermalState.CRITICAL), max_tokens=5000, profile=PowerProfile.ULTRA_SAVER)
    assert b.params.max_tokens == 50 and "thermal" in b.messages[0]


def test_busy_neighbours_take_threads_away() -> None:
    from rustaid.power.snapshot import CpuStatus

    busy = replace(snap(), cpu=CpuStatus(cores=CORES, others_busy_cores=1.2))
    a = run(busy)
    assert a.threads == CORES - 1
    assert any(
        m.startswith(f"threads {CORES} -> {CORES - 1}: other processes busy (1.2 cores)")
        for m in a.messages
    ), a.messages
    # A little background noise is not "busy".
    quiet = replace(snap(), cpu=CpuStatus(cores=CORES, others_busy_cores=0.3))
    assert run(quiet).threads == 0
    # Never below one thread.
    swamped = replace(snap(), cpu=CpuStatus(cores=CORES, others_busy_cores=CORES + 3.0))
    assert run(swamped).threads == 1


def test_background_requests_wait() -> None:
    bg = Priority.BACKGROUND
    assert run(snap(), priority=bg).background_wait == ""
    assert "battery low" in run(snap(power=battery(15)), priority=bg).background_wait
    assert "thermal state serious" in run(snap(ThermalState.SERIOUS), priority=bg).background_wait
    saver = run(snap(), priority=bg, profile=PowerProfile.POWER_SAVER)
    assert "no background inference" in saver.background_wait
    # Interactive requests never wait.
    assert run(snap(ThermalState.CRITICAL)).background_wait == ""


# -- metrics ----------------------------------------------------------------------------------


class _T:
    def __init__(self, ttft: float, tps: float) -> None:
        self.time_to_first_token_ms = ttft
        self.tokens_per_second = tps
        self.load_ms = 0.0


def test_metrics() -> None:
    draw: list[float | None] = [None]
    m = Metrics(power_draw_w=lambda: draw[0])
    stats = CompletionStats(FinishReason.LENGTH, 10, 50, 100.0, 1000.0)
    m.record("a", stats, _T(120.0, 49.0))
    draw[0] = 10.0  # now on battery, drawing 10 W
    m.record("a", stats, _T(80.0, 51.0))
    m.record_error("a")
    m.record("b", stats, _T(0.0, 0.0))
    a = m.model("a")
    assert a is not None
    assert (a.requests, a.errors, a.prompt_tokens, a.completion_tokens) == (3, 1, 20, 100)
    assert a.tokens_per_second == pytest.approx(50.0)
    assert a.time_to_first_token_ms == pytest.approx(100.0)
    assert a.energy_joules == pytest.approx(11.0)  # 10 W x 1.1 s, the measured one only
    assert a.joules_per_token == pytest.approx(11.0 / 50)
    assert 49.0 < a.recent_tokens_per_second < 51.0
    assert (m.requests, m.errors) == (4, 1)
    since = m.since
    m.reset()
    assert m.models() == [] and m.requests == 0 and m.since >= since


# -- settings ---------------------------------------------------------------------------------


def test_power_settings() -> None:
    c = power_config({"sys_root": "/x/sys", "poll_idle_s": 5, "low_battery_percent": 30})
    assert c.sys_root == Path("/x/sys") and c.poll_idle_s == 5.0 and c.low_battery_percent == 30
    for bad, field in (
        ({"sys_root": "relative"}, "power.sys_root"),
        ({"poll_idle_s": 0}, "power.poll_idle_s"),
        ({"poll_idle_s": "fast"}, "power.poll_idle_s"),
        ({"low_battery_percent": 120}, "power.low_battery_percent"),
        ({"critical_battery_percent": 50}, "power.critical_battery_percent"),
        ({"default_profile": "turbo"}, "power.default_profile"),
        ({"no_such_key": 1}, "power.no_such_key"),
        ({"dbus": "yes"}, "power.dbus"),
    ):
        with pytest.raises(InvalidArgument) as e:
            power_config(bad)
        assert e.value.field == field, bad
    with pytest.raises(InvalidArgument):
        power_config(["not", "a", "table"])


def test_default_profile_in_either_spelling() -> None:
    """power-profiles-daemon writes power-saver, our enum power_saver: both work."""
    for name in ("power-saver", "power_saver"):
        config = power_config({"default_profile": name})
        manager = ProfileManager(config, CORES, None)
        assert manager.resolve(PowerStatus(), "").profile is PowerProfile.POWER_SAVER
    with pytest.raises(InvalidArgument) as e:
        power_config({"default_profile": "turbo"})
    assert "power-saver, ultra-saver (got 'turbo')" in e.value.message


def test_bus_address_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("DBUS_SYSTEM_BUS_ADDRESS", "unix:path=/tmp/from-env")
    assert PowerConfig().bus_address == "unix:path=/tmp/from-env"
    assert PowerConfig(system_bus_address="unix:path=/x").bus_address == "unix:path=/x"
    monkeypatch.delenv("DBUS_SYSTEM_BUS_ADDRESS")
    assert PowerConfig().bus_address == "unix:path=/run/dbus/system_bus_socket"
