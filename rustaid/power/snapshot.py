"""The device's state as plain dataclasses: memory, CPU, heat, power and the active
power profile. The gRPC edge converts these; nothing here knows protobuf."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum


class PressureLevel(IntEnum):
    """Memory pressure; ordered, so `level >= PressureLevel.WARNING` reads naturally."""

    NORMAL = 1
    WARNING = 2
    CRITICAL = 3


class ThermalState(IntEnum):
    """How hot the device runs, from its trip points and firmware throttling flags."""

    NOMINAL = 1
    FAIR = 2
    SERIOUS = 3
    CRITICAL = 4


class BatteryState(StrEnum):
    UNKNOWN = "unknown"
    CHARGING = "charging"
    DISCHARGING = "discharging"
    EMPTY = "empty"
    FULL = "full"
    NOT_CHARGING = "not_charging"


class PowerProfile(StrEnum):
    PERFORMANCE = "performance"
    BALANCED = "balanced"
    POWER_SAVER = "power_saver"
    ULTRA_SAVER = "ultra_saver"
    CUSTOM = "custom"


class ProfileSource(StrEnum):
    # Follows power-profiles-daemon's ActiveProfile.
    POWER_PROFILES_DAEMON = "power_profiles_daemon"
    # Derived from the battery (no power-profiles-daemon).
    BATTERY = "battery"
    # Set with SetPowerProfile, until cleared.
    OVERRIDE = "override"
    # Nothing to go by (no power-profiles-daemon, no battery): the configured default.
    DEFAULT = "default"


@dataclass(frozen=True)
class MemoryStatus:
    total_bytes: int = 0
    available_bytes: int = 0
    used_bytes: int = 0
    pressure: PressureLevel = PressureLevel.NORMAL
    # /proc/pressure/memory "some" and "full" avg10, percent of wall time stalled.
    psi_some_avg10: float = 0.0
    psi_full_avg10: float = 0.0
    # Why `pressure` is what it is ("" when normal).
    reason: str = ""


@dataclass(frozen=True)
class CpuStatus:
    usage_percent: float = 0.0
    frequency_mhz: float = 0.0
    max_frequency_mhz: float = 0.0
    cores: int = 0
    # Cores' worth of CPU other processes used since the previous reading (not ours).
    others_busy_cores: float = 0.0


@dataclass(frozen=True)
class TripPoint:
    # active, passive, hot or critical (whatever the driver says).
    type: str
    temperature_c: float
    hysteresis_c: float = 0.0


@dataclass(frozen=True)
class ThermalZone:
    # thermal_zone0, ...
    name: str
    # The driver's name for it: x86_pkg_temp, cpu-thermal, acpitz...
    type: str
    temperature_c: float
    trip_points: tuple[TripPoint, ...] = ()


@dataclass(frozen=True)
class Throttling:
    """Raspberry Pi firmware flags (get_throttled) and the hwmon under-voltage alarm."""

    under_voltage: bool = False
    frequency_capped: bool = False
    throttled: bool = False
    soft_temperature_limit: bool = False
    under_voltage_occurred: bool = False
    frequency_capped_occurred: bool = False
    throttled_occurred: bool = False
    soft_temperature_limit_occurred: bool = False

    @classmethod
    def from_bits(cls, bits: int, under_voltage_alarm: bool = False) -> Throttling:
        def bit(n: int) -> bool:
            return bool(bits >> n & 1)

        return cls(
            under_voltage=bit(0) or under_voltage_alarm,
            frequency_capped=bit(1),
            throttled=bit(2),
            soft_temperature_limit=bit(3),
            under_voltage_occurred=bit(16) or bit(0) or under_voltage_alarm,
            frequency_capped_occurred=bit(17) or bit(1),
            throttled_occurred=bit(18) or bit(2),
            soft_temperature_limit_occurred=bit(19) or bit(3),
        )

    @property
    def active(self) -> bool:
        return (
            self.under_voltage
            or self.frequency_capped
            or self.throttled
            or self.soft_temperature_limit
        )


@dataclass(frozen=True)
class ThermalStatus:
    state: ThermalState = ThermalState.NOMINAL
    zones: tuple[ThermalZone, ...] = ()
    throttling: Throttling = field(default_factory=Throttling)
    # Why `state` is what it is, e.g. "cpu-thermal at 82.0 C, above its passive trip 80.0 C".
    reason: str = ""
    # The state a zone heating fast reaches within a few seconds, when hotter than
    # `state` (else NOMINAL), and why: the policy acts on it before the trip point.
    rising_state: ThermalState = ThermalState.NOMINAL
    rising_reason: str = ""

    def effective(self) -> tuple[ThermalState, str]:
        """The state the policy acts on, and why: `state`, or the hotter one it is
        heading for ("thermal state serious expected (...)")."""
        if self.rising_state > self.state:
            name = self.rising_state.name.lower()
            return self.rising_state, f"thermal state {name} expected ({self.rising_reason})"
        return self.state, f"thermal state {self.state.name.lower()} ({self.reason})"


@dataclass(frozen=True)
class PowerStatus:
    battery_present: bool = False
    on_battery: bool = False
    ac_online: bool = False
    battery_percent: float = 0.0
    battery_state: BatteryState = BatteryState.UNKNOWN
    # Seconds; 0 when unknown.
    time_to_empty_s: float = 0.0
    # Watts drawn from the battery (UPower EnergyRate, sysfs power_now); 0 when unknown.
    power_draw_w: float = 0.0
    # UPower WarningLevel: 1 none, 2 discharging (UPS), 3 low, 4 critical, 5 action.
    warning_level: int = 0
    # Capacity of a full battery in Wh, 0 when unknown.
    energy_full_wh: float = 0.0
    # Where these figures came from: "upower", "sysfs" or "" (nothing found).
    source: str = ""

    @property
    def discharging(self) -> bool:
        return self.battery_present and (
            self.battery_state is BatteryState.DISCHARGING
            or (self.on_battery and self.battery_state is not BatteryState.CHARGING)
        )


@dataclass(frozen=True)
class GpuStatus:
    name: str
    memory_total_bytes: int = 0
    memory_used_bytes: int = 0
    utilization_percent: float = 0.0


@dataclass(frozen=True)
class ResourceSnapshot:
    time: float = 0.0
    memory: MemoryStatus = field(default_factory=MemoryStatus)
    cpu: CpuStatus = field(default_factory=CpuStatus)
    thermal: ThermalStatus = field(default_factory=ThermalStatus)
    power: PowerStatus = field(default_factory=PowerStatus)
    gpus: tuple[GpuStatus, ...] = ()
    power_profile: PowerProfile = PowerProfile.BALANCED
    profile_source: ProfileSource = ProfileSource.DEFAULT
    # Sources that could not be read, e.g. "upower", "thermal", "udev".
    unavailable_sources: tuple[str, ...] = ()

    def state_key(self) -> tuple[object, ...]:
        """What a watcher cares about: a snapshot is "new" when this changes. Counters
        that move all the time (free bytes, CPU usage, power draw) are left out; whole
        degrees and whole battery percents are in."""
        p = self.power
        return (
            self.memory.pressure,
            self.thermal.state,
            self.thermal.rising_state,
            self.thermal.throttling,
            tuple((z.name, _whole(z.temperature_c)) for z in self.thermal.zones),
            p.battery_present,
            p.on_battery,
            p.ac_online,
            _whole(p.battery_percent),
            p.battery_state,
            p.warning_level,
            p.source,
            self.power_profile,
            self.profile_source,
            self.unavailable_sources,
            tuple(g.name for g in self.gpus),
        )


def _whole(value: float) -> int:
    return math.floor(value + 0.5) if math.isfinite(value) else 0
