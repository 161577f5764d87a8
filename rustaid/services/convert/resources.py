"""Conversions for resources.proto: the device's state, power profiles and metrics."""

from __future__ import annotations

from google.protobuf.duration_pb2 import Duration
from google.protobuf.timestamp_pb2 import Timestamp

from rustaid.api.v1 import common_pb2, resources_pb2
from rustaid.core.metrics import ModelMetrics
from rustaid.errors import InvalidArgument
from rustaid.power.manager import CostEstimate
from rustaid.power.profiles import ActiveProfile, ProfileParameters
from rustaid.power.snapshot import (
    BatteryState,
    CpuStatus,
    GpuStatus,
    MemoryStatus,
    PowerProfile,
    PowerStatus,
    PressureLevel,
    ProfileSource,
    ResourceSnapshot,
    ThermalState,
    ThermalStatus,
    ThermalZone,
    Throttling,
    TripPoint,
)

_PRESSURE = {
    PressureLevel.NORMAL: resources_pb2.PRESSURE_LEVEL_NORMAL,
    PressureLevel.WARNING: resources_pb2.PRESSURE_LEVEL_WARNING,
    PressureLevel.CRITICAL: resources_pb2.PRESSURE_LEVEL_CRITICAL,
}
_THERMAL = {
    ThermalState.NOMINAL: resources_pb2.THERMAL_STATE_NOMINAL,
    ThermalState.FAIR: resources_pb2.THERMAL_STATE_FAIR,
    ThermalState.SERIOUS: resources_pb2.THERMAL_STATE_SERIOUS,
    ThermalState.CRITICAL: resources_pb2.THERMAL_STATE_CRITICAL,
}
_BATTERY = {
    BatteryState.UNKNOWN: resources_pb2.BATTERY_STATE_UNSPECIFIED,
    BatteryState.CHARGING: resources_pb2.BATTERY_STATE_CHARGING,
    BatteryState.DISCHARGING: resources_pb2.BATTERY_STATE_DISCHARGING,
    BatteryState.EMPTY: resources_pb2.BATTERY_STATE_EMPTY,
    BatteryState.FULL: resources_pb2.BATTERY_STATE_FULL,
    BatteryState.NOT_CHARGING: resources_pb2.BATTERY_STATE_NOT_CHARGING,
}
_PROFILE = {
    PowerProfile.PERFORMANCE: common_pb2.POWER_PROFILE_PERFORMANCE,
    PowerProfile.BALANCED: common_pb2.POWER_PROFILE_BALANCED,
    PowerProfile.POWER_SAVER: common_pb2.POWER_PROFILE_POWER_SAVER,
    PowerProfile.ULTRA_SAVER: common_pb2.POWER_PROFILE_ULTRA_SAVER,
    PowerProfile.CUSTOM: common_pb2.POWER_PROFILE_CUSTOM,
}
_PROFILE_FROM = {v: k for k, v in _PROFILE.items()}
_SOURCE = {
    ProfileSource.POWER_PROFILES_DAEMON: resources_pb2.PROFILE_SOURCE_POWER_PROFILES_DAEMON,
    ProfileSource.BATTERY: resources_pb2.PROFILE_SOURCE_BATTERY,
    ProfileSource.OVERRIDE: resources_pb2.PROFILE_SOURCE_OVERRIDE,
    ProfileSource.DEFAULT: resources_pb2.PROFILE_SOURCE_DEFAULT,
}
# Shortest and longest WatchSnapshots min_interval accepted.
MIN_WATCH_INTERVAL_S = 0.05
DEFAULT_WATCH_INTERVAL_S = 1.0
MAX_WATCH_INTERVAL_S = 24 * 3600.0


def _timestamp(seconds: float) -> Timestamp | None:
    if not seconds:
        return None
    ts = Timestamp()
    ts.FromNanoseconds(int(seconds * 1e9))
    return ts


def _duration(seconds: float) -> Duration | None:
    if seconds <= 0:
        return None
    d = Duration()
    d.FromNanoseconds(int(seconds * 1e9))
    return d


def power_profile_from_pb(value: int) -> PowerProfile:
    profile = _PROFILE_FROM.get(value)  # type: ignore[call-overload]
    if profile is None:
        names = ", ".join(common_pb2.PowerProfile.Name(v) for v in _PROFILE.values())
        raise InvalidArgument(
            f"profile {value} is not a power profile; use one of {names}", field="profile"
        )
    return profile  # type: ignore[no-any-return]


def memory_status_to_pb(m: MemoryStatus) -> resources_pb2.MemoryStatus:
    return resources_pb2.MemoryStatus(
        total_bytes=m.total_bytes,
        available_bytes=m.available_bytes,
        used_bytes=m.used_bytes,
        pressure=_PRESSURE[m.pressure],
        psi_some_avg10=m.psi_some_avg10,
        psi_full_avg10=m.psi_full_avg10,
        reason=m.reason,
    )


def cpu_status_to_pb(c: CpuStatus) -> resources_pb2.CpuStatus:
    return resources_pb2.CpuStatus(
        usage_percent=c.usage_percent,
        frequency_mhz=c.frequency_mhz,
        max_frequency_mhz=c.max_frequency_mhz,
        cores=c.cores,
        others_busy_cores=c.others_busy_cores,
    )


def trip_point_to_pb(t: TripPoint) -> resources_pb2.TripPoint:
    return resources_pb2.TripPoint(type=t.type, temperature_c=t.temperature_c)


def thermal_zone_to_pb(z: ThermalZone) -> resources_pb2.ThermalZone:
    return resources_pb2.ThermalZone(
        name=z.name,
        type=z.type,
        temperature_c=z.temperature_c,
        trip_points=[trip_point_to_pb(t) for t in z.trip_points],
    )


