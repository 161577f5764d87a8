"""A rate-of-rise estimate that acts before the trip point: a zone heating fast counts
as at the state it is about to reach. Pure checks of the slope and the forecast, then a
real daemon whose fake thermal zone the test heats step by step."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from rustaid_client.cli import main
from rustaid_client.client import Client

from rustaid.api.v1 import resources_pb2 as R
from rustaid.power.config import PowerConfig
from rustaid.power.snapshot import ThermalState, ThermalZone, TripPoint
from rustaid.power.thermal import rising_state
from rustaid.power.trend import ThermalTrend
from rustaid.testing.daemon import run_daemon
from tests.conftest import add_model
from tests.power.bus import eventually
from tests.power.fakesys import FakeDevice

TRIPS = (TripPoint("passive", 80.0), TripPoint("critical", 100.0))


def zone(temp: float) -> ThermalZone:
    return ThermalZone("thermal_zone0", "cpu-thermal", temp, TRIPS)


def test_the_slope_is_fitted_over_the_recent_readings() -> None:
    trend = ThermalTrend(window_s=5.0)
    trend.add(0.0, [zone(60)])
    trend.add(0.5, [zone(62)])
    assert trend.slopes() == {}  # too few readings for a rate
    for i in range(2, 8):
        trend.add(i * 0.5, [zone(60 + 4 * i * 0.5)])
    assert abs(trend.slopes()["thermal_zone0"] - 4.0) < 1e-9
    trend.add(20.0, [zone(74)])  # the old readings fall out of the window
    assert trend.slopes() == {}
    trend.add(21.0, [])  # a zone that vanished is forgotten
    assert trend._samples == {}


def test_a_fast_rise_forecasts_the_state_it_reaches_within_the_horizon() -> None:
    config = PowerConfig()  # rise_horizon_s = 5
    slopes = {"thermal_zone0": 4.0}
    state, why = rising_state([zone(78)], slopes, config)
    # 78 + 4 x 5 = 98: past Critical (95, within 5 C of the critical trip).
    assert state is ThermalState.CRITICAL
    assert why == (
        "cpu-thermal at 78.0 C rising 4.0 C/s, within 5 C of its critical trip 100 C in 4.2 s"
    )
    state, why = rising_state([zone(70)], slopes, config)  # 90: Serious only
    assert state is ThermalState.SERIOUS
    assert "reaching its passive trip 80 C in 2.5 s" in why
    assert rising_state([zone(70)], {"thermal_zone0": 0.1}, config)[0] is ThermalState.NOMINAL
    assert rising_state([zone(59)], slopes, config)[0] is ThermalState.NOMINAL  # 79 C in 5 s
    off = PowerConfig(rise_horizon_s=0)
    assert rising_state([zone(78)], slopes, off)[0] is ThermalState.NOMINAL


def test_the_policy_acts_before_the_trip_point(
    tmp_path: Path, model_files: dict[str, Path], capsys: pytest.CaptureFixture[str]
) -> None:
    dev = FakeDevice(tmp_path / "device")
    dev.zone(0, "cpu-thermal", 50.0, [("passive", 80), ("critical", 100)])
    data = tmp_path / "data"
    add_model(data, model_files["tiny"])
    (data / "config").mkdir(parents=True, exist_ok=True)
    (data / "config" / "rustaid.toml").write_text(
        f"[power]\n{dev.toml()}dbus = false\nshare_cpu = false\npoll_quick_s = 0.2\n"
    )
    with run_daemon(data) as daemon, Client(daemon.address, timeout=60) as client:
        client.generate("hi", "tiny", max_tokens=2)  # loaded before the heat
        # Heat 50 -> 74 C at about 10 C/s, still below the passive trip (80 C).
        for temp in range(50, 75, 4):
            dev.temp(0, temp)
            time.sleep(0.4)
        done = client.generate("hi", "tiny", max_tokens=300)
        capped = [a for a in done.adjustments if a.startswith("max_tokens")]
        assert capped and " -> 50: thermal state critical expected (cpu-thermal at 7" in capped[0]
        assert "C/s, within 5 C of its critical trip 100 C in " in capped[0], capped
        thermal = client.get_snapshot().snapshot.thermal
        assert thermal.state == R.THERMAL_STATE_FAIR  # not Critical itself, nor Serious
        assert thermal.rising_state == R.THERMAL_STATE_CRITICAL
        assert "C/s, within 5 C of its critical trip 100 C in " in thermal.rising_reason
        assert main(["--address", daemon.address, "resources"]) == 0
        assert "heating:     critical expected: cpu-thermal at 7" in capsys.readouterr().out
        assert "heating fast: acting as if critical" in daemon.stderr()

        # Steady at 74 C, the forecast goes once the rise leaves the window.
        def steady() -> bool:
            done = client.generate("hi", "tiny", max_tokens=300)
            return not any("expected" in a for a in done.adjustments)

        eventually(steady, 15.0, 0.5)
        thermal = client.get_snapshot().snapshot.thermal
        assert (thermal.rising_state, thermal.rising_reason) == (R.THERMAL_STATE_UNSPECIFIED, "")


def test_every_rule_acts_on_the_forecast_but_the_refusal() -> None:
    from rustaid.core.scheduler import Priority
    from rustaid.power.policy import adapt, parallel_cap, prefer_small_reason
    from rustaid.power.profiles import ProfileManager
    from rustaid.power.snapshot import PowerStatus, ResourceSnapshot, ThermalStatus
    from rustaid.providers import GenerationParams

    config = PowerConfig()
    why = "cpu-thermal at 74.0 C rising 9.0 C/s, within 5 C of its critical trip 100 C in 2.3 s"
    snapshot = ResourceSnapshot(
        thermal=ThermalStatus(
            state=ThermalState.FAIR,
            reason="cpu-thermal at 74.0 C, within 10 C of throttling",
            rising_state=ThermalState.CRITICAL,
            rising_reason=why,
        )
    )
    active = ProfileManager(config, 4).resolve(PowerStatus(), "")
    a = adapt(
        snapshot, active, GenerationParams(max_tokens=300), Priority.BACKGROUND,
        threads=4, cores=4, default_max_tokens=512, config=config,
    )  # fmt: skip
    expected = f"thermal state critical expected ({why})"
    assert a.params.max_tokens == 50 and a.threads == 1 and a.batch_size == 1
    assert f"max_tokens 300 -> 50: {expected}" in a.messages
    assert a.background_wait == expected
    assert a.local_refused == ""  # refused only at Critical itself
    assert parallel_cap(snapshot, active, config) == (1, expected)
    assert prefer_small_reason(snapshot, active) == expected
