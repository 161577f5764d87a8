"""sysfs and /proc readers on a fake tree, garbage included, and the thermal state and
memory pressure derived from them."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from rustaid.power.config import PowerConfig
from rustaid.power.memory import pressure_level, read_memory
from rustaid.power.snapshot import (
    BatteryState,
    PressureLevel,
    ThermalState,
    ThermalZone,
    Throttling,
    TripPoint,
)
from rustaid.power.sysfs import (
    FileReader,
    read_cpu_frequency,
    read_gpus,
    read_power_supplies,
    read_thermal_zones,
    read_throttling,
)
from rustaid.power.thermal import thermal_state
from tests.power.fakesys import FakeDevice

CONFIG = PowerConfig()


@pytest.fixture
def dev(tmp_path: Path) -> FakeDevice:
    return FakeDevice(tmp_path)


def test_thermal_zones_with_trip_points(dev: FakeDevice) -> None:
    dev.zone(0, "acpitz", 45.5, [("critical", 105), ("passive", 90), ("active", 60)])
    dev.zone(10, "x86_pkg_temp", 51.0)  # natural order: zone10 after zone2
    dev.zone(2, "cpu-thermal", 48.0, [("critical", 110)])
    zones, ok = read_thermal_zones(dev.sys, FileReader())
    assert ok
    assert [z.name for z in zones] == ["thermal_zone0", "thermal_zone2", "thermal_zone10"]
    assert zones[0].temperature_c == 45.5 and zones[0].type == "acpitz"
    assert [(t.type, t.temperature_c) for t in zones[0].trip_points] == [
        ("critical", 105.0),
        ("passive", 90.0),
        ("active", 60.0),
    ]


@pytest.mark.parametrize(
    "garbage", ["", "\n", "hot", "-999999999", "99999999999", "4e4", "\x00\xff"]
)
def test_garbage_temperature_skips_the_zone_and_is_logged_once(
    dev: FakeDevice, garbage: str, caplog: pytest.LogCaptureFixture
) -> None:
    dev.zone(0, "good", 40.0)
    dev.zone(1, "bad", 40.0)
    dev.raw("class/thermal/thermal_zone1/temp", garbage)
    reader = FileReader()
    with caplog.at_level(logging.WARNING):
        for _ in range(3):
            zones, _ = read_thermal_zones(dev.sys, reader)
            assert [z.type for z in zones] == ["good"]
    warnings = [r for r in caplog.records if "thermal_zone1/temp" in r.getMessage()]
    assert len(warnings) == 1, "a bad file is reported once, not at every poll"
    # It recovers when the file does.
    dev.temp(1, 42.0)
    zones, _ = read_thermal_zones(dev.sys, reader)
    assert [z.temperature_c for z in zones] == [40.0, 42.0]


def test_disabled_and_garbage_trip_points_are_ignored(dev: FakeDevice) -> None:
    d = dev.zone(0, "soc", 50.0, [("critical", 0), ("passive", -273.2), ("hot", 5000)])
    dev.raw(f"class/thermal/{d.name}/trip_point_3_type", "passive")
    dev.raw(f"class/thermal/{d.name}/trip_point_3_temp", "garbage")
    dev.raw(f"class/thermal/{d.name}/trip_point_4_temp", "80000")  # no type file
    zones, _ = read_thermal_zones(dev.sys, FileReader())
    assert zones[0].trip_points == ()


def test_vanished_zone_and_missing_tree(dev: FakeDevice, tmp_path: Path) -> None:
    dev.zone(0, "a", 40.0)
    dev.zone(1, "b", 41.0)
    dev.remove_zone(0)
    zones, ok = read_thermal_zones(dev.sys, FileReader())
    assert ok and [z.type for z in zones] == ["b"]
    assert read_thermal_zones(tmp_path / "nowhere", FileReader()) == ([], False)


def test_throttling_bits_and_under_voltage_alarm(dev: FakeDevice) -> None:
    assert read_throttling(dev.sys, FileReader()) is None  # not a Raspberry Pi
    dev.throttled(0x50005)  # under-voltage + throttled now, and both occurred
    t = read_throttling(dev.sys, FileReader())
    assert t is not None
    assert t.under_voltage and t.throttled and not t.frequency_capped
    assert t.under_voltage_occurred and t.throttled_occurred
    assert not t.soft_temperature_limit_occurred
    dev.throttled(0)
    dev.lcrit_alarm(True)
    t = read_throttling(dev.sys, FileReader())
    assert t is not None and t.under_voltage and not t.throttled
    dev.raw("devices/platform/soc/soc:firmware/get_throttled", "throttled=0x8")
    dev.lcrit_alarm(False)
    t = read_throttling(dev.sys, FileReader())
    assert t == Throttling.from_bits(0x8)
    for garbage in ("", "zz", "-1", "0x1ffffffff"):
        dev.raw("devices/platform/soc/soc:firmware/get_throttled", garbage)
        t = read_throttling(dev.sys, FileReader())
        assert t is not None and not t.active  # the alarm file alone still counts


def test_cpu_frequency(dev: FakeDevice) -> None:
    assert read_cpu_frequency(dev.sys, FileReader()) is None
    dev.cpufreq(0, 1_200_000, 2_400_000)
    dev.cpufreq(1, 1_800_000, 3_000_000)
    dev.raw("devices/system/cpu/cpu2/cpufreq/scaling_cur_freq", "-5")
    assert read_cpu_frequency(dev.sys, FileReader()) == (1500.0, 3000.0)


def test_battery_and_mains(dev: FakeDevice) -> None:
    assert read_power_supplies(dev.sys, FileReader()) is None
    dev.mains(False)
    dev.battery(capacity=15, energy_full_uwh=50_000_000, power_uw=10_000_000)
    # A wireless mouse's battery is not the system's.
    dev.raw("class/power_supply/hidpp_battery_0/type", "Battery")
    dev.raw("class/power_supply/hidpp_battery_0/scope", "Device")
    dev.raw("class/power_supply/hidpp_battery_0/capacity", "100")
    p = read_power_supplies(dev.sys, FileReader())
    assert p is not None
    assert p.battery_present and p.on_battery and not p.ac_online
    assert p.battery_state is BatteryState.DISCHARGING
    assert p.battery_percent == pytest.approx(15.0)
    assert p.power_draw_w == pytest.approx(10.0)
    assert p.time_to_empty_s == pytest.approx(7.5 / 10 * 3600)
    assert p.energy_full_wh == pytest.approx(50.0)
    assert p.source == "sysfs"
    dev.mains(True)
    dev.battery(status="Charging", capacity=16)
    p = read_power_supplies(dev.sys, FileReader())
    assert p is not None and p.ac_online and not p.on_battery
    assert p.battery_state is BatteryState.CHARGING and p.power_draw_w == 0


def test_battery_garbage(dev: FakeDevice) -> None:
    dev.battery(capacity=50)
    base = "class/power_supply/BAT0/"
    dev.raw(base + "capacity", "lots")
    dev.raw(base + "energy_now", "")
    dev.raw(base + "power_now", "123456789012345678")  # beyond any battery
    dev.raw(base + "status", "Exploding")
    p = read_power_supplies(dev.sys, FileReader())
    assert p is not None and p.battery_present
    assert p.battery_percent == 0.0 and p.power_draw_w == 0.0
    assert p.battery_state is BatteryState.UNKNOWN
    # Negative power (some drivers) counts as a draw.
    dev.battery(capacity=50, power_uw=-7_000_000)
    p = read_power_supplies(dev.sys, FileReader())
    assert p is not None and p.power_draw_w == pytest.approx(7.0)


def test_gpu_memory(dev: FakeDevice) -> None:
    dev.amdgpu(0, total=8 << 30, used=1 << 30, busy=37)
    dev.raw("class/drm/card0-HDMI-A-1/status", "connected")
    gpus = read_gpus(dev.sys, FileReader())
    assert [(g.name, g.memory_total_bytes, g.memory_used_bytes, g.utilization_percent)
            for g in gpus] == [("card0", 8 << 30, 1 << 30, 37.0)]  # fmt: skip


def test_memory_from_a_fake_proc(dev: FakeDevice) -> None:
    dev.meminfo(total_kib=4_000_000, available_kib=3_000_000)
    dev.psi(some=1.5, full=0.2)
    m, missing = read_memory(dev.proc, FileReader(), CONFIG)
    assert missing == []
    assert m.total_bytes == 4_000_000 * 1024 and m.available_bytes == 3_000_000 * 1024
    assert m.used_bytes == 1_000_000 * 1024
    assert (m.psi_some_avg10, m.psi_full_avg10) == (1.5, 0.2)
    assert m.pressure is PressureLevel.NORMAL


def test_memory_garbage(dev: FakeDevice) -> None:
    dev.raw("../proc/meminfo", "MemTotal: lots\n")
    (dev.proc / "pressure" / "memory").write_text("some avg10=-4 avg60=0\n")
    m, missing = read_memory(dev.proc, FileReader(), CONFIG)
    assert set(missing) == {"meminfo", "psi"}
    assert m.pressure is PressureLevel.NORMAL and m.total_bytes == 0


def test_memory_of_this_machine() -> None:
    """The real /proc through psutil."""
    m, _ = read_memory(Path("/proc"), FileReader(), CONFIG)
    assert m.total_bytes > 100 << 20
    assert 0 < m.available_bytes <= m.total_bytes


@pytest.mark.parametrize(
    ("available", "psi", "level"),
    [
        (50, (0.0, 0.0), PressureLevel.NORMAL),
        (50, (12.0, 0.0), PressureLevel.WARNING),
        (14, None, PressureLevel.WARNING),
        (50, (45.0, 0.0), PressureLevel.CRITICAL),
        (50, (20.0, 11.0), PressureLevel.CRITICAL),
        (4, (0.0, 0.0), PressureLevel.CRITICAL),
    ],
)
def test_pressure_thresholds(
    available: int, psi: tuple[float, float] | None, level: PressureLevel
) -> None:
    got, reason = pressure_level(100, available, psi, CONFIG)
    assert got is level
    assert bool(reason) == (level is not PressureLevel.NORMAL)


def _zone(temp: float, *trips: tuple[str, float], hyst: float = 0.0) -> ThermalZone:
    return ThermalZone(
        "thermal_zone0", "cpu-thermal", temp, tuple(TripPoint(k, t, hyst) for k, t in trips)
    )


@pytest.mark.parametrize(
    ("temp", "state"),
    [(60, ThermalState.NOMINAL), (72, ThermalState.FAIR), (80, ThermalState.SERIOUS),
     (96, ThermalState.SERIOUS), (97, ThermalState.CRITICAL), (120, ThermalState.CRITICAL)],
)  # fmt: skip
def test_thermal_state_from_trip_points(temp: float, state: ThermalState) -> None:
    zone = _zone(temp, ("passive", 80), ("critical", 102))
    got, reason = thermal_state([zone], None, CONFIG)
    assert got is state
    if state is ThermalState.SERIOUS:
        assert "passive trip 80" in reason
    if state is ThermalState.CRITICAL:
        assert "critical trip 102" in reason


def test_thermal_state_without_trips_and_hot_trip() -> None:
    assert thermal_state([_zone(85)], None, CONFIG)[0] is ThermalState.SERIOUS
    assert thermal_state([_zone(91)], None, CONFIG)[0] is ThermalState.CRITICAL
    # A Raspberry Pi zone with only a critical trip at 110 C: Serious from 80 C.
    assert thermal_state([_zone(81, ("critical", 110))], None, CONFIG)[0] is ThermalState.SERIOUS
    assert thermal_state([_zone(95, ("hot", 95), ("critical", 120))], None, CONFIG)[0] is (
        ThermalState.CRITICAL
    )
    # The hottest zone decides.
    zones = [_zone(40), ThermalZone("thermal_zone1", "gpu", 99.0)]
    assert thermal_state(zones, None, CONFIG)[0] is ThermalState.CRITICAL


def test_thermal_hysteresis() -> None:
    trips = (("passive", 80), ("critical", 110))
    state, _ = thermal_state([_zone(80.5, *trips)], None, CONFIG)
    assert state is ThermalState.SERIOUS
    # 79 C is within the 2 C hysteresis: still Serious; 77.9 C is out of it.
    assert thermal_state([_zone(79, *trips)], None, CONFIG, state)[0] is ThermalState.SERIOUS
    assert thermal_state([_zone(77.9, *trips)], None, CONFIG, state)[0] is ThermalState.FAIR
    # The trip's own hysteresis wins over the default.
    zone = _zone(75, *trips, hyst=6.0)
    assert thermal_state([zone], None, CONFIG, ThermalState.SERIOUS)[0] is ThermalState.SERIOUS


def test_thermal_state_from_firmware_flags() -> None:
    cool = [_zone(40)]
    assert thermal_state(cool, Throttling.from_bits(0x4), CONFIG)[0] is ThermalState.SERIOUS
    assert thermal_state(cool, Throttling.from_bits(0x8), CONFIG)[0] is ThermalState.SERIOUS
    state, reason = thermal_state(cool, Throttling.from_bits(0x1), CONFIG)
    assert state is ThermalState.SERIOUS and "under-voltage" in reason
    assert thermal_state(cool, Throttling.from_bits(0x2), CONFIG)[0] is ThermalState.FAIR
    # Only "has occurred" bits: nominal now.
    assert thermal_state(cool, Throttling.from_bits(0xF0000), CONFIG)[0] is ThermalState.NOMINAL