def throttling_status_to_pb(t: Throttling) -> resources_pb2.ThrottlingStatus:
    return resources_pb2.ThrottlingStatus(
        under_voltage=t.under_voltage,
        frequency_capped=t.frequency_capped,
        throttled=t.throttled,
        soft_temperature_limit=t.soft_temperature_limit,
        under_voltage_occurred=t.under_voltage_occurred,
        frequency_capped_occurred=t.frequency_capped_occurred,
        throttled_occurred=t.throttled_occurred,
        soft_temperature_limit_occurred=t.soft_temperature_limit_occurred,
    )


def thermal_status_to_pb(t: ThermalStatus) -> resources_pb2.ThermalStatus:
    return resources_pb2.ThermalStatus(
        state=_THERMAL[t.state],
        zones=[thermal_zone_to_pb(z) for z in t.zones],
        throttling=throttling_status_to_pb(t.throttling),
        reason=t.reason,
        rising_state=(
            _THERMAL[t.rising_state]
            if t.rising_state > t.state
            else resources_pb2.THERMAL_STATE_UNSPECIFIED
        ),
        rising_reason=t.rising_reason if t.rising_state > t.state else "",
    )


def power_status_to_pb(p: PowerStatus) -> resources_pb2.PowerStatus:
    return resources_pb2.PowerStatus(
        battery_present=p.battery_present,
        on_battery=p.on_battery,
        ac_online=p.ac_online,
        battery_percent=p.battery_percent,
        battery_state=_BATTERY[p.battery_state],
        time_to_empty=_duration(p.time_to_empty_s),
        power_draw_watts=p.power_draw_w,
        warning_level=p.warning_level,
        source=p.source,
        energy_full_wh=p.energy_full_wh,
    )


def gpu_status_to_pb(g: GpuStatus) -> resources_pb2.GpuStatus:
    return resources_pb2.GpuStatus(
        name=g.name,
        memory_total_bytes=g.memory_total_bytes,
        memory_used_bytes=g.memory_used_bytes,
        utilization_percent=g.utilization_percent,
    )


def resource_snapshot_to_pb(s: ResourceSnapshot) -> resources_pb2.ResourceSnapshot:
    return resources_pb2.ResourceSnapshot(
        time=_timestamp(s.time),
        memory=memory_status_to_pb(s.memory),
        cpu=cpu_status_to_pb(s.cpu),
        thermal=thermal_status_to_pb(s.thermal),
        power=power_status_to_pb(s.power),
        gpus=[gpu_status_to_pb(g) for g in s.gpus],
        power_profile=_PROFILE[s.power_profile],
        unavailable_sources=list(s.unavailable_sources),
        profile_source=_SOURCE[s.profile_source],
    )


def profile_parameters_to_pb(p: ProfileParameters) -> resources_pb2.ProfileParameters:
    return resources_pb2.ProfileParameters(
        threads=p.threads,
        use_gpu=p.use_gpu,
        prefer_remote=p.prefer_remote,
        max_local_tokens=p.max_local_tokens,
        batch_size=p.batch_size,
        context_length=p.context_length,
        caching=p.caching,
        background_inference=p.background_inference,
    )


def profile_parameters_from_pb(p: resources_pb2.ProfileParameters) -> ProfileParameters:
    return ProfileParameters(
        threads=p.threads,
        use_gpu=p.use_gpu,
        prefer_remote=p.prefer_remote,
        max_local_tokens=p.max_local_tokens,
        batch_size=p.batch_size,
        context_length=p.context_length,
        caching=p.caching,
        background_inference=p.background_inference,
    )


def active_profile_fields(a: ActiveProfile) -> dict[str, object]:
    """The fields Get/SetPowerProfileResponse share."""
    return {
        "profile": _PROFILE[a.profile],
        "source": _SOURCE[a.source],
        "parameters": profile_parameters_to_pb(a.parameters),
        "reason": a.reason,
    }


def model_metrics_to_pb(m: ModelMetrics) -> resources_pb2.ModelMetrics:
    return resources_pb2.ModelMetrics(
        model_id=m.model_id,
        requests=m.requests,
        prompt_tokens=m.prompt_tokens,
        completion_tokens=m.completion_tokens,
        tokens_per_second=m.tokens_per_second,
        time_to_first_token_ms=m.time_to_first_token_ms,
        energy_joules=m.energy_joules,
        joules_per_token=m.joules_per_token,
        errors=m.errors,
    )


def estimate_cost_response_to_pb(c: CostEstimate) -> resources_pb2.EstimateCostResponse:
    return resources_pb2.EstimateCostResponse(
        duration=_duration(c.duration_s),
        energy_joules=c.energy_joules,
        battery_percent=c.battery_percent,
        basis=c.basis,
        energy_mwh=c.energy_joules / 3.6,
        max_tokens=c.max_tokens,
    )


def watch_interval_from_pb(d: Duration, present: bool) -> float:
    """WatchSnapshots' min_interval in seconds: unset -> 1 s; INVALID_ARGUMENT when
    negative, malformed or longer than a day; raised to 50 ms when shorter."""
    if not present:
        return DEFAULT_WATCH_INTERVAL_S
    if d.seconds < 0 or d.nanos < 0 or d.nanos >= 1_000_000_000:
        raise InvalidArgument("min_interval must be a non-negative duration", field="min_interval")
    seconds = d.seconds + d.nanos / 1e9
    if seconds > MAX_WATCH_INTERVAL_S:
        raise InvalidArgument(
            f"min_interval must be at most {MAX_WATCH_INTERVAL_S:.0f} s (got {seconds:g} s)",
            field="min_interval",
        )
    if seconds == 0:
        return DEFAULT_WATCH_INTERVAL_S
    return max(MIN_WATCH_INTERVAL_S, seconds)
